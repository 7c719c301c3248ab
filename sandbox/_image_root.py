"""A box whose root is an image (``SandboxConfig(image="NAME[:TAG]")``): the image's layers as
the lower stack of one overlay on the box's ``/``, its upper and work directory on the box's
capped tmpfs (writes land there and vanish with the box), instead of overlays of the host's
/usr. /proc, /dev, /tmp and the synthesized /etc files (passwd, group, hosts …) are as in every
box; no host /etc file is copied in (the image brings its own).

The parent plans each layer as (path, device, inode); init opens it (no symlink followed),
checks it is that directory, and gives it to the overlay as ``/oldroot/proc/self/fd/N``: the
store's host path is in no mount table of the box (mountinfo shows
``lowerdir=/oldroot/proc/self/fd/N:...``). As root, init is an unprivileged high uid that must
be able to walk to the store (as for bind sources): a store under a private /root is refused. overlayfs reads the store's ``user.overlay.*`` whiteout and opaque xattrs
(``_layers``) with ``userxattr``, the option a user namespace mounts it with.

The image's tree is someone else's: init never follows a name of it. The directories init
writes in or mounts on (/etc, /tmp, /dev, /proc) are made in the upper before the mount, so
they are directories whatever the image has there (a symlink ``etc -> ../../oldroot/home``
would otherwise have had init write the box's /etc files into the host); /dev is a fresh
directory of the box's tmpfs bound over the image's; /etc files the image has where the box
writes its own are unlinked first (never opened).
"""

from __future__ import annotations

import os
import stat

from sandbox import _syscalls as sc

TYPE_CHECKING = False
if TYPE_CHECKING:
    from sandbox._config import SandboxConfig

SYNTHESIZED_ETC = ("passwd", "group", "hostname", "hosts", "nsswitch.conf", "resolv.conf")


def _record(cfg: SandboxConfig) -> dict:
    from sandbox._config import ConfigError
    from sandbox._images import ImageError, ImageStore

    try:
        return ImageStore().get(cfg.image or "")
    except ImageError as e:
        raise ConfigError(f"image: {e}") from None


def apply_config(cfg: SandboxConfig) -> None:
    """The image config's Env (below the config's own ``env``), WorkingDir (when ``cwd`` is
    the default /tmp) and User (when uid/gid are the defaults: ``_image_user``), into ``cfg``
    (``SandboxConfig.validate``)."""
    from sandbox._config import ConfigError
    from sandbox._image_user import apply_user
    from sandbox._images import ImageStore

    rec = _record(cfg)
    image_cfg = rec["config"].get("config") or {}
    apply_user(cfg, image_cfg, [ImageStore().layer_dir(d) for d in reversed(rec["layers"])])
    for item in image_cfg.get("Env") or []:
        name, sep, value = str(item).partition("=")
        if sep and name and "\0" not in item:
            cfg.env.setdefault(name, value)
    workdir = image_cfg.get("WorkingDir") or ""
    if workdir and cfg.cwd == "/tmp":
        if not workdir.startswith("/"):
            raise ConfigError(f"image {cfg.image!r}: WorkingDir {workdir!r} is not absolute")
        cfg.cwd = workdir


def plan_layers(cfg: SandboxConfig) -> tuple:
    """``((uid, gid) of the box user, ((path, st_dev, st_ino), ...) of the layers, top first)``,
    or () for no image (``_rootfs.plan_rootfs``): init opens each path itself and checks it is
    that directory."""
    if not cfg.image:
        return ()
    from sandbox._config import ConfigError
    from sandbox._image_flatten import lowers
    from sandbox._images import ImageStore

    store, layers, chain = ImageStore(), [], list(reversed(_record(cfg)["layers"]))
    try:
        layer_dirs = lowers(store, chain)
    except OSError as e:
        raise ConfigError(f"image {cfg.image!r}: merging the bottom of its {len(chain)} layers "
                          f"(this kernel's overlayfs has no lowerdir+): {e}") from None
    for layer_dir in layer_dirs:
        path = os.path.realpath(layer_dir)
        try:
            st = os.stat(path, follow_symlinks=False)
        except OSError as e:
            raise ConfigError(f"image layer {path}: {e.strerror} (import the image again)") from None
        layers.append((path, st.st_dev, st.st_ino))
    return ((cfg.uid, cfg.gid), tuple(layers))


def etc_files(cfg: SandboxConfig, files: dict) -> dict:
    """The box's /etc files: for an image only those we synthesize (no host file is copied)."""
    return {k: v for k, v in files.items() if k in SYNTHESIZED_ETC} if cfg.image else files


# ------------------------------------------------------------------ child side (no imports) --

