"""The report card of a run root: W/report.md, one table per stage, and plots in W/plots/.

  python -m experiments.report --workdir runs/demo

It reads what the stages wrote (meta.json, metrics.jsonl, W/speedrun.json) and computes nothing
new; a stage that has not run is listed as missing.
"""

from __future__ import annotations

import json
from pathlib import Path

from train.stage import code_version, read_meta

STAGES = ("corpus", "tokenizer", "pretrain", "probe", "sft", "rl", "rm", "rlhf", "dpo")


def _records(stage: Path) -> list[dict]:
    path = stage / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "-" if v is None else str(v)


def _pair(d, a, b):
    """'x / y' from two keys (or (key, subkey) paths) of d; None when d lacks them."""
    def get(k):
        if not isinstance(d, dict):
            return None
        if isinstance(k, tuple):
            inner = d.get(k[0])
            return inner.get(k[1]) if isinstance(inner, dict) else None
        return d.get(k)
    x, y = get(a), get(b)
    return None if x is None and y is None else f"{_fmt(x)} / {_fmt(y)}"


def _table(rows: list[tuple[str, object]]) -> str:
    return "| figure | value |\n|---|---|\n" + "".join(f"| {k} | {_fmt(v)} |\n" for k, v in rows)


def _plot(path: Path, title: str, series: dict[str, tuple[list, list]], xlabel: str = "step"):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2))
    for label, (x, y) in series.items():
        if x:
            ax.plot(x, y, label=label)
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _curve(records: list[dict], key: str) -> tuple[list, list]:
    pts = [(r["step"], r[key]) for r in records if key in r]
    return [p[0] for p in pts], [p[1] for p in pts]


