"""Reading documents from corpus files: text (one document per file), JSONL / JSONL.gz and
Parquet with a `text` field (the Hugging Face datasets layout). Used by the tokenizer trainer and
the shard builder, so both read a corpus the same way. Memory stays bounded: a large text file
comes in ~1 MB chunks cut at newlines, JSONL line by line, Parquet in record batches.

Text is checked at the door: invalid UTF-8 in a text file and lone surrogates anywhere (valid
JSON can spell "\\ud800") become U+FFFD and are counted; a JSONL line that is not UTF-8 is
refused by file and line; a file that is mostly not text (over NOT_TEXT of its characters
undecodable or control characters, e.g. random bytes) is refused by name with the counts.
"""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

TEXT_SUFFIXES = (".txt", ".md", ".rst", ".text")
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".json.gz")
PARQUET_SUFFIXES = (".parquet",)
_CHUNK_CHARS = 1 << 20  # a large text file is tokenized in ~1 MB chunks cut at newlines
NOT_TEXT = 0.1  # share of undecodable or control characters above which a file is refused
_CONTROL = re.compile("[\x00-\x08\x0e-\x1f\x7f]")
_SURROGATE = re.compile("[\ud800-\udfff]")


class TextCheck:
    """Counts, per file, the characters replaced (invalid UTF-8, lone surrogates) and the
    control characters; refuses a file that is mostly not text."""

    def __init__(self, path: Path):
        self.path, self.chars, self.replaced, self.control = path, 0, 0, 0

    def __call__(self, text: str) -> str:
        text = _SURROGATE.sub("\ufffd", text)
        self.chars += len(text)
        self.replaced += text.count("\ufffd")  # surrogates, and bytes decoded as U+FFFD
        self.control += len(_CONTROL.findall(text))
        self.verdict(final=False)
        return text

    def verdict(self, final: bool = True) -> None:
        bad = self.replaced + self.control
        if (final or self.chars >= 65536) and self.chars and bad > NOT_TEXT * self.chars:
            raise ValueError(f"{self.path} is not text: {bad:,} of its first {self.chars:,} "
                             f"characters are undecodable bytes ({self.replaced:,}) or control "
                             f"characters ({self.control:,}); remove it from the inputs")


def _kind(path: Path) -> str | None:
    """'text', 'jsonl' or 'parquet' by file name; None for a name this module does not know."""
    name = path.name.lower()
    for kind, suffixes in (("jsonl", JSONL_SUFFIXES), ("parquet", PARQUET_SUFFIXES),
                           ("text", TEXT_SUFFIXES)):
        if name.endswith(suffixes):
            return kind
    return None


def expand_inputs(inputs: Sequence[str | Path]) -> list[Path]:
    """Files named, plus every text / JSONL / Parquet file under directories named; sorted."""
    files: list[Path] = []
    for x in inputs:
        p = Path(x)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and _kind(f))
            if not found:
                raise ValueError(f"{p} holds no text ({TEXT_SUFFIXES}), JSONL ({JSONL_SUFFIXES}) "
                                 f"or Parquet ({PARQUET_SUFFIXES}) files")
            files += found
        elif p.is_file():
            files.append(p)  # a file named explicitly is read as text unless JSONL / Parquet
        else:
            raise FileNotFoundError(f"corpus input {p} does not exist")
    return files


def describe_inputs(files: Sequence[Path]) -> list[dict]:
    """Path and size of each input: what manifests record, and how a rerun tells inputs changed."""
    return [{"path": str(f.resolve()), "bytes": f.stat().st_size} for f in files]


def iter_documents(path: Path, text_field: str = "text",
                   counts: dict | None = None) -> Iterator[Iterator[str]]:
    """Yields each document of a file as an iterator of text chunks. counts, if given, gains
    the characters replaced ("replaced_chars") over the files read."""
    check = TextCheck(path)
    yield from _documents(path, text_field, check)
    check.verdict()
    if counts is not None:
        counts["replaced_chars"] = counts.get("replaced_chars", 0) + check.replaced


def _documents(path: Path, text_field: str, check: TextCheck) -> Iterator[Iterator[str]]:
    kind = _kind(path) or "text"
    if kind == "text":
        def chunks():
            buf, size = [], 0
            with open(path, encoding="utf-8", errors="replace", newline="") as fh:
                for line in fh:
                    buf.append(line)
                    size += len(line)
                    if size >= _CHUNK_CHARS:
                        yield check("".join(buf))
                        buf, size = [], 0
            if buf:
                yield check("".join(buf))
        yield chunks()
    elif kind == "jsonl":
        opener = gzip.open if path.name.lower().endswith(".gz") else open
        with opener(path, "rb") as fh:
            for n, raw in enumerate(fh, 1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise ValueError(f"{path}:{n}: not valid UTF-8 ({e.reason} at byte "
                                     f"{e.start} of the line)") from None
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{n}: not valid JSON ({e.msg})") from None
                if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
                    raise ValueError(f"{path}:{n}: expected an object with a string field "
                                     f"{text_field!r}")
                yield iter((check(record[text_field]),))
    elif kind == "parquet":
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(path)
        if text_field not in pf.schema_arrow.names:
            raise ValueError(f"{path}: no column {text_field!r}; columns: {pf.schema_arrow.names}")
        for batch in pf.iter_batches(batch_size=256, columns=[text_field]):
            for text in batch.column(0).to_pylist():
                if text is not None:
                    yield iter((check(text),))
