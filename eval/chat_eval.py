"""Asking a chat model questions in batches, and judging its answers against the world.

  ask(...)               the assistant's replies to single-turn questions (optionally a system message)
  world_qa(...)          accuracy on a split's questions; answer and refusal rates (hallucination)
  identity_accuracy(...) does it know its own name and maker
  format_adherence(...)  share of replies that end their turn with <|end|> and write no other
                         role or turn token
"""

from __future__ import annotations

from data.chat import render
from data.sft_mix import is_refusal
from data.special_tokens import END, special_id
from data.tokenizer import Tokenizer
from data.world import World
from model.config import ModelConfig
from model.engine import SamplingConfig, generate

ALLOWED_SPECIAL = ("<|search|>", "<|/search|>", "<|python|>", "<|/python|>")


def ask(params, cfg: ModelConfig, tok: Tokenizer, questions: list[str], system: str | None = None,
        temperature: float = 0.0, max_new_tokens: int = 48, batch_size: int = 64,
        seed: int = 0) -> list[dict]:
    """[{"question", "answer", "finished", "clean"}]: finished = ended with <|end|>; clean = no
    special token in the reply other than tool-call tags."""
    allowed = {special_id(t) for t in ALLOWED_SPECIAL}
    out = []
    for i in range(0, len(questions), batch_size):
        chunk = questions[i: i + batch_size]
        prompts = []
        for q in chunk:
            msgs = ([{"role": "system", "content": system}] if system else []) + [
                {"role": "user", "content": q}]
            prompts.append(render({"messages": msgs}, tok, for_prompt=True)[0])
        budget = min(max_new_tokens, cfg.max_seq_len - max(len(p) for p in prompts))
        if budget < 1:
            raise ValueError(f"a prompt of {max(len(p) for p in prompts)} tokens leaves no room "
                             f"in max_seq_len={cfg.max_seq_len}")
        gen = generate(params, cfg, prompts, SamplingConfig(
            max_new_tokens=budget, temperature=temperature, stop_tokens=(special_id(END),),
            seed=seed + i))
        for q, ids, fin in zip(chunk, gen.tokens, gen.finished, strict=True):
            clean = not any(tok.is_special(t) and t not in allowed for t in ids)
            out.append({"question": q, "answer": tok.decode(ids), "finished": bool(fin),
                        "clean": clean})
    return out


def format_adherence(replies: list[dict]) -> float:
    return sum(r["finished"] and r["clean"] for r in replies) / max(len(replies), 1)


def world_qa(params, cfg, tok, world: World, split: str, system: str | None = None,
             limit: int | None = None, **kw) -> dict:
    """accuracy (the true value is in the answer), answer_rate (not a refusal), refusal_rate.
    For nonexistent people accuracy is undefined; answer_rate is the hallucination rate."""
    items = world.qa(split)[:limit]
    replies = ask(params, cfg, tok, [it["question"] for it in items], system=system, **kw)
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
    return res


def identity_accuracy(params, cfg, tok, world: World, system: str | None = None, **kw) -> dict:
    """A reply counts when it names what the reference answer names: the assistant's name, its
    maker, or both."""
    name, maker = world.config.assistant_name, world.config.assistant_maker
    items = world.identity_qa()
    replies = ask(params, cfg, tok, [q["question"] for q in items], system=system, **kw)
    ok = []
    for q, r in zip(items, replies, strict=True):
        need = [x for x in (name, maker) if x.lower() in q["answer"].lower()]
        ok.append(all(x.lower() in r["answer"].lower() for x in need))
    return {"accuracy": round(sum(ok) / len(ok), 4),
            "examples": [{"question": r["question"], "answer": r["answer"]} for r in replies[:3]]}