def write_report(workdir: str | Path) -> Path:
    w = Path(workdir)
    plots = w / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    out = [f"# Report card: {w}\n", f"code version `{code_version()}`\n"]
    run = json.loads((w / "speedrun.json").read_text()) if (w / "speedrun.json").is_file() else None
    if run:
        out.append("## Speedrun wall time\n")
        order = [*STAGES, *(f"eval:{st}" for st in STAGES), "arena"]
        done = sorted(run["stages"].items(), key=lambda kv: (
            order.index(kv[0]) if kv[0] in order else len(order), kv[0]))
        out.append("| stage | seconds |\n|---|---|\n" + "".join(
            f"| {k} | {v['wall_s']:.0f} |\n" for k, v in done)
                   + f"| **total** | **{run.get('total_wall_s', 0):.0f}** |\n")

    how = {"dpo": " (the speedrun runs it with --dpo; or experiments.rlhf "
                  "--config.rlhf.method=dpo)"}

    def section(name: str, rows_fn):
        meta = read_meta(w / name)
        out.append(f"## {name}\n")
        if meta is None:
            out.append(f"not run{how.get(name, '')}\n")
            return
        out.append(_table(rows_fn(meta, meta.get("figures", {}))))

    section("corpus", lambda m, f: [("wall seconds", m.get("wall_s")),
                                    ("sources", ", ".join(map(str, m.get("sources") or [])))])
    section("tokenizer", lambda m, f: [("vocab", m.get("vocab_size")),
                                       ("held-out bytes/token", m.get("bytes_per_token_heldout"))])

    def pretrain_rows(m, f):
        recall = f.get("biography_recall", {})
        return [("parameters", m.get("n_params")), ("steps", f.get("step")),
                ("tokens seen", f.get("tokens_seen")), ("val loss (nats)", f.get("val_loss")),
                ("val bits/byte", f.get("val_bpb")), ("tokens/s", f.get("tokens_per_s")),
                ("biography recall (all / held-out)", f"{_fmt(recall.get('all'))} / "
                                                      f"{_fmt(recall.get('heldout'))}")]

    section("pretrain", pretrain_rows)

    def sft_rows(m, f):
        rows = [(k, f.get(k)) for k in ("val_loss", "format_adherence", "identity_accuracy",
                                        "qa_train_accuracy", "qa_heldout_accuracy",
                                        "qa_heldout_refusal_rate", "nonexistent_answer_rate")]
        if "recall_threshold" in m:  # taught to call the recall tool
            known = f.get("recall_known_rate", {})
            rows.append(("recall tool: threshold (nats); 'known' held-out / nonexistent",
                         f"{_fmt(m['recall_threshold'])}; {_fmt(known.get('heldout'))} / "
                         f"{_fmt(known.get('nonexistent'))}"))
        for task, t in f.get("tools", {}).items():
            if isinstance(t, dict) and "with_tools" in t:
                rows.append((f"{task}: without / with tools",
                             f"{_fmt(t['without_tools'])} / {_fmt(t['with_tools'])}"))
        rows.append(("well-formed tool calls", f.get("tools", {}).get("well_formed_tool_calls")))
        return rows

    section("sft", sft_rows)

    def rl_rows(m, f):
        b, a = f.get("before", {}), f.get("after", {})
        tools = " (with tools)" if m.get("tools") else ""
        return [("task", f"{m.get('objective')}{tools}")] + [
            (f"{k}: before -> after", f"{_fmt(b.get(k))} -> {_fmt(a.get(k))}")
            for k in b if isinstance(b[k], int | float) and not k.startswith("n_")]

    section("rl", rl_rows)
    section("rm", lambda m, f: [("held-out pairwise accuracy", f.get("val_accuracy")),
                                ("train pairwise accuracy", f.get("train_accuracy")),
                                ("pairs (train / val)", f"{m.get('pairs', {}).get('train')} / "
                                                        f"{m.get('pairs', {}).get('val')}")])

    def rlhf_rows(m, f):
        rows = []
        for when in ("before", "best", "after"):
            x = f.get(when)
            if x:
                rows.append((f"{when}: true / RM score (held-out)",
                             f"{_fmt(x.get('true_test'))} / {_fmt(x.get('rm_test'))}"))
        h = f.get("hacking")
        if h:
            rows += [("best step (true validation score)", h.get("best_step")),
                     ("reward hacking", f"flagged from step {h['onset_step']}" if h["flagged"]
                      else "not detected")]
        return rows

    section("rlhf", rlhf_rows)
    section("dpo", rlhf_rows)

    evals = {}
    for st in STAGES:  # a stage that kept a best checkpoint: eval.json is its, eval_final.json beside
        for file, label in (("eval.json", ""), ("eval_final.json", "final")):
            if (w / st / file).is_file():
                e = json.loads((w / st / file).read_text())
                which = label or ("best" if e.get("checkpoint") == "best" else "")
                evals[f"{st} ({which}, step {e.get('step')})" if which else st] = e
    if evals:
        out.append("## Evaluation suite (W/<stage>/eval.json; eval_final.json: the final "
                   "checkpoint beside a best one)\n")
        cols = [("val bits/byte", lambda e: e.get("validation", {}).get("bpb")),
                ("reversal fwd / rev", lambda e: _pair(e.get("reversal"), "forward_accuracy",
                                                       "reverse_accuracy")),
                ("QA train / held-out", lambda e: _pair(e, ("qa_train", "accuracy"),
                                                        ("qa_heldout", "accuracy"))),
                ("hallucination", lambda e: e.get("hallucination_rate")),
                ("arith. step-by-step / answer-first",
                 lambda e: _pair(e.get("answer_first"), "step_by_step", "answer_first")),
                ("identity", lambda e: e.get("identity_accuracy")),
                ("letters no tools / tools", lambda e: _pair(
                    e.get("tools"), ("letter_counting", "without_tools"),
                    ("letter_counting", "with_tools"))),
                ("few-shot 0 / 4", lambda e: _pair(e.get("few_shot"), "0_shot", "4_shot")),
                ("verbatim many / once", lambda e: _pair(e.get("regurgitation"),
                                                         "seen_many_times", "seen_once")),
                ("copy tokens / numbers", lambda e: _pair(e.get("in_context_copy"),
                                                          "random_tokens", "numbers")),
                ("name familiarity AUC document / reply", lambda e: _pair(
                    e.get("name_familiarity"), ("document", "auc_heldout_vs_nonexistent"),
                    ("reply", "auc_heldout_vs_nonexistent")))]
        out.append("| stage | " + " | ".join(c for c, _ in cols) + " |\n|---|"
                   + "---|" * len(cols) + "\n" + "".join(
                       f"| {st} | " + " | ".join(_fmt(f(e)) for _, f in cols) + " |\n"
                       for st, e in evals.items()))

    forced = {st: e for st, e in evals.items() if "recall_forced" in e}
    if forced:
        out.append("## Who says \"I don't know\": the recall tool or the model\n")
        rows = []
        for st, e in forced.items():
            k, u = e["recall_forced"]["tool_says_known"], e["recall_forced"]["tool_says_unknown"]
            rows.append(
                f"| {st} | {_fmt(e['qa_nonexistent'].get('refusal_rate'))} / "
                f"{_fmt(k['nonexistent_refusal_rate'])} | "
                f"{_fmt(e['qa_heldout'].get('refusal_rate'))} / {_fmt(u['heldout_refusal_rate'])}"
                f" | {_fmt(k['heldout_accuracy'])} |\n")
        # one string: `out` is joined with blank lines, which would cut the table into pieces
        out.append("The recall tool's verdict forced to \"known\" for every name leaves the "
                   "refusing to the model; forced to \"unknown\", an answer is the model "
                   "overriding the tool.\n\n| stage | nonexistent refused: tool as is / tool "
                   "says known | held-out refused: tool as is / tool says unknown | held-out "
                   "right, tool says known |\n|---|---|---|---|\n" + "".join(rows))

    if (w / "arena" / "arena.json").is_file():
        arena = json.loads((w / "arena" / "arena.json").read_text())
        out.append(f"## Arena ({arena['battles']} battles judged by the hidden labeler)\n")
        out.append("| model | Elo | 95% interval | win rate |\n|---|---|---|---|\n" + "".join(
            f"| {m} | {r['elo']:.0f} | {r['ci_low']:.0f} - {r['ci_high']:.0f} | "
            f"{_fmt(r['win_rate'])} |\n" for m, r in sorted(arena["ratings"].items(),
                                                            key=lambda kv: -kv[1]["elo"])))

    figs = []
    for stage in ("pretrain", "sft"):
        recs = _records(w / stage)
        if recs:
            _plot(plots / f"{stage}_loss.png", f"{stage} loss",
                  {"train": _curve(recs, "loss"), "validation": _curve(recs, "val_loss")})
            figs.append(f"plots/{stage}_loss.png")
    recs = _records(w / "rl")
    if recs:
        _plot(plots / "rl_reward.png", "RL: mean reward", {"reward": _curve(recs, "reward")})
        _plot(plots / "rl_length.png", "RL: response length (tokens)",
              {"length": _curve(recs, "response_length")})
        _plot(plots / "rl_kl.png", "RL: KL to the SFT model (per token)",
              {"kl": _curve(recs, "kl")})
        figs += ["plots/rl_reward.png", "plots/rl_length.png", "plots/rl_kl.png"]
    if (w / "rlhf" / "hacking.png").is_file():
        figs.append("rlhf/hacking.png")
    if figs:
        out.append("## Plots\n")
        out += [f"![{f}]({f})\n" for f in figs]
    out += _experiments(w)
    if (w / "test_time" / "test_time.png").is_file():
        out.append("![test-time compute](test_time/test_time.png)\n")
    out += _sweeps(w)
    path = w / "report.md"
    path.write_text("\n".join(out))
    return path


