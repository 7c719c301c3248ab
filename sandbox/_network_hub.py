"""The network hub: one fresh process per ``sandbox.Network`` that owns the network and clones
its boxes (``python -m sandbox._network_hub FD PPID``; the host half is ``sandbox._network``).

Why boxes on a network are cloned here and not by their caller: moving a veth end into a box's
network namespace needs ``CAP_NET_ADMIN`` over that namespace *and* over the bridge's, and a
rootless caller has it over neither. The hub starts by unsharing a user and a network namespace
of its own (an identity id map: our uid stays our uid, so the boxes' own maps are written as
for any box; root unshares only the network), which gives it every capability there; in it
lives the bridge ``sbx0``. For each
box it then:

1. makes the box's network namespace (``unshare(CLONE_NEWNET)`` in the hub itself, an fd kept,
   back to the bridge's with ``setns``), brings up ``lo`` there as every box's init does;
2. adds a veth pair with pyroute2: one end on the bridge, the peer created directly in the
   box's namespace as ``eth0``, which gets the box's address;
3. clones the box's init *from inside that namespace* (``_spawn.spawn_box`` while the hub sits
   in it): init shares it instead of unsharing its own, so the namespace is owned by the hub's
   user namespace, in which nothing of the box has a capability: the box cannot change its
   address, add routes, open raw or packet sockets, or sniff the bridge.

There is no route out of the bridge's namespace: no uplink, no NAT, nothing of the host's
interfaces or loopback. Boxes reach each other by name (each box's /etc/hosts lists itself and
the boxes made before it) and the trusted side reaches a box with ``connect``: a TCP socket
made here, in the bridge's namespace, handed over unconnected (a socket keeps the namespace it
was made in), which the caller connects itself.

When the caller goes (EOF on its socket, or PDEATHSIG) every box is killed and reaped, and the
namespaces, veths and bridge go with the last fd of them: nothing is left to clean up.
"""

from __future__ import annotations

import ipaddress
import json
import os
import selectors
import signal
import socket
import sys

from sandbox import _box_init, _egress, _fdpass, _net, _spawn, _userns  # noqa: F401 - _box_init: loaded before the clone (a box has no checkout)
from sandbox import _syscalls as sc
from sandbox._config import DEFAULT_HOSTNAME, SandboxConfig
from sandbox._egress_gate import Gate
from sandbox._plan import prepare
from sandbox._record import replace

BRIDGE = "sbx0"
SUBNET = ipaddress.ip_network("10.89.0.0/24")  # every network is its own namespace: one subnet
HUB_ADDRESS = SUBNET.network_address + 1


def enter_own_namespaces() -> None:
    """A network namespace, owned by a user namespace that maps our ids onto themselves. Root
    needs no user namespace of its own (it has the capabilities already) and keeps every id,
    so its boxes still get their 65536-id blocks (root could not write such a map for itself:
    a process in a new user namespace has no capability in the parent that map is checked in)."""
    uid, gid = os.geteuid(), os.getegid()
    if uid == 0:
        sc.unshare(sc.CLONE_NEWNET)
        return
    sc.unshare(sc.CLONE_NEWUSER | sc.CLONE_NEWNET)
    _userns.write_single_maps(uid, uid, gid, gid)


