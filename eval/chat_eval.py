"""Asking a chat model questions in batches, and judging its answers against the world.

  ask(...)               the assistant's replies to single-turn questions (optionally a system message)
  world_qa(...)          accuracy on a split's questions; answer and refusal rates (hallucination)
  identity_accuracy(...) does it know its own name and maker
  format_adherence(...)  share of replies that end their turn with <|end|> and write no other
                         role or turn token
"""

from __future__ import annotations

from data.chat import TOOLS
from data.sft_mix import is_refusal
from data.special_tokens import RESULT_END, special_id
from data.tokenizer import Tokenizer
from data.world import World
from model.engine import SamplingConfig, generate, generate_with_tools
from model.handle import LM


def after_last_result(ids: list[int]) -> int:
    """Index just past the last <|/result|> in a reply (0 without one): where the model's
    final answer, written after its tool calls, starts."""
    return max((k + 1 for k, t in enumerate(ids) if t == special_id(RESULT_END)), default=0)


def ask(lm: LM, questions: list[str], system: str | None = None, temperature: float = 0.0,
        max_new_tokens: int = 48, batch_size: int = 64, seed: int = 0, hooks=None,
        max_calls: int = 3) -> list[dict]:
    """[{"question", "answer", "finished", "clean", "transcript", "calls", "tools", "n_tokens"}]:
    finished = ended with <|end|>; clean = no special token in the reply other than tool tags;
    tools = the tools the model opened a call to, in order; with `hooks` (data.tools.make_hooks)
    the model may call tools and `answer` is what it wrote after the last result."""
    params, cfg, tok = lm.params, lm.cfg, lm.tok
    allowed = {special_id(t) for tags in TOOLS.values() for t in tags}  # tool-call tags
    opens = {special_id(tags[0]): name for name, tags in TOOLS.items()}
    out = []
    for i in range(0, len(questions), batch_size):
        chunk = questions[i: i + batch_size]
        prompts = [lm.prompt(q, system) for q in chunk]
        budget = min(max_new_tokens, cfg.max_seq_len - max(len(p) for p in prompts))
        if budget < 1:
            raise ValueError(f"a prompt of {max(len(p) for p in prompts)} tokens leaves no room "
                             f"in max_seq_len={cfg.max_seq_len}")
        sampling = SamplingConfig(max_new_tokens=budget, temperature=temperature,
                                  stop_tokens=lm.stop_ids, seed=seed + i)
        if hooks:
            gen = generate_with_tools(params, cfg, prompts, sampling, hooks, max_calls)
            calls = gen.calls
        else:
            gen = generate(params, cfg, prompts, sampling)
            calls = [0] * len(chunk)
        for j, (q, ids, fin) in enumerate(zip(chunk, gen.tokens, gen.finished, strict=True)):
            n = calls[j]
            after = after_last_result(ids)
            injected = gen.injected[j] if hooks else [False] * len(ids)
            model_ids = [t for t, inj in zip(ids, injected, strict=True) if not inj]
            clean = not any(tok.is_special(t) and t not in allowed for t in model_ids)
            out.append({"question": q, "answer": tok.decode(ids[after:]), "finished": bool(fin),
                        "clean": clean, "calls": n, "n_tokens": len(model_ids),
                        "tools": [opens[t] for t in model_ids if t in opens],
                        "transcript": tok.decode(ids, show_special=True)})
    return out


def format_adherence(replies: list[dict]) -> float:
    return sum(r["finished"] and r["clean"] for r in replies) / max(len(replies), 1)


def recall_hooks(tok: Tokenizer, recall) -> dict | None:
    """Engine hooks that run only the recall tool (eval.knowledge.Recall), or None without one."""
    from data.tools import make_hooks

    return make_hooks(tok, None, recall=recall) if recall is not None else None


def world_qa(lm: LM, world: World, split: str, system: str | None = None,
             limit: int | None = None, recall=None, **kw) -> dict:
    """accuracy (the true value is in the answer), answer_rate (not a refusal), refusal_rate,
    and the replies themselves. For nonexistent people accuracy is undefined; answer_rate is
    the hallucination rate. recall: the recall tool, for a model taught to call it (the answer
    is then what it writes after the tool's result)."""
    items = world.qa(split)[:limit]
    replies = ask(lm, [it["question"] for it in items], system=system,
                  hooks=recall_hooks(lm.tok, recall), **kw)
    refused = [is_refusal(r["answer"]) for r in replies]
    res = {"n": len(items), "answer_rate": round(1 - sum(refused) / max(len(items), 1), 4),
           "refusal_rate": round(sum(refused) / max(len(items), 1), 4),
           "format_adherence": round(format_adherence(replies), 4)}
    if split != "nonexistent":
        correct = [it["value"] in r["answer"] for it, r in zip(items, replies, strict=True)]
        res["accuracy"] = round(sum(correct) / max(len(items), 1), 4)
        answered = [c for c, ref in zip(correct, refused, strict=True) if not ref]
        res["accuracy_when_answering"] = round(sum(answered) / max(len(answered), 1), 4)
    res["examples"] = [{"question": r["question"], "answer": r["answer"]} for r in replies[:3]]
    res["replies"] = replies
    return res


