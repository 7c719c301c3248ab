"""``sandbox.Box``: a held box — many execs, files in and out, changes, a background process.

Runs as the unprivileged user in CI and again as root (ci/test.sh): both id-map modes.
"""

from __future__ import annotations

import os
import shutil
import threading
import time

import pytest
import trio

import sandbox
from sandbox import Box, BoxError, ConfigError, Limits, SandboxConfig, Status
from sandbox._safefs import UnsafePath

ROOT_MODE = os.geteuid() == 0


@pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc is not installed (ci/setup.sh installs it)")
def test_the_readme_example_compiles_once_and_runs_in_the_same_box(no_leftovers):
    with Box(SandboxConfig(limits=Limits.parse(memory="256M"))) as box:
        box.put("/src/main.c", b"#include <stdio.h>\nint main(){FILE*f=fopen(\"out.txt\",\"w\");"
                               b"fputs(\"42\\n\",f);return 3;}")
        r = box.exec(["gcc", "-o", "/src/a.out", "/src/main.c"], cwd="/src")
        assert r.status is Status.OK, (r.reason, r.stderr)
        r = box.exec(["/src/a.out"], stdin=b"", wall_time="1s", cwd="/src")
        assert (r.status, r.exit_code) == (Status.RE, 3)
        assert r.wall_time > 0 and r.cpu_time >= 0 and (r.peak_memory is None or r.peak_memory > 0)
        assert box.get("/src/out.txt") == b"42\n"
        ch = box.changes()
        assert {"/src", "/src/main.c", "/src/a.out", "/src/out.txt"} <= set(ch.created)
        assert ch.deleted == []
    assert box.usage is not None and box.usage.execs == 2 and box.usage.cpu_time > 0


def test_the_trio_example_streams_output(no_leftovers):
    seen: list[tuple[int, bytes]] = []

    async def main() -> sandbox.Result:
        async with sandbox.Supervisor() as sup:
            async with sup.box(SandboxConfig()) as box:
                await box.put("/data/in.txt", b"hello\n")
                return await box.exec(["sh", "-c", "cat /data/in.txt; echo err >&2"],
                                      on_output=lambda which, chunk: seen.append((which, chunk)))

    r = trio.run(main)
    assert (r.status, r.stdout, r.stderr) == (Status.OK, b"hello\n", b"err\n")
    assert b"".join(c for w, c in seen if w == 1) == b"hello\n"
    assert b"".join(c for w, c in seen if w == 2) == b"err\n"


def test_a_timed_out_or_flooding_exec_leaves_the_box_usable(no_leftovers):
    with Box() as box:
        assert box.exec(["sh", "-c", "echo kept > /tmp/state"]).status is Status.OK
        r = box.exec(["sh", "-c", "sleep 30 & sleep 30"], wall_time="0.3s")
        assert r.status is Status.TO and r.wall_time < 5
        r = box.exec(["sh", "-c", "yes"], output_limit="64K")
        assert r.status is Status.OL and len(r.stdout) == 64 * 1024
        r = box.exec(["sh", "-c", "sleep 30 & echo bg"], wall_time="5s")  # its helper ends with it
        assert (r.status, r.stdout) == (Status.OK, b"bg\n") and r.wall_time < 4
        r = box.exec(["cat", "/tmp/state"])
        assert (r.status, r.stdout) == (Status.OK, b"kept\n")
        r = box.exec(["sh", "-c", "ps -e -o comm= | sort | tr '\\n' ' '"])
        assert "sleep" not in r.stdout.decode() and "yes" not in r.stdout.decode()


def test_each_exec_has_its_own_verdict_and_limits(no_leftovers):
    with Box(SandboxConfig(limits=Limits.parse(wall_time="60s"))) as box:  # a loaded CI machine
        assert box.exec(["false"]).status is Status.RE
        assert box.exec(["sh", "-c", "kill -SEGV $$"]).status is Status.SG
        r = box.exec(["no-such-program"])
        assert r.status is Status.XX and r.error_step == "exec"
        r = box.exec(["pwd"], cwd="/no/such/dir")
        assert r.status is Status.XX and r.error_step == "cwd"
        r = box.exec(["sh", "-c", "while :; do :; done"], cpu_time="1s")
        assert r.status is Status.TO and 0.8 < r.cpu_time < 3
        r = box.exec(["sh", "-c", "echo $FOO; cat"], env={"FOO": "bar"}, stdin=b"x" * 300_000,
                     output_limit="1M")
        assert r.status is Status.OK and r.stdout == b"bar\n" + b"x" * 300_000


