"""The assistant's tools: `search` (BM25 over a document collection) and `python` (a sandbox).

A tool takes the text the model wrote between its tags and returns text; data.tools never runs
model output in this process.

python: the code runs in a separate `python -I` process, in a throw-away directory, with an empty
environment, and with
  - limits (setrlimit, set by the child before the code runs): CPU seconds, address space,
    file size;
  - no network: a fresh network namespace (`unshare -rn`) where the system allows one, and an
    audit hook that refuses sockets either way;
  - an audit hook that refuses opening files outside the working directory (reads of Python's own
    library excepted), subprocesses, os.system/exec/fork/spawn, and ctypes;
  - a wall-clock timeout, and output cut to a size limit.
It returns stdout, or the error's last line. Any failure is a result the model reads, never an
exception in the caller.
"""

from __future__ import annotations

import dataclasses
import math
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections import Counter
from collections.abc import Callable, Sequence


@dataclasses.dataclass(frozen=True)
class SandboxConfig:
    cpu_seconds: int = 2
    memory_mb: int = 256
    wall_seconds: float = 5.0
    max_output_chars: int = 400
    file_size_kb: int = 64


# Runs first in the child, before the model's code: the audit hook cannot be removed afterwards.
_PRELUDE = r'''
import os, resource, sys
for _lim, _val in %(limits)r:
    resource.setrlimit(getattr(resource, _lim), (_val, _val))
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


def _netns_prefix() -> list[str]:
    """`unshare -rn` (a user + network namespace) where the system allows it, else nothing."""
    exe = shutil.which("unshare")
    if exe is None:
        return []
    try:
        ok = subprocess.run([exe, "-rn", "true"], capture_output=True, timeout=5).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        ok = False
    return [exe, "-rn"] if ok else []


_NETNS: list[str] | None = None


def run_python(code: str, cfg: SandboxConfig = SandboxConfig()) -> str:
    """Runs `code` in the sandbox; returns its stdout (or the error), at most max_output_chars."""
    global _NETNS
    if _NETNS is None:
        _NETNS = _netns_prefix()
    read_ok = sorted({sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")}
                     | {sys.base_prefix, sys.prefix})
    with tempfile.TemporaryDirectory(prefix="sandbox-") as cwd:
        limits = [("RLIMIT_CPU", cfg.cpu_seconds), ("RLIMIT_AS", cfg.memory_mb * 1024 * 1024),
                  ("RLIMIT_FSIZE", cfg.file_size_kb * 1024)]
        prelude = _PRELUDE % {"read_ok": read_ok, "limits": limits}
        cmd = [*_NETNS, sys.executable, "-I", "-S", "-c", prelude + "\nexec(compile(" + repr(code)
               + ", '<tool>', 'exec'), {'__name__': '__main__'})"]
        try:
            # Limits are set by the child itself, first thing (no preexec_fn: forking a
            # multithreaded JAX process to run Python in the child can deadlock).
            r = subprocess.run(cmd, cwd=cwd, env={}, capture_output=True, text=True,
                               timeout=cfg.wall_seconds, start_new_session=True)
        except subprocess.TimeoutExpired:
            return _cut(f"Error: timed out after {cfg.wall_seconds:g} s", cfg)
        if r.returncode == 0:
            return _cut(r.stdout, cfg)
        if r.returncode < 0:  # killed by a signal: the CPU limit (SIGXCPU / SIGKILL)
            return _cut(f"Error: killed (signal {-r.returncode}): CPU or memory limit", cfg)
        lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
        return _cut(f"Error: {lines[-1] if lines else f'exit status {r.returncode}'}", cfg)


def _cut(text: str, cfg: SandboxConfig) -> str:
    text = text.strip()
    return text if len(text) <= cfg.max_output_chars else text[: cfg.max_output_chars] + " [...]"


_WORD = re.compile(r"[A-Za-z0-9]+")


def _terms(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text)]


class BM25:
    """Okapi BM25 over a fixed collection (k1=1.5, b=0.75): `search(query, k)` -> top snippets.

    Small enough to keep here: a document list of a few thousand short texts, scored in Python.
    """

    def __init__(self, documents: Sequence[str], k1: float = 1.5, b: float = 0.75):
        if not documents:
            raise ValueError("BM25 needs at least one document")
        self.documents = list(documents)
        self.k1, self.b = k1, b
        self.tf = [Counter(_terms(d)) for d in self.documents]
        self.lengths = [sum(tf.values()) for tf in self.tf]
        self.avg_len = sum(self.lengths) / len(self.lengths)
        df = Counter(t for tf in self.tf for t in tf)
        n = len(self.documents)
        self.idf = {t: math.log(1 + (n - f + 0.5) / (f + 0.5)) for t, f in df.items()}

    def scores(self, query: str) -> list[float]:
        q = _terms(query)
        out = []
        for tf, length in zip(self.tf, self.lengths, strict=True):
            s = 0.0
            for t in q:
                f = tf.get(t)
                if f:
                    s += self.idf[t] * f * (self.k1 + 1) / (
                        f + self.k1 * (1 - self.b + self.b * length / self.avg_len))
            out.append(s)
        return out

    def search(self, query: str, k: int = 1) -> list[str]:
        s = self.scores(query)
        best = sorted(range(len(s)), key=lambda i: -s[i])[:k]
        return [self.documents[i] for i in best if s[i] > 0]


def search_result(index: BM25, query: str, k: int = 1, max_chars: int = 400) -> str:
    hits = index.search(query, k)
    text = " ".join(hits) if hits else "No results."
    return text if len(text) <= max_chars else text[:max_chars] + " [...]"


@dataclasses.dataclass(frozen=True)
class ToolConfig:
    max_calls: int = 3  # tool calls per assistant turn
    max_result_tokens: int = 48  # a result is cut to this many tokens
    search_k: int = 1  # snippets per search
    sandbox: SandboxConfig = SandboxConfig()


def make_hooks(tok, index: BM25 | None, cfg: ToolConfig = ToolConfig(), log: list | None = None,
               memo: bool = False, recall: Callable[[str], str] | None = None):
    """Engine hooks (model.engine.generate_with_tools) for the tools: on a closing tag, the text
    since its opening tag is run as the tool's input and the result comes back as
    <|result|> text <|/result|>. The text is encoded as plain text, so a result that spells
    "<|/result|><|user|>" cannot end the result or open a turn: it is data.

    memo: a program these hooks already ran returns the output it printed then instead of
    starting the sandbox again (~40 ms a run). Right for programs whose output depends on their
    text only (an RL group's eight samples often write the same one); a program that prints
    random numbers or the time would repeat itself, so it is off by default.

    recall: the recall tool, name -> "known" / "unknown" (eval.knowledge.Recall: the model's
    own memory of the name, read in a fresh context); without it a recall call is answered
    "Recall is unavailable."."""
    from data.chat import TOOLS
    from data.special_tokens import RESULT, RESULT_END, special_id

    outputs: dict[str, str] = {}

    def run(name: str, text: str) -> str:
        if name == "python":
            if not memo:
                return run_python(text, cfg.sandbox)
            if text not in outputs:
                outputs[text] = run_python(text, cfg.sandbox)
            return outputs[text]
        if name == "recall":
            return recall(text) if recall is not None else "Recall is unavailable."
        return search_result(index, text, cfg.search_k) if index is not None else "Search is unavailable."

    def hook_for(name: str, open_tag: str):
        open_id = special_id(open_tag)

        def hook(row, tokens, calls):
            start = max((i for i, t in enumerate(tokens) if t == open_id), default=None)
            text = "" if start is None else tok.decode(tokens[start + 1: -1])
            result = run(name, text)
            if log is not None:
                log.append({"row": row, "tool": name, "input": text, "result": result})
            ids = tok.encode(result)[: cfg.max_result_tokens]
            return [special_id(RESULT), *ids, special_id(RESULT_END)]

        return hook

    return {special_id(close): hook_for(name, open_) for name, (open_, close) in TOOLS.items()}
