"""Orbax checkpoints of a stage: full state for resuming, parameters alone for the next stage.

One checkpoint (stage/checkpoints/<step>/) holds three items, saved together:
  params  - the model parameters (what a later stage's --init_from loads)
  train   - step, optimizer state and RNG (only the same stage's resume reads these)
  data    - the data iterator's state (JSON)
Orbax writes each checkpoint under a temporary name and renames it when complete, so a crash
mid-save never damages the last good checkpoint; the manager keeps the last `keep`.
"""

from __future__ import annotations

from pathlib import Path

import jax
import orbax.checkpoint as ocp


class Checkpointer:
    def __init__(self, directory: str | Path, keep: int = 3):
        self.directory = Path(directory).resolve()
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                                cleanup_tmp_directories=True),
            item_names=("params", "train", "data"),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, state: dict, data_state: dict) -> None:
        step = int(state["step"])
        train = {k: state[k] for k in ("step", "opt_state", "rng")}
        self.manager.save(step, args=ocp.args.Composite(
            params=ocp.args.StandardSave(state["params"]),
            train=ocp.args.StandardSave(train),
            data=ocp.args.JsonSave(data_state)), force=True)
        self.manager.wait_until_finished()

    def restore(self, step: int, abstract_state: dict) -> tuple[dict, dict]:
        """Full state (sharded as abstract_state's leaves say) and the data iterator state."""
        check_shapes(self.directory, step, abstract_state["params"])
        train = {k: abstract_state[k] for k in ("step", "opt_state", "rng")}
        out = self.manager.restore(step, args=ocp.args.Composite(
            params=ocp.args.StandardRestore(abstract_state["params"]),
            train=ocp.args.StandardRestore(train),
            data=ocp.args.JsonRestore()))
        return {**out["train"], "params": out["params"]}, out["data"]

    def close(self):
        self.manager.close()


def check_shapes(directory: Path, step: int, abstract_params) -> None:
    """Refuses, with a clear error, a checkpoint whose parameter shapes differ from the model's."""
    meta = ocp.PyTreeCheckpointer().metadata(directory / str(step) / "params")
    saved = getattr(meta, "item_metadata", meta)
    saved = getattr(saved, "tree", saved)
    want = dict(jax.tree_util.tree_flatten_with_path(abstract_params)[0])
    have = dict(jax.tree_util.tree_flatten_with_path(
        saved, is_leaf=lambda x: hasattr(x, "shape"))[0])
    want_s = {_path_name(k): tuple(v.shape) for k, v in want.items()}
    have_s = {_path_name(k): tuple(v.shape) for k, v in have.items()}
    if want_s != have_s:
        diff = sorted(k for k in set(want_s) | set(have_s) if want_s.get(k) != have_s.get(k))
        k = diff[0]
        raise ValueError(
            f"checkpoint {directory / str(step)} holds a model of another shape: {k} is "
            f"{have_s.get(k, 'missing')} there but {want_s.get(k, 'missing')} in this config "
            f"({len(diff)} arrays differ). Use the config it was trained with, or another workdir")


def _path_name(path) -> str:
    # Orbax's metadata spells integer keys as strings; compare paths as text.
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def restore_params(stage_dir: str | Path, abstract_params, step: int | None = None):
    """Parameters only (never the optimizer state) from a stage's latest (or given) checkpoint.

    Leaves of abstract_params without a sharding are restored onto the first local device, so a
    checkpoint saved on a pod loads on a laptop.
    """
    directory = Path(stage_dir).resolve() / "checkpoints"
    local = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract_params = jax.tree.map(
        lambda a: a if getattr(a, "sharding", None) is not None
        else jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=local), abstract_params)
    with ocp.CheckpointManager(directory, item_names=("params", "train", "data")) as manager:
        step = manager.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint under {directory}: run that stage first")
        check_shapes(directory, step, abstract_params)
        out = manager.restore(step, args=ocp.args.Composite(
            params=ocp.args.StandardRestore(abstract_params)))
    return out["params"]
