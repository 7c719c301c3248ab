"""Networks: boxes on a bridge of their own (``sandbox.Network``), reached by name from each
other and from the trusted side through ``connect``, and by nothing else.

All traffic stays inside the network namespaces these tests make (the hub's bridge and the
boxes' own); the host listeners below exist only to prove a box cannot reach them.
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
import subprocess
import sys
import threading
import time

import pytest
import trio

import sandbox

CFG = sandbox.SandboxConfig(limits=sandbox.Limits(wall_time=20))
WAIT_FOR_SERVER = (
    "import sys, time, urllib.request as u\n"
    "for _ in range(100):\n"
    "    try:\n"
    "        print(u.urlopen(sys.argv[1], timeout=2).status); break\n"
    "    except OSError:\n"
    "        time.sleep(0.05)\n")
CONNECT = ("import socket, sys\n"
           "s = socket.socket()\n"
           "s.settimeout(2)\n"
           "print(s.connect_ex((sys.argv[1], int(sys.argv[2]))))\n")


def _serve(box: sandbox.Box, port: int = 8000) -> sandbox.Process:
    return box.start(["python3", "-m", "http.server", str(port), "--bind", "0.0.0.0"])


def test_two_boxes_talk_over_http_by_name() -> None:
    with sandbox.Network() as net, sandbox.Box(CFG, network=net, name="server") as srv, \
            sandbox.Box(CFG, network=net, name="client") as cli:
        server = _serve(srv)
        r = cli.exec(["python3", "-c", WAIT_FOR_SERVER, "http://server:8000/"])
        assert r.stdout == b"200\n", r
        hosts = cli.get("/etc/hosts").decode()
        assert f"{srv.address} server" in hosts and f"{cli.address} client" in hosts
        assert srv.address != cli.address and srv.address.startswith("10.89.0.")
        assert cli.exec(["hostname"]).stdout == b"client\n"
        server.kill()


def test_the_trusted_side_connects_to_a_box_port() -> None:
    with sandbox.Network() as net, sandbox.Box(CFG, network=net, name="web") as web:
        _serve(web, 8080)
        deadline = time.monotonic() + 10
        while True:
            try:
                s = web.connect(8080, timeout=2)
                break
            except ConnectionRefusedError:
                assert time.monotonic() < deadline, "the box's server never listened"
                time.sleep(0.05)
        with s:
            s.sendall(b"GET / HTTP/1.0\r\n\r\n")
            assert s.recv(64).startswith(b"HTTP/1.0 200")
        with pytest.raises(ConnectionRefusedError):
            web.connect(8081).close()
        with pytest.raises(ValueError, match="port 0 is not valid"):
            web.connect(0)


def _host_addresses() -> list[str]:
    ip = shutil.which("ip") or "/usr/sbin/ip"
    if not os.path.exists(ip):
        return []
    out = subprocess.run([ip, "-4", "-o", "addr", "show"], capture_output=True, text=True).stdout
    return [line.split()[3].split("/")[0] for line in out.splitlines()
            if len(line.split()) > 3 and not line.split()[3].startswith("127.")]


def test_a_box_on_a_network_reaches_nothing_of_the_host() -> None:
    """A listener on every host address: the box's 127.0.0.1 is its own, and everything else
    it tries ends at the hub, which refuses it (sandbox._egress_gate) and counts it; the
    listener never sees a connection."""
    listener = socket.socket()
    listener.bind(("0.0.0.0", 0))
    listener.listen()
    listener.setblocking(False)
    port = listener.getsockname()[1]
    try:
        with sandbox.Network() as net:
            box = sandbox.Box(CFG, network=net, name="b").open()
            r = box.exec(["python3", "-c", CONNECT, "127.0.0.1", str(port)])
            assert r.stdout == f"{errno.ECONNREFUSED}\n".encode(), r
            addresses = [net.address, *_host_addresses()]
            assert len(addresses) > 1 or os.environ.get("CI") is None, "no host address to try (ip missing?)"
            for addr in addresses:
                r = box.exec(["python3", "-c", CONNECT, addr, str(port)])
                assert r.stdout == f"{errno.ECONNREFUSED}\n".encode(), (addr, r)
            usage = box.close()
        with pytest.raises(BlockingIOError):
            listener.accept()
        assert usage.egress is not None and usage.egress["refused"] == len(addresses)
        assert usage.egress["refused_to"] == [f"{a}:{port}" for a in addresses]
    finally:
        listener.close()


NETWORK_ADMIN = """
import fcntl, socket, struct
for name, make in [("raw", lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)),
                   ("packet", lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0))]:
    try:
        make(); print(name, "opened")
    except OSError as e:
        print(name, e.errno)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
