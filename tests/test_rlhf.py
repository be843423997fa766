"""RLHF pieces: the ranking loss, DPO, preference rows, and the reward-hacking detector on a toy
policy that finds a deliberately exploitable reward."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from tiny import tiny_config

from data.preferences import load_preferences, rank_candidates
from data.world import WorldConfig, make_world
from model import transformer
from model.engine import SamplingConfig
from model.handle import LM
from train.loop import TrainConfig
from train.optim import OptimConfig
from train.pair_loop import batch_indices, train_on_pairs
from train.reward import (
    dpo_loss,
    init_reward_model,
    pair_batch,
    pair_width,
    ranking_loss,
    reward_hacking,
    rm_loss,
    sequence_logps,
)
from train.rl import RLConfig, build_batch, group_advantages, make_rl_step, rollout, token_logprobs
from train.step import init_state, make_step


def _toy_pair():
    # ((ids, mask) chosen, (ids, mask) rejected): same prompt [1, 5], different answers
    return (([1, 5, 11, 12, 2], [0, 0, 1, 1, 1]), ([1, 5, 21, 22, 23, 2], [0, 0, 1, 1, 1, 1]))


def test_the_ranking_loss_learns_to_prefer_the_chosen_answer_and_ignores_constants():
    rc, rr = jnp.array([0.3, -1.0]), jnp.array([0.1, 2.0])
    for c in (5.0, -17.0):
        assert ranking_loss(rc + c, rr + c)[0] == pytest.approx(float(ranking_loss(rc, rr)[0]))
    assert ranking_loss(jnp.array([2.0]), jnp.array([0.0]))[0] < ranking_loss(
        jnp.array([0.0]), jnp.array([2.0]))[0]

    cfg = tiny_config()
    rm = init_reward_model(transformer.init(cfg, jax.random.key(0)), cfg)
    batch = pair_batch([_toy_pair()] * 4, seq_len=16)
    assert batch["chosen_last"][0] == 4 and batch["rejected_last"][0] == 5
    assert batch["chosen_mask"][0].tolist()[:5] == [0, 1, 1, 1, 0]  # targets 11, 12, <end>
    # the stages' width: a multiple of 64 holding the longest side, at most the context
    long = (([1] * 70, [0] * 70), _toy_pair()[1])
    assert pair_width([_toy_pair()] * 4, 256) == 64 and pair_width([_toy_pair(), long], 256) == 128
    assert pair_width([long], 100) == 100
    loss_fn = jax.jit(lambda p, b: rm_loss(p, b, cfg))
    loss0, aux0 = loss_fn(rm, batch)
    assert float(loss0) == pytest.approx(np.log(2), abs=1e-5)  # a zero head scores all alike
    state = init_state(rm, optax.adam(1e-2), 0)
    step = jax.jit(make_step(lambda p, b: rm_loss(p, b, cfg), optax.adam(1e-2)))
    for _ in range(10):
        state, m = step(state, batch)
    loss, aux = loss_fn(state["params"], batch)
    assert float(loss) < float(loss0) and float(aux["accuracy"]) == 1.0
    # the bias moves every score alike: the loss has no gradient through it
    g = jax.jit(jax.grad(lambda p: rm_loss(p, batch, cfg)[0]))(rm)
    assert float(g["head"]["b"]) == 0.0


def test_dpo_moves_the_policy_towards_the_chosen_answer():
    cfg = tiny_config()
    params = transformer.init(cfg, jax.random.key(1))
    batch = pair_batch([_toy_pair()] * 2, seq_len=16)
    logps = jax.jit(lambda p, b: {s: sequence_logps(p, b[f"{s}_tokens"], b[f"{s}_mask"], cfg)
                                  for s in ("chosen", "rejected")})
    ref = {f"ref_{k}": v for k, v in logps(params, batch).items()}
    batch = {**batch, **ref}
    loss0, _ = jax.jit(lambda p, b: dpo_loss(p, b, cfg, beta=0.1))(params, batch)
    assert float(loss0) == pytest.approx(np.log(2), abs=1e-5)  # policy == reference
    state, _ = jax.jit(make_step(lambda p, b: dpo_loss(p, b, cfg, 0.1), optax.sgd(0.5)))(
        init_state(params, optax.sgd(0.5), 0), batch)
    lp = logps(state["params"], batch)
    assert float(lp["chosen"][0]) > float(ref["ref_chosen"][0])
    assert float(lp["rejected"][0]) < float(ref["ref_rejected"][0])


def test_preference_rows_rank_by_the_labeler_and_bad_files_name_the_line(tmp_path):
    world = make_world(WorldConfig(seed=2, n_people=4, n_nonexistent=1))
    p = world.people[0]
    f = p.facts()
    good = f"{p.name} was born in {f['birth_city']}."
    rows = rank_candidates(world, p.name, f"Tell me about {p.name}.",
                           [good, "I like cheese cheese cheese", good, "Hmm"])
    assert rows and all(r["chosen_score"] > r["rejected_score"] for r in rows)
    assert rows[0]["chosen"] == good and len({(r["chosen"], r["rejected"]) for r in rows}) == len(rows)
    path = tmp_path / "prefs.jsonl"
    path.write_text(json.dumps({"prompt": "q", "chosen": "a", "rejected": "b"}) + "\n"
                    + json.dumps({"prompt": "q", "chosen": "a"}) + "\n")
    with pytest.raises(ValueError, match=r"prefs.jsonl:2: .*rejected"):
        load_preferences(path)
    path.write_text(json.dumps({"prompt": "q", "chosen": "a", "rejected": "b"}) + "\n")
    assert load_preferences(path)[0]["chosen"] == "a"


def test_pair_batches_cover_every_pair_each_epoch_and_depend_only_on_the_step():
    seen = np.concatenate([batch_indices(10, 5, s, seed=3) for s in (0, 1)])
    assert sorted(seen.tolist()) == list(range(10))
    assert np.array_equal(batch_indices(10, 5, 7, 3), batch_indices(10, 5, 7, 3))
    assert len(batch_indices(3, 8, 0, 0)) == 8  # fewer pairs than a batch: repeated


def test_a_pair_batch_the_data_shards_cannot_split_is_refused_by_name(tmp_path):
    cfg = tiny_config()
    with pytest.raises(ValueError, match=r"rm_train.batch_size = 6 rows per step must divide "
                                         r"evenly over the mesh's 8 data shards"):
        train_on_pairs(tmp_path / "rm", cfg, TrainConfig(steps=2, batch_size=6), OptimConfig(),
                       lambda p, b: (0.0, {}), init_params=None, train_pairs=[_toy_pair()] * 6,
                       evaluate=dict, batch_name="rm_train.batch_size")
    assert not list((tmp_path / "rm").glob("checkpoints/*"))  # nothing written


def test_the_detector_flags_a_policy_that_exploits_a_repeated_token_reward():
    """A reward model that pays for every copy of token 3 (the "the the the" joke): the toy
    policy learns to repeat it, the RM score climbs while the true score (distinct tokens)
    falls, and the detector flags it."""
    cfg = tiny_config(vocab_size=8, max_seq_len=32)
    params = transformer.init(cfg, jax.random.key(0))
    rl = RLConfig(prompts_per_step=4, group_size=8, clip_eps=0.2)
    opt = optax.adam(3e-2)
    state = init_state(params, opt, 0)
    step = jax.jit(make_rl_step(cfg, opt, rl))
    logp_fn = jax.jit(lambda p, b: token_logprobs(p, b, cfg))
    prompts = [[1, 4], [2, 5], [6, 1], [5, 5]]

    def sample(params, seed):
        return rollout(LM(params, cfg), prompts, rl.group_size,
                       SamplingConfig(max_new_tokens=8, temperature=1.0, seed=seed))

    def measure(params, i):
        ro = sample(params, 10_000 + i)
        rm = np.mean([t.count(3) for t in ro.tokens])
        true = np.mean([len(set(t)) for t in ro.tokens])
        return {"step": i, "rm": float(rm), "true": float(true)}

    curve = [measure(state["params"], 0)]
    for i in range(1, 16):
        ro = sample(state["params"], i)
        rewards = np.array([t.count(3) for t in ro.tokens], float).reshape(4, 8)
        batch = build_batch(prompts, ro, group_advantages(rewards).reshape(-1), 16, end_id=0)
        logp = logp_fn(state["params"], batch)
        state, _ = step(state, {**batch, "old_logp": logp, "ref_logp": logp})
        if i % 5 == 0:
            curve.append(measure(state["params"], i))
    assert curve[-1]["rm"] > curve[0]["rm"] + 2  # the exploit was found
    h = reward_hacking(curve)
    assert h["flagged"] and h["best_step"] == 0 and h["onset_step"] == 5
    assert h["rm_gain_after_best"] > 0 and h["true_drop_after_best"] > 0
    honest = [{"step": s, "rm": s, "true": s} for s in range(4)]
    assert not reward_hacking(honest)["flagged"]


# ---- the stages, in-process on the tiny parent of test_rl ------------------------------------------

from test_rl import parent  # noqa: E402,F401  (the module-scoped fixture: a tiny SFT-like stage)


def _stage_config():
    from experiments.configs.tiny import get_config

    c = get_config()
    c.rm.update(k=4, rounds=1, max_new_tokens=8)
    c.rm_train.update(steps=4, batch_size=8, save_every=2, eval_every=2, log_every=2)
    c.rlhf.update(prompts_per_step=2, group_size=4, max_new_tokens=8, eval_samples=1)
    c.rlhf_train.update(steps=4, batch_size=8, save_every=2, eval_every=2, log_every=2)
    return c


def test_rm_then_rlhf_and_dpo_write_their_stages(parent):  # noqa: F811
    from experiments.rlhf import run_rlhf
    from experiments.rm import train_rm

    w = parent
    c = _stage_config()
    world = make_world(WorldConfig(**json.loads((w / "corpus/world.json").read_text())))
    extra = w / "extra_prefs.jsonl"  # a random parent's answers may all score alike
    extra.write_text("".join(json.dumps({
        "prompt": it["prompt"], "chosen": f"{it['name']} was born in {world.people[0].birth_city}.",
        "rejected": "cheese cheese cheese"}) + "\n" for it in world.labeler_prompts("train")))
    c.rm.extra_jsonl = str(extra)
    rm = train_rm(c, w / "sft", w)
    assert 0 <= rm["train_accuracy"] <= 1 and rm["step"] == 4
    rows = [json.loads(x) for x in (w / "rm/preferences.jsonl").read_text().splitlines()]
    assert all(r["chosen_score"] > r["rejected_score"] for r in rows)
    train_names = {it["name"] for it in world.labeler_prompts("train")}
    assert {r["name"] for r in rows} <= train_names  # held-out people never in the RM's pairs
    n_extra = len(world.labeler_prompts("train"))

    f = run_rlhf(c, w / "sft", w)
    assert f["step"] == 4 and [e["step"] for e in f["eval_curve"]] == [2, 4]
    assert {"rm", "true", "select"} <= set(f["eval_curve"][0])
    assert {"true_test", "rm_test"} <= set(f["before"]) and "true_test" in f["best"]
    assert f["best_step"] in (2, 4) and "flagged" in f["hacking"]
    assert (w / "rlhf/hacking.png").stat().st_size > 1000
    assert (w / "rlhf/best/checkpoints").is_dir()
    # the evaluation reads the best checkpoint by default, the final one beside it
    from experiments.eval import checkpoints_to_evaluate, eval_file
    from train.stage import load_stage

    assert checkpoints_to_evaluate(w / "rlhf", "default") == ["best", "final"]
    assert checkpoints_to_evaluate(w / "sft", "default") == ["final"]
    assert eval_file("none", "best", True) == "eval.json"
    assert eval_file("none", "final", True) == "eval_final.json"
    assert eval_file("int8", "final", False) == "eval_int8.json"
    with pytest.raises(FileNotFoundError, match="no best/"):
        load_stage(w / "sft", checkpoint="best")
    best, final = (load_stage(w / "rlhf", checkpoint=k)[0].params for k in ("best", "final"))
    same = jax.tree.leaves(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), best, final))
    assert all(same) == (f["best_step"] == f["step"])

    c.rlhf.method = "dpo"
    d = run_rlhf(c, w / "sft", w)
    assert d["step"] == 4 and {"true_test", "rm_test"} <= set(d["after"])
    meta = json.loads((w / "dpo/meta.json").read_text())
    assert meta["method"] == "dpo" and meta["pairs"] == len(rows) + n_extra

    # the arena and the report over the same run root (experiments.eval runs on every model in
    # the smoke speedrun of .ci/run; its scorers are tested in test_suite)
    from experiments.arena import run_arena
    from experiments.report import write_report

    c.arena.update(samples=1, bootstrap=20, max_new_tokens=8)
    arena = run_arena(c, w, ["sft", "rlhf", "rlhf:best", "dpo", "rl_missing"])
    assert set(arena["ratings"]) == {"sft", "rlhf", "rlhf:best", "dpo"}
    assert arena["missing"] == ["rl_missing"] and arena["battles"] == 6 * len(
        world.labeler_prompts("test"))
    report = write_report(w).read_text()
    assert "## Arena" in report and "| sft |" in report and "## rm" in report
    elos = [float(ln.split("|")[2]) for ln in report.split("## Arena")[1].splitlines()
            if ln.startswith("| ") and not ln.startswith("| model")]
    assert elos == sorted(elos, reverse=True)  # best first
