"""The bubblewrap sandbox for grading: each submission sees the system read-only, its own folder
read-only, a private ``/tmp``, no network, and no process but its own.

Workers stay warm, so one ``bwrap`` holds the whole fork server rather than one per worker: the
server sees the Python environment, every submission (under ``/run/cnncheck``) and nothing else of the
machine, and keeps the capability to mount. Each worker it forks then narrows its own view before the
student's code runs (:func:`confine`): a mount and pid namespace of its own, an empty tmpfs over the
folder of submissions with only its own submission bound back in, a fresh ``/tmp`` and ``/proc``, and
then every capability dropped for good. The kernel locks the mounts a namespace inherits, so a
submission cannot uncover what was hidden, even in a user namespace of its own.
"""

from __future__ import annotations

import ctypes
import functools
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

MODES = ("auto", "bwrap", "none")  # --sandbox
UNITS = "/run/cnncheck/units"  # where the fork server sees each submission
_STAGE = "/run/cnncheck/stage"  # a worker's private place for the mounts it moves
MAX_PROCESSES = 512  # threads count too: torch's pool, plus what a submission may fairly start

_CLONE_NEWNS, _CLONE_NEWUSER, _CLONE_NEWPID = 0x00020000, 0x10000000, 0x20000000
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 1, 2, 4, 8
_MS_REMOUNT, _MS_BIND, _MS_MOVE, _MS_REC, _MS_PRIVATE = 32, 4096, 8192, 16384, 1 << 18
_PR_SET_PDEATHSIG, _PR_CAPBSET_DROP, _PR_SET_NO_NEW_PRIVS = 1, 24, 38
_SYSTEM = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/opt", "/sys")
_ETC = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "passwd", "group", "nsswitch.conf", "localtime",
        "alternatives", "fonts", "mime.types")  # what Python and torch read; not the whole of /etc


class SandboxUnavailable(Exception):
    """``--sandbox bwrap`` on a machine where bubblewrap is missing or cannot make namespaces."""


@dataclass(frozen=True)
class Confinement:
    """What one worker may see: its submission (``unit``, a folder, at the path the report names; none
    for an installed module), found at ``source`` in the fork server's view and bound in over
    ``base``: an empty private folder that holds it (the folder of submissions), or the unit itself
    where that folder holds the Python environment."""

    unit: str | None
    source: str | None
    base: str | None
    cwd: str
    keep: tuple[str, ...] = ()  # folders of the environment in /tmp, which the private /tmp must not hide


@dataclass(frozen=True)
class Plan:
    """One fork server's view: the folders of submissions (``covers``, as the report names them), the
    real folders bound under UNITS (each cover, and each submission a symlink takes out of it), and
    the cwd."""

    covers: tuple[str, ...]
    roots: tuple[str, ...]
    cwd: str
    environment: tuple[str, ...]  # what the server imports from (see _environment)

    def confinement(self, unit: str | None, cover: str | None) -> Confinement:
        keep = tuple(folder for folder in self.environment if _inside_any(folder, ["/tmp"]))
        if unit is None or cover is None:
            return Confinement(None, None, None, self.cwd, keep)
        real = os.path.realpath(unit)
        slot = next(i for i, root in enumerate(self.roots) if _inside_any(real, [root]))
        source = f"{UNITS}/{slot}{real[len(self.roots[slot].rstrip('/')):]}"
        cover = os.path.abspath(cover)
        base = cover if not any(_inside_any(env, [cover]) for env in self.environment) else None
        return Confinement(os.path.abspath(unit), source, base, self.cwd, keep)

    def covers_all(self, other: Plan) -> bool:
        """Whether a server with this view can confine every submission of ``other`` too."""
        return (self.cwd == other.cwd and set(other.covers) <= set(self.covers)
                and all(_inside_any(root, self.roots) for root in other.roots)
                and all(_inside_any(folder, self.environment) for folder in other.environment))


def bwrap() -> str | None:
    """The path of a bubblewrap that can make the namespaces the sandbox needs, else None."""
    return _probe(shutil.which("bwrap"))