try:  # eth0 down (SIOCSIFFLAGS): needs CAP_NET_ADMIN over the box's network namespace
    fcntl.ioctl(s, 0x8914, struct.pack("16sh14x", b"eth0", 0)); print("down", "done")
except OSError as e:
    print("down", e.errno)
"""


def test_a_box_cannot_sniff_spoof_or_reconfigure_its_link() -> None:
    """Raw and packet sockets and interface changes: EPERM. Twice held: the box's network
    namespace belongs to the hub's user namespace (not even the box's init has a capability
    over it), and the payload holds no capability in any namespace."""
    with sandbox.Network() as net, sandbox.Box(CFG, network=net, name="b") as box:
        r = box.exec(["python3", "-c", NETWORK_ADMIN])
        assert r.stdout.decode().split("\n")[:3] == [f"raw {errno.EPERM}", f"packet {errno.EPERM}",
                                                     f"down {errno.EPERM}"], r


def test_udp_between_boxes() -> None:
    recv = ("import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
            "s.bind(('0.0.0.0', 9999)); print(s.recv(100).decode())")
    send = ("import socket, time\nfor _ in range(40):\n"
            "    socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'ping', ('a', 9999)); time.sleep(0.05)\n")
    with sandbox.Network() as net, sandbox.Box(CFG, network=net, name="a") as a, \
            sandbox.Box(CFG, network=net, name="b") as b:
        p = a.start(["python3", "-c", recv])
        assert b.exec(["python3", "-c", send]).status == sandbox.Status.OK
        assert p.wait().stdout == b"ping\n"


def test_a_name_is_one_box_and_names_need_a_network() -> None:
    with sandbox.Network() as net, sandbox.Box(CFG, network=net, name="x"):
        with pytest.raises(sandbox.BoxError, match="named 'x' is already on this network"):
            sandbox.Box(CFG, network=net, name="x").open()
    with pytest.raises(sandbox.ConfigError, match="only on a network"):
        sandbox.Box(CFG, name="x")


def test_closing_the_network_ends_its_boxes_and_leaves_nothing() -> None:
    from tests.conftest import descendants

    fds = set(os.listdir("/proc/self/fd"))
    net = sandbox.Network().open()
    hub = net._proc.pid  # type: ignore[union-attr]
    box = sandbox.Box(CFG, network=net, name="b").open()
    proc = box.start(["sleep", "60"])
    assert descendants(hub), "the hub clones the box's init"
    net.close()
    assert not os.path.exists(f"/proc/{hub}") or open(f"/proc/{hub}/stat").read().split()[2] == "Z"
    assert proc.wait().status != sandbox.Status.OK
    box.close()
    assert not descendants(os.getpid())
    assert set(os.listdir("/proc/self/fd")) == fds
    with pytest.raises(sandbox.NetworkError, match="closed"):
        sandbox.Box(CFG, network=net, name="c").open()


def test_link_shaping_is_real_or_refused_naming_netem() -> None:
    """Where the kernel has netem the latency is measured; where it has not (this project's CI
    kernels: CONFIG_NET_SCH_NETEM unset) the network refuses to start, naming netem, rather
    than run unshaped. Run on a kernel with sch_netem to test the shaping itself."""
    try:
        net = sandbox.Network(latency="100ms").open()
    except sandbox.NetworkError as e:
        assert "netem" in str(e) and "CONFIG_NET_SCH_NETEM" in str(e)
        return
    with net, sandbox.Box(CFG, network=net, name="s") as box:
        box.start(["python3", "-c", "import socket; s = socket.socket(); s.bind(('0.0.0.0', 7)); "
                   "s.listen(); s.accept()[0].recv(1)"])
        time.sleep(1)
        t0 = time.monotonic()
        box.connect(7).close()
        assert time.monotonic() - t0 >= 0.09


def test_shaping_values_are_checked() -> None:
    with pytest.raises(sandbox.ConfigError, match="loss '200%' is not valid"):
        sandbox.Network(loss="200%")
    with pytest.raises(sandbox.ConfigError, match="latency: 'soon' is not a duration"):
        sandbox.Network(latency="soon")


def test_the_supervisor_networks_boxes_in_trio() -> None:
    async def main() -> bytes:
        async with sandbox.Supervisor() as sup, sup.network() as net:
            async with sup.box(CFG, network=net, name="server") as srv, \
                    sup.box(CFG, network=net, name="client") as cli:
                await srv.start(["python3", "-m", "http.server", "8000"])
                r = await cli.exec(["python3", "-c", WAIT_FOR_SERVER, "http://server:8000"])
                return r.stdout

    assert trio.run(main) == b"200\n"


def test_add_host_lines_and_their_errors() -> None:
    cfg = sandbox.SandboxConfig(hosts={"db": "10.1.2.3", "v6": "fd00::1"})
    with sandbox.Box(cfg) as box:
        hosts = box.get("/etc/hosts").decode()
    assert "10.1.2.3 db\n" in hosts and "fd00::1 v6\n" in hosts
    with pytest.raises(sandbox.ConfigError, match="'10.1.2' is not an IP address"):
        sandbox.SandboxConfig(hosts={"db": "10.1.2"}).validate()
    with pytest.raises(sandbox.ConfigError, match="'a b' is not a valid name"):
        sandbox.SandboxConfig(hosts={"a b": "10.1.2.3"}).validate()


# ---------------------------------------------------------------- egress by allow-list --
PROBE = """
import socket, sys
def tcp(host, port):
    try:
        c = socket.create_connection((host, int(port)), timeout=5)
        return c.recv(100).decode() or "closed"
    except OSError as e:
        return type(e).__name__