def recall_forced(lm: LM, world: World, limit: int | None = None, **kw) -> dict:
    """Who says "I don't know", the recall tool or the model: world QA on held-out and
    nonexistent people with the tool's verdict forced to "known" for every name (a refusal is
    then the model's own decision) and to "unknown" (an answer is then the model overriding
    the tool). For a model taught to call the recall tool."""
    out = {}
    for verdict in ("known", "unknown"):
        held, none = (world_qa(lm, world, split, limit=limit, recall=lambda _, v=verdict: v, **kw)
                      for split in ("heldout", "nonexistent"))
        out[f"tool_says_{verdict}"] = {
            "heldout_accuracy": held["accuracy"], "heldout_refusal_rate": held["refusal_rate"],
            "nonexistent_refusal_rate": none["refusal_rate"]}
    return out


def identity_accuracy(lm: LM, world: World, system: str | None = None, **kw) -> dict:
    """A reply counts when it names what the reference answer names: the assistant's name, its
    maker, or both."""
    name, maker = world.config.assistant_name, world.config.assistant_maker
    items = world.identity_qa()
    replies = ask(lm, [q["question"] for q in items], system=system, **kw)
    ok = []
    for q, r in zip(items, replies, strict=True):
        need = [x for x in (name, maker) if x.lower() in q["answer"].lower()]
        ok.append(all(x.lower() in r["answer"].lower() for x in need))
    return {"accuracy": round(sum(ok) / len(ok), 4), "replies": replies,
            "examples": [{"question": r["question"], "answer": r["answer"]} for r in replies[:3]]}


def tool_eval(lm: LM, world: World, tool_cfg=None, n: int = 50, system: str | None = None,
              recall=None, **kw) -> dict:
    """Accuracy without and with tools on (a) held-out people's facts, (b) large calculations,
    (c) letter counting; and the share of tool calls that are well formed (python that compiles,
    a search query that names someone). Without tools the question is asked plainly; with tools
    under the tools system message, the model's calls run for real. recall: the recall tool,
    for a model taught to call it, available in both."""
    from data.sft_mix import TOOLS_SYSTEM
    from data.tools import BM25, THREADS, ToolConfig, make_hooks

    tool_cfg = tool_cfg or ToolConfig()
    log: list[dict] = []
    # the log is only counted below, so its order (the calls' finishing order) does not matter
    hooks = make_hooks(lm.tok, BM25(world.biographies()), tool_cfg, log=log, recall=recall,
                       threads=THREADS)
    tasks = {
        "heldout_facts": [(q["question"], q["value"]) for q in world.qa("heldout")[:n]],
        "calculations": [(c["question"], str(c["answer"])) for c in world.calculations("test", n)],
        "letter_counting": [(s["question"], s["answer"]) for s in world.spelling("test", 4 * n)
                            if s["kind"] == "count"][:n],
    }
    res: dict = {}
    transcripts = {}
    for name, items in tasks.items():
        qs = [q for q, _ in items]
        plain = ask(lm, qs, system=system, hooks=recall_hooks(lm.tok, recall), **kw)
        tooled = ask(lm, qs, system=TOOLS_SYSTEM, hooks=hooks,
                     max_calls=tool_cfg.max_calls, **kw)

        exact = name != "heldout_facts"  # a number or a spelled word: the reply's last word

        def score(replies, items=items, exact=exact):
            ok = [(r["answer"].rstrip(" .").split(" ")[-1] == v) if exact else (v in r["answer"])
                  for r, (_, v) in zip(replies, items, strict=True)]
            return round(sum(ok) / len(items), 4)

        res[name] = {"n": len(items), "without_tools": score(plain), "with_tools": score(tooled),
                     # a recall call (a model taught to make one) is not the tool use measured here
                     "tool_call_rate": round(sum(any(t != "recall" for t in r["tools"])
                                                 for r in tooled) / len(items), 4)}
        transcripts[name] = tooled[0]["transcript"]
    well = 0
    log = [c for c in log if c["tool"] != "recall"]  # the recall tool's input is the question's name
    for call in log:
        if call["tool"] == "python":
            try:
                compile(call["input"], "<tool>", "exec")
                well += 1
            except SyntaxError:
                pass
        else:
            well += bool(call["input"].strip()) and any(p.name in call["input"] or
                                                       call["input"].strip() in p.name
                                                       for p in world.people)
    res["tool_calls"] = len(log)
    res["well_formed_tool_calls"] = round(well / max(len(log), 1), 4)
    res["transcripts"] = transcripts
    return res
