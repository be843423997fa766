"""The pod planner: what it reads from the compiler agrees with ModelConfig's formulas."""

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from experiments.configs import gpt2_small
from experiments.plan import collective_bytes, parse_mesh, plan
from model.config import ModelConfig
from train.loop import TrainConfig
from train.optim import OptimConfig

REPO = Path(__file__).resolve().parent.parent


def test_124m_on_8_devices_agrees_with_the_formulas():
    c = gpt2_small.get_config()
    model = ModelConfig(**{**c.model.to_dict(), "vocab_size": c.tokenizer.vocab_size})
    assert model.scan_layers and model.remat == "dots"
    # a small batch: parameter memory and FLOPs per token do not depend on it
    train = dataclasses.replace(TrainConfig(**c.train.to_dict()), batch_size=8, seq_len=512)
    p = plan(model, train, OptimConfig(**c.optim.to_dict()), {"data": 2, "fsdp": 2, "tensor": 2},
             accelerator=(989e12, 80 * 2**30))
    assert p["devices"] == 8 and p["mesh"] == {"data": 2, "fsdp": 2, "tensor": 2}
    # f32 weights + Adam's two moments, every matrix split 4 ways (fsdp x tensor); norms and
    # small vectors replicated
    expected = 12 * model.n_params() / 4
    assert 0.97 < p["argument_bytes"] / expected < 1.1, (p["argument_bytes"], expected)
    assert p["alias_bytes"] > 0.9 * p["argument_bytes"]  # the state is donated
    # 6 x params x tokens + attention; the compiled step also does norms, softmax, the
    # optimizer and remat's recomputed attention
    ratio = p["flops_per_device"] / p["formula_flops_per_device"]
    assert 1.0 < ratio < 1.2, ratio
    # FSDP gathers the weights, and gradients are reduced across the data axes
    assert p["collective_bytes"]["all-gather"] > 0
    assert p["collective_bytes"]["all-reduce"] + p["collective_bytes"]["reduce-scatter"] > 0
    assert p["fits"] and p["step_s_at_mfu"] == pytest.approx(2 * p["step_s_at_peak"])


HLO = """HloModule m

%body (p: (s32[], f32[8])) -> (s32[], f32[8]) {
  %p = (s32[], f32[8]) parameter(0)
  %x = f32[8]{0} get-tuple-element(%p), index=1
  %ar = f32[8]{0} all-reduce(%x), replica_groups={}, to_apply=%add
  ROOT %t = (s32[], f32[8]) tuple(%i, %ar)
}

%cond (p: (s32[], f32[8])) -> pred[] {
  ROOT %c = pred[] constant(true)
}

ENTRY %main (a: f32[8]) -> f32[16,4] {
  %a = f32[8]{0} parameter(0)
  %w = (s32[], f32[8]) while(%t0), condition=%cond, body=%body, backend_config={"known_trip_count":{"n":"12"}}
  %g = bf16[16,4]{1,0} all-gather(%y), dimensions={0}
  ROOT %s = (f32[4], bf16[2]) reduce-scatter(%z), dimensions={0}
}
"""


def test_collective_bytes_count_a_loop_body_its_trip_count_times():
    got = collective_bytes(HLO)
    assert got["all-reduce"] == 12 * 8 * 4
    assert got["all-gather"] == 16 * 4 * 2
    assert got["reduce-scatter"] == 4 * 4 + 2 * 2
    assert got["all-to-all"] == 0


def test_a_bad_mesh_is_named():
    assert parse_mesh("data=2,fsdp=-1") == {"data": 2, "fsdp": -1}
    with pytest.raises(ValueError, match="pipeline=2"):
        parse_mesh("data=2,pipeline=2")
    r = subprocess.run([sys.executable, "-m", "experiments.plan", "--devices=4",
                        "--mesh=data=3", "--config.train.batch_size=8"], cwd=REPO,
                       capture_output=True, text=True)
    assert r.returncode == 2 and "3" in r.stderr and len(r.stderr.strip().splitlines()) == 1, \
        r.stderr