def test_the_config_cpu_time_is_the_whole_box_budget(no_leftovers):
    """Each exec's RLIMIT_CPU is per process: without a box-wide watch, N execs of 1 s under a
    2 s box would use N seconds. The box's budget counts every process it ever had."""
    spin = ["sh", "-c", "while :; do :; done"]
    # 2.5 s: two execs stopped at their own 1 s leave room for init and the shells' start-up
    with Box(SandboxConfig(limits=Limits.parse(cpu_time="2.5s", wall_time="60s"))) as box:
        verdicts = [box.exec(spin, cpu_time="1s") for _ in range(2)]
        assert all(r.status is Status.TO for r in verdicts)
        r = box.exec(spin)  # what is left of the box's 2.5 s
        assert r.status is Status.TO and "all the box's processes" in (r.reason or ""), r.reason
        with pytest.raises(BoxError, match="closed"):
            box.exec(["true"])
    assert box.usage is not None and box.usage.cpu_exceeded and 2.5 <= box.usage.cpu_time < 5


DAEMON = """import os, time
r, w = os.pipe()
if os.fork() == 0:  # a daemon: its own session, so the end of its parent's group spares it
    os.setsid()
    os.write(w, b"1")
    for _ in range(2):  # 1.6 s of CPU, no process over its own 1 s RLIMIT_CPU
        if os.fork() == 0:
            t = time.process_time()
            while time.process_time() - t < 0.8:
                pass
            os._exit(0)
        os.wait()
    open("/tmp/done", "w").close()  # its children's time is in its own stat now; it stays
    time.sleep(3600)
os.read(r, 1)
"""


def _await_file(box: Box, path: str) -> None:
    """Poll for a file the box will write: files move through fds, not init's socket (a
    BoxError: the box closed meanwhile)."""
    while True:
        try:
            box.get(path)
            return
        except FileNotFoundError:
            time.sleep(0.05)


def test_a_process_that_ended_before_the_box_budget_ran_out_keeps_its_verdict(no_leftovers):
    """When the budget's guard kills the box, init's news queued meanwhile (a process that
    exited on its own) is read before the rest are marked killed for it."""
    with Box(SandboxConfig(limits=Limits.parse(cpu_time="1s", wall_time="60s"))) as box:
        box.put("/tmp/daemon.py", DAEMON.encode())
        early = box.start(["python3", "/tmp/daemon.py"])  # exits once the daemon is detached
        try:
            _await_file(box, "/tmp/done")
            late = box.exec(["sleep", "30"])  # cannot end on its own before the kill
            assert late.status is Status.TO and "all the box's processes" in (late.reason or "")
        except BoxError:
            pass  # the budget ran out during a file call: the box closed there
        r = early.wait()
        assert r is not None and r.status is Status.OK, (r.status, r.reason)
    assert box.usage is not None and box.usage.cpu_exceeded and box.usage.cpu_time >= 1.0


def test_what_a_daemon_spent_while_the_host_was_not_waiting_is_in_the_usage(no_leftovers):
    """A daemon's time is in the usage: killed at teardown and reaped by nobody, it would be in
    no total (and cpu_exceeded False) but for the guard's samples and close()'s last one."""
    with Box(SandboxConfig(limits=Limits.parse(cpu_time="1s", wall_time="60s"))) as box:
        box.put("/tmp/daemon.py", DAEMON.encode())
        assert box.exec(["python3", "/tmp/daemon.py"]).status is Status.OK
        try:
            _await_file(box, "/tmp/done")
        except BoxError:
            pass  # the budget ran out during a file call
    assert box.usage is not None and box.usage.cpu_exceeded and box.usage.cpu_time >= 1.0, box.usage


