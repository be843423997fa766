"""Stage directories: finding a parent stage's files, writing meta.json, the code version."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIGS = REPO_ROOT / "experiments" / "configs"


def code_version() -> str:
    """The git commit of the code (with '+dirty' for uncommitted changes), or 'unknown'."""
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=REPO_ROOT, capture_output=True, text=True).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def write_json(path: str | Path, obj) -> None:
    """Writes JSON atomically: a crash leaves either the old file or the new one, never half."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def read_meta(stage_dir: str | Path) -> dict | None:
    path = Path(stage_dir) / "meta.json"
    return json.loads(path.read_text()) if path.is_file() else None


def find_tokenizer(init_from: str | Path) -> Path:
    """The tokenizer directory for `init_from`: a tokenizer dir itself, the one its meta.json
    names, or the `tokenizer/` of the run root that holds it."""
    d = Path(init_from)
    if not d.is_dir():
        raise FileNotFoundError(f"--init_from {d} is not a directory")
    candidates = [d]
    meta = read_meta(d)
    if meta and meta.get("tokenizer"):
        candidates.insert(0, Path(meta["tokenizer"]))
    candidates += [d / "tokenizer", d.parent / "tokenizer"]
    for c in candidates:
        if (c / "tokenizer.model").is_file():
            return c
    raise FileNotFoundError(
        f"no tokenizer found for {d} (looked in {', '.join(map(str, candidates))}): train one "
        f"with `python -m experiments.tokenizer --workdir {d} --input FILES`")
