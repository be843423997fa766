"""The python tool against an attacker: each escape tried on the earlier, audit-hook-only tool,
as the code string the model would write. The fence is the operating system's (bubblewrap), so
every attempt runs twice: with the audit hook in place, and with it gone (as code that removes
it would leave it). None may read or write outside its directory, leave a process behind,
signal its caller, reach the network, or make the caller raise."""

import os
import signal
import socket
import subprocess
import sys
import sysconfig
import time

import pytest

from data import sandbox
from data.sandbox import UNAVAILABLE, SandboxConfig, run_python

HOOKED = SandboxConfig(cpu_seconds=1, memory_mb=200, wall_seconds=4.0)
BARE = SandboxConfig(cpu_seconds=1, memory_mb=200, wall_seconds=4.0, audit_hook=False)
SECRET = "the host's secret"


@pytest.fixture
def host(tmp_path):
    """A host directory with a secret file, and a snapshot of it to compare after the attack."""
    (tmp_path / "secret.txt").write_text(SECRET)
    (tmp_path / "sub").mkdir()

    def snapshot():
        return sorted((str(p.relative_to(tmp_path)), p.read_bytes() if p.is_file() else b"",
                       p.stat().st_mode) for p in tmp_path.rglob("*"))

    return tmp_path, snapshot


def test_the_sandbox_starts_here():
    # CI and the README's set-up install bubblewrap; the tool must not silently fall back.
    assert sandbox.sandbox_error() is None, sandbox.sandbox_error()
    assert run_python("print(6 * 7)", HOOKED) == "42"


HOOK_REMOVALS = {
    # find the hook through the garbage collector and empty its body
    "gc": "import gc\nfor o in gc.get_objects():\n"
          "    if getattr(o, '__name__', '') == '_hook' and hasattr(o, '__code__'):\n"
          "        o.__code__ = (lambda event, args: None).__code__\n",
    # rebind the helpers the hook calls
    "builtins": "import builtins, posixpath\nbuiltins.any = lambda *a: True\n"
                "posixpath.realpath = lambda p, *a, **k: '/sandbox/x'\n",
}

FILE_ATTACKS = {
    "read": "print(open({secret!r}).read())",
    "write": "open({dir!r} + '/planted.txt', 'w').write('x')",
    "hard link": "import os; os.link({secret!r}, 'x'); print(open('x').read())",
    "dir_fd": "import os; fd = os.open({dir!r}, os.O_RDONLY); "
              "print(os.read(os.open('secret.txt', os.O_RDONLY, dir_fd=fd), 100))",
    "symlink": "import os; os.symlink({dir!r}, 'l'); print(open('l/secret.txt').read())",
    "rename": "import os; os.rename({secret!r}, {dir!r} + '/moved.txt')",
    "remove": "import os; os.remove({secret!r})",
    "truncate": "import os; os.truncate({secret!r}, 0)",
    "chmod": "import os; os.chmod({secret!r}, 0o777)",
    "mkdir": "import os; os.mkdir({dir!r} + '/made')",
    "rmdir": "import os; os.rmdir({dir!r} + '/sub')",
    "os.open for writing": "import os; os.write(os.open({dir!r} + '/w.txt', os.O_WRONLY | os.O_CREAT), b'x')",
    "sqlite3": "import sqlite3; c = sqlite3.connect({dir!r} + '/db.sqlite'); "
               "c.execute('create table t (x)'); c.commit()",
    "readline history": "import readline; readline.read_history_file({secret!r}); "
                        "print(readline.get_history_item(1))",
    "passwd": "print(open('/etc/passwd').read())",
    "proc of the caller": "print(open('/proc/1/environ').read())",
    "shell": "import os; os.system('echo pwned > ' + {dir!r} + '/shell.txt')",
    "subprocess": "import subprocess; subprocess.run(['/bin/sh', '-c', 'id > ' + {dir!r} + '/id.txt'])",
    "exec": "import os; os.execv('/bin/sh', ['sh', '-c', 'id > ' + {dir!r} + '/id.txt'])",
}


@pytest.mark.parametrize("removal", [None, *HOOK_REMOVALS])
@pytest.mark.parametrize("attack", FILE_ATTACKS)
def test_no_file_outside_its_directory_is_read_or_written(host, attack, removal):
    root, snapshot = host
    before = snapshot()
    code = FILE_ATTACKS[attack].format(secret=str(root / "secret.txt"), dir=str(root))
    cfg = BARE if removal is None else HOOKED
    out = run_python((HOOK_REMOVALS[removal] if removal else "") + code, cfg)
    assert SECRET not in out, out
    assert snapshot() == before


def test_no_pth_file_lands_in_site_packages():
    site = sysconfig.get_paths()["purelib"]
    code = f"open({site + '/zz_sandbox_escape.pth'!r}, 'w').write('import os')"
    run_python(HOOK_REMOVALS["gc"] + code, HOOKED)
    run_python(code, BARE)
    assert not os.path.exists(os.path.join(site, "zz_sandbox_escape.pth"))


def test_the_caller_and_its_neighbours_cannot_be_signalled_or_limited():
    victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        for code in (f"import os, signal; os.kill({victim.pid}, signal.SIGKILL)",
                     f"import os, signal; os.kill({os.getpid()}, signal.SIGKILL)",
                     "import os, signal; os.kill(os.getppid(), signal.SIGKILL); os.kill(-1, 9)",
                     f"import resource; resource.prlimit({os.getpid()}, resource.RLIMIT_NOFILE, (3, 3))"):
            run_python(code, BARE)
        time.sleep(0.2)
        assert victim.poll() is None  # still running
        import resource

        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] > 3
    finally:
        victim.kill()
        victim.wait()