def test_the_cpu_budget_ends_a_background_spinner_while_the_host_does_nothing(no_leftovers):
    """The budget is the supervisor's, not the host's activity: its guard thread samples it
    between calls. Checked only when the host called, a server left spinning while the host
    slept spent all the sleep (each spinner dies at its own 1 s RLIMIT_CPU, the loop starts
    the next); now it is killed at the budget."""
    with Box(SandboxConfig(limits=Limits.parse(cpu_time="1s", wall_time="60s"))) as box:
        p = box.start(["sh", "-c", "while :; do sh -c 'while :; do :; done'; done"])
        time.sleep(4)  # no call on the box meanwhile
        r = p.wait()
        assert r is not None and r.status is Status.TO, (r, box.usage)
        assert "all the box's processes" in (r.reason or ""), r.reason
    assert box.usage is not None and box.usage.cpu_exceeded, box.usage
    assert 1.0 <= box.usage.cpu_time < 2.5, box.usage


def test_the_box_peak_is_its_processes_not_a_clone_of_the_caller(no_leftovers):
    """init is a clone of whoever opened the box, and a process it starts carries init's max RSS
    in its own (exec records the high-water mark of the memory it replaces). Counted as the
    program's, a big caller made `false` under --memory 128M an ML. A peak that cannot be told
    apart from init's is unknown (None); one above it is the program's."""
    ballast = bytearray(b"x" * (200 << 20))  # the caller is big (pytest with a large heap)
    cfg = SandboxConfig(limits=Limits.parse(memory="128M"))
    with Box(cfg) as box:
        r = box.exec(["false"])
        assert r.status is Status.RE and r.peak_memory is None, (r.status, r.reason, r.peak_memory)
    with Box(SandboxConfig(limits=Limits.parse(memory="2G"))) as box:
        r = box.exec(["python3", "-c", "b = bytearray(b'y' * (400 << 20))"])
        assert r.status is Status.OK and r.peak_memory is not None and r.peak_memory > 400 << 20
    del ballast
    assert box.usage is not None and box.usage.peak_memory == r.peak_memory
    if sandbox.run_sync(["true"]).enforcement["memory"] == "rlimit":  # the one-shot runner too
        assert sandbox.run_sync(["false"], cfg).status is Status.RE


def test_memory_limit_under_the_rlimit_fallback_is_per_exec(no_leftovers):
    with Box(SandboxConfig(limits=Limits.parse(memory="128M"))) as box:
        if box._prep.enforcement["memory"] != "rlimit":
            pytest.skip("a memory cgroup is delegated here: see tests/test_cgroups.py")
        r = box.exec(["python3", "-c", "b = []\nwhile True: b.append(bytearray(1 << 20))"])
        assert r.status is Status.ML, (r.reason, r.stderr[-200:])
        assert box.exec(["echo", "still here"]).stdout == b"still here\n"


def test_put_and_get_never_follow_a_link_the_box_planted(no_leftovers, tmp_path):
    host_file = tmp_path / "secret"
    host_file.write_bytes(b"host secret\n")
    with Box() as box:
        box.exec(["sh", "-c", f"ln -s {host_file} /tmp/link; ln -s /etc /tmp/dirlink; "
                              "mkfifo /tmp/fifo; head -c 100000 /dev/zero > /tmp/big"])
        with pytest.raises(UnsafePath):
            box.get("/tmp/link")
        with pytest.raises(UnsafePath):
            box.get("/tmp/dirlink/passwd")
        with pytest.raises(UnsafePath):
            box.put("/tmp/dirlink/evil", b"x")
        with pytest.raises(UnsafePath):
            box.get("/tmp/fifo")  # refused at once: a FIFO would stall the host
        box.put("/tmp/link", b"replaced\n")  # replaces the link itself, never its target
        assert host_file.read_bytes() == b"host secret\n"
        assert box.exec(["cat", "/tmp/link"]).stdout == b"replaced\n"
        assert len(box.get("/tmp/big", max_bytes=1000)) == 1000
        with pytest.raises(ConfigError, match="kernel view"):
            box.get("/proc/1/environ")
        with pytest.raises(ConfigError, match="absolute"):
            box.put("relative.txt", b"")
        with pytest.raises(ConfigError, match="absolute"):
            box.get("/tmp/../etc/passwd")


