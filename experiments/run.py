"""The second of the "two files": runs a model that experiments.export wrote as --format hf, with
numpy alone (no jax, nothing of this project). `export` copies this file into the directory.

  python run.py DIR --prompt "Who are you?"            # a chat turn in the project's format
  python run.py DIR --prompt "Once upon" --raw --temperature 0.8 --max_new_tokens 64

Reads DIR/config.json (LlamaForCausalLM), DIR/model.safetensors (f32, f16 or bf16) and
DIR/tokenizer.model (the project's sentencepiece BPE: pieces and scores, byte fallback, no
normalisation). Decodes with a KV cache, greedily or by temperature sampling.
"""

import argparse
import json
import struct
import sys
from pathlib import Path

import numpy as np

SPACE = "\u2581"  # sentencepiece's whitespace symbol


def _varint(buf, i):
    out = shift = 0
    while True:
        b = buf[i]
        i += 1
        out |= (b & 0x7F) << shift
        shift += 7
        if b < 0x80:
            return out, i


def _fields(buf):
    """(field number, wire type, value) of one protobuf message, in order."""
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        kind = key & 7
        if kind == 0:
            value, i = _varint(buf, i)
        elif kind == 1:
            value, i = buf[i:i + 8], i + 8
        elif kind == 2:
            n, i = _varint(buf, i)
            value, i = buf[i:i + n], i + n
        elif kind == 5:
            value, i = buf[i:i + 4], i + 4
        else:
            raise ValueError(f"tokenizer.model: protobuf wire type {kind} is not read here")
        yield key >> 3, kind, value


class Tokenizer:
    """Pieces (ModelProto field 1: piece, score, type) and sentencepiece's BPE over them."""

    def __init__(self, path):
        self.pieces, self.scores, self.types = [], [], []
        for field, _, value in _fields(Path(path).read_bytes()):
            if field == 1:
                piece, score, kind = "", 0.0, 1
                for f, _, v in _fields(value):
                    if f == 1:
                        piece = v.decode("utf-8")
                    elif f == 2:
                        score = struct.unpack("<f", v)[0]
                    elif f == 3:
                        kind = v
                self.pieces.append(piece)
                self.scores.append(score)
                self.types.append(kind)
        # types: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte
        self.ids = {p: i for i, p in enumerate(self.pieces) if self.types[i] in (1, 4)}
        self.byte_ids = {int(p[3:5], 16): i for i, p in enumerate(self.pieces) if self.types[i] == 6}
        self.special = {p: i for i, p in enumerate(self.pieces) if self.types[i] == 3}

    def _words(self, text):
        """Split before each whitespace symbol that does not continue a run of them."""
        words, run = [], False
        for ch in text:
            if not words or (ch == SPACE and not run):
                words.append("")
                run = True
            if ch != SPACE:
                run = False
            words[-1] += ch
        return words

    def _bpe(self, word):
        symbols = list(word)
        while len(symbols) > 1:
            best = None
            for i in range(len(symbols) - 1):
                j = self.ids.get(symbols[i] + symbols[i + 1])
                if j is not None and (best is None or self.scores[j] > best[0]):
                    best = (self.scores[j], i)
            if best is None:
                break
            i = best[1]
            symbols[i: i + 2] = [symbols[i] + symbols[i + 1]]
        out = []
        for s in symbols:
            out += [self.ids[s]] if s in self.ids else [self.byte_ids[b] for b in s.encode()]
        return out

    def encode(self, text):
        """Ids of plain text; a typed U+2581 goes through its UTF-8 bytes, as the project's does."""
        ids = []
        for k, part in enumerate(text.split(SPACE)):
            if k:
                ids += [self.byte_ids[b] for b in SPACE.encode()]
            for word in self._words(part.replace(" ", SPACE)):
                ids += self._bpe(word)
        return ids

    def decode(self, ids):
        out = bytearray()
        for i in ids:
            if self.types[i] == 6:
                out.append(int(self.pieces[i][3:5], 16))
            elif self.types[i] in (1, 4):
                out += self.pieces[i].replace(SPACE, " ").encode()
        return out.decode("utf-8", errors="replace")


def load_safetensors(path):
    raw = Path(path).read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header, data = json.loads(raw[8:8 + n]), memoryview(raw)[8 + n:]
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        a, b = t["data_offsets"]
        if t["dtype"] == "BF16":  # the high half of a float32
            x = (np.frombuffer(data[a:b], np.uint16).astype(np.uint32) << 16).view(np.float32)
        else:
            x = np.frombuffer(data[a:b], {"F32": np.float32, "F16": np.float16}[t["dtype"]])
        out[name] = x.astype(np.float32).reshape(t["shape"])
    return out