print(tcp(sys.argv[1], sys.argv[2]))
print(tcp(sys.argv[1], sys.argv[3]))
print(tcp("192.0.2.1", 80))
socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"x", ("192.0.2.1", 53))
try:
    socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP); print("raw opened")
except OSError as e:
    print("raw", e.errno)
"""


@pytest.fixture
def remote():
    """The "remote": a host listener that greets, reached by the host's own name (resolved by
    the forwarder on the host side), and a second one that must never be reached."""
    name = socket.gethostname()
    good, bad = socket.create_server(("0.0.0.0", 0)), socket.create_server(("0.0.0.0", 0))
    try:
        socket.create_connection((name, good.getsockname()[1]), timeout=2).close()
        good.accept()[0].close()
    except OSError as e:
        pytest.skip(f"this host's name {name!r} does not reach a local listener ({e}): no remote to allow")
    stop = threading.Event()

    def greet() -> None:
        good.settimeout(0.2)
        while not stop.is_set():
            try:
                c = good.accept()[0]
            except OSError:
                continue
            c.sendall(b"hello from outside")
            c.close()
    t = threading.Thread(target=greet, daemon=True)
    t.start()
    bad.setblocking(False)
    yield name, good.getsockname()[1], bad.getsockname()[1], bad
    stop.set()
    t.join()
    good.close()
    bad.close()


def test_egress_reaches_the_allowed_pair_and_nothing_else(remote) -> None:
    name, port, other, bad = remote
    cfg = sandbox.SandboxConfig(allow_hosts=(f"{name}:{port}",))
    r = sandbox.run_sync(["python3", "-c", PROBE, name, str(port), str(other)], cfg)
    assert r.stdout.decode().split("\n")[:4] == ["hello from outside", "ConnectionRefusedError",
                                                 "ConnectionRefusedError", f"raw {errno.EPERM}"], r
    with pytest.raises(BlockingIOError):
        bad.accept()
    assert r.egress == {"allowed": 1, "refused": 3,
                        "refused_to": [f"{name}:{other}", "192.0.2.1:80", "udp 192.0.2.1:53"]}


def test_an_allowed_pair_is_one_box_s_not_its_neighbours(remote) -> None:
    """Box b is not allowed what box a is; b knows a's forwarder address (from a's /etc/hosts):
    the forwarder turns it away and the hub counts it against b."""
    name, port, _other, _bad = remote
    with sandbox.Network() as net:
        a = sandbox.Box(sandbox.SandboxConfig(allow_hosts=(f"{name}:{port}",)), network=net, name="a").open()
        b = sandbox.Box(CFG, network=net, name="b").open()
        fwd = next(line.split()[0] for line in a.get("/etc/hosts").decode().splitlines()
                   if line.endswith(f" {name}"))
        assert a.exec(["python3", "-c", PROBE, name, str(port), "1"]).stdout.startswith(b"hello from outside")
        assert b.exec(["python3", "-c", PROBE, fwd, str(port), "1"]).stdout.split(b"\n")[0] in (
            b"closed", b"ConnectionResetError")
        assert name not in b.get("/etc/hosts").decode()
        ua, ub = a.close(), b.close()
    assert ua.egress is not None and ua.egress["allowed"] == 1
    assert ub.egress is not None and ub.egress["allowed"] == 0 and f"{name}:{port}" in ub.egress["refused_to"]


def test_a_network_wide_allow_list_and_the_supervisor(remote) -> None:
    name, port, _other, _bad = remote
    with sandbox.Network(allow_hosts=[f"{name}:{port}"]) as net, \
            sandbox.Box(CFG, network=net, name="x") as box:
        assert box.exec(["python3", "-c", PROBE, name, str(port), "1"]).stdout.startswith(b"hello")

    async def main() -> sandbox.Result:
        async with sandbox.Supervisor() as sup:
            return await sup.run(["python3", "-c", PROBE, name, str(port), "1"],
                                 sandbox.SandboxConfig(allow_hosts=(f"{name}:{port}",)))
    r = trio.run(main)
    assert r.stdout.startswith(b"hello from outside") and r.egress is not None
    assert r.egress["allowed"] == 1


def test_the_cli_reports_refused_attempts_and_checks_allow_host(remote) -> None:
    name, port, other, _bad = remote
    exe = [os.path.join(os.path.dirname(sys.executable), "sandbox")]
    out = subprocess.run([*exe, "run", "--allow-host", f"{name}:{port}", "--", "python3", "-c", PROBE,
                          name, str(port), str(other)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("hello from outside\n")
    assert f"sandbox: 3 connection attempt(s) refused by --allow-host: {name}:{other}, 192.0.2.1:80, udp 192.0.2.1:53" in out.stderr
    for bad, why in (("nope", "is not valid"), ("127.0.0.1:80", "the box's own loopback")):
        out = subprocess.run([*exe, "run", "--allow-host", bad, "--", "true"], capture_output=True, text=True)
        assert out.returncode == 2 and why in out.stderr and "Traceback" not in out.stderr


def test_a_box_the_hub_cannot_start_is_an_xx_verdict_not_an_assertion() -> None:
    """A refusal by the hub with no errno (here: more allowed names than the subnet has
    addresses) is the box's XX verdict naming it, for run_sync as for the CLI."""
    many = tuple(f"h{i}.invalid:80" for i in range(260))
    r = sandbox.run_sync(["true"], sandbox.SandboxConfig(allow_hosts=many))
    assert r.status == "XX" and "network is full" in (r.error or ""), (r.status, r.error)
    cli = [sys.executable, "-m", "sandbox._cli", "run", *(a for h in many for a in ("--allow-host", h)), "--", "true"]
    p = subprocess.run(cli, capture_output=True, text=True, timeout=60)
    assert "Traceback" not in p.stderr and "network is full" in p.stderr, p.stderr