class Hub:
    def __init__(self, sock: socket.socket, shaping: dict[str, float], allow: list[str],
                 forwarder: socket.socket) -> None:
        from pyroute2 import IPRoute

        self.sock, self.shaping, self.allow = sock, shaping, allow
        self.ipr = IPRoute()  # bound to the bridge's namespace, where it was made
        self.ipr.link("add", ifname=BRIDGE, kind="bridge")
        self.bridge = self.ipr.link_lookup(ifname=BRIDGE)[0]
        self.ipr.addr("add", index=self.bridge, address=str(HUB_ADDRESS), prefixlen=SUBNET.prefixlen)
        self.ipr.link("set", index=self.bridge, state="up")
        self.home = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        if shaping:  # before any box: a kernel without netem fails the network, not a box later
            self.shape(self.bridge)
            self.ipr.tc("del", index=self.bridge, handle="1:0")
        self.free = [str(a) for a in SUBNET.hosts()][1:]  # .1 is the hub's
        self.names: dict[str, str] = {}  # box name → address, in creation order
        self.boxes: dict[int, tuple[int, socket.socket, str, str]] = {}  # pid → (pidfd, exit socket, name, address)
        self.serial = 0
        self.spare: tuple[int, str] | None = None  # a box's namespace made ahead (idle work)
        self.gate = Gate(self.ipr, self.bridge, SUBNET, str(HUB_ADDRESS), forwarder, self.take_top)

    def take_top(self) -> str:
        """An address for an allowed name: from the top of the subnet (boxes take the bottom)."""
        if not self.free:
            raise ValueError(f"this network is full ({SUBNET} has no free address)")
        return self.free.pop()

    def spawn(self, req: dict, fds: list[int]) -> None:
        """fds: stdin, stdout, stderr, status, exit socket, then the box's pass_fds, then
        (``cgroup``) the leaf's directory."""
        cgroup_fd = fds.pop() if req.get("cgroup") else None
        exit_sock = socket.socket(fileno=fds[4])
        netns = -1
        try:
            name = str(req["name"])
            if name in self.names:
                raise ValueError(f"a box named {name!r} is already on this network")
            if not self.free:
                raise ValueError(f"this network is full ({SUBNET} has no free address)")
            netns, addr = self.spare if self.spare else (-1, self.free.pop(0))
            self.spare = None
            try:
                cfg = SandboxConfig.from_dict(req["config"])
                allowed = self.gate.admit(addr, [*self.allow, *cfg.allow_hosts])
                hosts = {**self.names, name: addr, **allowed, **cfg.hosts}
                hostname = name if cfg.hostname == DEFAULT_HOSTNAME else cfg.hostname
                cfg = replace(cfg, network="host", hosts=hosts, hostname=hostname,
                              allow_hosts=()).validate()
                prep = prepare(cfg, req["argv"] if req.get("argv") is not None else (),
                               cgroup_enforced=frozenset(req.get("cgroup_enforced", ())),
                               serve=bool(req.get("serve")))
                if netns < 0:
                    netns = self.box_namespace(addr)
                sc.setns(netns, sc.CLONE_NEWNET)
                try:  # the clone shares the namespace the hub is in now
                    box = _spawn.spawn_box(prep, stdin=fds[0], stdout=fds[1], stderr=fds[2],
                                           status_w=fds[3], pass_fds=fds[5:], cgroup_fd=cgroup_fd)
                finally:
                    sc.setns(self.home, sc.CLONE_NEWNET)
            except BaseException:
                self.gate.forget(addr)
                self.free.insert(0, addr)
                raise
        except Exception as e:  # noqa: BLE001 - the caller turns it into the box's XX verdict
            exit_sock.close()
            err = e.errno if isinstance(e, OSError) else None
            msg = (e.strerror or str(e)) if isinstance(e, OSError) else str(e)
            _fdpass.send(self.sock, {"op": "error", "error": msg, "errno": err})
            return
        finally:
            if netns >= 0:
                os.close(netns)
            for fd in [*fds[:4], *fds[5:]] + ([cgroup_fd] if cgroup_fd is not None else []):
                os.close(fd)
        self.names[name] = addr
        self.boxes[box.pid] = (box.pidfd, exit_sock, name, addr)
        _fdpass.send(self.sock, {"op": "spawned", "pid": box.pid, "address": addr}, [box.pidfd])

    def box_namespace(self, addr: str) -> int:
        """Steps 1–2 of the module docstring: the fd of a fresh namespace with lo and eth0 up."""
        sc.unshare(sc.CLONE_NEWNET)
        try:
            netns = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            _net.loopback_up()
        finally:
            sc.setns(self.home, sc.CLONE_NEWNET)
        try:
            self.serial += 1
            veth = f"vb{self.serial}"
            self.ipr.link("add", ifname=veth, kind="veth", peer={"ifname": "eth0", "net_ns_fd": netns})
            index = self.ipr.link("get", ifname=veth)[0]["index"]
            self.ipr.link("set", index=index, master=self.bridge, state="up")
            if self.shaping:  # on the bridge's end: what the box sends and receives both pass it
                self.shape(index)
            from pyroute2 import IPRoute

            sc.setns(netns, sc.CLONE_NEWNET)
            try:
                with IPRoute() as inside:  # a netlink socket talks to the namespace it was made in
                    eth0 = inside.link("get", ifname="eth0")[0]["index"]
                    inside.addr("add", index=eth0, address=addr, prefixlen=SUBNET.prefixlen)
                    inside.link("set", index=eth0, state="up")
                    # everything out goes to the hub, which refuses it (sandbox._egress_gate)
                    inside.route("add", dst="0.0.0.0/0", gateway=str(HUB_ADDRESS))
            finally:
                sc.setns(self.home, sc.CLONE_NEWNET)
        except BaseException:
            os.close(netns)
            raise
        return netns

    def shape(self, index: int) -> None:
        from pyroute2.netlink.exceptions import NetlinkError

        try:
            self.ipr.tc("add", "netem", index=index, handle="1:0", **self.shaping)
        except NetlinkError as e:
            raise OSError(e.code, "link shaping (latency/loss) needs the kernel's netem qdisc, "
                          f"which this kernel does not have (CONFIG_NET_SCH_NETEM): {e}") from None

    def connect_sockets(self, req: dict) -> None:
        """Unconnected TCP sockets of the bridge's namespace, for the caller to connect."""
        socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                 for _ in range(max(1, min(int(req.get("count", 1)), 16)))]
        try:
            _fdpass.send(self.sock, {"op": "sockets"}, [s.fileno() for s in socks])
        finally:
            for s in socks:
                s.close()

    def reap(self) -> None:
        for pid, status, cpu, rss in sc.reap_ended():
            entry = self.boxes.pop(pid, None)
            if entry is None:
                continue
            pidfd, exit_sock, name, addr = entry
            os.close(pidfd)
            egress = self.gate.forget(addr)
            try:
                _fdpass.send(exit_sock, {"wait_status": status, "cpu_time": cpu, "max_rss": rss,
                                         "egress": egress})
            except OSError:
                pass
            exit_sock.close()
            self.names.pop(name, None)
            self.free.append(addr)

    def kill_all(self) -> None:
        if self.spare:
            os.close(self.spare[0])
            self.spare = None
        for pidfd, *_ in self.boxes.values():
            try:
                sc.pidfd_send_signal(pidfd, signal.SIGKILL)
            except OSError:
                pass
        while self.boxes:
            try:  # wait without reaping: reap() takes each one with its rusage
                os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOWAIT)
            except ChildProcessError:
                break
            self.reap()

    def serve(self) -> None:
        wake_r, wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        sel = selectors.DefaultSelector()
        sel.register(self.sock, selectors.EVENT_READ, "sock")
        sel.register(wake_r, selectors.EVENT_READ, "wake")
        for raw in self.gate.raw:
            sel.register(raw, selectors.EVENT_READ, "count")
        spare_failed = False
        try:
            while True:
                want_spare = self.spare is None and bool(self.free) and not spare_failed
                events = sel.select(0 if want_spare else None)
                if not events:  # idle: the next box's namespace, off its start's latency
                    addr = self.free.pop(0)
                    try:
                        self.spare = (self.box_namespace(addr), addr)
                    except OSError:  # (the box that asks makes its own, and says why)
                        self.free.insert(0, addr)
                        spare_failed = True
                    continue
                for key, _ in events:
                    if key.data == "count":
                        self.gate.count()
                        continue
                    if key.data == "wake":
                        try:
                            os.read(wake_r, 4096)
                        except BlockingIOError:
                            pass
                        continue
                    msg, fds = _fdpass.recv(self.sock)
                    if not msg:
                        return
                    req = json.loads(msg)
                    if req.get("op") == "spawn":
                        self.spawn(req, fds)
                        spare_failed = False
                    elif req.get("op") == "sockets":
                        self.connect_sockets(req)
                self.reap()
        finally:
            self.kill_all()


