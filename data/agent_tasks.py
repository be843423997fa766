"""Tasks that need two tool calls in a row, from the synthetic world: look a person up with
search, then compute with python on what the page says.

  age      "How old did NAME turn in YEAR?"  search NAME -> birth year -> python YEAR - born
  letters  "How many letters are in the name of the city where NAME was born?"
           search NAME -> birth city -> python len(city)

Items of the 'train' split ask about train-split people, those of 'test' about held-out people
(whose biographies the search corpus holds, but whose questions no training data asks), so a
model trained on the train split's conversations is measured on people it never practised on.
Every builder is a function of the world and a seed.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from data.sft_mix import TOOLS_SYSTEM

KINDS = ("age", "letters")


def chain_tasks(world, split: str, seed: int = 0) -> list[dict]:
    """One task of each kind per person of the split ('train' or 'test'). Each item: question,
    answer (str), kind, name, the value the search must find (`needs`) and the program
    (`code`) that computes the answer from it."""
    if split not in ("train", "test"):
        raise ValueError(f"split {split!r}: expected 'train' or 'test'")
    rng = random.Random(f"{seed}/chain/{split}")
    people = [p for p in world.people if (p.name in world.train_names) == (split == "train")]
    out = []
    for p in people:
        year = rng.randint(2030, 2060)
        out.append({"kind": "age", "name": p.name, "question": f"How old did {p.name} turn in {year}?",
                    "needs": str(p.birth_year), "code": f"print({year} - {p.birth_year})",
                    "answer": str(year - p.birth_year)})
        out.append({"kind": "letters", "name": p.name,
                    "question": f"How many letters are in the name of the city where {p.name} "
                                "was born?",
                    "needs": p.birth_city, "code": f"print(len({p.birth_city!r}))",
                    "answer": str(len(p.birth_city))})
    return out


def chain_conversations(world, index, seed: int = 0,
                        cut: Callable[[str], str] = lambda text: text) -> list[dict]:
    """SFT conversations for the train split's tasks: search the name (the real hit of `index`,
    a data.tools.BM25 over the biographies, cut as the tool hook cuts it), python on the value
    found, then the answer. A task whose value the cut result does not show is left out (no
    model could copy it)."""
    from data.tools import search_result

    out = []
    for t in chain_tasks(world, "train", seed):
        page = cut(search_result(index, t["name"]))
        if t["needs"] not in page:
            continue
        out.append({"messages": [
            {"role": "system", "content": TOOLS_SYSTEM},
            {"role": "user", "content": t["question"]},
            {"role": "assistant", "content": "", "tool_call": {"name": "search", "input": t["name"]}},
            {"role": "tool", "name": "search", "content": page},
            {"role": "assistant", "content": "", "tool_call": {"name": "python", "input": t["code"]}},
            {"role": "tool", "name": "python", "content": t["answer"]},
            {"role": "assistant", "content": f"The answer is {t['answer']}."}]})
    return out
