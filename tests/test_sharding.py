"""Sharding: logical axes -> mesh axes, sharded init, and a sharded forward equal to the unsharded one."""

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec
from tiny import tiny_config

from model import engine
from model import transformer as tf
from model.sharding import logical_to_spec
from train.mesh import make_mesh


def test_eight_fake_devices_are_visible():
    assert jax.device_count() == 8, "tests/conftest.py must set XLA_FLAGS before jax is imported"


def test_rules_map_logical_axes_and_fall_back_to_replication():
    mesh = {"data": 2, "fsdp": 2, "tensor": 2}
    assert logical_to_spec(("embed", "mlp"), (32, 48), mesh) == PartitionSpec("fsdp", "tensor")
    assert logical_to_spec(("batch", "length"), (8, 16), mesh) == PartitionSpec(("data", "fsdp"), None)
    # 3 kv heads do not split over tensor=2: that dimension is replicated instead.
    assert logical_to_spec(("embed", "kv_heads", "head_dim"), (32, 3, 8), mesh) == PartitionSpec(
        "fsdp", None, None)
    # A mesh axis of size 1 is never named.
    assert logical_to_spec(("embed", "mlp"), (32, 48), {"data": 8, "fsdp": 1, "tensor": 1}) == \
        PartitionSpec(None, None)
    with pytest.raises(KeyError, match="no rule"):
        logical_to_spec(("nonsense",), (4,), mesh)


def test_sharded_forward_equals_unsharded():
    cfg = tiny_config(vocab_size=128, n_kv_heads=2)
    mesh = make_mesh(data=2, fsdp=2, tensor=2)
    sharded = tf.init(cfg, jax.random.key(0), mesh)
    plain = tf.init(cfg, jax.random.key(0))
    wq = sharded["blocks"][0]["attn"]["wq_DNH"]
    assert wq.sharding.spec == PartitionSpec("fsdp", "tensor", None)
    assert wq.addressable_shards[0].data.shape == (16, 2, 8)  # really split 4 ways
    jax.tree.map(np.testing.assert_array_equal, sharded, plain)

    tokens = jax.random.randint(jax.random.key(1), (8, 16), 0, cfg.vocab_size)
    ref = jax.jit(lambda p, t: tf.forward(p, t, cfg)[0])(plain, tokens)
    with jax.set_mesh(mesh):
        tokens_s = jax.device_put(tokens, NamedSharding(mesh, PartitionSpec(("data", "fsdp"))))
        out = jax.jit(lambda p, t: tf.forward(p, t, cfg)[0])(sharded, tokens_s)
        assert out.sharding.spec[0] == ("data", "fsdp")
        np.testing.assert_allclose(out, ref, atol=1e-5)
        # The decoding engine runs on sharded parameters too.
        s = engine.SamplingConfig(max_new_tokens=6, temperature=0.0)
        got = engine.generate(sharded, cfg, [[1, 2, 3], [1, 5]], s)
    assert got.tokens == engine.generate(plain, cfg, [[1, 2, 3], [1, 5]], s).tokens


def test_make_mesh_sizes():
    assert dict(make_mesh(data=-1, tensor=2).shape) == {"data": 4, "fsdp": 1, "tensor": 2}
    with pytest.raises(ValueError, match="needs 12 devices"):
        make_mesh(data=3, fsdp=2, tensor=2)
    with pytest.raises(ValueError, match="at most one axis"):
        make_mesh(data=-1, fsdp=-1)
