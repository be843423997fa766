"""The tokenizer of an imported model: byte-level BPE through Hugging Face `tokenizers`, from a
`tokenizer.json` or from a GGUF file's vocabulary and merges, with the guarantees of the
project's own (data.tokenizer.Tokenizer): any text round-trips exactly, and text that spells a
special token ("<|im_start|>") is encoded as ordinary pieces, never as the special id.

`load_tokenizer(dir)` opens whichever kind a tokenizer directory holds.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer as _HF

_SURROGATES = re.compile("[\ud800-\udfff]")


@functools.lru_cache(maxsize=1)
def _byte_chars() -> dict[str, int]:
    """GPT-2's byte-level alphabet: the printable character that stands for each byte."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
            *range(ord("®"), ord("ÿ") + 1)]
    extra = [b for b in range(256) if b not in keep]
    return {**{chr(b): b for b in keep}, **{chr(256 + i): b for i, b in enumerate(extra)}}


class HFTokenizer:
    """Encodes plain text and decodes ids for a byte-level BPE model of the Hugging Face
    layout; `special` maps the model's special tokens to their ids."""

    def __init__(self, spec_json: str, source: str = "<memory>", config: dict | None = None):
        spec = json.loads(spec_json)
        if spec.get("model", {}).get("type") != "BPE":
            raise ValueError(f"{source}: tokenizer model {spec.get('model', {}).get('type')!r} "
                             "is not supported (byte-level BPE only)")
        if not _is_byte_level(spec.get("pre_tokenizer")) or spec.get("normalizer") is not None:
            raise ValueError(f"{source}: only byte-level BPE without a normalizer round-trips "
                             "every text; this tokenizer.json has pre_tokenizer "
                             f"{(spec.get('pre_tokenizer') or {}).get('type')!r} and normalizer "
                             f"{(spec.get('normalizer') or {}).get('type')!r}")
        self._full = _HF.from_str(spec_json)
        self.special = {t["content"]: t["id"] for t in spec.get("added_tokens", [])
                        if t.get("special")}
        # Encoding goes through a copy without the added tokens, so their spellings stay text.
        self._plain = _HF.from_str(json.dumps({**spec, "added_tokens": [],
                                               "post_processor": None}))
        self._special_ids = frozenset(self.special.values())
        # of the canonical serialization, the one `save` writes, so a saved copy has the same
        self.sha256 = hashlib.sha256(self._full.to_str().encode()).hexdigest()
        self.source = source
        self.config = config or {}  # tokenizer_config.json: bos/eos tokens, chat_template
        # What starts a document: the BOS the tokenizer's post-processor or config adds, if any.
        first = self._full.encode("a", add_special_tokens=True).ids[:1]
        self.bos_ids = [i for i in first if i in self._special_ids]
        if "add_bos_token" in self.config:
            name = self.config.get("bos_token") or ""
            bos = self.special.get(name["content"] if isinstance(name, dict) else name)
            self.bos_ids = [bos] if self.config["add_bos_token"] and bos is not None else []

    @classmethod
    def load(cls, path: str | Path) -> HFTokenizer:
        """From a directory holding tokenizer.json (and optionally tokenizer_config.json)."""
        path = Path(path)
        file = path / "tokenizer.json" if path.is_dir() else path
        if not file.is_file():
            raise FileNotFoundError(f"no tokenizer.json at {path}")
        cfg_file = file.with_name("tokenizer_config.json")
        config = json.loads(cfg_file.read_text()) if cfg_file.is_file() else {}
        try:
            return cls(file.read_text(encoding="utf-8"), str(file), config)
        except Exception as e:  # tokenizers' parse errors are plain Exceptions
            if isinstance(e, ValueError) and str(e).startswith(str(file)):
                raise
            raise ValueError(f"{file} is not a usable tokenizer.json ({e})") from None

    @property
    def vocab_size(self) -> int:
        return self._full.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        """Ids of plain text; never a special id, whatever the text spells. Lone surrogates
        are encoded as U+FFFD."""
        return self._plain.encode(_SURROGATES.sub("\ufffd", text), add_special_tokens=False).ids

    def is_special(self, token_id: int) -> bool:
        return token_id in self._special_ids

    def special_token_id(self, token: str) -> int:
        if token not in self.special:
            raise ValueError(f"the tokenizer {self.source} has no special token {token!r}; it has "
                             f"{sorted(self.special)}")
        return self.special[token]

    def decode(self, ids: Iterable[int], show_special: bool = False) -> str:
        """Text of `ids`; special tokens are dropped, or spelled out when show_special."""
        out, run = [], []
        for i in ids:
            i = int(i)
            if i in self._special_ids:
                out.append(self._plain.decode(run, skip_special_tokens=False) if run else "")
                run = []
                if show_special:
                    out.append(self._full.id_to_token(i))
            else:
                run.append(i)
        out.append(self._plain.decode(run, skip_special_tokens=False) if run else "")
        return "".join(out)

    def id_to_piece(self, token_id: int) -> str:
        return self._full.id_to_token(int(token_id))

    def token_bytes(self) -> list[int]:
        """UTF-8 bytes each id stands for (0 for special tokens): the bits-per-byte table."""
        chars = _byte_chars()
        out = []
        for i in range(self.vocab_size):
            piece = self._full.id_to_token(i)
            out.append(0 if i in self._special_ids or piece is None
                       else sum(c in chars for c in piece))
        return out

    @property
    def spec(self) -> dict:
        """The tokenizer.json document (vocab, merges, added tokens, ...)."""
        return json.loads(self._full.to_str())

    def save(self, out_dir: str | Path) -> None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "tokenizer.json").write_text(self._full.to_str(), encoding="utf-8")
        (out_dir / "tokenizer_config.json").write_text(json.dumps(self.config, indent=1))