def test_put_copies_a_host_file_and_the_box_user_owns_it(no_leftovers, tmp_path):
    src = tmp_path / "prog.sh"
    src.write_bytes(b"#!/bin/sh\necho from host file\n")
    with Box() as box:
        box.put("/code/prog.sh", src, mode=0o755)
        r = box.exec(["sh", "-c", "/code/prog.sh; stat -c '%U %a' /code /code/prog.sh; "
                                  "echo more >> /code/prog.sh && echo writable"])
        assert r.stdout == b"from host file\nsandbox 755\nsandbox 755\nwritable\n", r.stderr


def test_changes_lists_what_the_box_did(no_leftovers):
    with Box() as box:
        assert box.changes() == sandbox.Changes()
        box.exec(["sh", "-c", "mkdir -p /tmp/d && echo 1 > /tmp/d/f && echo 2 > /dev/shm/s"])
        ch = box.changes()
        assert ch.created == ["/dev/shm/s", "/tmp/d", "/tmp/d/f"] and not ch.modified
        box.exec(["sh", "-c", "echo 3 >> /tmp/d/f"])
        assert box.changes().created == ch.created  # made since the start: still "created"
        if not ROOT_MODE:  # the box user owns its /etc only with the single-id map
            box.exec(["sh", "-c", "rm /etc/hostname; echo x >> /etc/hosts"])
            ch = box.changes()
            assert "/etc/hostname" in ch.deleted and ch.modified == ["/etc/hosts"]


def test_a_started_process_runs_beside_execs(no_leftovers):
    with Box() as box:
        server = box.start(["sh", "-c", "while read line; do echo \"got $line\"; done"])
        server.stdin.write(b"one\n")
        assert box.exec(["echo", "meanwhile"]).stdout == b"meanwhile\n"
        server.stdin.write(b"two\n")
        server.stdin.close()
        r = server.wait()
        assert (r.status, r.stdout) == (Status.OK, b"got one\ngot two\n")
        sleeper = box.start(["sleep", "60"])
        assert sleeper.wait(timeout=0.2) is None
        sleeper.kill()
        r = sleeper.wait()
        assert r.status is Status.SG and r.signal == 9
        assert box.exec(["true"]).status is Status.OK


def test_bad_arguments_fail_in_the_caller(no_leftovers):
    with pytest.raises(ConfigError):
        Box(SandboxConfig(limits=Limits(memory="lots")))
    with Box() as box:
        with pytest.raises(ConfigError, match="not a string"):
            box.exec("echo hi")  # type: ignore[arg-type]
        with pytest.raises(ConfigError, match="wall_time"):
            box.exec(["true"], wall_time="soon")
        with pytest.raises(ConfigError, match="cwd"):
            box.exec(["true"], cwd="relative")
    with pytest.raises(BoxError, match="closed"):
        box.exec(["true"])
    with pytest.raises(BoxError, match="not open"):
        Box().exec(["true"])


def test_a_box_from_a_threaded_caller(no_leftovers):
    out: list[sandbox.Result] = []

    def worker() -> None:
        with Box() as box:
            out.append(box.exec(["echo", "from a thread"]))

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.stdout for r in out] == [b"from a thread\n"] * 3


def test_many_boxes_many_execs_leave_nothing_behind(no_leftovers):
    for i in range(200):
        with Box() as box:
            for j in range(5):
                r = box.exec(["sh", "-c", f"echo {i}.{j} > /tmp/n; cat /tmp/n"])
                assert r.stdout == f"{i}.{j}\n".encode()


def test_a_box_dropped_without_close_is_ended(no_leftovers):
    import gc

    box = Box().open()
    assert box.exec(["true"]).ok
    del box
    gc.collect()  # nothing of it is left for no_leftovers to find


LEFTOVER = r'''
import os
if os.fork(): os._exit(0)
os.setsid()
if os.fork(): os._exit(0)
for i in (0, 1, 2): os.close(i)
me = os.getpid()
while True:
    for p in os.listdir("/proc"):
        if p.isdigit() and int(p) > me:
            try:
                fd = os.open(f"/proc/{p}/fd/1", os.O_WRONLY)
                os.write(fd, b"ALL TESTS PASSED\n")
            except OSError:
                pass
'''