def start_forwarder(sock: socket.socket) -> socket.socket:
    """Fork the egress forwarder (``sandbox._egress``) while we are still in the host's network
    namespace: its outgoing connections are made there. It dies with us."""
    import prctl

    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    hub = os.getpid()
    if os.fork() == 0:
        try:
            sock.close()
            ours.close()
            prctl.set_pdeathsig(signal.SIGKILL)
            if os.getppid() == hub:
                _egress.serve(theirs)
        finally:
            os._exit(0)
    theirs.close()
    return ours


def main() -> None:
    fd, parent, shaping, allow = (int(sys.argv[1]), int(sys.argv[2]), json.loads(sys.argv[3]),
                                  json.loads(sys.argv[4]))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the caller's to handle
    import prctl

    prctl.set_pdeathsig(signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(1)
    sock = socket.socket(fileno=fd)
    forwarder = start_forwarder(sock)
    try:
        enter_own_namespaces()
        hub = Hub(sock, shaping, allow, forwarder)
    except Exception as e:  # noqa: BLE001 - the caller raises it as the network's error
        msg = e.strerror if isinstance(e, OSError) and e.strerror else f"{type(e).__name__}: {e}"
        _fdpass.send(sock, {"op": "error", "error": msg})
        return
    _fdpass.send(sock, {"op": "ready", "subnet": str(SUBNET), "address": str(HUB_ADDRESS)})
    try:
        hub.serve()
    except (BrokenPipeError, ConnectionResetError):
        pass


if __name__ == "__main__":
    main()
