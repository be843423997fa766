"""The python tool's sandbox: model-written code runs under the operating system's isolation.

The fence is bubblewrap (`bwrap`, Debian's `bubblewrap`), not the interpreter: the code runs as
an unprivileged user in its own user, PID, mount, IPC, UTS and network namespaces, sees no host
file system but a read-only Python and the system libraries it links, writes only to a fresh
tmpfs of `tmpfs_mb`, has no stdin, runs in a new session, and is killed with its whole PID
namespace at the wall-clock limit. Its output is read with a byte cap and decoded leniently, so
nothing the child does can make the caller raise. Where a pids cgroup can be made (root, or a
delegated cgroup) the number of processes is capped too; rlimits (CPU, address space, file
size, processes) are set by the child before the code runs.

An audit hook stays inside as defence in depth (CPython's documentation says audit hooks are no
sandbox: code in the same interpreter can remove one). Where bwrap cannot start, the tool
refuses: the model reads "python is unavailable" and the caller logs why once.
`allow_unsandboxed=True` (config `tools.allow_unsandboxed`) is the documented opt-in to run with
rlimits and the audit hook alone, on a machine where you trust the model's code.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

UNAVAILABLE = "python is unavailable"


@dataclasses.dataclass(frozen=True)
class SandboxConfig:
    cpu_seconds: int = 2
    memory_mb: int = 256  # address space of each process
    wall_seconds: float = 5.0
    max_output_chars: int = 400
    file_size_kb: int = 64  # largest file the code may write
    tmpfs_mb: int = 8  # its writable directory, all files together
    max_processes: int = 16  # pids cgroup (where one can be made) and RLIMIT_NPROC
    audit_hook: bool = True  # defence in depth inside the sandbox
    allow_unsandboxed: bool = False  # run without bwrap (rlimits + audit hook only): opt-in


# Runs first in the child, before the model's code.
_PRELUDE = r'''
import os, resource, sys
for _lim, _val in %(limits)r:
    try:
        resource.setrlimit(getattr(resource, _lim), (_val, _val))
    except (ValueError, OSError):
        pass
if %(hook)r:
    _ROOT = os.path.realpath(os.getcwd())
    _READ_OK = tuple(os.path.realpath(p) for p in %(read_ok)r)
    def _inside(path, roots):
        try:
            p = os.path.realpath(os.fsdecode(path))
        except Exception:
            return False
        return any(p == r or p.startswith(r + os.sep) for r in roots)
    def _hook(event, args):
        if event == "open":
            path, mode = args[0], args[1] or "r"
            if isinstance(path, int):
                return
            writing = any(c in str(mode) for c in "wax+")
            if _inside(path, (_ROOT,)) or (not writing and _inside(path, _READ_OK)):
                return
            raise PermissionError(f"sandbox: no access to {os.fsdecode(path)}")
        if event.startswith(("socket.", "subprocess.", "os.exec", "os.posix_spawn", "os.spawn",
                             "os.fork", "os.system", "ctypes.", "pty.")) or event == "os.forkpty":
            raise PermissionError(f"sandbox: {event} is not allowed")
        if event == "import" and args[0] in ("ctypes", "_ctypes", "_posixsubprocess"):
            raise PermissionError(f"sandbox: {args[0]} is not allowed")
    sys.addaudithook(_hook)
    del _hook
'''

_MAX_CODE_BYTES = 100_000  # one argv string must stay under the kernel's 128 KiB
_WORKDIR = "/sandbox"
_log = logging.getLogger(__name__)


def _python() -> tuple[str, str]:
    """(the real interpreter binary, its installation prefix): the venv's python is a link."""
    exe = os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)
    return exe, os.path.realpath(sys.base_prefix)