class Llama:
    def __init__(self, directory):
        self.c = json.loads((Path(directory) / "config.json").read_text())
        self.w = load_safetensors(Path(directory) / "model.safetensors")
        c = self.c
        self.n, self.k = c["num_attention_heads"], c["num_key_value_heads"]
        self.h = c.get("head_dim") or c["hidden_size"] // self.n
        self.head = self.w.get("lm_head.weight", self.w["model.embed_tokens.weight"])
        self.inv_freq = c["rope_theta"] ** (-np.arange(0, self.h, 2, dtype=np.float32) / self.h)

    def norm(self, x, name):
        x = x * (1.0 / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + self.c["rms_norm_eps"]))
        return x * self.w[name]

    def rope(self, x, pos):  # x [T, heads, h]; rotate-half order, as Hugging Face's Llama
        angle = pos[:, None].astype(np.float32) * self.inv_freq
        sin, cos = np.sin(angle)[:, None, :], np.cos(angle)[:, None, :]
        x1, x2 = x[..., : self.h // 2], x[..., self.h // 2:]
        return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)

    def new_cache(self, length):
        shape = (self.c["num_hidden_layers"], length, self.k, self.h)
        return {"k": np.zeros(shape, np.float32), "v": np.zeros(shape, np.float32), "len": 0}

    def forward(self, tokens, cache):
        """Logits of the last token; the tokens' keys and values go into the cache."""
        t, start = len(tokens), cache["len"]
        pos = np.arange(start, start + t)
        x = self.w["model.embed_tokens.weight"][tokens]
        mask = np.arange(start + t)[None, :] <= pos[:, None]  # [T, S]
        for i in range(self.c["num_hidden_layers"]):
            p = f"model.layers.{i}."
            y = self.norm(x, p + "input_layernorm.weight")
            q = self.rope((y @ self.w[p + "self_attn.q_proj.weight"].T).reshape(t, self.n, self.h), pos)
            k = self.rope((y @ self.w[p + "self_attn.k_proj.weight"].T).reshape(t, self.k, self.h), pos)
            v = (y @ self.w[p + "self_attn.v_proj.weight"].T).reshape(t, self.k, self.h)
            cache["k"][i, start:start + t], cache["v"][i, start:start + t] = k, v
            keys, values = cache["k"][i, :start + t], cache["v"][i, :start + t]  # [S, K, h]
            g = self.n // self.k  # query heads per kv head
            q = q.reshape(t, self.k, g, self.h)
            s = np.einsum("tkgh,skh->kgts", q, keys) / np.sqrt(self.h)
            s = np.where(mask, s, -np.inf)
            s = np.exp(s - s.max(-1, keepdims=True))
            o = np.einsum("kgts,skh->tkgh", s / s.sum(-1, keepdims=True), values)
            x = x + o.reshape(t, self.n * self.h) @ self.w[p + "self_attn.o_proj.weight"].T
            y = self.norm(x, p + "post_attention_layernorm.weight")
            gate = y @ self.w[p + "mlp.gate_proj.weight"].T
            up = y @ self.w[p + "mlp.up_proj.weight"].T
            x = x + (gate / (1.0 + np.exp(-gate)) * up) @ self.w[p + "mlp.down_proj.weight"].T
        cache["len"] = start + t
        return self.norm(x[-1], "model.norm.weight") @ self.head.T


def generate(model, ids, max_new_tokens, temperature=0.0, seed=0, stop=()):
    """New token ids after `ids` (greedy at temperature 0), up to a stop id or the budget."""
    rng = np.random.default_rng(seed)
    cache = model.new_cache(min(len(ids) + max_new_tokens, model.c["max_position_embeddings"]))
    out, logits = [], model.forward(np.array(ids), cache)
    for _ in range(max_new_tokens):
        if temperature > 0:
            p = np.exp((logits - logits.max()) / temperature)
            nxt = int(rng.choice(len(p), p=p / p.sum()))
        else:
            nxt = int(np.argmax(logits))
        if nxt in stop or cache["len"] >= len(cache["k"][0]):
            break
        out.append(nxt)
        logits = model.forward(np.array([nxt]), cache)
    return out


def chat_prompt(tok, question, system=None):
    """The project's chat format: <|bos|> [<|system|>..<|end|>] <|user|>..<|end|> <|assistant|>."""
    s = tok.special
    head = [s["<|system|>"], *tok.encode(system), s["<|end|>"]] if system else []
    return [s["<|bos|>"], *head, s["<|user|>"], *tok.encode(question), s["<|end|>"], s["<|assistant|>"]]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("directory")
    ap.add_argument("--prompt", required=True)
    ap.add_argument("--system", default=None)
    ap.add_argument("--raw", action="store_true", help="continue the text, no chat format")
    ap.add_argument("--max_new_tokens", type=int, default=64)
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ids", action="store_true", help="print the new token ids too")
    a = ap.parse_args(argv)
    d = Path(a.directory)
    for f in ("config.json", "model.safetensors", "tokenizer.model"):
        if not (d / f).is_file():
            sys.exit(f"error: {d / f} is missing (run.py reads an `experiments.export --format hf` "
                     "directory of a model with the project's tokenizer)")
    tok, model = Tokenizer(d / "tokenizer.model"), Llama(d)
    if a.raw:
        ids, stop = [tok.special["<|bos|>"], *tok.encode(a.prompt)], ()
    else:
        ids, stop = chat_prompt(tok, a.prompt, a.system), (tok.special["<|end|>"],)
    new = generate(model, ids, a.max_new_tokens, a.temperature, a.seed, stop)
    print(tok.decode(new))
    if a.ids:
        print(json.dumps(new))


if __name__ == "__main__":
    main()