def test_a_process_holds_only_its_own_pipes(no_leftovers):
    """Not init's request socket above all: it would let a process speak for init (forge its
    own verdict or the next exec's) and take the host's requests."""
    with Box() as box:
        r = box.exec(["python3", "-c", "import os; print(sorted(os.listdir('/proc/self/fd')))"])
        assert r.stdout == b"['0', '1', '2', '3']\n", r  # 3: listdir's own directory fd


def test_a_leftover_of_one_exec_cannot_fake_the_next(no_leftovers):
    """A double-forked leftover (own session) is the same user as the next exec's process, so
    through /proc/PID/fd/1 it could write into that exec's output: init ends every process
    outside a running session before it starts the next."""
    import time

    with Box() as box:
        box.exec(["python3", "-c", LEFTOVER])
        time.sleep(0.3)
        r = box.exec(["sh", "-c", "sleep 0.5; echo 'test failed'"], wall_time="10s")
        assert (r.status, r.stdout) == (Status.OK, b"test failed\n"), r


def test_put_refuses_what_it_cannot_do_plainly(no_leftovers, tmp_path):
    with Box() as box:
        with pytest.raises(ConfigError, match="pathlib.Path"):
            box.put("/tmp/answer.txt", "/etc/passwd")  # type: ignore[arg-type] - text, or a path?
        with pytest.raises(ConfigError, match="0..0o777"):
            box.put("/tmp/x", b"", mode=0o4755)
        with pytest.raises(ConfigError, match="kernel view"):
            box.get("/./proc/1/status")
        with pytest.raises(ConfigError, match="byte count"):
            box.get("/tmp/x", max_bytes=-1)
        with pytest.raises(IsADirectoryError):
            box.put("/tmp", b"x")  # a directory is there: the temporary file is removed again
        assert box.exec(["ls", "-A", "/"]).stdout.count(b".sandbox-put") == 0


def test_changes_sees_a_same_size_rewrite_and_says_when_it_is_cut_short(no_leftovers):
    with Box() as box:
        if not ROOT_MODE:
            r = box.exec(["python3", "-c", "import os\nst = os.stat('/etc/hostname')\n"
                          "data = open('/etc/hostname', 'rb').read()\n"
                          "open('/etc/hostname', 'wb').write(bytes(reversed(data)))\n"
                          "os.utime('/etc/hostname', ns=(st.st_atime_ns, st.st_mtime_ns))"])
            assert r.ok, r.stderr
            assert box.changes().modified == ["/etc/hostname"]  # the ctime cannot be put back
        box.exec(["sh", "-c", "mkdir /tmp/many && cd /tmp/many && seq 1 20001 | xargs touch"],
                 wall_time="60s")
        ch = box.changes()
        assert ch.truncated and ch.deleted == []  # what was not listed is not called deleted


@pytest.mark.skipif(ROOT_MODE, reason="root mode: the lower's files are host root's, unmapped in the "
                    "box, so the box cannot replace its link (see docs/grading.md, As root)")
def test_changes_never_follows_a_link_in_the_host_lower(box_tmp, no_leftovers):
    """An overlay's lower is a host directory: a symlink there must not make changes() look up
    host paths (it would tell the box which exist on the host)."""
    from sandbox import MountSpec

    (box_tmp / "lnk").symlink_to("/")
    with Box(SandboxConfig(mounts=[MountSpec("overlay", "/data", str(box_tmp))])) as box:
        r = box.exec(["sh", "-c", "rm /data/lnk && mkdir -p /data/lnk/etc /data/lnk/no-such-dir"])
        assert r.ok, r.stderr
        created = box.changes().created
        assert "/data/lnk/etc" in created and "/data/lnk/no-such-dir" in created, created


@pytest.mark.skipif(ROOT_MODE, reason="root mode: the lower's files belong to host root, which is "
                    "unmapped in the box, and overlayfs refuses to remove them (EOVERFLOW)")