def _system_mounts() -> list[str]:
    """Read-only binds of the system libraries the interpreter links (not /etc, /home, /root...)
    and the merged-/usr links (/lib -> usr/lib) as the host has them."""
    args = []
    for d in ("/usr/lib", "/usr/lib64", "/usr/lib32"):
        if os.path.isdir(d) and not os.path.islink(d):
            args += ["--ro-bind", d, d]
    for d in ("/lib", "/lib64", "/lib32"):
        if os.path.islink(d):
            args += ["--symlink", os.readlink(d), d]
        elif os.path.isdir(d):
            args += ["--ro-bind", d, d]
    return args


def _bwrap_command(cfg: SandboxConfig) -> list[str]:
    exe, prefix = _python()
    return ["bwrap", "--unshare-user", "--unshare-ipc", "--unshare-pid", "--unshare-net",
            "--unshare-uts", "--unshare-cgroup-try", "--disable-userns", "--uid", "65534",
            "--gid", "65534", "--hostname", "sandbox", "--die-with-parent", "--new-session",
            "--cap-drop", "ALL", "--clearenv", *_system_mounts(), "--ro-bind", prefix, prefix,
            "--dev", "/dev", "--size", str(cfg.tmpfs_mb << 20), "--tmpfs", _WORKDIR,
            "--chdir", _WORKDIR, "--setenv", "HOME", _WORKDIR, exe, "-I", "-S"]


class _PidsCgroup:
    """A pids cgroup per run, under the first hierarchy this process may write (cgroup v2 with
    the pids controller, or v1's pids); None where there is none (then RLIMIT_NPROC alone)."""

    def __init__(self):
        self.parent = None
        for base, controllers in (("/sys/fs/cgroup", "/sys/fs/cgroup/cgroup.subtree_control"),
                                  ("/sys/fs/cgroup/pids", None)):
            if controllers is not None:
                try:
                    if "pids" not in Path(controllers).read_text().split():
                        continue
                except OSError:
                    continue
            try:
                probe = Path(tempfile.mkdtemp(prefix="kestrel-sandbox-", dir=base))
                ok = (probe / "pids.max").exists()
                probe.rmdir()
            except OSError:
                continue
            if ok:
                self.parent = base
                return

    def make(self, limit: int) -> Path | None:
        if self.parent is None:
            return None
        try:
            d = Path(tempfile.mkdtemp(prefix="kestrel-sandbox-", dir=self.parent))
            (d / "pids.max").write_text(str(limit))
            return d
        except OSError:
            return None

    @staticmethod
    def remove(d: Path | None) -> None:
        for _ in range(50):
            try:
                if d is not None:
                    d.rmdir()
                return
            except OSError:
                time.sleep(0.02)


_STATE: dict = {}


def sandbox_error() -> str | None:
    """Why bwrap cannot run python here (None when it can); checked once per process."""
    if "error" not in _STATE:
        if shutil.which("bwrap") is None:
            err = "bwrap (Debian's bubblewrap) is not installed: apt-get install bubblewrap"
        else:
            try:
                r = subprocess.run([*_bwrap_command(SandboxConfig()), "-c", "print(6 * 7)"],
                                   stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
                out = r.stdout.decode(errors="replace").strip()
                err = None if out == "42" else (
                    f"bwrap cannot start a sandbox here: "
                    f"{r.stderr.decode(errors='replace').strip() or out or r.returncode}")
            except (OSError, subprocess.TimeoutExpired) as e:
                err = f"bwrap cannot start a sandbox here: {e}"
        _STATE["error"] = err
        if err:
            _log.warning("the python tool is off (%s); tools.allow_unsandboxed=True runs it "
                         "with rlimits and an audit hook only", err)
        _STATE["cgroup"] = _PidsCgroup()
    return _STATE["error"]


def _read_capped(proc: subprocess.Popen, deadline: float, cap: int) -> tuple[bytes, bytes, str | None]:
    """stdout (its first `cap` bytes) and stderr (its last 8 KiB) until the child closes both
    or the deadline; the reason it was stopped, if it was."""
    out, err = bytearray(), bytearray()
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ, out)
    sel.register(proc.stderr, selectors.EVENT_READ, err)
    stopped = None
    while sel.get_map():
        left = deadline - time.monotonic()
        if left <= 0:
            stopped = "timeout"
            break
        for key, _ in sel.select(min(left, 0.5)):
            chunk = os.read(key.fileobj.fileno(), 65536)
            if not chunk:
                sel.unregister(key.fileobj)
                continue
            key.data.extend(chunk)
            if key.data is err and len(err) > 8192:
                del err[:-8192]
        if len(out) > cap:
            stopped = "output"
            break
    sel.close()
    return bytes(out[:cap]), bytes(err), stopped


