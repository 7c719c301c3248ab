"""The supervisor's warm pool: pre-built boxes the launcher offers and the supervisor starts
directly (sandbox/_launcher.py, sandbox/_supervisor.py). Asserted from outside: the boxes are
as fresh as cold ones, a dead offered box never costs a verdict, and dead boxes' mount
namespaces (held by the launcher so their teardown leaves the latency path) are released.

Runs as the unprivileged user in CI.
"""

from __future__ import annotations

import os
import select

import trio

import sandbox
from sandbox import SandboxConfig


async def _wait_for_pool(sup: sandbox.Supervisor, n: int) -> None:
    with trio.fail_after(10):
        while len(sup._pool) < n:
            await trio.sleep(0.01)


def _launcher_fds(sup: sandbox.Supervisor) -> list[str]:
    assert sup._proc is not None
    d = f"/proc/{sup._proc.pid}/fd"
    out = []
    for name in os.listdir(d):
        try:
            out.append(os.readlink(f"{d}/{name}"))
        except OSError:
            pass
    return out


def _launcher_children(sup: sandbox.Supervisor) -> int:
    assert sup._proc is not None
    with open(f"/proc/{sup._proc.pid}/task/{sup._proc.pid}/children") as f:
        return len(f.read().split())


def test_warm_pool_boxes_are_fresh_and_cleaned_up(no_leftovers):
    """Pre-built (warm) boxes must be as fresh as cold ones: nothing from an earlier box,
    and a config change must not hand out a box built for another config."""
    async def main() -> list[sandbox.Result]:
        out = []
        async with sandbox.Supervisor(warm_pool=2) as sup:
            for i in range(6):
                host = "warm-a" if i < 4 else "warm-b"
                out.append(await sup.run(
                    ["sh", "-c", "test -e /tmp/mark && echo stale; touch /tmp/mark; echo $$; hostname"],
                    SandboxConfig(hostname=host)))
        return out

    results = trio.run(main)
    for i, r in enumerate(results):
        assert r.stdout.decode().split() == ["2", "warm-a" if i < 4 else "warm-b"], r


def test_offered_boxes_that_died_are_skipped(no_leftovers):
    """A pooled box can die before it is used (OOM killer, a stray kill): the run must still
    get its verdict, from a cold box, and the dead ones must not linger."""
    async def main() -> tuple[sandbox.Result, sandbox.Result]:
        cfg = SandboxConfig(hostname="pooled")
        async with sandbox.Supervisor(warm_pool=2) as sup:
            first = await sup.run(["true"], cfg)  # cold; the launcher then builds the pool
            await _wait_for_pool(sup, 2)
            for w in sup._pool:
                os.kill(w.pid, 9)  # init is the launcher's child, in our pid namespace
                select.select([w.pidfd], [], [], 5)  # readable once it exited
            second = await sup.run(["hostname"], cfg)
        return first, second

    first, second = trio.run(main)
    assert first.status == "OK", first
    assert second.status == "OK" and second.stdout == b"pooled\n", second


def test_dead_boxes_release_their_mounts_and_old_pools_go(no_leftovers):
    """The launcher holds each warm box's mount namespace past the box's death (its teardown
    then costs the verdict nothing) and must release it once idle; after a config change the
    old pool's boxes exit. Counted in the launcher: namespace fds and children."""
    async def main() -> tuple[list[str], int, list[sandbox.Result]]:
        results = []
        async with sandbox.Supervisor(warm_pool=2) as sup:
            for i in range(12):
                results.append(await sup.run(["true"], SandboxConfig(hostname=f"h{i // 6}")))
            await _wait_for_pool(sup, 2)
            # idle now: the launcher releases what it still held (allow a loaded machine 5 s)
            with trio.move_on_after(5):
                while (sum(fd.startswith("mnt:") for fd in _launcher_fds(sup)) > 2
                       or _launcher_children(sup) > 2):
                    await trio.sleep(0.05)
            return _launcher_fds(sup), _launcher_children(sup), results

    fds, children, results = trio.run(main)
    assert all(r.status == "OK" for r in results), results
    mnt = [fd for fd in fds if fd.startswith("mnt:")]
    assert len(mnt) <= 2, f"mount namespaces of dead boxes still held: {mnt}"  # the pool's own
    assert children <= 2, f"{children} boxes alive under the launcher, expected only the pool"


