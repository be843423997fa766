"""Orbax checkpoints of a stage: full state for resuming, parameters alone for the next stage.

One checkpoint (stage/checkpoints/<step>/) holds three items, saved together:
  params  - the model parameters (what a later stage's --init_from loads)
  train   - step, optimizer state and RNG (only the same stage's resume reads these)
  data    - the data iterator's state (JSON)
Orbax writes each checkpoint under a temporary name and renames it when complete, so a crash
mid-save never damages the last good checkpoint; the manager keeps the last `keep`.

When a save completes, the SHA-256 and size of every file in it go to <step>/checksums.json;
a restore checks them first. A damaged checkpoint (a flipped bit, a truncated or missing file,
unreadable metadata, an empty step directory) is named in one line, moved aside to
checkpoints.damaged/ (never deleted) and the resume falls back to the newest intact one.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import jax
import orbax.checkpoint as ocp

CHECKSUMS = "checksums.json"


class DamagedCheckpoint(ValueError):
    """A checkpoint whose files do not match what was saved."""


def file_digest(path: Path, h=None) -> str:
    """SHA-256 of a file, read in 1 MiB blocks; with `h`, the file's bytes go on into that hash."""
    h = h or hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_checksums(step_dir: Path) -> None:
    """step_dir/checksums.json: {relative path: [size, sha256]} of every file in the step."""
    from train.stage import write_json

    write_json(step_dir / CHECKSUMS, {str(p.relative_to(step_dir)): [p.stat().st_size, file_digest(p)]
                                      for p in sorted(step_dir.rglob("*"))
                                      if p.is_file() and p.name != CHECKSUMS})


def verify(step_dir: Path) -> None:
    """Raises DamagedCheckpoint, naming the step and the file, unless every file of the step
    matches its checksum. A step saved before checksums existed is let through (its restore
    is the check)."""
    step_dir = Path(step_dir)
    where = f"checkpoint {step_dir}"
    if not step_dir.is_dir() or not any(step_dir.iterdir()):
        raise DamagedCheckpoint(f"{where} is empty or missing")
    listing = step_dir / CHECKSUMS
    if not listing.is_file():
        return
    try:
        files = json.loads(listing.read_text())
    except (OSError, ValueError) as e:
        raise DamagedCheckpoint(f"{where}: {CHECKSUMS} is unreadable ({e})") from None
    for rel, (size, digest) in files.items():
        path = step_dir / rel
        if not path.is_file():
            raise DamagedCheckpoint(f"{where}: {rel} is missing")
        if path.stat().st_size != size:
            raise DamagedCheckpoint(f"{where}: {rel} is {path.stat().st_size} bytes, "
                                    f"{size} were saved (truncated?)")
        if file_digest(path) != digest:
            raise DamagedCheckpoint(f"{where}: {rel} does not match its checksum (changed on disk)")


def _say(msg: str) -> None:
    if jax.process_index() == 0:
        print(msg, file=sys.stderr, flush=True)


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
        if jax.process_index() == 0:
            write_checksums(self.directory / str(step))

    def restore(self, step: int, abstract_state: dict) -> tuple[dict, dict]:
        """Full state (sharded as abstract_state's leaves say) and the data iterator state."""
        train = {k: abstract_state[k] for k in ("step", "opt_state", "rng")}
        out = _checked_restore(self.manager, self.directory, step, abstract_state["params"],
                               ocp.args.Composite(
                                   params=ocp.args.StandardRestore(abstract_state["params"]),
                                   train=ocp.args.StandardRestore(train),
                                   data=ocp.args.JsonRestore()))
        return {**out["train"], "params": out["params"]}, out["data"]

    def restore_latest(self, abstract_state: dict) -> tuple[int | None, dict | None, dict | None]:
        """(step, state, data state) of the newest intact checkpoint, or Nones when there is
        none. Damaged ones are named and moved aside to checkpoints.damaged/<step>."""
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                state, data = self.restore(step, abstract_state)
                return step, state, data
            except DamagedCheckpoint as e:
                aside = self.directory.parent / "checkpoints.damaged" / str(step)
                _say(f"{e}: moved to {aside}; resuming from an earlier checkpoint")
                if jax.process_index() == 0:
                    aside.parent.mkdir(exist_ok=True)
                    os.replace(self.directory / str(step), aside)
                self.manager.reload()
        return None, None, None

    def close(self):
        self.manager.close()


def _checked_restore(manager, directory: Path, step: int, abstract_params, args):
    """manager.restore after the checksums and the parameter shapes are checked; a restore that
    fails on the files themselves is a DamagedCheckpoint too."""
    verify(directory / str(step))
    check_shapes(directory, step, abstract_params)
    try:
        return manager.restore(step, args=args)
    except Exception as e:  # tensorstore / orbax errors on damaged files run to pages
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise DamagedCheckpoint(f"checkpoint {directory / str(step)} cannot be read: {first}") from None


