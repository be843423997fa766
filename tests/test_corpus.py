"""The data set-up step's readers and reporting, the mixture, and the corpus stage end to end."""

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_pipeline import ARTICLES, page

from data import sources
from data.mixture import copies, copy_drill_documents, iter_clean, world_documents, write_mixture
from data.sources import Source, fetch, unwrap, write_raw
from data.world import WorldConfig, make_world

REPO = Path(__file__).resolve().parent.parent


def test_readers_on_fixture_packages(tmp_path):
    html = tmp_path / "usr/share/doc/pkg/html"
    (html / "lib").mkdir(parents=True)
    (html / "lib/os.html").write_text(page("os", ARTICLES["bread"]))
    (html / "index.html").write_text("<html></html>")
    docs = list(sources._html_pages("https://docs.example.org/", "usr/share/doc/pkg/html")(tmp_path))
    assert [d["url"] for d in docs] == ["https://docs.example.org/index.html",
                                        "https://docs.example.org/lib/os.html"]
    games = tmp_path / "usr/share/games/fortunes"
    games.mkdir(parents=True)
    (games / "wisdom").write_text("First saying.\n%\nSecond\nsaying.\n%\n")
    (games / "wisdom.dat").write_bytes(b"\x00\x01")
    (games / "wisdom.u8").symlink_to(games / "wisdom")
    assert [d["text"] for d in sources._fortunes(tmp_path)] == ["First saying.", "Second\nsaying."]
    assert unwrap("one\ntwo  three\n\n\nfour\n") == "one two three\nfour"
    osis = ('<w lemma="x">God</w><note placement="foot">a note</note><w>created</w> light'
            '<div eID="p1" type="x-p"/><title type="main">Title</title>Next, <w>line</w> .')
    assert sources._osis_to_text(osis) == "God created light\nTitle\nNext, line."


def test_a_missing_source_is_reported_and_the_rest_go_on(tmp_path, monkeypatch):
    root = tmp_path / "pkg"
    (root / "usr/share/games/fortunes").mkdir(parents=True)
    (root / "usr/share/games/fortunes/f").write_text("A fortune.\n%\n")

    def unpack(package, data_dir, apt_updated):
        if package == "not-in-this-archive":
            raise RuntimeError("apt-get download not-in-this-archive failed: unable to locate")
        return root

    monkeypatch.setattr(sources, "_unpack", unpack)
    monkeypatch.setattr(sources, "SOURCES", {
        "good": Source("good", "prose", ("fortunes",), sources._fortunes),
        "gone": Source("gone", "prose", ("not-in-this-archive",), sources._fortunes)})
    report = fetch(tmp_path / "data", log=lambda *_: None)
    assert report["good"]["documents"] == 1 and "unable to locate" in report["gone"]["missing"]
    assert (tmp_path / "data/raw/prose/good.jsonl.gz").exists()
    assert not (tmp_path / "data/raw/prose/gone.jsonl.gz").exists()
    saved = json.loads((tmp_path / "data/raw/sources.json").read_text())
    assert saved == report


def test_mixture_weights(tmp_path):
    assert [copies("d", 3.0, 0) for _ in range(2)] == [3, 3]
    fractional = sum(copies(f"d{i}", 0.25, 0) for i in range(4000))
    assert 900 < fractional < 1100
    docs = [{"id": f"w{i}", "text": f"web page {i}", "metadata": {"source": "site", "group": "web"}}
            for i in range(100)]
    docs += [{"id": f"p{i}", "text": f"prose {i}", "metadata": {"source": "book", "group": "prose"}}
             for i in range(10)]
    world = make_world(WorldConfig(n_people=6, n_nonexistent=3))
    docs += list(world_documents(world.biographies()))
    drills = list(copy_drill_documents(30, seed=1))
    assert drills == list(copy_drill_documents(30, seed=1)) and len({d["id"] for d in drills}) == 30
    for d in drills:  # every drill's second half is a copy of a span of its first
        t = d["text"]
        if t.startswith("The result is "):
            n = t.split()[3].rstrip(".")
            assert t == f"The result is {n}. So the answer is {n}."
        else:
            first, second = t.split("\n")
            assert first.removeprefix("Copy this line: ") == second.removeprefix("Copy: ")
    docs += drills
    summary = write_mixture(docs, tmp_path / "mix", {"web": 0.5, "book": 2, "prose": 0, "world": 4,
                                                     "copy": 2})
    assert summary["book"]["copies"] == 20 and summary["world"]["copies"] == 6 * 5 * 4
    assert summary["copy"]["copies"] == 60
    assert 30 < summary["site"]["copies"] < 70
    lines = (tmp_path / "mix/world.jsonl").read_text().splitlines()
    assert len(lines) == 120 and json.loads(lines[0])["text"] == world.biographies()[0]
    assert abs(sum(s["share"] for s in summary.values()) - 1) < 1e-3
    with pytest.raises(ValueError, match="unknown sources"):
        write_mixture(docs, tmp_path / "mix2", {"web": 1, "nosuchsource": 1})
    with pytest.raises(ValueError, match="numbers >= 0"):
        write_mixture(docs, tmp_path / "mix3", {"web": -1})


def test_corpus_stage_end_to_end(tmp_path):
    """Fixture raw sources stand in for fetched ones: pipeline, world and mixture in W/corpus."""
    data = tmp_path / "data"
    web = [(f"p{i}", page(k, v), f"https://docs.python.org/3.11/{k}.html")
           for i, (k, v) in enumerate(ARTICLES.items())]
    report = {"python-doc": {"group": "web", **write_raw(
        "python-doc", ({"id": i, "text": t, "format": "html", "url": u} for i, t, u in web),
        data / "raw", "web")}}
    (data / "raw/sources.json").write_text(json.dumps(report))
    w = tmp_path / "run"
    env = {**os.environ, "CORPUS_DATA_DIR": str(data)}
    cmd = [sys.executable, "-m", "experiments.corpus", f"--workdir={w}",
           "--config.corpus.sources=python-doc", "--config.corpus.pipeline.workers=1",
           "--config.world.n_people=8", "--config.world.n_nonexistent=4", "--config.mixture.world=3",
           "--config.mixture.web=1"]
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "| python-doc |" in r.stdout and "| world |" in r.stdout
    mix = json.loads((w / "corpus/mixture/mixture.json").read_text())
    assert mix["python-doc"]["copies"] == len(ARTICLES) and mix["world"]["copies"] == 8 * 5 * 3
    text = "".join(p.read_text() for p in (w / "corpus/mixture").glob("*.jsonl"))
    world = make_world(WorldConfig(**json.loads((w / "corpus/world.json").read_text())))
    assert all(p.name in text for p in world.people)
    assert not any(p.name in text for p in world.nonexistent)  # never in any document
    assert len(list(iter_clean(next((data / "clean").iterdir()) / "clean"))) == len(ARTICLES)
    meta = json.loads((w / "corpus/meta.json").read_text())
    assert meta["pipeline_points"]["read"]["docs"] == len(ARTICLES)
    # A second run reuses the cleaned corpus (cached by config) and rebuilds the same mixture.
    r2 = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r2.returncode == 0 and "cleaning" not in r2.stdout
    assert "".join(p.read_text() for p in (w / "corpus/mixture").glob("*.jsonl")) == text
    with pytest.raises(ValueError, match="unknown source 'nosuch'"):
        sources.source("nosuch")
    gz = gzip.open(data / "raw/web/python-doc.jsonl.gz", "rt").read()
    assert "docs.python.org" in gz