@functools.lru_cache(maxsize=None)
def _probe(path: str | None) -> str | None:
    if path is None:
        return None
    try:
        done = subprocess.run([path, *_isolation(), "--ro-bind", "/", "/", "--proc", "/proc", "true"],
                              capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return path if done.returncode == 0 else None


def resolve(mode: str) -> str | None:
    """The sandbox that ``mode`` gives on this machine: ``"bwrap"`` or None."""
    if mode == "none":
        return None
    if bwrap() is not None:
        return "bwrap"
    if mode == "bwrap":
        raise SandboxUnavailable("--sandbox bwrap: bubblewrap is not installed or cannot create namespaces "
                                 "here (install the Debian package 'bubblewrap'; in a container it needs "
                                 "user namespaces)")
    return None


def describe(mode: str | None) -> str:
    """The report header's words for the sandbox a run used."""
    if mode == "bwrap":
        return ("bubblewrap (each submission sees the system read-only, its own folder, a private /tmp, "
                "no network and no other process)")
    return "none (submissions ran with your user's rights and could read or change each other's files)"


def plan(units: Iterable[tuple[str, str]]) -> Plan:
    """The fork server's view, from each submission's ``(unit, cover)``: its folder, and the folder of
    submissions it is one of."""
    pairs = [(os.path.abspath(unit), os.path.abspath(cover)) for unit, cover in units]
    covers = tuple(dict.fromkeys(cover for _, cover in pairs))
    roots = list(dict.fromkeys(os.path.realpath(cover) for cover in covers))
    for unit, _ in pairs:
        if not _inside_any(os.path.realpath(unit), roots):
            roots.append(os.path.realpath(unit))
    # sys.path without the workspaces that hold submissions (``python -m`` puts the cwd there)
    workspace = [*covers, *roots]
    entries = [os.path.abspath(e) for e in sys.path if e]
    entries = [e for e in entries if not _inside_any(e, workspace) and not any(_inside_any(w, [e]) for w in workspace)]
    return Plan(covers, tuple(roots), os.getcwd(), _environment(tuple(entries)))


def server_command(view: Plan, python: str) -> list[str]:
    """The ``bwrap`` command line that starts the fork server's Python in the shared view."""
    path = bwrap()
    if path is None:
        raise SandboxUnavailable("bubblewrap is no longer usable")
    environment = view.environment
    # no --die-with-parent: it follows the thread that started bwrap, and a worker thread of the
    # supervisor ends long before the run; the server ends when the run closes its "alive" pipe
    args = [path, *_isolation(), "--new-session", "--cap-add", "CAP_SYS_ADMIN", "--cap-add", "CAP_SETPCAP",
            "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp", "--tmpfs", "/run", "--dir", _STAGE]
    for folder in _SYSTEM:
        args += ["--ro-bind-try", folder, folder]
    for name in _ETC:
        args += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
    for folder in environment:
        args += ["--ro-bind", folder, folder]
    for device in sorted(Path("/dev").glob("nvidia*")):  # CUDA, where the machine has it
        args += ["--dev-bind", str(device), str(device)]
    for slot, root in enumerate(view.roots):
        args += ["--ro-bind", root, f"{UNITS}/{slot}"]
    bases = [c for c in view.covers if not any(_inside_any(env, [c]) for env in environment)]
    for folder in bases:  # mount points: each worker puts a private folder there
        if not _inside_any(folder, [*_SYSTEM, *environment, "/tmp", "/dev", "/proc", "/run"]):
            args += ["--dir", folder]
    if not _inside_any(view.cwd, [*_SYSTEM, *environment, "/dev", "/proc", "/run"]):
        args += ["--dir", view.cwd]  # multiprocessing starts each worker there
    args += ["--setenv", "HOME", "/tmp", "--chdir", "/", "--", python]
    return args


def server_launcher(view: Plan, python: str) -> str:
    """An executable that multiprocessing can start its fork server with: a script that runs Python
    inside ``bwrap`` with this view (multiprocessing takes one path, not a command line)."""
    import atexit
    import shlex
    import tempfile

    folder = tempfile.mkdtemp(prefix="cnncheck-sandbox-")
    atexit.register(shutil.rmtree, folder, True)
    script = Path(folder) / "python"
    script.write_text("#!/bin/sh\nexec " + shlex.join(server_command(view, python)) + ' "$@"\n', encoding="utf-8")
    script.chmod(0o700)
    return str(script)


def _isolation() -> list[str]:
    # not the pid namespace: the supervisor signals workers by the pids the server reports; each worker
    # makes a pid namespace of its own instead (confine)
    return ["--unshare-user-try", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]


@functools.lru_cache(maxsize=8)
def _environment(entries: tuple[str, ...]) -> tuple[str, ...]:
    """The system folders aside, what the fork server imports from: the Python installation,
    cnncheck, and the given ``sys.path`` entries; each folder once (none inside another)."""
    prefixes = (sys.prefix, sys.base_prefix, sys.exec_prefix, os.path.dirname(os.path.realpath(sys.executable)),
                os.path.dirname(sys.executable),
                os.path.dirname(__file__))  # cnncheck itself: an editable install is an import hook, not a path
    folders: list[str] = []
    for entry in (*prefixes, *entries):
        if not os.path.isdir(entry):
            continue
        real = os.path.realpath(entry)
        if not _inside_any(real, [*_SYSTEM, *folders]):
            folders = [f for f in folders if not _inside_any(f, [real])] + [real]
    return tuple(sorted(folders))


def _inside_any(path: str, folders: Iterable[str]) -> bool:
    return any(path == folder or path.startswith(folder.rstrip("/") + "/") for folder in folders)


# -- in the worker ---------------------------------------------------------------------------------------
def confine(confinement: Confinement, conn: object) -> None:
    """Narrow this worker to its own submission, then drop every privilege. Returns in a child that is
    process 1 of a new pid namespace; the worker itself waits for it and exits as it did, so the
    supervisor's process (and its pid, which is a real one: the server shares the machine's pid
    namespace) stands for the child."""
    libc = ctypes.CDLL(None, use_errno=True)
    try:
        os.setsid()  # before the fork: the worker and its child share a group the supervisor can kill
    except OSError:
        pass  # already the leader of one
    _call(libc.unshare(_CLONE_NEWNS | _CLONE_NEWPID), "unshare")
    _mount(libc, None, "/", None, _MS_REC | _MS_PRIVATE)
    child = os.fork()
    if child:
        getattr(conn, "close")()  # the child holds the channel: its end is the supervisor's EOF
        _exit_as(child)
    _call(libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl")  # the worker killed: so is this
    _private_system(libc, confinement.keep)
    _own_submission(libc, confinement)
    os.chdir(confinement.cwd if os.path.isdir(confinement.cwd) else "/")
    _drop_privileges(libc)


def _private_system(libc: ctypes.CDLL, keep: tuple[str, ...]) -> None:
    """A /proc that shows only this namespace's processes (read-only where it could change the
    machine), and a /tmp and /dev/shm of this worker's own, with the environment's folders in /tmp
    moved over into it."""
    _mount(libc, "proc", "/proc", "proc", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC)
    for entry in ("sys", "sysrq-trigger", "irq", "bus"):
        _read_only(libc, f"/proc/{entry}")
    _mount(libc, "tmpfs", _STAGE, "tmpfs", _MS_NOSUID | _MS_NODEV, b"mode=0700")
    for number, folder in enumerate(keep):
        os.makedirs(f"{_STAGE}/{number}")
        _mount(libc, folder, f"{_STAGE}/{number}", None, _MS_BIND | _MS_REC)
    for scratch in ("/tmp", "/dev/shm"):
        if os.path.isdir(scratch):
            _mount(libc, "tmpfs", scratch, "tmpfs", _MS_NOSUID | _MS_NODEV, b"mode=1777")
    for number, folder in enumerate(keep):
        os.makedirs(folder, exist_ok=True)
        _mount(libc, f"{_STAGE}/{number}", folder, None, _MS_MOVE)


def _make_cwd(cwd: str) -> None:
    """The current folder of the command, so that the report's relative paths start there (it may be
    read-only already, or be the unit itself)."""
    try:
        os.makedirs(cwd, exist_ok=True)
    except OSError:
        pass


def _own_submission(libc: ctypes.CDLL, confinement: Confinement) -> None:
    """This worker's unit, read-only, at the path the report names (in a private folder of its own
    where it can), the server's copies of every unit hidden, and the rest of the view read-only: the
    root and /dev of the server are one tmpfs that all workers share."""
    if confinement.unit is not None and confinement.source is not None:
        staged = f"{_STAGE}/own"
        os.makedirs(staged)
        _mount(libc, confinement.source, staged, None, _MS_BIND | _MS_REC)
        _read_only(libc, staged)
        if confinement.base is not None:
            os.makedirs(confinement.base, exist_ok=True)  # under /tmp: the private one starts empty
            _mount(libc, "tmpfs", confinement.base, "tmpfs", _MS_NOSUID | _MS_NODEV, b"mode=0755")
        os.makedirs(confinement.unit, exist_ok=True)
        _mount(libc, staged, confinement.unit, None, _MS_MOVE)
        _make_cwd(confinement.cwd)  # before the private folder turns read-only: ../x/model.py starts there
        if confinement.base is not None:
            _remount_read_only(libc, confinement.base)
    _make_cwd(confinement.cwd)
    _mount(libc, "tmpfs", "/run", "tmpfs", _MS_NOSUID | _MS_NODEV | _MS_RDONLY, b"mode=0755")
    for shared in ("/", "/dev"):
        _remount_read_only(libc, shared)


def _drop_privileges(libc: ctypes.CDLL) -> None:
    """No capability now or after any exec, no way back to them, and a process limit (which the kernel
    applies to every user but root)."""
    import resource

    _own_user_namespace(libc)
    _call(libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(no_new_privs)")
    last = int(Path("/proc/sys/kernel/cap_last_cap").read_text()) if os.path.exists(
        "/proc/sys/kernel/cap_last_cap") else 40
    for capability in range(last + 1):
        libc.prctl(_PR_CAPBSET_DROP, capability, 0, 0, 0)
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
    _call(libc.capset(header, (ctypes.c_uint32 * 6)()), "capset")
    resource.setrlimit(resource.RLIMIT_NPROC, (MAX_PROCESSES, MAX_PROCESSES))


def _own_user_namespace(libc: ctypes.CDLL) -> None:
    """A user namespace of this worker's own, mapping only its own user: the kernel counts processes
    per user and namespace, so a fork bomb spends this worker's RLIMIT_NPROC, not its neighbours'."""
    uid, gid = os.getuid(), os.getgid()
    _call(libc.unshare(_CLONE_NEWUSER), "unshare(user)")
    Path("/proc/self/setgroups").write_text("deny")
    Path("/proc/self/uid_map").write_text(f"{uid} {uid} 1")
    Path("/proc/self/gid_map").write_text(f"{gid} {gid} 1")


def _read_only(libc: ctypes.CDLL, path: str) -> None:
    """``path`` bound onto itself, read-only."""
    if os.path.exists(path):
        _mount(libc, path, path, None, _MS_BIND | _MS_REC)
        _remount_read_only(libc, path)


_KEPT_FLAGS = {os.ST_NOSUID: _MS_NOSUID, os.ST_NODEV: _MS_NODEV, os.ST_NOEXEC: _MS_NOEXEC,
               os.ST_NOATIME: 1024, os.ST_NODIRATIME: 2048, os.ST_RELATIME: 1 << 21}


def _remount_read_only(libc: ctypes.CDLL, path: str) -> None:
    """The mount at ``path`` made read-only, with the flags it has: in a user namespace the kernel
    refuses a remount that would drop one that a more privileged namespace set."""
    current = os.statvfs(path).f_flag
    kept = sum(flag for st, flag in _KEPT_FLAGS.items() if current & st)
    _mount(libc, None, path, None, _MS_REMOUNT | _MS_BIND | _MS_RDONLY | kept)


def _call(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"sandbox: {what} failed: {os.strerror(errno)}")


def _mount(libc: ctypes.CDLL, source: str | None, target: str, fstype: str | None, flags: int,
           data: bytes | None = None) -> None:
    _call(libc.mount(os.fsencode(source) if source else None, os.fsencode(target), fstype.encode() if fstype else None,
                     ctypes.c_ulong(flags), data), f"mount {target}")


def _exit_as(child: int) -> None:
    """The worker ends as its confined child did: the same exit code, or the same signal."""
    while True:
        try:
            _, status = os.waitpid(child, 0)
            break
        except InterruptedError:
            continue
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        signal.signal(number, signal.SIG_DFL)
        os.kill(os.getpid(), number)
    os._exit(os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 1)