def _saved_shapes(directory: Path, step: int) -> dict[str, tuple]:
    """The saved parameters' shapes by path ("blocks/0/attn/wq_DNH"), from Orbax's metadata."""
    try:
        meta = ocp.PyTreeCheckpointer().metadata(directory / str(step) / "params")
    except Exception as e:
        raise DamagedCheckpoint(f"checkpoint {directory / str(step)}: the parameters' metadata "
                                f"cannot be read ({type(e).__name__})") from None
    saved = getattr(meta, "item_metadata", meta)
    saved = getattr(saved, "tree", saved)
    have = dict(jax.tree_util.tree_flatten_with_path(
        saved, is_leaf=lambda x: hasattr(x, "shape"))[0])
    return {_path_name(k): tuple(v.shape) for k, v in have.items()}


def check_shapes(directory: Path, step: int, abstract_params) -> None:
    """Refuses, with a clear error, a checkpoint whose parameter shapes differ from the model's."""
    have_s = _saved_shapes(directory, step)
    want = dict(jax.tree_util.tree_flatten_with_path(abstract_params)[0])
    want_s = {_path_name(k): tuple(v.shape) for k, v in want.items()}
    if not have_s:
        raise DamagedCheckpoint(f"checkpoint {directory / str(step)}: the parameters' metadata "
                                "is missing or unreadable")
    if want_s != have_s:
        diff = sorted(k for k in set(want_s) | set(have_s) if want_s.get(k) != have_s.get(k))
        k = diff[0]
        raise ValueError(
            f"checkpoint {directory / str(step)} holds a model of another shape: {k} is "
            f"{have_s.get(k, 'missing')} there but {want_s.get(k, 'missing')} in this config "
            f"({len(diff)} arrays differ). Use the config it was trained with, or another workdir")


def _all_steps(directory: Path) -> list[int]:
    return [int(p.name) for p in directory.glob("*") if p.name.isdigit()] \
        if directory.is_dir() else []


def _path_name(path) -> str:
    # Orbax's metadata spells integer keys as strings; compare paths as text.
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def _stacked_on_disk(directory: Path, step: int) -> bool | None:
    """Whether a saved language model holds its layers stacked (scan_layers), None if no LM."""
    keys = [k.split("/")[1] for k in _saved_shapes(directory, step) if k.startswith("blocks/")]
    return None if not keys else not all(k.isdigit() for k in keys)


def restore_params(stage_dir: str | Path, abstract_params, step: int | None = None):
    """Parameters only (never the optimizer state) from a stage's latest (or given) checkpoint.

    Leaves of abstract_params without a sharding are restored onto the first local device, so a
    checkpoint saved on a pod loads on a laptop. A language model saved with its layers stacked
    (scan_layers) loads into the per-layer layout and back: the layout is converted.
    """
    from model import transformer

    directory = Path(stage_dir).resolve() / "checkpoints"
    if isinstance(abstract_params, dict) and "blocks" in abstract_params:
        steps = [step] if step is not None else sorted(_all_steps(directory), reverse=True)
        want = transformer.is_stacked(abstract_params)
        have = None
        for s in steps:  # the newest step whose metadata reads (a damaged one is skipped below)
            try:
                have = _stacked_on_disk(directory, s)
                break
            except DamagedCheckpoint:
                continue
        if have is not None and have != want:
            convert = transformer.unstack_layers if want is False else transformer.stack_layers
            other = (transformer.stack_layers if have else transformer.unstack_layers)(
                jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), abstract_params))
            params = convert(restore_params(stage_dir, other, step))
            return jax.tree.map(
                lambda x, a: jax.device_put(x, getattr(a, "sharding", None)), params,
                abstract_params)
    local = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract_params = jax.tree.map(
        lambda a: a if getattr(a, "sharding", None) is not None
        else jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=local), abstract_params)
    args = ocp.args.Composite(params=ocp.args.StandardRestore(abstract_params))
    with ocp.CheckpointManager(directory, item_names=("params", "train", "data")) as manager:
        if step is not None:
            return _checked_restore(manager, directory, step, abstract_params, args)["params"]
        steps = sorted(manager.all_steps(), reverse=True)
        if not steps:
            raise FileNotFoundError(f"no checkpoint under {directory}: run that stage first")
        for s in steps:  # the newest intact one; a read-only look, nothing is moved
            try:
                out = _checked_restore(manager, directory, s, abstract_params, args)
                return out["params"]
            except DamagedCheckpoint as e:
                _say(f"{e}; trying the one before")
        raise DamagedCheckpoint(f"no intact checkpoint under {directory} (steps {steps} are all "
                                "damaged): run that stage again")
