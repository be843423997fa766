"""SFT conversations from the synthetic world, and the "I don't know" answers found by probing.

Kinds (weights from the config; a weight is copies of each conversation of that kind):
  qa          1-3 questions about one train-split person, answered as the world states
  arithmetic  a word problem answered step by step, ending "The answer is N."
  spelling    letter counting / spelling / every k-th letter, answered step by step
  identity    "who are you / who made you", answered from the world's identity facts
  mixed       2-3 turns from different kinds in one conversation (the subject changes per turn)
  idk         questions about people who exist nowhere, answered with a refusal; and inside
              `qa`, a refusal for each train-split fact the probe found the model does not know
Held-out and nonexistent people never appear here: they are what evaluation asks about.

With recall (the default of experiments/configs/tiny.py), every answer to a question about a
person first calls the recall tool on the name (eval.knowledge.Recall: log p(surname | <|bos|>
first name) under the model itself, against a threshold), and the conversation holds the result
the probe read from the parent model: "known" is answered, "unknown" refused, for train-split
people and made-up names alike (a made-up name it finds "known" is left out). The decision
then rests on the one place the model can tell a person it has read about from a made-up pair
of names; in its reply, where the surname can be copied from the question, it cannot (REFUSALS).
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable
from pathlib import Path

from data.world import ATTRIBUTES, QUESTIONS, World, answer_head

RECALL_KNOWN, RECALL_UNKNOWN = "known", "unknown"  # the recall tool's results (eval.knowledge.Recall)

# The refusal for a person the model cannot know. "plain" decides at the reply's first token;
# "name_first" writes the whole name first, as the answers do ("NAME was born in ..."), and decides
# after it; "first_name" writes the first name and decides where the answer would write the
# surname: the one place the base model's memory tells a person it has read about from a made-up
# pair of names (surname surprisal after "<|bos|>FIRST": held-out people 1.3 nats, nonexistent
# 9.1, AUC 1.0; a linear probe on the hidden states at the name reads it at AUC 0.5-0.66 only);
# "at_value" writes the answer up to its value ("NAME was born in... I'm sorry, but I don't
# know."), deciding where the answer needs the memory of the fact, and refuses unknown facts of
# known people in the same words.
# Their measured trade-offs, and why none keeps held-out accuracy: experiments/README.md.
REFUSALS = {"name_first": "{n}? I'm sorry, but I don't know who that is.",
            "plain": "I'm sorry, but I don't know who {n} is.",
            "first_name": "{first}? I'm sorry, but I don't know who {n} is.",
            "at_value": "{head}... I'm sorry, but I don't know."}
REFUSAL_FACT = "I'm sorry, but I don't know that about {n}."
IDK_MARKERS = ("I don't know", "I do not know")


def copies(key: str, w) -> int:
    """`w` when it is a whole number of copies >= 0 (a mixture weight); else a ValueError naming
    `key`."""
    if not (isinstance(w, int) and w >= 0):
        raise ValueError(f"{key}={w!r}: expected a whole number of copies >= 0")
    return w


def is_refusal(answer: str) -> bool:
    return any(m in answer for m in IDK_MARKERS)


def recall_step(name: str, result: str) -> list[dict]:
    """The assistant's call of the recall tool on `name` and the tool's result ("known" or
    "unknown"): the messages between a question about a person and the answer."""
    return [{"role": "assistant", "content": "", "tool_call": {"name": "recall", "input": name}},
            {"role": "tool", "name": "recall", "content": result}]


def _conv(*turns: tuple, system: str | None = None) -> dict:
    """Turns (question, answer) or (question, answer, (name, recall result)): the latter
    recalls the name before answering."""
    msgs = [{"role": "system", "content": system}] if system else []
    for q, a, *recalled in turns:
        msgs.append({"role": "user", "content": q})
        if recalled and recalled[0] is not None:
            msgs += recall_step(*recalled[0])
        msgs.append({"role": "assistant", "content": a})
    return {"messages": msgs}


def _turns(conv: dict) -> list[list[dict]]:
    """A conversation's turns: each user message with the assistant's messages after it."""
    out: list[list[dict]] = []
    for m in conv["messages"]:
        if m["role"] == "user":
            out.append([])
        if out:
            out[-1].append(m)
    return out


def qa_conversations(world: World, seed: int = 0, per_person: int = 4,
                     refuse: frozenset[str] = frozenset(), style: str = "plain",
                     recall: dict[str, str] | None = None, flip: int = 0) -> list[dict]:
    """`per_person` conversations for each train-split person, 1-3 questions each, covering
    every attribute at least once per person. A question in `refuse` (the probe found the model
    does not know it) is answered with a refusal instead of the fact (refusal_fact in `style`):
    SFT should not teach a model to state facts it does not hold.
    recall (name -> the recall tool's result, from the probe): every answer first recalls the
    name; a person the model's memory finds "unknown" is refused (refusal_person).
    flip (with recall): `flip` more one-question conversations per person in which the tool
    answers "unknown" and the person is refused, so that the same name is met with both results
    and only the result tells whether to answer."""
    if flip and recall is None:
        raise ValueError("flip turns the recall tool's result: it needs recall")
    rng = random.Random(f"{seed}/sft-qa")
    by_name: dict[str, dict[str, dict]] = {}
    for item in world.qa("train"):
        by_name.setdefault(item["name"], {})[item["attribute"]] = item
    out = []
    for items in by_name.values():
        attrs = list(ATTRIBUTES)
        rng.shuffle(attrs)
        for c in range(per_person):
            k = rng.randint(1, 3)
            chosen = [attrs[(c * 3 + j) % len(attrs)] for j in range(k)]
            out.append(_conv(*[_qa_turn(items[a], refuse, style, recall) for a in chosen]))
    flip_rng = random.Random(f"{seed}/sft-qa-flip")  # the conversations above stay as they were
    for name, items in by_name.items():
        for a in flip_rng.sample(sorted(items), min(flip, len(items))):
            out.append(_conv(_qa_turn(items[a], refuse, style, {name: RECALL_UNKNOWN})))
    return out


def _qa_turn(item: dict, refuse: frozenset[str], style: str, recall: dict[str, str] | None) -> tuple:
    name, a = item["name"], item["attribute"]
    if recall is None:
        return (item["question"], refusal_fact(name, a, style) if item["question"] in refuse
                else item["answer"])
    if name not in recall:
        raise ValueError(f"no recall result for {name!r}: the probe file predates the recall "
                         "tool or another world; rerun python -m experiments.probe")
    if recall[name] == RECALL_UNKNOWN:
        answer = refusal_person(name, style, a)
    else:
        answer = refusal_fact(name, a, style) if item["question"] in refuse else item["answer"]
    return (item["question"], answer, (name, recall[name]))


def mixed_conversations(kinds: dict[str, list[dict]], n: int, seed: int = 0) -> list[dict]:
    """`n` conversations of 2-3 turns, each turn taken from a different single-turn pool (a
    question about one person, then arithmetic, then who-are-you, ...): later turns must not
    inherit the subject of the first."""
    pools = {k: [c["messages"] for c in convs if len(_turns(c)) == 1
                 and c["messages"][0]["role"] == "user"] for k, convs in kinds.items()}
    pools = {k: v for k, v in pools.items() if v}
    if len(pools) < 2 or n == 0:
        return []
    rng = random.Random(f"{seed}/mixed")
    out = []
    for _ in range(n):
        chosen = rng.sample(sorted(pools), min(len(pools), rng.randint(2, 3)))
        msgs = [m for k in chosen for m in rng.choice(pools[k])]
        out.append({"messages": msgs})
    return out


def arithmetic_conversations(world: World, n: int) -> list[dict]:
    return [_conv((p["question"], p["solution"])) for p in world.arithmetic("train", n)]


def spelling_conversations(world: World, n: int) -> list[dict]:
    return [_conv((p["question"], p["solution"])) for p in world.spelling("train", n)]


def identity_conversations(world: World, with_system: bool = False) -> list[dict]:
    system = world.identity_system_message() if with_system else None
    return [_conv((q["question"], q["answer"]), system=system) for q in world.identity_qa()]


def unknown_people(world: World, n: int, seed: int = 0, match_first: bool = False) -> list[str]:
    """Names that are in no document and in no evaluation split: people the model cannot know,
    for probing and "I don't know" training (the world's own `nonexistent` people stay unseen).

    match_first: the first names follow the train-split people's, in turn (a seeded order), so
    that in SFT a first name says nothing of whether the person is known; drawn freely, a first
    name met only in refusals teaches a refusal for it."""
    from data.world import FIRST, LAST

    taken = {p.name for p in world.people} | {p.name for p in world.nonexistent}
    pool = sorted({f"{f} {last}" for f in FIRST for last in LAST} - taken)
    rng = random.Random(f"{seed}/unknown")
    if not match_first:
        return rng.sample(pool, min(n, len(pool)))
    firsts = [p.name.split()[0] for p in world.people if p.name in world.train_names]
    rng.shuffle(firsts)
    free = {f: [m for m in pool if m.split()[0] == f] for f in set(firsts)}
    for names in free.values():
        rng.shuffle(names)
    out: list[str] = []
    while len(out) < n and any(free.values()):
        for f in firsts:
            if free[f] and len(out) < n:
                out.append(free[f].pop())
    return out


def probe_questions(world: World, n_unknown: int, seed: int = 0,
                    per_unknown: int = len(ATTRIBUTES), match_first: bool = False) -> list[dict]:
    """What the probe asks: every train-split question (value known to the world), and
    `per_unknown` attribute questions (drawn from the seed) about each of `n_unknown` people who
    exist nowhere (value None; unknown_people, with match_first)."""
    if not 1 <= per_unknown <= len(ATTRIBUTES):
        raise ValueError(f"per_unknown={per_unknown}: expected 1..{len(ATTRIBUTES)} questions "
                         "per unknown person")
    items = [dict(q, split="train") for q in world.qa("train")]
    rng = random.Random(f"{seed}/probe-attributes")
    for name in unknown_people(world, n_unknown, seed, match_first):
        # all five keep the attributes' order (and the probe file) as it was before the draw
        attrs = ATTRIBUTES if per_unknown == len(ATTRIBUTES) else rng.sample(ATTRIBUTES, per_unknown)
        for a in attrs:
            items.append({"question": QUESTIONS[a].format(n=name), "answer": None, "name": name,
                          "attribute": a, "value": None, "split": "unknown"})
    return items


def refusal_template(style: str) -> str:
    """REFUSALS[style], or a ValueError naming the styles there are."""
    if style not in REFUSALS:
        raise ValueError(f"refusal style {style!r}: expected one of {sorted(REFUSALS)}")
    return REFUSALS[style]


def refusal_person(name: str, style: str = "plain", attribute: str | None = None) -> str:
    """The refusal of a question about `name` (about its `attribute`) in a style."""
    template = refusal_template(style)
    if "{head}" in template and attribute not in ATTRIBUTES:
        raise ValueError(f"refusal style {style!r} refuses where the answer's value would start: "
                         f"it needs the question's attribute (one of {ATTRIBUTES}), got {attribute!r}")
    head = answer_head(attribute, name) if "{head}" in template else ""
    return template.format(n=name, first=name.split()[0], head=head)


def refusal_fact(name: str, attribute: str, style: str = "plain") -> str:
    """The refusal of one fact the probe found the model does not know about a real person; in
    the "at_value" style the same words as a person's refusal (the choice is made at the value,
    where nothing yet tells an unknown person from an unknown fact)."""
    return (refusal_person(name, style, attribute) if style == "at_value"
            else REFUSAL_FACT.format(n=name))


def idk_conversations(probe_rows: Iterable[dict], style: str = "plain", recall: bool = False) -> list[dict]:
    """A refusal for every probed question about a person who exists nowhere. (Unknown facts of
    train-split people are refused inside their QA conversations: see qa_conversations.)
    recall: the refusal follows the recall tool's result for the name, as the probe read it; a
    made-up name the model's memory finds "known" is left out (no answer to teach after it)."""
    rows = [r for r in probe_rows if r["value"] is None and not r["known"]]
    results = recall_results(rows) if recall else {}
    return [_conv((r["question"], refusal_person(r["name"], style, r["attribute"]),
                   (r["name"], RECALL_UNKNOWN) if recall else None))
            for r in rows if results.get(r["name"]) != RECALL_KNOWN]


def recall_results(probe_rows: Iterable[dict]) -> dict[str, str]:
    """name -> the recall tool's result as the probe read it from the parent model."""
    out = {}
    for r in probe_rows:
        if "recall" not in r:
            raise ValueError("the probe file has no recall results (it predates the recall tool): "
                             "rerun python -m experiments.probe, or set sft.recall=False")
        out[r["name"]] = r["recall"]
    return out


def refused_questions(probe_rows: Iterable[dict]) -> frozenset[str]:
    """Questions about real people whose facts the probe found the model does not know."""
    return frozenset(r["question"] for r in probe_rows if r["value"] is not None and not r["known"])


def read_probe(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: run `python -m experiments.probe` first, "
                                "or set sft.idk=False")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


TOOLS_SYSTEM = "You can use tools: search and python."


def tool_conversation(question: str, tool: str, tool_input: str, result: str, answer: str) -> dict:
    """One tool call under the tools system message: question, call, result, answer."""
    return {"messages": [
        {"role": "system", "content": TOOLS_SYSTEM},
        {"role": "user", "content": question},
        {"role": "assistant", "content": "", "tool_call": {"name": tool, "input": tool_input}},
        {"role": "tool", "name": tool, "content": result},
        {"role": "assistant", "content": answer}]}


def spelling_code(item: dict) -> str:
    """The python a spelling question calls for. The word is always written " in 'WORD'" (and
    the letter " == 'L'", letter first as in the question), so its tokens are the question's
    own: writing the code is a copy. With print('meadow'.count('a')) the model had to find the
    word after a quote token the question spells differently (" '" vs "'"), and the tiny model
    wrote print('b... for every word (letter counting with tools 0.16 vs 0.38 without)."""
    w = item["word"]
    if item["kind"] == "count":
        letter = item["question"].split("'")[1]
        return f"print(sum(c == {letter!r} for c in {w!r}))"
    if item["kind"] == "spell":
        return f"print('-'.join(c for c in {w!r}))"
    k = {"second": 2, "third": 3, "fourth": 4}[item["question"].split("every ")[1].split()[0]]
    return f"print(''.join(c for c in {w!r})[{k - 1}::{k}])"


def tool_conversations(world: World, n_calc: int, n_spell: int, unknown: list[str],
                       seed: int = 0, refusal: str = "plain", n_word: int = 0) -> dict[str, list[dict]]:
    """Conversations that use the tools (all under the TOOLS_SYSTEM message): search for a
    train-split person's fact (the result is the real BM25 hit over the biographies), search
    for a person who exists nowhere (then refuse), python for calculations, for spelling, and
    for `n_word` arithmetic word problems (the story's steps as python lines; the same
    train-split problems the step-by-step kind starts with).
    Search results come from the real index; python results are what the code prints (the
    world's answer; tests check that running the code gives the same)."""
    from data.tools import BM25, search_result

    index = BM25(world.biographies())
    rng = random.Random(f"{seed}/tools")
    search = []
    for item in world.qa("train"):
        search.append(tool_conversation(item["question"], "search", item["name"],
                                 search_result(index, item["name"]), item["answer"]))
    for name in unknown:
        a = rng.choice(ATTRIBUTES)
        search.append(tool_conversation(QUESTIONS[a].format(n=name), "search", name,
                                 search_result(index, name), refusal_person(name, refusal, a)))
    def computed(item: dict, code: str) -> dict:  # python prints the answer, the reply states it
        return tool_conversation(item["question"], "python", code, str(item["answer"]),
                          f"The answer is {item['answer']}.")

    return {"tool_search": search,
            "tool_calc": [computed(c, c["code"]) for c in world.calculations("train", n_calc)],
            "tool_spell": [computed(it, spelling_code(it)) for it in world.spelling("train", n_spell)],
            "tool_word": [computed(p, p["code"]) for p in world.arithmetic("train", n_word)]}


def sft_mixture(world: World, weights: dict, n_arithmetic: int, n_spelling: int,
                identity: str = "data", probe_rows: list[dict] | None = None,
                seed: int = 0, tools: tuple[int, int] | None = None,
                n_mixed: int = 0, refusal: str = "plain", recall: bool = False,
                recall_flip: int = 0) -> dict[str, list[dict]]:
    """Conversations per kind, each repeated by its weight (an integer number of copies).

    identity: "data" (identity conversations), "system" (the same, with the identity system
    message in every conversation of the mixture), or "none".
    tools: (n_calc, n_spell, n_word) adds the tool-use kinds (tool_search, tool_calc,
    tool_spell, tool_word).
    n_mixed: conversations whose turns come from different kinds (see mixed_conversations).
    refusal: how a person nobody knows is refused (a key of REFUSALS).
    recall: every question about a person (qa, idk, and their turns in mixed) is answered after a
    call of the recall tool on the name, with the result the probe read from the parent model;
    a person it finds "unknown" is refused (needs probe_rows). recall_flip: qa_conversations'
    flip."""
    if recall and probe_rows is None:
        raise ValueError("recall needs the probe's rows (its recall results): set sft.idk=True")
    if identity not in ("data", "system", "none"):
        raise ValueError(f"identity={identity!r}: expected 'data', 'system' or 'none'")
    refusal_template(refusal)  # checked up front: the idk and tool kinds may hold no refusal
    refuse = refused_questions(probe_rows) if probe_rows is not None else frozenset()
    n_calc, n_tool_spell, n_word = tools if tools else (0, 0, 0)
    kinds = {
        "qa": qa_conversations(world, seed, refuse=refuse, style=refusal,
                               recall=recall_results(probe_rows) if recall else None,
                               flip=recall_flip),
        "arithmetic": arithmetic_conversations(world, n_arithmetic),
        "spelling": spelling_conversations(world, n_spelling),
        "identity": identity_conversations(world) if identity == "data" else [],
        "idk": idk_conversations(probe_rows, refusal, recall) if probe_rows is not None else [],
    }
    singles = {k: v for k, v in kinds.items() if k != "qa"}
    singles["qa"] = [{"messages": t} for c in kinds["qa"] for t in _turns(c)]
    kinds["mixed"] = mixed_conversations(singles, n_mixed, seed)
    if tools:  # (calculations, spelling questions) through the python tool, plus search
        kinds.update(tool_conversations(world, n_calc, n_tool_spell,
                                        unknown_people(world, 50, seed + 1), seed, refusal, n_word))
    out = {}
    for kind, convs in kinds.items():
        out[kind] = convs * copies(f"sft mixture weight {kind}", weights.get(kind, 1))
    if identity == "system":
        msg = world.identity_system_message()

        def with_identity(c: dict) -> dict:
            m = c["messages"]
            if m[0]["role"] == "system":  # tool conversations: one system message holds both
                return {"messages": [{"role": "system", "content": f"{msg} {m[0]['content']}"}, *m[1:]]}
            return {"messages": [{"role": "system", "content": msg}, *m]}

        out = {k: [with_identity(c) for c in v] for k, v in out.items()}
    return out
