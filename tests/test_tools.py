"""The tools: the python sandbox refuses what it must and survives what it must; BM25 search."""

import pytest

from data.tools import BM25, SandboxConfig, run_python, search_result

FAST = SandboxConfig(cpu_seconds=1, memory_mb=200, wall_seconds=4.0)


def test_python_runs_code_and_returns_stdout():
    assert run_python("print(sum(range(10)))", FAST) == "45"
    assert run_python("print('strawberry'.count('r'))", FAST) == "3"
    assert run_python("x = 1/0", FAST) == "Error: ZeroDivisionError: division by zero"
    assert run_python("open('notes.txt', 'w').write('hi'); print(open('notes.txt').read())",
                      FAST) == "hi"  # its own directory is fine


@pytest.mark.parametrize("code, expect", [
    ("print(open('/etc/hostname').read())", "Error: PermissionError: sandbox: no access"),
    ("import os; print(open(os.path.expanduser('~/.bashrc')).read())", "Error: PermissionError"),
    ("open('../escape.txt', 'w').write('x')", "Error: PermissionError: sandbox: no access"),
    ("import socket; socket.create_connection(('1.1.1.1', 80), timeout=1)", "Error: PermissionError"),
    ("import subprocess; subprocess.run(['ls'])", "Error: PermissionError"),
    ("import os; os.system('ls')", "Error: PermissionError"),
    ("import os; print(os.fork())", "Error: PermissionError"),
    ("import ctypes", "Error: PermissionError: sandbox: ctypes is not allowed"),
    ("while True: pass", "Error: killed"),
    ("x = bytearray(10**10)", "Error: MemoryError"),
    ("import time; time.sleep(30)", "Error: timed out"),
    ("print('x' * 10000)", "x" * 10),
])
def test_the_sandbox_contains_bad_code(code, expect):
    out = run_python(code, FAST)
    assert out.startswith(expect), out
    assert len(out) <= FAST.max_output_chars + 6


def test_the_environment_is_empty():
    # Nothing of ours leaks in (Python itself may set LC_CTYPE when no locale is given, PEP 538).
    env = run_python("import os; print(' '.join(sorted(os.environ)))", FAST).split()
    assert set(env) <= {"LC_CTYPE"}, env


def test_bm25_finds_the_right_biography():
    docs = ["Maya Okafor was born in Lisbon. Maya Okafor works for Helix Pharma.",
            "Omar Petrov was born in Oslo. Omar Petrov studied geology.",
            "Lena Sato attended Westmoor College."]
    index = BM25(docs)
    assert index.search("Where was Omar Petrov born?") == [docs[1]]
    assert search_result(index, "Lena Sato university") == docs[2]
    assert search_result(index, "zebra") == "No results."
    with pytest.raises(ValueError):
        BM25([])
