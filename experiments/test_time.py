"""Thinking longer, the cheap way: n sampled answers per held-out arithmetic word problem,
reduced by majority vote and by the reward model's best-of-n; writes W/test_time/.

  python -m experiments.test_time --workdir runs/demo [--config.test_time.policy=sft]

The policy (`test_time.policy`, a stage of W: rl by default) answers `test_time.problems`
held-out problems `test_time.samples` times at `test_time.temperature`, with the python and
search tools when `test_time.tools`. The answer of a sample is its last "The answer is N".
For n = 1, 2, 4, ... up to the samples drawn, accuracy is averaged over `test_time.draws`
random subsets of n samples per problem (eval.test_time.curves): one sample, the majority
vote, the reward model's pick (W/rm scores the text after the last tool result; it was
trained on the labeler's open requests, so this asks how far a reward model carries outside
its own task), and the oracle's pick (pass@n, the ceiling any selector can reach). Tokens
spent is n times the mean number of model-written tokens of a sample.
Writes meta.json (figures), samples.jsonl (every sample, its answer and RM score) and
test_time.png (accuracy against n). A rerun recomputes the same figures: sampling is seeded.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from data.sft_mix import TOOLS_SYSTEM
from data.tools import BM25, THREADS, make_hooks
from eval.chat_eval import ask
from eval.tasks import ArithmeticTask, extract_answer
from eval.test_time import curves
from experiments.workdir import experiment_entry, tool_config, write_experiment
from train.reward import RewardModel
from train.stage import load_stage, load_world


def parse_ns(spec: str, samples: int) -> list[int]:
    """'1,2,4' -> [1, 2, 4]; every n in 1..samples."""
    try:
        ns = sorted({int(x) for x in spec.split(",") if x.strip()})
    except ValueError:
        raise ValueError(f"test_time.ns={spec!r}: expected comma-separated whole numbers") from None
    if not ns or ns[0] < 1 or ns[-1] > samples:
        raise ValueError(f"test_time.ns={spec!r}: each n must be in 1..test_time.samples={samples}")
    return ns


def run_test_time(cfg, workdir: Path) -> dict:
    """The experiment: samples, their answers and RM scores, the curves; into W/test_time."""
    s = cfg.test_time
    ns = parse_ns(s.ns, s.samples)
    lm, _ = load_stage(workdir / s.policy)
    world = load_world(workdir)
    problems = ArithmeticTask(world).problems("test", s.problems)
    hooks = (make_hooks(lm.tok, BM25(world.biographies()), tool_config(cfg), memo=True,
                        threads=THREADS)
             if s.tools else None)
    t0 = time.time()
    print(f"{s.policy}: {len(problems)} problems x {s.samples} samples ...", flush=True)
    replies = ask(lm, [p.prompt for p in problems for _ in range(s.samples)],
                  system=TOOLS_SYSTEM if s.tools else None, temperature=s.temperature,
                  max_new_tokens=s.max_new_tokens, seed=s.seed, hooks=hooks,
                  max_calls=cfg.tools.max_calls)
    sample_s = time.time() - t0
    answers = [extract_answer(r["answer"]) for r in replies]
    rm_dir = workdir / s.reward_model if s.reward_model else None
    scores = (RewardModel(rm_dir, lm.tok, fmt=lm.chat).score(
        [r["question"] for r in replies], [r["answer"] for r in replies]).tolist()
        if rm_dir else None)
    k = s.samples
    per = [answers[i * k:(i + 1) * k] for i in range(len(problems))]
    table = curves(per, [p.answer for p in problems],
                   [scores[i * k:(i + 1) * k] for i in range(len(problems))] if scores else None,
                   ns, draws=s.draws, seed=s.seed)
    mean_tokens = sum(r["n_tokens"] for r in replies) / max(len(replies), 1)
    for n, row in table.items():
        row["tokens_per_problem"] = round(n * mean_tokens, 1)
    out = workdir / "test_time"
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "samples.jsonl.tmp", "w") as fh:
        for i, (r, a) in enumerate(zip(replies, answers, strict=True)):
            fh.write(json.dumps({"problem": i // k, "key": problems[i // k].answer, "answer": a,
                                 "rm_score": scores[i] if scores else None,
                                 "transcript": r["transcript"]}) + "\n")
    (out / "samples.jsonl.tmp").replace(out / "samples.jsonl")
    first, last = table[ns[0]], table[ns[-1]]
    figures = {"policy": s.policy, "problems": len(problems), "samples": k,
               "mean_tokens_per_sample": round(mean_tokens, 2),
               "no_answer_rate": round(sum(a is None for a in answers) / len(answers), 4),
               "curve": {str(n): row for n, row in table.items()},
               "majority": {"n": ns[-1], "from": first["single"], "to": last["majority"]},
               "best_of_n": {"n": ns[-1], "from": first["single"], "to": last.get("best_of_n")},
               "oracle": {"n": ns[-1], "to": last["oracle"]},
               "sample_s": round(sample_s, 1), "wall_s": round(time.time() - t0, 1)}
    plot(out / "test_time.png", table, s.policy)
    write_experiment(workdir, "test_time", workdir / s.policy, s, figures)
    for n, row in table.items():
        print(f"n={n:>3}  " + "  ".join(f"{k} {v}" for k, v in row.items()), flush=True)
    return figures


def plot(path: Path, table: dict[int, dict], policy: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = sorted(table)
    fig, ax = plt.subplots(figsize=(6, 3.4))
    labels = {"oracle": "oracle (pass@n)", "majority": "majority vote",
              "best_of_n": "best-of-n (reward model)", "single": "one sample"}
    for key, label in labels.items():
        if key in table[ns[0]]:
            ax.plot(ns, [table[n][key] for n in ns], marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_xticks(ns, [f"{n}\n{table[n]['tokens_per_problem']:.0f}" for n in ns])
    ax.set_xlabel("samples n / tokens spent per problem")
    ax.set_ylabel("accuracy")
    ax.set_title(f"test-time compute: {policy} on held-out word problems")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    experiment_entry(run_test_time)
