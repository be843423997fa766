"""A byte-level BPE tokenizer (sentencepiece): training from text files, loading, encoding.

Trained so that every UTF-8 string round-trips exactly: identity normalisation, whitespace kept
as is (no folding, no dummy prefix), byte fallback for anything outside the vocabulary, digits
split one per token. Special tokens (data.special_tokens) sit at fixed ids as control symbols,
which plain text can never produce.
"""

from __future__ import annotations

import hashlib
import io
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import sentencepiece as spm

from data.documents import iter_documents
from data.special_tokens import BOS, FIRST_SPECIAL_ID, SPECIAL_TOKENS, special_id

# sentencepiece turns U+2581 (its whitespace marker) in input text into a space; the tokenizer
# encodes that character through its UTF-8 byte pieces instead, which decode back to itself.
_SPACE_MARK = "\u2581"
N_BYTE_PIECES = 256
MIN_VOCAB = 1 + len(SPECIAL_TOKENS) + N_BYTE_PIECES
_SURROGATES = re.compile("[\ud800-\udfff]")


class Tokenizer:
    """Encodes plain text and decodes ids; special ids come only from data.special_tokens."""

    def __init__(self, model_proto: bytes, source: str = "<memory>"):
        self._sp = spm.SentencePieceProcessor(model_proto=model_proto)
        self.sha256 = hashlib.sha256(model_proto).hexdigest()
        self.source = source
        for i, token in enumerate(SPECIAL_TOKENS):
            want = FIRST_SPECIAL_ID + i
            got = self._sp.id_to_piece(want) if want < self._sp.vocab_size() else None
            if got != token or not self._sp.is_control(want):
                raise ValueError(
                    f"tokenizer at {source} has {got!r} at id {want}, expected the control symbol "
                    f"{token!r}: it was not trained by data.tokenizer.train_tokenizer with this "
                    "special-token table; retrain it (python -m experiments.tokenizer)")
        self._special_ids = frozenset(range(FIRST_SPECIAL_ID, FIRST_SPECIAL_ID + len(SPECIAL_TOKENS)))
        self._mark_ids = [self._sp.piece_to_id(f"<0x{b:02X}>") for b in _SPACE_MARK.encode()]

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        """Loads `tokenizer.model` from a file path or a directory holding it."""
        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.model"
        if not path.is_file():
            raise FileNotFoundError(f"no tokenizer model at {path}: train one with "
                                    "`python -m experiments.tokenizer --workdir W --input FILES`")
        try:
            return cls(path.read_bytes(), str(path))
        except RuntimeError:  # sentencepiece's parse error names no file
            raise ValueError(f"{path} is not a sentencepiece model (unreadable or damaged): "
                             "retrain it with `python -m experiments.tokenizer`") from None

    def save(self, out_dir: str | Path) -> None:
        """Writes out_dir/tokenizer.model (what `load` reads)."""
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / "tokenizer.model").write_bytes(self._sp.serialized_model_proto())

    @property
    def vocab_size(self) -> int:
        return self._sp.vocab_size()

    def encode(self, text: str) -> list[int]:
        """Ids of plain text; never a special id, whatever the text spells. Lone surrogates
        (valid in a Python str and in JSON, not in UTF-8) are encoded as U+FFFD."""
        text = _SURROGATES.sub("\ufffd", text)
        parts = text.split(_SPACE_MARK)
        ids = self._sp.encode(parts[0]) if parts[0] else []
        for part in parts[1:]:
            ids.extend(self._mark_ids)
            if part:
                ids.extend(self._sp.encode(part))
        return ids

    def is_special(self, token_id: int) -> bool:
        return token_id in self._special_ids

    @property
    def bos_ids(self) -> list[int]:
        """What starts every document the model reads: <|bos|>."""
        return [special_id(BOS)]

    def special_token_id(self, token: str) -> int:
        """The id of a special token (data.special_tokens); an unknown one is refused."""
        return special_id(token)

    def decode(self, ids: Iterable[int], show_special: bool = False) -> str:
        """Text of `ids`; special tokens are dropped, or spelled out when show_special."""
        out, run = [], []
        for i in ids:
            i = int(i)
            if i in self._special_ids:
                out.append(self._sp.decode(run))
                run = []
                if show_special:
                    out.append(self._sp.id_to_piece(i))
            else:
                run.append(i)
        out.append(self._sp.decode(run))
        return "".join(out)

    def id_to_piece(self, token_id: int) -> str:
        return self._sp.id_to_piece(int(token_id))

    def pieces(self) -> list[tuple[str, float, int]]:
        """(piece, score, type) of every id; types as sentencepiece numbers them (1 normal,
        2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte), which GGUF shares."""
        sp = self._sp
        return [(sp.id_to_piece(i), float(sp.get_score(i)),
                 3 if sp.is_control(i) else 2 if sp.is_unknown(i) else 6 if sp.is_byte(i)
                 else 5 if sp.is_unused(i) else 1) for i in range(self.vocab_size)]

    def token_bytes(self) -> list[int]:
        """UTF-8 bytes each id stands for (0 for special tokens): the bits-per-byte table."""
        out = []
        for i in range(self.vocab_size):
            if i in self._special_ids or self._sp.is_unknown(i):
                out.append(0)
            elif self._sp.is_byte(i):
                out.append(1)
            else:
                out.append(len(self._sp.id_to_piece(i).replace(_SPACE_MARK, " ").encode()))
        return out