def test_stdin_is_empty():
    assert run_python("import sys; print(repr(sys.stdin.read()))", BARE) == "''"


def _processes_with(marker: str) -> list[int]:
    found = []
    for pid in os.listdir("/proc"):
        try:
            if pid.isdigit() and marker.encode() in open(f"/proc/{pid}/cmdline", "rb").read():
                found.append(int(pid))
        except OSError:
            pass
    return found


def test_no_process_outlives_the_call():
    marker = f"outlive-{os.getpid()}-{time.time_ns()}"
    code = (f"# {marker}\nimport os, time\n"
            "if os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n        time.sleep(30)\n"
            "    os._exit(0)\nprint('parent done')")
    assert run_python(code, BARE) == "parent done"
    time.sleep(0.3)
    assert _processes_with(marker) == []
    # and at the time limit, the whole tree goes
    code = f"# {marker}\nimport os, time\nos.fork()\nos.fork()\ntime.sleep(30)"
    assert run_python(code, BARE).startswith("Error: timed out")
    time.sleep(0.3)
    assert _processes_with(marker) == []


def test_processes_are_capped():
    if sandbox._STATE["cgroup"].parent is None and os.geteuid() == 0:
        pytest.skip("no writable pids cgroup, and RLIMIT_NPROC does not bind root")
    code = ("import os, time\nn = 0\ntry:\n    for _ in range(200):\n"
            "        if os.fork() == 0:\n            time.sleep(2); os._exit(0)\n        n += 1\n"
            "except OSError:\n    pass\nprint(n)")
    assert int(run_python(code, BARE)) < BARE.max_processes


def test_writes_are_capped_and_the_caller_survives(host):
    root, _ = host
    free = os.statvfs(root).f_bavail
    big = SandboxConfig(cpu_seconds=2, memory_mb=200, wall_seconds=4.0, audit_hook=False,
                        file_size_kb=1 << 20)
    out = run_python("f = open('big', 'wb')\nfor _ in range(1024):\n    f.write(b'x' * (1 << 20))\n"
                     "    f.flush()", big)
    assert "No space left" in out or "too large" in out, out
    assert abs(os.statvfs(root).f_bavail - free) * os.statvfs(root).f_frsize < 64 << 20


def test_output_cannot_hurt_the_caller():
    out = run_python("import sys; sys.stdout.buffer.write(b'ok \\xff\\xfe done')", BARE)
    assert out == "ok \ufffd\ufffd done"
    t = time.monotonic()
    out = run_python("while True: print('x' * 1000)", BARE)
    assert time.monotonic() - t < 3 and out.startswith("x") and len(out) <= BARE.max_output_chars + 6
    out = run_python("import sys\nwhile True: sys.stderr.write('e' * 10000)", BARE)
    assert out.startswith("Error")
    # its directory replaced, removed or made read-only: still a result, not an exception
    for code in ("import os, shutil; os.chdir('/'); shutil.rmtree('/sandbox')",
                 "import os; os.chmod('.', 0); print('x')",
                 "import os; os.chdir('/'); os.rmdir('/sandbox'); open('/sandbox', 'w')"):
        assert isinstance(run_python(code, BARE), str)


def test_no_network():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.5)
    port = server.getsockname()[1]
    try:
        for cfg in (BARE, HOOKED):
            out = run_python(f"import socket; socket.create_connection(('127.0.0.1', {port}), "
                             "timeout=1); print('connected')", cfg)
            assert "connected" not in out
        with pytest.raises(TimeoutError):
            server.accept()
    finally:
        server.close()


def test_without_a_sandbox_the_tool_refuses_unless_opted_in(monkeypatch):
    monkeypatch.setitem(sandbox._STATE, "error", "bwrap is not installed")
    assert run_python("print(1)", HOOKED) == UNAVAILABLE
    opted = SandboxConfig(cpu_seconds=1, memory_mb=200, wall_seconds=4.0, allow_unsandboxed=True)
    assert run_python("print(1)", opted) == "1"
    assert run_python("print(open('/etc/hostname').read())", opted).startswith("Error: PermissionError")


def test_the_environment_is_empty_and_the_user_unprivileged():
    env = run_python("import os; print(' '.join(sorted(os.environ)))", BARE).split()
    assert set(env) <= {"HOME", "PWD", "LC_CTYPE"}, env
    assert run_python("import os; print(os.getuid(), os.getgid())", BARE) == "65534 65534"
    listing = run_python("import os; print(sorted(os.listdir('/')))", BARE)
    for host_dir in ("etc", "home", "tmp", "proc", "sys", "work", "var"):
        assert f"'{host_dir}'" not in listing, listing


def test_signals_from_the_child_do_not_reach_the_callers_group():
    got = []
    old = signal.signal(signal.SIGUSR1, lambda *a: got.append(1))
    try:
        run_python(f"import os, signal; os.killpg({os.getpgid(0)}, signal.SIGUSR1)", BARE)
        time.sleep(0.1)
        assert got == []
    finally:
        signal.signal(signal.SIGUSR1, old)