def run_python(code: str, cfg: SandboxConfig = SandboxConfig()) -> str:
    """Runs `code` in the sandbox; returns its stdout (or the error's last line), at most
    max_output_chars. Never raises: every failure is a result the model reads."""
    try:
        return _run(code, cfg)
    except Exception as e:  # the caller must survive whatever the child did
        return f"Error: the sandbox failed ({type(e).__name__})"


def _run(code: str, cfg: SandboxConfig) -> str:
    error = sandbox_error()
    if error and not cfg.allow_unsandboxed:
        return UNAVAILABLE
    if len(code.encode("utf-8", "surrogatepass")) > _MAX_CODE_BYTES:
        return "Error: the program is too long"
    exe, prefix = _python()
    limits = [("RLIMIT_CPU", cfg.cpu_seconds), ("RLIMIT_AS", cfg.memory_mb << 20),
              ("RLIMIT_FSIZE", cfg.file_size_kb << 10), ("RLIMIT_NPROC", cfg.max_processes),
              ("RLIMIT_CORE", 0)]
    prelude = _PRELUDE % {"limits": limits, "hook": cfg.audit_hook, "read_ok": [prefix]}
    program = prelude + "\nexec(compile(" + ascii(code) + ", '<tool>', 'exec'), {'__name__': '__main__'})"
    cgroup, tmp = None, None
    if error:  # the explicit opt-in: a throw-away directory on the host, rlimits, the hook
        tmp = tempfile.mkdtemp(prefix="sandbox-")
        cmd, cwd = [exe, "-I", "-S", "-c", program], tmp
    else:
        cmd, cwd = [*_bwrap_command(cfg), "-c", program], "/"
        cgroup = _STATE["cgroup"].make(cfg.max_processes)
        if cgroup is not None:  # the shell joins the cgroup, then becomes bwrap
            cmd = ["/bin/sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', str(cgroup), *cmd]
    try:
        proc = subprocess.Popen(cmd, cwd=cwd, env={}, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True)
        try:
            out, err, stopped = _read_capped(proc, time.monotonic() + cfg.wall_seconds,
                                             4 * cfg.max_output_chars + 4)
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except OSError:
                pass
            proc.stdout.close()
            proc.stderr.close()
            rc = proc.wait()
    finally:
        _PidsCgroup.remove(cgroup)
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    text = out.decode("utf-8", errors="replace")
    if stopped == "timeout":
        return _cut(f"Error: timed out after {cfg.wall_seconds:g} s", cfg)
    if stopped == "output" or rc == 0:
        return _cut(text, cfg)
    lines = [ln for ln in err.decode("utf-8", errors="replace").strip().splitlines() if ln.strip()]
    if lines:
        return _cut(f"Error: {lines[-1]}", cfg)
    if rc < 0 or rc > 128:  # killed by a signal: the CPU or memory limit
        return _cut(f"Error: killed (signal {-rc if rc < 0 else rc - 128}): CPU or memory limit", cfg)
    return _cut(f"Error: exit status {rc}", cfg)


def _cut(text: str, cfg: SandboxConfig) -> str:
    text = text.strip()
    return text if len(text) <= cfg.max_output_chars else text[: cfg.max_output_chars] + " [...]"