def test_mixed_configs_concurrently_keep_every_verdict(no_leftovers):
    """Concurrent runs alternating between configs make the pool switch while boxes are being
    offered, taken and retired (a ready message for a box retired in the same round of events
    once crashed the launcher). Every verdict must still be the right one."""
    import random

    rng = random.Random(7)
    cases = {"ok": (["hostname"], "OK"), "exit": (["sh", "-c", "exit 7"], "RE"),
             "kill": (["sh", "-c", "kill -9 $$"], "SG"), "stdin": (["cat"], "OK")}
    bad = []

    async def one(sup: sandbox.Supervisor, kind: str, host: str) -> None:
        argv, status = cases[kind]
        r = await sup.run(argv, SandboxConfig(hostname=host),
                          stdin=b"x" * 1000 if kind == "stdin" else None)
        out = {"ok": host.encode() + b"\n", "stdin": b"x" * 1000}.get(kind, b"")
        if r.status != status or r.stdout != out:
            bad.append((kind, host, r.status, r.stdout[:40], r.error))

    async def main() -> None:
        async with sandbox.Supervisor(max_concurrent=4, warm_pool=2) as sup:
            async with trio.open_nursery() as n:
                for _ in range(80):
                    n.start_soon(one, sup, rng.choice(list(cases)), rng.choice("abc"))
                    if rng.random() < 0.3:
                        await trio.sleep(rng.random() * 0.01)

    trio.run(main)
    assert bad == []


def test_a_dead_launcher_gives_xx_not_a_traceback(no_leftovers):
    async def main() -> sandbox.Result:
        async with sandbox.Supervisor() as sup:
            assert sup._proc is not None
            sup._proc.kill()
            await sup._proc.wait()
            return await sup.run(["true"])

    r = trio.run(main)
    assert r.status == "XX" and "launcher" in (r.error or ""), r


def test_runs_cancelled_at_any_moment_leave_no_box_running(no_leftovers):
    """Cancel runs at random moments around the start of their box: none may keep running
    while the supervisor lives (a cancellation right after a warm start once did, 58 of 60)."""
    import random

    from tests.conftest import descendants

    rng = random.Random(3)

    async def main() -> list[int]:
        async with sandbox.Supervisor() as sup:
            for _ in range(40):
                with trio.move_on_after(rng.random() * 0.004):
                    await sup.run(["sleep", "100"])
            await trio.sleep(0.2)
            alive = []
            for pid in descendants(os.getpid()):
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as f:
                        if f.read().startswith(b"sleep"):
                            alive.append(pid)
                except OSError:
                    pass
            return alive

    assert trio.run(main) == []


# (uid_map without its outside column: as root each box gets its own high uid block)
PROBE = ("id; hostname; awk '{print $1, $3}' /proc/self/uid_map; grep -E '^(Cap|NoNewPrivs|Seccomp)' /proc/self/status;"
         " ulimit -n; ulimit -c; cut -d' ' -f5,9 /proc/self/mountinfo | sort; ls /sys 2>&1;"
         " cat /proc/net/dev | cut -d: -f1 | tail -n +3; echo x > /tmp/f && cat /tmp/f;"
         " touch /usr/x 2>&1 | sed 's/.*: //'")


def test_warm_boxes_match_cold_ones(no_leftovers):
    """A pre-built box must be indistinguishable from a cold one for the same config: same
    ids, capabilities, no_new_privs, seccomp, rlimits, mounts, network, filesystem rules.
    Compared per config: the direct runner (cold) vs a warm box of a supervisor."""
    from sandbox import Limits

    configs = [SandboxConfig(), SandboxConfig(hostname="other", uid=1000, gid=1000),
               SandboxConfig(network="host", limits=Limits.parse(nofile="64")),
               SandboxConfig(seccomp="none", landlock=True)]

    async def warm(cfg: SandboxConfig) -> bytes:
        async with sandbox.Supervisor(warm_pool=1) as sup:
            await sup.run(["true"], cfg)  # cold; the pool fills after it
            await _wait_for_pool(sup, 1)
            r = await sup.run(["sh", "-c", PROBE], cfg)
            assert r.status == "OK", r
            return r.stdout

    for cfg in configs:
        cold = sandbox.run_sync(["sh", "-c", PROBE], cfg)
        assert cold.status == "OK", cold
        assert trio.run(warm, cfg) == cold.stdout, cfg
