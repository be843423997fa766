"""The one host loop, driven by stand-in steps: step t+1 is dispatched before step t's metrics
are fetched, and a non-finite loss stops the run before any save, whether the batches are
token rows, preference pairs or RL rollouts sampled from the current parameters."""

import jax.numpy as jnp
import numpy as np
import pytest

from train import loop
from train.checkpoint import Checkpointer
from train.loop import NonFiniteLoss, OpenState, TrainConfig, host_loop


def _state():
    return {"step": jnp.asarray(0, jnp.int32), "params": {"w": jnp.zeros(4)},
            "opt_state": {"m": jnp.zeros(4)}, "rng": jnp.zeros(2, jnp.uint32)}


def _open(tmp_path):
    return OpenState(mesh=None, optimizer=None, schedule=lambda s: 0.1, state=_state(),
                     data_state=None, ckpt=Checkpointer(tmp_path / "checkpoints", keep=5),
                     state_sharding=None, param_sharding=None, batch_sharding=None)


KINDS = {  # next_batch for each kind of stage: what it reads
    "tokens": lambda step, state: ({"inputs": np.full((2, 3), step)}, {}),
    "pairs": lambda step, state: ({"chosen": np.full(2, step), "rejected": np.zeros(2)}, {}),
    # a rollout samples from the current parameters: it needs the state after the last step
    "rollouts": lambda step, state: ({"tokens": np.asarray(state["params"]["w"]) + step},
                                     {"seen": float(state["params"]["w"][0])}),
}


def _step(events, nan_at=None):
    def step_fn(state, batch):
        done = int(state["step"]) + 1
        events.append(("dispatch", done))
        loss = float("nan") if done == nan_at else 1.0 / done
        new = {**state, "step": state["step"] + 1,
               "params": {"w": state["params"]["w"] + 1.0}}
        return new, {"loss": jnp.asarray(loss), "grad_norm": jnp.asarray(0.5),
                     "params_finite": jnp.asarray(1.0), "step": done}
    return step_fn


@pytest.mark.parametrize("kind", KINDS)
def test_the_next_step_is_dispatched_before_the_last_metrics_are_fetched(tmp_path, kind, monkeypatch):
    events, records = [], []
    real = loop._fetch
    monkeypatch.setattr(loop, "_fetch", lambda m: events.append(("fetch", int(m["step"]))) or real(m))
    cfg = TrainConfig(steps=6, log_every=3, eval_every=6, save_every=3, sample_every=6)
    st = _open(tmp_path)
    state = host_loop(st, cfg, tmp_path, _step(events), KINDS[kind],
                      record=lambda done, m, host, clock: records.append(done) or {"step": done},
                      data_state=lambda done: {"step": done},
                      evaluate=lambda params, done: {"eval_w": float(params["w"][0])})
    assert int(state["step"]) == 6 and records == [1, 2, 3, 4, 5, 6]  # every step checked, in order
    # steps 1, 2, 4, 5 are fetched after the next one was dispatched; 3 and 6 (log, save) at once
    for k in (1, 2, 4, 5):
        assert events.index(("dispatch", k + 1)) < events.index(("fetch", k)), events
    assert events.index(("fetch", 3)) < events.index(("dispatch", 4))
    assert Checkpointer(tmp_path / "checkpoints").manager.all_steps() == [3, 6]
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 6 and '"eval_w": 6.0' in lines[-1]


@pytest.mark.parametrize("kind", KINDS)
def test_a_non_finite_loss_stops_before_any_save(tmp_path, kind):
    events = []
    cfg = TrainConfig(steps=8, log_every=4, eval_every=8, save_every=2, sample_every=8)
    with pytest.raises(NonFiniteLoss, match=r"after step 5: stopping. The last good checkpoint \(step 4\)"):
        host_loop(_open(tmp_path), cfg, tmp_path, _step(events, nan_at=5), KINDS[kind],
                  record=lambda done, m, host, clock: {"step": done},
                  data_state=lambda done: {"step": done})
    assert Checkpointer(tmp_path / "checkpoints").manager.all_steps() == [2, 4]


def test_the_best_state_is_kept_and_a_resumed_run_forgets_a_lost_future(tmp_path):
    events, best = [], []
    cfg = TrainConfig(steps=4, log_every=1, eval_every=1, save_every=4, sample_every=4)
    scores = {1: 0.2, 2: 0.9, 3: 0.5, 4: 0.1}
    host_loop(_open(tmp_path), cfg, tmp_path, _step(events), KINDS["rollouts"],
              record=lambda done, m, host, clock: {"step": done},
              data_state=lambda done: {"step": done},
              evaluate=lambda params, done: {"eval_select": scores[done]},
              best_key="eval_select", on_best=lambda done, v: best.append((done, v)),
              sync_every_step=True)
    assert best == [(1, 0.2), (2, 0.9)]
    assert Checkpointer(tmp_path / "best" / "checkpoints").manager.all_steps() == [2]
    # resumed at step 1 (the checkpoint before the best one), the best of step 2 is gone
    st = _open(tmp_path / "again")
    st.state["step"] = jnp.asarray(1, jnp.int32)
    (tmp_path / "again" / "best" / "checkpoints" / "2").mkdir(parents=True)
    host_loop(st, TrainConfig(steps=1), tmp_path / "again", _step(events), KINDS["rollouts"],
              record=lambda done, m, host, clock: {"step": done},
              data_state=lambda done: {"step": done}, best_key="eval_select")
    assert not (tmp_path / "again" / "best" / "checkpoints" / "2").exists()
