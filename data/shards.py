"""Token shards: a corpus tokenized once into flat arrays on disk, with a manifest.

Inputs are read by data.documents (text, JSONL, Parquet; directories). Each document becomes
<|bos|> + its tokens. Every `val_every`-th document goes to the `val` split.
Shards are .npy files of at most `shard_tokens` tokens; memory holds one shard buffer and one
chunk of input at a time, however large the corpus. A build first removes the old manifest
and writes the new one last, atomically: its presence means the shards it lists are complete,
and a build killed half-way leaves none, so the next run builds again instead of trusting it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from data.documents import describe_inputs, expand_inputs, iter_documents
from data.special_tokens import BOS, special_id
from data.tokenizer import Tokenizer


class _SplitWriter:
    def __init__(self, out_dir: Path, split: str, shard_tokens: int, dtype):
        self.dir, self.split, self.shard_tokens, self.dtype = out_dir, split, shard_tokens, dtype
        self.buf = np.empty(shard_tokens, dtype)
        self.n = 0
        self.shards: list[dict] = []
        self.documents = self.tokens = self.bytes = 0

    def add(self, ids: list[int]):
        arr = np.asarray(ids, self.dtype)
        while len(arr):
            take = min(len(arr), self.shard_tokens - self.n)
            self.buf[self.n:self.n + take] = arr[:take]
            self.n += take
            arr = arr[take:]
            if self.n == self.shard_tokens:
                self.flush()

    def end_document(self, n_bytes: int):
        self.documents += 1
        self.bytes += n_bytes

    def flush(self):
        if not self.n:
            return
        name = f"{self.split}_{len(self.shards):05d}.npy"
        np.save(self.dir / name, self.buf[:self.n])
        self.shards.append({"file": name, "tokens": int(self.n)})
        self.tokens += self.n
        self.n = 0

    def summary(self) -> dict:
        return {"documents": self.documents, "tokens": int(self.tokens), "bytes": self.bytes,
                "shards": self.shards}


def build_shards(inputs: Sequence[str | Path], tokenizer: Tokenizer, out_dir: str | Path,
                 shard_tokens: int = 1 << 22, val_every: int = 100,
                 text_field: str = "text") -> dict:
    """Tokenizes `inputs` into out_dir/{train,val}_NNNNN.npy and out_dir/manifest.json."""
    files = expand_inputs(inputs)
    if not files:
        raise ValueError(f"no corpus files found in {list(map(str, inputs))}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "manifest.json").unlink(missing_ok=True)  # invalid from here until the end
    for stale in out_dir.glob("*.npy"):
        stale.unlink()
    dtype = np.uint16 if tokenizer.vocab_size <= 1 << 16 else np.uint32
    writers = {s: _SplitWriter(out_dir, s, shard_tokens, dtype) for s in ("train", "val")}
    bos = special_id(BOS)
    n_doc, counts = 0, {"replaced_chars": 0}
    for f in files:
        for doc in iter_documents(f, text_field, counts):
            w = writers["val" if val_every and n_doc % val_every == val_every - 1 else "train"]
            w.add([bos])
            n_bytes = 0
            for chunk in doc:
                w.add(tokenizer.encode(chunk))
                n_bytes += len(chunk.encode("utf-8", errors="replace"))
            w.end_document(n_bytes)
            n_doc += 1
    for w in writers.values():
        w.flush()
    if writers["train"].tokens <= writers["train"].documents:
        raise ValueError(f"corpus {list(map(str, inputs))} holds no text ({n_doc} documents, all "
                         "empty): point data.inputs at non-empty files")
    manifest = {
        "tokenizer_sha256": tokenizer.sha256,
        "vocab_size": tokenizer.vocab_size,
        "dtype": np.dtype(dtype).name,
        "inputs": describe_inputs(files),
        "val_every": val_every,
        "replaced_chars": counts["replaced_chars"],  # invalid UTF-8 / surrogates -> U+FFFD
        "splits": {s: w.summary() for s, w in writers.items()},
    }
    tmp = out_dir / f".manifest.json.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, out_dir / "manifest.json")
    return manifest


def load_manifest(shard_dir: str | Path) -> dict | None:
    path = Path(shard_dir) / "manifest.json"
    return json.loads(path.read_text()) if path.is_file() else None


class TokenStream:
    """The tokens of one split, read as one long sequence across memory-mapped shards."""

    def __init__(self, shard_dir: str | Path, split: str):
        self.manifest = load_manifest(shard_dir)
        if self.manifest is None:
            raise FileNotFoundError(f"no manifest.json in {shard_dir}: the shards are incomplete")
        shards = self.manifest["splits"][split]["shards"]
        if not shards:
            raise ValueError(f"split {split!r} of {shard_dir} is empty: use a larger corpus or a "
                             "smaller data.val_every")
        self._arrays = [np.load(Path(shard_dir) / s["file"], mmap_mode="r") for s in shards]
        for s, a in zip(shards, self._arrays, strict=True):
            if len(a) != s["tokens"]:
                raise ValueError(f"{Path(shard_dir) / s['file']} holds {len(a)} tokens, its "
                                 f"manifest says {s['tokens']}: delete {shard_dir} to rebuild it")
        self._starts = np.cumsum([0] + [len(a) for a in self._arrays])

    def __len__(self) -> int:
        return int(self._starts[-1])

    def read(self, start: int, stop: int) -> np.ndarray:
        """Tokens [start, stop) as int32."""
        out, pos = [], start
        while pos < stop:
            k = int(np.searchsorted(self._starts, pos, side="right")) - 1
            end = min(stop, int(self._starts[k + 1]))
            out.append(self._arrays[k][pos - self._starts[k]:end - self._starts[k]])
            pos = end
        return np.concatenate(out).astype(np.int32)
