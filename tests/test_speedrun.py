"""The speedrun's plumbing (its stages are the entry points tested elsewhere) and the report."""

import json

import pytest

from experiments.configs import tiny
from experiments.report import write_report
from experiments.speedrun import config_args, stages


def test_config_arguments_are_forwarded_and_others_are_not():
    argv = ["--workdir=/x", "--config=experiments/configs/tiny.py:smoke", "--config.train.steps",
            "5", "--config.rl.tools=True", "--skip=dpo"]
    assert config_args(argv) == ["--config=experiments/configs/tiny.py:smoke",
                                 "--config.train.steps", "5", "--config.rl.tools=True"]


def test_stages_chain_from_corpus_to_the_arena(tmp_path):
    names = [s[0] for s in stages(tmp_path)]
    assert names == ["corpus", "tokenizer", "pretrain", "probe", "sft", "rl", "rm", "rlhf",
                     "eval:pretrain", "eval:sft", "eval:rl", "eval:rlhf", "arena"]
    assert dict((s[0], s[2]) for s in stages(tmp_path))["rl"] == [f"--init_from={tmp_path / 'sft'}"]
    with_dpo = [s[0] for s in stages(tmp_path, dpo=True)]
    assert with_dpo[7:10] == ["rlhf", "dpo", "eval:pretrain"] and with_dpo[-2:] == ["eval:dpo",
                                                                                  "arena"]


def test_the_smoke_variant_shrinks_every_stage():
    full, smoke = tiny.get_config(), tiny.get_config("smoke")
    for section in ("train", "sft_train", "rl_train", "rm_train", "rlhf_train"):
        assert smoke[section].steps < full[section].steps
    with pytest.raises(ValueError, match="variant"):
        tiny.get_config("huge")


def test_the_report_lists_what_ran_and_what_did_not(tmp_path):
    (tmp_path / "rl").mkdir()
    (tmp_path / "rl/meta.json").write_text(json.dumps({"objective": "arithmetic", "figures": {
        "before": {"pass@1_greedy": 0.1, "n_eval": 200}, "after": {"pass@1_greedy": 0.2}}}))
    (tmp_path / "rl/metrics.jsonl").write_text(
        "".join(json.dumps({"step": s, "reward": s / 10, "response_length": 30 + s,
                            "kl": s / 100}) + "\n"
                for s in range(1, 4)))
    (tmp_path / "speedrun.json").write_text(json.dumps(
        {"stages": {"rl": {"wall_s": 12.0}, "corpus": {"wall_s": 3.0}}, "total_wall_s": 15.0}))
    text = write_report(tmp_path).read_text()
    assert "| pass@1_greedy: before -> after | 0.1 -> 0.2 |" in text
    assert text.index("| corpus | 3 |") < text.index("| rl | 12 |")  # pipeline order
    assert "## sft\n\nnot run" in text
    assert (tmp_path / "plots/rl_reward.png").stat().st_size > 1000
    assert (tmp_path / "plots/rl_kl.png").stat().st_size > 1000


def test_the_report_shows_the_recall_tool_of_a_model_taught_to_call_it(tmp_path):
    (tmp_path / "sft").mkdir()
    meta = {"recall_threshold": -3.75, "figures": {"nonexistent_answer_rate": 0.04,
                                                   "recall_known_rate": {"heldout": 1.0,
                                                                         "nonexistent": 0.02}}}
    (tmp_path / "sft/meta.json").write_text(json.dumps(meta))
    text = write_report(tmp_path).read_text()
    assert "| recall tool: threshold (nats); 'known' held-out / nonexistent | -3.75; 1 / 0.02 |" in text
    del meta["recall_threshold"]
    (tmp_path / "sft/meta.json").write_text(json.dumps(meta))
    assert "recall tool" not in write_report(tmp_path).read_text()


def test_the_report_shows_the_best_and_final_checkpoints_and_who_refuses(tmp_path):
    (tmp_path / "rlhf").mkdir()
    (tmp_path / "sft").mkdir()
    qa = {"qa_heldout": {"accuracy": 0.8, "refusal_rate": 0.02},
          "qa_nonexistent": {"refusal_rate": 0.96}}
    forced = {"tool_says_known": {"heldout_accuracy": 0.78, "heldout_refusal_rate": 0.0,
                                  "nonexistent_refusal_rate": 0.1},
              "tool_says_unknown": {"heldout_accuracy": 0.0, "heldout_refusal_rate": 1.0,
                                    "nonexistent_refusal_rate": 1.0}}
    (tmp_path / "sft/eval.json").write_text(json.dumps({**qa, "recall_forced": forced,
                                                        "checkpoint": "final", "step": 300}))
    (tmp_path / "rlhf/eval.json").write_text(json.dumps({**qa, "recall_forced": forced,
                                                         "checkpoint": "best", "step": 10}))
    (tmp_path / "rlhf/eval_final.json").write_text(json.dumps({**qa, "checkpoint": "final",
                                                               "step": 30}))
    text = write_report(tmp_path).read_text()
    assert "| rlhf (best, step 10) |" in text and "| rlhf (final, step 30) |" in text
    # one table: its header, rule and rows on consecutive lines
    assert ("right, tool says known |\n|---|---|---|---|\n| sft | 0.96 / 0.1 | 0.02 / 1 | 0.78 |\n"
            "| rlhf (best, step 10) | 0.96 / 0.1 |") in text