def _is_byte_level(pre) -> bool:
    if not pre:
        return False
    if pre.get("type") == "Sequence":
        return any(_is_byte_level(p) for p in pre.get("pretokenizers", []))
    return pre.get("type") == "ByteLevel"


# The pre-tokenizer split before byte-level BPE, by GGUF's tokenizer.ggml.pre (llama.cpp's names).
_DIGITS_ONE_BY_ONE = {"smollm", "starcoder", "refact", "codeshell"}


def tokenizer_from_gguf(fields: dict, source: str):
    """The tokenizer of a GGUF file: gpt2-style byte-level BPE as a tokenizer.json, or a
    sentencepiece model ('llama') that the project trained (sp_from_gguf). fields: key ->
    value, as model.convert.gguf_fields reads them."""
    if fields.get("tokenizer.ggml.model") == "llama":
        return sp_from_gguf(fields, source)
    if fields.get("tokenizer.ggml.model") != "gpt2":
        raise ValueError(f"{source}: tokenizer.ggml.model={fields.get('tokenizer.ggml.model')!r} is "
                         "not supported (byte-level BPE 'gpt2', or the project's own 'llama')")
    tokens, merges = fields["tokenizer.ggml.tokens"], fields.get("tokenizer.ggml.merges", [])
    types = fields.get("tokenizer.ggml.token_type", [1] * len(tokens))
    # token types: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte
    added = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": types[i] == 3}
             for i, t in enumerate(tokens) if types[i] in (3, 4)]
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                  "use_regex": True}
    pre = byte_level
    if fields.get("tokenizer.ggml.pre") in _DIGITS_ONE_BY_ONE:
        pre = {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": True}, byte_level]}
    spec = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
            "normalizer": None, "pre_tokenizer": pre, "post_processor": None,
            "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                        "use_regex": True},
            "model": {"type": "BPE", "dropout": None, "unk_token": None,
                      "continuing_subword_prefix": None, "end_of_word_suffix": None,
                      "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                      "vocab": {t: i for i, t in enumerate(tokens)},
                      "merges": [m.split(" ", 1) for m in merges]}}

    def name(key):
        i = fields.get(f"tokenizer.ggml.{key}_token_id")
        return tokens[i] if i is not None and 0 <= i < len(tokens) else None

    config = {"bos_token": name("bos"), "eos_token": name("eos"),
              "add_bos_token": bool(fields.get("tokenizer.ggml.add_bos_token", False)),
              "chat_template": fields.get("tokenizer.chat_template")}
    return HFTokenizer(json.dumps(spec), source, config)