def test_changes_sees_a_lower_directory_removed_and_made_again(box_tmp, no_leftovers):
    """`rm -rf d; mkdir d` over a lower leaves one opaque directory in the upper and no
    whiteout per file: the lower's files under it are gone all the same."""
    from sandbox import MountSpec

    (box_tmp / "d" / "sub").mkdir(parents=True)
    (box_tmp / "d" / "a").write_text("a")
    (box_tmp / "d" / "sub" / "b").write_text("b")
    with Box(SandboxConfig(mounts=[MountSpec("overlay", "/data", str(box_tmp))])) as box:
        r = box.exec(["sh", "-c", "rm -rf /data/d && mkdir /data/d && echo n > /data/d/new"])
        assert r.ok, r.stderr
        ch = box.changes()
    assert {"/data/d/a", "/data/d/sub", "/data/d/sub/b"} <= set(ch.deleted), ch
    assert "/data/d/new" in ch.created and "/data/d" not in ch.deleted, ch


@pytest.mark.skipif(not ROOT_MODE, reason="root mode: the host reads as root, the box as its user")
def test_get_reads_only_what_the_box_user_may(box_tmp, no_leftovers):
    from sandbox import MountSpec

    secret = box_tmp / "secret"
    secret.write_bytes(b"host root secret\n")
    secret.chmod(0o600)
    with Box(SandboxConfig(mounts=[MountSpec("ro-bind", "/data", str(box_tmp))])) as box:
        assert box.exec(["cat", "/data/secret"]).status is Status.RE
        with pytest.raises(PermissionError):
            box.get("/data/secret")


def test_trio_cancels_an_exec_and_never_blocks_on_a_full_stdin(no_leftovers):
    async def main() -> tuple[float, float, sandbox.Result]:
        async with sandbox.Supervisor() as sup:
            async with sup.box(SandboxConfig()) as box:
                t = trio.current_time()
                with trio.move_on_after(0.5):
                    await box.exec(["sleep", "30"])
                cancelled_after = trio.current_time() - t
                proc = await box.start(["sleep", "30"])  # never reads its stdin
                t = trio.current_time()
                with trio.move_on_after(0.5):
                    await proc.write(b"x" * (1 << 20))
                blocked_for = trio.current_time() - t
                await proc.kill()
                await proc.wait()
                return cancelled_after, blocked_for, await box.exec(["echo", "usable"])

    cancelled_after, blocked_for, r = trio.run(main)
    assert cancelled_after < 3 and blocked_for < 3, (cancelled_after, blocked_for)
    assert r.stdout == b"usable\n"


def test_a_workspace_is_shared_by_fresh_boxes_and_never_follows_their_links(no_leftovers):
    """Files in, several fresh boxes over them, results out; a box's planted link is refused."""
    with sandbox.Workspace("16M") as ws:
        ws.put("src/in.txt", b"3 4\n")
        cfg = SandboxConfig(mounts=[ws.mount("/work")], cwd="/work")
        assert sandbox.run_sync(["sh", "-c", "tr ' ' + < src/in.txt > sum.txt"], cfg).ok
        r = sandbox.run_sync(["sh", "-c", "cat sum.txt; ln -s /etc/passwd link; "
                                          "head -c 20000000 /dev/zero > big"], cfg)
        assert r.stdout == b"3+4\n" and r.status is Status.RE, r  # 16M: ENOSPC, not host disk
        assert ws.read("sum.txt") == b"3+4\n"
        with pytest.raises(UnsafePath):
            ws.read("link")
        with pytest.raises(UnsafePath):
            ws.put("link", b"x")
    with pytest.raises(ValueError, match="closed"):
        ws.read("sum.txt")


def test_the_cpu_budget_holds_while_the_host_only_moves_files(no_leftovers):
    """Each spinner dies at its own RLIMIT_CPU, the loop starts the next: only the box-wide
    budget stops it, and the host may be doing nothing but put/get meanwhile."""
    import time

    with Box(SandboxConfig(limits=Limits.parse(cpu_time="1s", wall_time="60s"))) as box:
        box.start(["sh", "-c", "while :; do sh -c 'while :; do :; done'; done"])
        t = time.monotonic()
        with pytest.raises(BoxError, match="closed"):
            while time.monotonic() - t < 30:
                box.put("/tmp/x", b"x")
                time.sleep(0.05)
    assert box.usage is not None and box.usage.cpu_exceeded, box.usage
    assert 1.0 <= box.usage.cpu_time < 6, box.usage
