"""Logical axis names and the one rules table that maps them onto the mesh axes.

Every parameter and the main activations carry logical axis names ("embed", "mlp", ...).
`RULES` is the single source of sharding truth: it maps each logical name to mesh axes
(`data`, `fsdp`, `tensor`). The table lives in model/ because the logical names are the model's;
train/ builds the mesh and uses the same table.

A dimension that the mapped mesh axes do not divide evenly is replicated instead (a small model
with 2 kv heads on tensor=4, say), and a mesh axis is never used twice in one spec.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
from jax.sharding import NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

# logical name -> mesh axes (a tuple shards one dimension over several mesh axes; None replicates).
RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("act_embed", None),
    ("q_heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    ("norm", None),
    ("cache_length", None),
    ("layers", None),  # a scanned model's stacked layer axis
)


def logical_to_spec(
    logical_axes: Sequence[str | None],
    shape: Sequence[int],
    mesh_shape: dict[str, int],
    rules: Sequence[tuple[str, str | tuple[str, ...] | None]] = RULES,
) -> PartitionSpec:
    """Maps logical axis names of an array with `shape` to a PartitionSpec on a mesh."""
    if len(logical_axes) != len(shape):
        raise ValueError(f"logical axes {tuple(logical_axes)} do not match shape {tuple(shape)}")
    table = dict(rules)
    used: set[str] = set()
    spec = []
    for name, size in zip(logical_axes, shape, strict=True):
        if name is not None and name not in table:
            raise KeyError(f"logical axis {name!r} has no rule; add it to model.sharding.RULES")
        target = table.get(name) if name is not None else None
        axes = (target,) if isinstance(target, str) else tuple(target or ())
        axes = tuple(a for a in axes if a in mesh_shape and mesh_shape[a] > 1 and a not in used)
        n = 1
        for a in axes:
            n *= mesh_shape[a]
        if not axes or size % n:
            spec.append(None)
            continue
        used.update(axes)
        spec.append(axes[0] if len(axes) == 1 else axes)
    return PartitionSpec(*spec)


def named_sharding(mesh: jax.sharding.Mesh, logical_axes, shape) -> NamedSharding:
    return NamedSharding(mesh, logical_to_spec(logical_axes, shape, dict(mesh.shape)))


def constrain(x: jax.Array, logical_axes: Sequence[str | None]) -> jax.Array:
    """Pins an activation's sharding under the current mesh (`jax.set_mesh`); no-op without one."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    spec = logical_to_spec(logical_axes, x.shape, dict(mesh.shape))
    return jax.lax.with_sharding_constraint(x, spec)
