"""Checkpoints are verified: a damaged newest checkpoint is named in one line and the resume
falls back to the one before it, whose values come back exactly."""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from train.checkpoint import CHECKSUMS, Checkpointer, DamagedCheckpoint, restore_params


def _state(step: int) -> dict:
    return {"params": {"w": jnp.full((64, 64), float(step)), "b": jnp.arange(8.0) + step},
            "step": jnp.asarray(step, jnp.int32), "opt_state": {"m": jnp.full((64, 64), -step)},
            "rng": jax.random.key_data(jax.random.key(step))}


def _abstract() -> dict:
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), _state(0))


def _saved(tmp_path: Path) -> Path:
    ck = Checkpointer(tmp_path / "stage" / "checkpoints", keep=3)
    for step in (1, 2):
        ck.save(_state(step), {"position": step})
    ck.close()
    return tmp_path / "stage" / "checkpoints"


def _largest_array_file(step_dir: Path) -> Path:
    files = [p for p in (step_dir / "params").rglob("*") if p.is_file() and "METADATA" not in p.name]
    return max(files, key=lambda p: p.stat().st_size)


def _flip_bit(step_dir: Path):
    f = _largest_array_file(step_dir)
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0x10
    f.write_bytes(bytes(data))


def _truncate(step_dir: Path):
    f = _largest_array_file(step_dir)
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def _damage_metadata(step_dir: Path):
    f = step_dir / "params" / "_METADATA"
    f.write_text(f.read_text()[:-20] + "garbage")


def _empty(step_dir: Path):
    import shutil

    shutil.rmtree(step_dir)
    step_dir.mkdir()


def _damage_legacy_metadata(step_dir: Path):  # saved before checksums existed
    (step_dir / CHECKSUMS).unlink()
    _damage_metadata(step_dir)


@pytest.mark.parametrize("damage", [_flip_bit, _truncate, _damage_metadata, _empty,
                                    _damage_legacy_metadata])
def test_a_damaged_checkpoint_falls_back_to_the_one_before(tmp_path, capfd, damage):
    ckdir = _saved(tmp_path)
    assert json.loads((ckdir / "2" / CHECKSUMS).read_text())  # written when the save completed
    damage(ckdir / "2")
    # a later stage's params-only load: the newest intact one, nothing moved
    params = restore_params(ckdir.parent, _abstract()["params"])
    np.testing.assert_array_equal(params["w"], _state(1)["params"]["w"])
    lines = [ln for ln in capfd.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "checkpoints/2" in lines[0], lines
    # the stage's own resume: the full state of step 1, the damaged step moved aside
    ck = Checkpointer(ckdir, keep=3)
    step, state, data = ck.restore_latest(_abstract())
    assert step == 1 and data == {"position": 1} and int(state["step"]) == 1
    for k in ("w", "b"):
        np.testing.assert_array_equal(state["params"][k], _state(1)["params"][k])
    np.testing.assert_array_equal(state["opt_state"]["m"], _state(1)["opt_state"]["m"])
    assert (ckdir.parent / "checkpoints.damaged" / "2").is_dir() and not (ckdir / "2").exists()
    err = capfd.readouterr().err
    assert "checkpoints/2" in err and "earlier checkpoint" in err
    # training goes on: step 2 is saved again where the damaged one was
    ck.save(_state(2), {"position": 2})
    assert ck.restore_latest(_abstract())[0] == 2
    ck.close()


def test_the_flipped_bit_is_named_by_file(tmp_path):
    from train.checkpoint import verify

    ckdir = _saved(tmp_path)
    _flip_bit(ckdir / "2")
    with pytest.raises(DamagedCheckpoint, match=r"checkpoints/2: params/.* does not match its checksum"):
        verify(ckdir / "2")
    verify(ckdir / "1")


def test_every_checkpoint_damaged_is_one_clear_error(tmp_path):
    ckdir = _saved(tmp_path)
    for s in ("1", "2"):
        _truncate(ckdir / s)
    with pytest.raises(DamagedCheckpoint, match="no intact checkpoint"):
        restore_params(ckdir.parent, _abstract()["params"])