def iter_lines(files: Sequence[str | Path], text_field: str = "text",
               counts: dict | None = None) -> Iterator[str]:
    """Non-empty lines of the documents in corpus files (text, JSONL, Parquet: data.documents)."""
    for f in files:
        for doc in iter_documents(Path(f), text_field, counts):
            for chunk in doc:
                for line in chunk.splitlines():
                    if line.strip():
                        yield line


# The trainer options that decide how a trained model encodes (beside its pieces): what a GGUF
# file does not carry, so data.hf_tokenizer.sp_from_gguf sets them again.
ENCODING_OPTIONS = {"byte_fallback": True, "split_digits": True, "allow_whitespace_only_pieces": True,
                    "unk_id": 0, "bos_id": -1, "eos_id": -1, "pad_id": -1}


def train_tokenizer(
    files: Sequence[str | Path],
    out_dir: str | Path,
    vocab_size: int,
    heldout_every: int = 50,
    max_sentences: int = 2_000_000,
    max_heldout_bytes: int = 4_000_000,
    seed: int = 0,
) -> dict:
    """Trains a BPE model on `files` into out_dir/{tokenizer.model, tokenizer.vocab}.

    Every `heldout_every`-th line is kept out of training and used to measure bytes per token.
    sentencepiece samples at most `max_sentences` lines, which bounds memory on large inputs.
    Returns the figures that go into meta.json.
    """
    if vocab_size < MIN_VOCAB + 1:
        raise ValueError(f"vocab_size={vocab_size} is too small: {N_BYTE_PIECES} byte pieces, "
                         f"{len(SPECIAL_TOKENS)} special tokens and <unk> need {MIN_VOCAB}; "
                         "ask for at least a few hundred more")
    for f in files:
        if not Path(f).is_file():
            raise FileNotFoundError(f"tokenizer input {f} does not exist or is not a file")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    heldout: list[str] = []
    counts = {"train_lines": 0, "train_bytes": 0, "replaced_chars": 0}

    def train_lines() -> Iterator[str]:
        held_bytes = 0
        for n, line in enumerate(iter_lines(files, counts=counts)):
            if heldout_every and n % heldout_every == heldout_every - 1:
                if held_bytes < max_heldout_bytes:
                    heldout.append(line)
                    held_bytes += len(line.encode())
                continue
            counts["train_lines"] += 1
            counts["train_bytes"] += len(line.encode())
            yield line

    options = dict(
        model_type="bpe", vocab_size=vocab_size, character_coverage=0.9995,
        normalization_rule_name="identity", remove_extra_whitespaces=False,
        add_dummy_prefix=False, max_sentence_length=1 << 16, input_sentence_size=max_sentences,
        shuffle_input_sentence=True, control_symbols=list(SPECIAL_TOKENS), num_threads=2,
        minloglevel=2, **ENCODING_OPTIONS,
    )
    model = io.BytesIO()
    spm.set_random_generator_seed(seed)  # the line sampler's seed: retrains are reproducible
    try:
        spm.SentencePieceTrainer.train(sentence_iterator=train_lines(), model_writer=model,
                                       **options)
    except RuntimeError as e:
        if counts["train_lines"] == 0:
            raise ValueError(f"tokenizer inputs {list(map(str, files))} hold no non-empty "
                             "lines: point --input at text") from None
        hint = (" The text is too small for this vocabulary: use more text or a smaller "
                "vocab_size." if "Vocabulary size" in str(e) else "")
        raise ValueError(f"sentencepiece could not train a {vocab_size}-piece BPE model on "
                         f"{len(files)} file(s) ({counts['train_lines']} lines): {e}.{hint}") from e
    if counts["train_lines"] == 0:
        raise ValueError(f"tokenizer inputs {list(map(str, files))} hold no non-empty lines")
    proto = model.getvalue()
    (out_dir / "tokenizer.model").write_bytes(proto)
    tok = Tokenizer(proto, str(out_dir / "tokenizer.model"))
    with open(out_dir / "tokenizer.vocab", "w", encoding="utf-8") as fh:
        for i in range(tok.vocab_size):
            fh.write(f"{tok.id_to_piece(i)}\t{tok._sp.get_score(i)}\n")

    held_bytes = sum(len(s.encode()) for s in heldout)
    held_tokens = sum(len(tok.encode(s)) for s in heldout)
    return {
        "vocab_size": tok.vocab_size,
        "sha256": tok.sha256,
        "train_lines": counts["train_lines"],
        "train_bytes": counts["train_bytes"],
        "replaced_chars": counts["replaced_chars"],  # invalid UTF-8 / surrogates -> U+FFFD
        "heldout_lines": len(heldout),
        "heldout_bytes": held_bytes,
        "heldout_tokens": held_tokens,
        "bytes_per_token_heldout": held_bytes / held_tokens if held_tokens else None,
        "sentencepiece_options": {k: v for k, v in options.items() if k != "control_symbols"},
    }