def sp_from_gguf(fields: dict, source: str):
    """The project's sentencepiece tokenizer rebuilt from a GGUF file's 'llama' vocabulary
    (pieces, scores, types) and the options the project trains with; a file whose special
    tokens are not the project's is refused (data.tokenizer.Tokenizer checks them)."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    from data.tokenizer import ENCODING_OPTIONS, Tokenizer

    tokens = fields["tokenizer.ggml.tokens"]
    scores = fields.get("tokenizer.ggml.scores") or [0.0] * len(tokens)
    types = fields.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    m = pb.ModelProto()
    m.trainer_spec.model_type = pb.TrainerSpec.BPE
    m.trainer_spec.vocab_size = len(tokens)
    for k, v in ENCODING_OPTIONS.items():
        setattr(m.trainer_spec, k, v)
    m.normalizer_spec.name = "identity"
    m.normalizer_spec.add_dummy_prefix = bool(fields.get("tokenizer.ggml.add_space_prefix", False))
    m.normalizer_spec.remove_extra_whitespaces = False
    m.normalizer_spec.escape_whitespaces = True
    for piece, score, kind in zip(tokens, scores, types, strict=True):
        m.pieces.add(piece=piece, score=float(score), type=int(kind))
    try:
        return Tokenizer(m.SerializeToString(), source)
    except (ValueError, RuntimeError) as e:
        raise ValueError(f"{source}: a sentencepiece ('llama') vocabulary is imported only when "
                         f"the project trained it ({e})") from None


def add_gguf_tokenizer(writer, tok, chat_template: str | None) -> None:
    """Writes a tokenizer's tokenizer.ggml.* keys (and the chat template) with the gguf
    package's writer: the project's sentencepiece model as 'llama' (pieces, scores, types),
    an imported byte-level BPE as 'gpt2' (tokens, merges, types)."""
    if isinstance(tok, HFTokenizer):
        spec = tok.spec
        vocab = spec["model"]["vocab"]
        tokens = sorted(vocab, key=vocab.get)
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(tok.config.get("gguf_pre") or "default")
        writer.add_token_list(tokens)
        writer.add_token_types([3 if t in tok.special else 1 for t in tokens])
        writer.add_token_merges([m if isinstance(m, str) else " ".join(m)
                                 for m in spec["model"]["merges"]])
        for key, name in (("bos", "bos_token"), ("eos", "eos_token")):
            if tok.config.get(name) in vocab:
                getattr(writer, f"add_{key}_token_id")(vocab[tok.config[name]])
        writer.add_add_bos_token(bool(tok.config.get("add_bos_token", False)))
    else:
        from data.special_tokens import BOS, END, PAD, special_id

        pieces, scores, types = zip(*tok.pieces(), strict=True)
        writer.add_tokenizer_model("llama")
        writer.add_token_list(list(pieces))
        writer.add_token_scores(list(scores))
        writer.add_token_types(list(types))
        writer.add_bos_token_id(special_id(BOS))
        writer.add_eos_token_id(special_id(END))
        writer.add_pad_token_id(special_id(PAD))
        writer.add_unk_token_id(0)
        writer.add_add_bos_token(False)  # the chat template starts with <|bos|> itself
        writer.add_add_space_prefix(False)
    if chat_template:
        writer.add_chat_template(chat_template)


def load_tokenizer(path: str | Path):
    """The tokenizer a directory holds: the project's (tokenizer.model) or an imported model's
    (tokenizer.json)."""
    from data.tokenizer import Tokenizer

    path = Path(path)
    if (path / "tokenizer.json").is_file() and not (path / "tokenizer.model").is_file():
        return HFTokenizer.load(path)
    return Tokenizer.load(path)