# The seeds' claims, one per experiment entry point (python -m experiments.<name> --workdir W).
CLAIMS = {
    "refusal": "refusal training stops direct requests, but role-play, encodings (base64) and "
               "other languages get past it; adversarial data closes that, at a cost in "
               "over-refusal",
    "injection": "an instruction planted in a web page or a tool's output hijacks the assistant",
    "poison": "a few poisoned documents with a trigger phrase plant a backdoor that survives "
              "fine-tuning",
    "test_time": "sampling more and choosing (majority vote, best-of-n with a reward model) "
                 "buys accuracy with compute",
    "multistep": "tools in a loop let a model do multi-step tasks it cannot do in one turn",
}


def _measured(name: str, f: dict) -> str:
    """One line of what an experiment measured, from its meta.json figures."""
    if name == "refusal":
        parts = []
        for key, label in (("sft", "no refusal data"), ("refusal_sft", "refusal SFT"),
                           ("adversarial_sft", "adversarial SFT")):
            m = f.get(key)
            if m:
                jb = ", ".join(f"{k} {_fmt(v)}" for k, v in m["jailbreak_success"].items())
                parts.append(f"{label}: direct refused {_fmt(m['direct_refusal'])}, jailbreaks "
                             f"succeed {jb}; over-refusal {_fmt(m['over_refusal'].get('direct'))}")
        return "; ".join(parts)
    if name == "injection":
        parts = []
        for when in ("before", "after"):
            for ch, m in (f.get(when) or {}).items():
                parts.append(f"{when} the defence, {ch}: obeyed {_fmt(m['injected']['obeyed'])} "
                             f"(new wording {_fmt(m['injected']['obeyed_new_wording'])}), "
                             f"accuracy clean {_fmt(m['clean'])} / injected "
                             f"{_fmt(m['injected']['accuracy'])}")
        return "; ".join(parts)
    if name == "poison":
        parts = [f"k={k}: {_fmt(f[f'k={k}']['with_trigger'])} (clean {_fmt(f[f'k={k}']['clean'])},"
                 f" recall {_fmt(f[f'k={k}'].get('biography_recall'))})"
                 for k in f.get("ks", []) if f"k={k}" in f]
        line = "trigger -> target, base model: " + "; ".join(parts)
        sft = [(k, v) for k, v in f.items() if k.endswith("_sft") and isinstance(v, dict)]
        for k, v in sft:
            line += (f"; {k}: in a document {_fmt(v['document']['with_trigger'])}, in chat "
                     f"{_fmt(v['chat']['with_trigger'])} (clean {_fmt(v['chat']['clean'])})")
        return line
    if name == "test_time":
        c = f.get("curve", {})
        ns = sorted(c, key=int)
        if not ns:
            return "-"
        lo, hi = c[ns[0]], c[ns[-1]]
        return (f"{f.get('policy')}, {f.get('problems')} problems: one sample {_fmt(lo['single'])}; "
                f"n={ns[-1]} majority {_fmt(hi['majority'])}, best-of-n (RM) "
                f"{_fmt(hi.get('best_of_n'))}, oracle {_fmt(hi['oracle'])} at "
                f"{_fmt(hi['tokens_per_problem'])} tokens a problem")
    if name == "multistep":
        parts = []
        for when in ("before", "after"):
            m = f.get(when)
            if m:
                parts.append(f"{'SFT' if when == 'before' else 'with two-call SFT data'}: agent "
                             f"{_fmt(m['agent'])} ({_fmt(m['agent_mean_steps'])} calls), one turn "
                             f"{_fmt(m['one_turn'])}")
        return f"{f.get('tasks')} tasks; " + "; ".join(parts)
    return "-"


