"""int8 weights for inference (model.quant): logits close to the float model's, the decode path
equal to the full forward, bad requests refused in one line."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model import transformer
from model.engine import SamplingConfig, generate
from model.handle import LM
from model.quant import quantize
from tests.tiny import tiny_config

# Stated tolerance: the logits' RMS error is at most 2.5% of their RMS (int8 rounding of a
# weight is at most 1/254 of its row's largest entry; it adds up over the layers).
REL_TOL = 0.025
MODES = ("int8", "w8a8")


@pytest.fixture(scope="module")
def lms():
    out = {}
    for tie in (True, False):
        cfg = tiny_config(init_std=0.1, tie_embeddings=tie)
        out[tie] = LM(transformer.init(cfg, jax.random.key(1)), cfg)
    return out


def _rel_rms(got, ref):
    return float(np.sqrt(((got - ref) ** 2).mean() / (ref**2).mean()))


def _nbytes(params):
    return sum(a.nbytes for a in jax.tree.leaves(params))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("tie", [True, False])
def test_quantized_logits_stay_within_the_stated_tolerance(lms, mode, tie):
    lm = lms[tie]
    q = quantize(lm, mode)
    assert q.cfg.quant == mode and lm.cfg.quant == "none"
    leaves = [(str(path[-1].key), leaf)
              for path, leaf in jax.tree_util.tree_leaves_with_path(q.params)]
    names = {name for name, _ in leaves}
    for name, leaf in leaves:
        if name in transformer.QUANT_CONTRACT:
            assert leaf.dtype == jnp.int8, name
            assert f"{name}_scale" in names, name
    assert _nbytes(q.params) < 0.3 * _nbytes(lm.params)  # int8 + one scale per channel
    toks = jnp.asarray(np.random.default_rng(0).integers(0, lm.cfg.vocab_size, (3, 20)))
    ref = np.asarray(transformer.forward(lm.params, toks, lm.cfg)[0])
    got = np.asarray(transformer.forward(q.params, toks, q.cfg)[0])
    err = _rel_rms(got, ref)
    assert 0 < err < REL_TOL, err  # rounding changes something, and not much
    assert (got.argmax(-1) == ref.argmax(-1)).mean() >= 0.95


@pytest.mark.parametrize("mode", MODES)
def test_decoding_int8_weights_gives_the_tokens_of_their_own_full_forward(lms, mode):
    """Greedy decoding (prefill + cached steps, one row and several) against argmax of the full
    forward pass over the growing sequence; the one-row int8-by-int8 path pads to two rows."""
    q = quantize(lms[False], mode)
    rng = np.random.default_rng(2)
    prompts = [rng.integers(1, q.cfg.vocab_size, n).tolist() for n in (5, 9, 3)]
    # one compiled full forward over a right-padded row (causal: the padding changes nothing before it)
    full = jax.jit(lambda p, t: transformer.forward(p, t, q.cfg)[0][0])
    for batch in ([prompts[0]], prompts):
        got = generate(q.params, q.cfg, batch, SamplingConfig(max_new_tokens=8, temperature=0))
        for prompt, new in zip(batch, got.tokens, strict=True):
            seq = list(prompt)
            for _ in range(8):
                row = np.zeros((1, 32), np.int32)
                row[0, : len(seq)] = seq
                seq.append(int(jnp.argmax(full(q.params, row)[len(seq) - 1])))
            assert new == seq[len(prompt):]


def test_bad_quant_requests_fail_in_one_line(lms):
    lm = lms[True]
    with pytest.raises(ValueError, match="quant='int4'"):
        quantize(lm, "int4")
    with pytest.raises(ValueError, match="already quantized"):
        quantize(quantize(lm, "int8"), "w8a8")
    assert quantize(lm, "none") is lm
    with pytest.raises(ValueError, match="not initialised"):
        transformer.init(dataclasses.replace(lm.cfg, quant="int8"), jax.random.key(0))
    with pytest.raises(ValueError, match="quant"):
        tiny_config(quant="fp4")


def test_a_stage_loads_quantized(tiny):  # noqa: F811
    from experiments.import_model import import_model
    from train.stage import load_stage

    import_model(str(tiny["hf"]), tiny["dir"] / "q")
    lm, _ = load_stage(tiny["dir"] / "q" / "import")
    q, _ = load_stage(tiny["dir"] / "q" / "import", "int8")
    assert q.cfg.quant == "int8" and q.tok is not None and q.chat is not None
    ids = jnp.asarray([[1, 5, 9, 30]])
    ref = np.asarray(transformer.forward(lm.params, ids, lm.cfg)[0])
    got = np.asarray(transformer.forward(q.params, ids, q.cfg)[0])
    assert 0 < _rel_rms(got, ref) < REL_TOL


from tests.test_import import tiny  # noqa: E402,F401 - the imported-model fixture
