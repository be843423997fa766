"""Synthetic in-context copy rows mixed into pretraining: the induction task.

The tiny model pretrained on the speedrun's mixture cannot copy what is in its context (the copy
test of eval/suite.py scores 0.0 on random tokens), so it cannot copy a tool's result into its
answer, a word into python code, or a name into a search query. Copying by content needs
induction heads, which form in a sharp phase change after enough repeated-span signal; the
mixture's text holds too little of it for 1000 steps (experiments/README.md). These rows give
that signal directly.

A copy row is seq_len + 1 tokens packed with episodes
    <|bos|> P X X
P: 0..max_prefix-1 random ordinary tokens (so the repeat starts at no fixed offset and only
content-based copying predicts it); X: min_len..max_len distinct random ordinary tokens. A
`text_share` of the episodes take P and X from random places of the training text instead, so
the skill is also practised on words and numbers in running text, not only on token soup.
The loss mask is 1 only on the repeat's predictable tokens (its 2nd..last): the model is not
taught to predict random tokens, only to copy. The episodes are documents, so segment ids restart
at each <|bos|> as in the text windows.

CopyMixData is the pretraining data with these rows: the first `warmup_steps` batches are all
copy rows of distinct random tokens (where the circuit forms fastest); after that the first
`fraction` of each batch's rows are copy rows with their shares of text and small-alphabet
episodes, the rest the usual shuffled text windows. Validation is the text's only, so val loss
compares with runs without copy rows. Every row is a function of (seed, step, row), and the text
batches are grain's, so a resumed run sees exactly the batches it would have.
"""

from __future__ import annotations

import grain
import numpy as np

from data.loader import TokenData, _window, require_windows
from data.shards import TokenStream
from data.special_tokens import BOS, FIRST_SPECIAL_ID, SPECIAL_TOKENS, special_id


def copy_row(rng: np.random.Generator, seq_len: int, vocab_size: int, min_len: int = 6,
             max_len: int = 40, max_prefix: int = 20, text: TokenStream | None = None,
             text_share: float = 0.0, alphabet_share: float = 0.0) -> dict[str, np.ndarray]:
    """One row of packed "<|bos|> P X X" episodes: inputs, targets, segment_ids and mask [seq_len].
    A text_share of the episodes take P and X from random places of `text` (so copying is also
    practised on words and numbers in running text); an alphabet_share draw X with repeats from
    4-16 random tokens (as digits repeat in numbers: copying them needs more than the last token
    as the key); the rest are distinct random ordinary tokens."""
    lo = FIRST_SPECIAL_ID + len(SPECIAL_TOKENS)
    if not 1 <= min_len <= max_len or max_len > vocab_size - lo or max_prefix < 1:
        raise ValueError(f"copy rows: need 1 <= min_len ({min_len}) <= max_len ({max_len}) <= "
                         f"the {vocab_size - lo} ordinary tokens, and max_prefix ({max_prefix}) >= 1")
    if not 0.0 <= alphabet_share <= 1.0 - text_share:
        raise ValueError(f"copy rows: alphabet_share={alphabet_share} must be in [0, 1 - "
                         f"text_share={text_share}]")
    if not 0.0 <= text_share <= 1.0 or (text_share and (text is None or len(text) < 4 * max_len)):
        raise ValueError(f"copy rows: text_share={text_share} must be in [0, 1] and needs a token "
                         f"stream of at least {4 * max_len} tokens")

    def span(n: int) -> list[int]:  # n tokens of running text, without document boundaries
        start = int(rng.integers(0, len(text) - 2 * n - 1))
        w = text.read(start, start + 2 * n + 1)
        return w[w >= lo][:n].tolist()

    toks: list[int] = []
    predictable: list[bool] = []  # per token: can it be predicted from its left context?
    while len(toks) < seq_len + 1:
        n = int(rng.integers(min_len, max_len + 1))
        n_prefix = int(rng.integers(0, max_prefix))
        kind = rng.random()
        if kind < text_share:
            prefix, x = span(n_prefix), span(n)
            n = len(x)
            if n < 2:
                continue
        else:
            prefix = rng.integers(lo, vocab_size, n_prefix).tolist()
            if kind < text_share + alphabet_share:
                alphabet = lo + rng.choice(vocab_size - lo, int(rng.integers(4, 17)), replace=False)
                x = rng.choice(alphabet, n).tolist()
            else:
                x = (lo + rng.choice(vocab_size - lo, n, replace=False)).tolist()
        toks += [special_id(BOS)] + prefix + x + x
        predictable += [False] * (1 + len(prefix) + n + 1) + [True] * (n - 1)
    w = np.asarray(toks[:seq_len + 1], np.int32)
    x = w[:-1]
    return {"inputs": x, "targets": w[1:],
            "segment_ids": np.cumsum(x == special_id(BOS)).astype(np.int32),
            "mask": np.asarray(predictable[1:seq_len + 1], np.int32)}


