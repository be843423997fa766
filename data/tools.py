"""The assistant's tools in one place: `search` (BM25 over a document collection), `python`
(model-written code in the operating-system sandbox of data/sandbox.py) and `recall` (a name
checked against the model's own memory, eval.knowledge.Recall), and the engine hooks that run
them when the model closes a tool tag.

A tool takes the text the model wrote between its tags and returns text; any failure is a
result the model reads, never an exception in the caller.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import Future

from data.sandbox import SandboxConfig, run_python

__all__ = ["BM25", "THREADS", "SandboxConfig", "ToolConfig", "ToolHooks", "make_hooks", "result_cut",
           "run_python", "search_result"]


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


# make_hooks(threads=) for batched sampling (RL, the tool evaluations): a step's calls at once
THREADS = 4


@dataclasses.dataclass(frozen=True)
class ToolConfig:
    max_calls: int = 3  # tool calls per assistant turn
    max_result_tokens: int = 48  # a result is cut to this many tokens
    search_k: int = 1  # snippets per search
    sandbox: SandboxConfig = SandboxConfig()


def result_cut(tok, cfg: ToolConfig = ToolConfig()) -> Callable[[str], str]:
    """What the model reads of a tool's result, as text: its first max_result_tokens tokens,
    cut as make_hooks cuts them (for training data that shows what inference will show)."""
    return lambda text: tok.decode(tok.encode(text)[: cfg.max_result_tokens])


def make_hooks(tok, index: BM25 | None, cfg: ToolConfig = ToolConfig(), log: list | None = None,
               memo: bool = False, recall: Callable[[str], str] | None = None,
               tamper: Callable[[str, str, str], str] | None = None, threads: int = 1):
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
    "Recall is unavailable.".

    tamper: (tool, input, result) -> the result the model reads instead: a man in the middle
    for prompt-injection experiments (data/attacks.py); the log keeps what the model read.

    threads: the engine runs the calls drawn in the same decoding step on this many threads (a
    sandboxed program mostly waits on its process); a step's log entries then come in the
    order its calls finish."""
    from data.chat import TOOLS
    from data.special_tokens import RESULT, RESULT_END, special_id

    if threads < 1:
        raise ValueError(f"threads={threads} must be >= 1")
    outputs: dict[str, Future] = {}

    def run(name: str, text: str) -> str:
        if name == "python":
            if not memo:
                return run_python(text, cfg.sandbox)
            mine = Future()
            first = outputs.setdefault(text, mine)  # one run a text, whichever thread asks first
            if first is mine:
                mine.set_result(run_python(text, cfg.sandbox))
            return first.result()
        if name == "recall":
            return recall(text) if recall is not None else "Recall is unavailable."
        return search_result(index, text, cfg.search_k) if index is not None else "Search is unavailable."

    def hook_for(name: str, open_tag: str):
        open_id = special_id(open_tag)

        def hook(row, tokens, calls):
            start = max((i for i, t in enumerate(tokens) if t == open_id), default=None)
            text = "" if start is None else tok.decode(tokens[start + 1: -1])
            result = run(name, text)
            if tamper is not None:
                result = tamper(name, text, result)
            if log is not None:
                log.append({"row": row, "tool": name, "input": text, "result": result})
            ids = tok.encode(result)[: cfg.max_result_tokens]
            return [special_id(RESULT), *ids, special_id(RESULT_END)]

        return hook

    return ToolHooks({special_id(close): hook_for(name, open_)
                      for name, (open_, close) in TOOLS.items()}, threads)


class ToolHooks(dict):
    """make_hooks's mapping (closing tag id -> hook), with the threads its calls may run on."""

    def __init__(self, hooks: dict, threads: int):
        super().__init__(hooks)
        self.threads = threads
