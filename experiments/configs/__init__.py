"""Python config files: each `get_config()` returns an ml_collections.ConfigDict.

A stage's train / optim section (`sft_train`, `rl_optim`, ...) is an overlay on the base section
(`train`, `optim`): it states only what the stage changes, every other key is a typed
placeholder that reads through to the base when the config is used (`resolve`). So an override
of the base (`--config.train.mesh_fsdp=2`) reaches every stage that does not set that key
itself, and any key can still be overridden per stage (`--config.sft_train.keep=1`).
"""

from __future__ import annotations

import ml_collections
from ml_collections.config_dict import placeholder

# each stage section and the base section it overlays
OVERLAYS = {f"{stage}_{kind}": kind for stage in ("sft", "rl", "rm", "rlhf")
            for kind in ("train", "optim")}


def overlay(base: ml_collections.ConfigDict, **changes) -> ml_collections.ConfigDict:
    """A section with the base's keys as placeholders, and `changes` set."""
    unknown = sorted(set(changes) - set(base.keys()))
    if unknown:
        raise KeyError(f"{unknown} are not keys of the base section; known: {sorted(base.keys())}")
    section = ml_collections.ConfigDict({k: placeholder(type(v)) for k, v in base.items()})
    section.update(changes)
    return section


def resolve(config: ml_collections.ConfigDict, name: str) -> dict:
    """Section `name` as a plain dict, an overlay's unset keys read from its base section; a key
    the base does not have is refused by name."""
    section = config[name].to_dict()
    base_name = OVERLAYS.get(name)
    if base_name is None:
        return section
    base = config[base_name].to_dict()
    unknown = sorted(set(section) - set(base))
    if unknown:
        raise ValueError(f"config section {name!r} has unknown key(s) {unknown}: it overlays "
                         f"{base_name!r}, whose keys are {sorted(base)}")
    return {k: (section[k] if section.get(k) is not None else v) for k, v in base.items()}


def resolved(config: ml_collections.ConfigDict) -> dict:
    """The whole config as a plain dict with every overlay resolved (what meta.json records)."""
    out = config.to_dict()
    for name in OVERLAYS:
        if name in config:
            out[name] = resolve(config, name)
    return out