def ensure_dir(path: str) -> str:
    """``path`` as a directory: made, or the image's own if it is a real directory (not a
    symlink, which init would otherwise follow)."""
    try:
        os.mkdir(path, 0o755)
    except FileExistsError:
        if not stat.S_ISDIR(os.lstat(path).st_mode):
            raise OSError(20, f"the image's {path[8:] or '/'} is not a directory") from None
    return path


def dev_source(image: bool) -> str:
    """What /dev is bound from: its own directory, made; in an image box an empty one of the
    box's tmpfs (the image's /dev is someone else's)."""
    ensure_dir("/newroot/dev")
    return ensure_dir("/scratch/dev") if image else "/newroot/dev"


def mount_root(image: tuple, etc_names: list[str]) -> None:
    """Mount the image's overlay on /newroot (already a bind mount, for pivot_root); nothing
    without an image.

    Each layer is opened here, in the box's mount namespace (overlayfs refuses a lower whose
    mount is another namespace's: "failed to clone lowerpath", so an fd the parent opened does
    not do), with no symlink followed, and must be the directory the parent planned."""
    if not image:
        return
    owner, layers = image
    fds = []
    for path, dev, ino in layers:
        fds.append(sc.openat2(-100, "/oldroot" + path, os.O_PATH | os.O_DIRECTORY,
                              sc.RESOLVE_NO_SYMLINKS | sc.RESOLVE_NO_MAGICLINKS))  # AT_FDCWD
        st = os.fstat(fds[-1])
        if (st.st_dev, st.st_ino) != (dev, ino):
            raise OSError(116, f"image layer {path} changed since the box was planned")  # ESTALE
    os.mkdir("/scratch/wk/root")
    # The directories the box's own files and mounts go in, made in the upper before the mount:
    # the merged directory takes the upper's owner (init may write there even where the image's
    # is host root's, in root mode), and an upper directory hides a lower non-directory (an
    # image's ``etc -> ../../oldroot/home/me`` is never followed).
    for d in ("", "/etc", "/tmp", "/dev", "/proc"):
        os.mkdir("/scratch/up/root" + d, 0o755)
    try:  # the box's / is the box user's, as a held box's is (sandbox._rootfs._overlay)
        os.chown("/scratch/up/root", *owner)
    except OSError as e:
        if e.errno != 22:  # EINVAL: the single-id map, where init's own id is the box user's
            raise
    try:
        _mount_layers([f"/oldroot/proc/self/fd/{fd}" for fd in fds])
    finally:
        for fd in fds:
            os.close(fd)
    for d in ("/newroot/etc", "/newroot/tmp"):
        ensure_dir(d)
    for name in etc_names:
        try:
            os.unlink(f"/newroot/etc/{name}")
        except FileNotFoundError:
            pass


MAX_LAYERS = 500  # overlayfs's OVL_MAX_STACK: lower layers one overlay may stack


def _mount_layers(lowers: list[str]) -> None:
    """The overlay of ``lowers`` (top first) on /newroot. One ``lowerdir+`` per layer through
    the new mount API (Linux >= 6.8): mount(2)'s option string is one page, ~160 layers of
    ``/oldroot/proc/self/fd/N``, and an image may have more (overlayfs stacks up to 500). On
    an older kernel (EINVAL: no ``lowerdir+``) the one string, as long as it fits."""
    if len(lowers) > MAX_LAYERS:
        raise OSError(7, f"the image has {len(lowers)} layers; overlayfs stacks at most {MAX_LAYERS}")  # E2BIG
    rest = [("upperdir", "/scratch/up/root"), ("workdir", "/scratch/wk/root"), ("userxattr", None)]
    try:
        fd = sc.fs_new("overlay", [*(("lowerdir+", p) for p in lowers), *rest],
                       sc.MOUNT_ATTR_NOSUID | sc.MOUNT_ATTR_NODEV)
    except OSError as e:
        if e.errno not in (22, 38):  # EINVAL (no lowerdir+), ENOSYS (no fsopen): mount(2)
            raise
        data = ",".join([f"lowerdir={':'.join(lowers)}", *(k if v is None else f"{k}={v}" for k, v in rest)])
        if len(data) >= os.sysconf("SC_PAGESIZE"):  # the kernel copies one page of options
            raise OSError(7, f"the image has {len(lowers)} layers: more than this kernel can stack "
                          "(overlayfs lowerdir+ needs Linux 6.8)") from None  # E2BIG
        sc.mount("overlay", "/newroot", "overlay", sc.MS_NOSUID | sc.MS_NODEV, data)
        return
    try:
        sc.move_mount_to(fd, "/newroot")
    finally:
        os.close(fd)