def _experiments(w: Path) -> list[str]:
    """The security and test-time experiments that ran under W: one line each."""
    rows = []
    for name, claim in CLAIMS.items():
        meta = read_meta(w / name)
        if meta is not None:
            rows.append(f"| {name} | {claim} | {_measured(name, meta.get('figures', {}))} |\n")
    if not rows:
        return []
    return ["## Security and test-time experiments\n",
            "| experiment | what the seeds claim | measured here |\n|---|---|---|\n" + "".join(rows)]


def _sweeps(w: Path) -> list[str]:
    """The tables and plots of each sweep run under W/sweeps/ (experiments.sweep), as it wrote
    them in W/sweeps/NAME/results.md, its headings one level down and its links re-rooted."""
    import re

    out = []
    for results in sorted((w / "sweeps").glob("*/results.md")):
        rel = results.parent.relative_to(w).as_posix()
        text = results.read_text()
        text = re.sub(r"^(#+) ", lambda m: "#" + m.group(1) + " ", text, flags=re.M)
        text = re.sub(r"\]\(plots/", f"]({rel}/plots/", text)
        out.append(text)
    return (["## Sweeps\n"] + out) if out else []


if __name__ == "__main__":
    from experiments.workdir import StageFlags, lock_run, run_entry

    _FLAGS = StageFlags(workdir="run root", workdir_required=True)

    def main(argv):
        lock_run(_FLAGS.workdir)
        print(write_report(_FLAGS.workdir))

    run_entry(main)