class CopyMixData(TokenData):
    """Pretraining windows of `stream` with copy rows mixed in (see the module docstring)."""

    def __init__(self, stream: TokenStream, vocab_size: int, fraction: float = 0.0,
                 warmup_steps: int = 0, text_share: float = 0.0, alphabet_share: float = 0.0,
                 min_len: int = 6, max_len: int = 40, max_prefix: int = 20):
        if not 0.0 <= fraction < 1.0:
            raise ValueError(f"data.copy_rows={fraction}: the share of each batch's rows that are "
                             "copy rows must be in [0, 1) (the rest are text)")
        if warmup_steps < 0:
            raise ValueError(f"data.copy_warmup={warmup_steps} must be >= 0")
        super().__init__(stream)
        self.vocab_size, self.fraction, self.warmup_steps = vocab_size, fraction, warmup_steps
        self.shape = dict(min_len=min_len, max_len=max_len, max_prefix=max_prefix, text=stream,
                          text_share=text_share, alphabet_share=alphabet_share)
        self.warmup_shape = {**self.shape, "text_share": 0.0, "alphabet_share": 0.0}
        copy_row(np.random.default_rng(0), 8, vocab_size, **self.shape)  # bad shapes fail here

    def copy_rows_per_batch(self, global_batch: int) -> int:
        return int(round(self.fraction * global_batch))

    def train(self, seq_len: int, global_batch: int, seed: int, process_index: int = 0,
              process_count: int = 1) -> grain.IterDataset:
        k = self.copy_rows_per_batch(global_batch)
        n_text = global_batch - k
        if n_text < 1:
            raise ValueError(f"data.copy_rows={self.fraction} makes all {global_batch} rows of a "
                             "batch copy rows, leaving none for the text")
        n = require_windows(self.stream, seq_len, n_text, global_batch, process_count)
        text = grain.MapDataset.range(n).shuffle(seed=seed).repeat().batch(n_text, drop_remainder=True)
        local = global_batch // process_count
        first = process_index * local

        def batch(step: int) -> dict[str, np.ndarray]:
            warmup = step < self.warmup_steps
            copies = global_batch if warmup else k
            windows = None if warmup else text[step - self.warmup_steps]
            shape = self.warmup_shape if warmup else self.shape  # warm-up: random tokens only
            rows = []
            for j in range(first, first + local):
                if j < copies:
                    rng = np.random.default_rng((seed, step, j))
                    rows.append(copy_row(rng, seq_len, self.vocab_size, **shape))
                else:
                    r = _window(self.stream, seq_len, int(windows[j - copies]))
                    rows.append({**r, "mask": np.ones(seq_len, np.int32)})
            return {key: np.stack([r[key] for r in rows]) for key in rows[0]}

        return grain.MapDataset.range(1 << 62).map(batch).to_iter_dataset()
