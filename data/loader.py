"""A grain pipeline of packed training sequences, and the validation batches.

The split's token stream is cut into non-overlapping windows of T+1 tokens: window i is
tokens [i*T, i*T + T + 1). The windows are shuffled with a fresh permutation per epoch and cut
into global batches; process p reads only rows [p*B/P, (p+1)*B/P) of each. The global batches are
the same whatever the number of processes, so 1 and N processes train on the same data.
A batch holds
  inputs [B, T], targets [B, T] (inputs shifted by one), segment_ids [B, T]
where segment ids count the <|bos|> tokens seen so far, so a new document starts a new segment
(attention and positions restart there). The grain iterator's state (`get_state`/`set_state`) is
a small dict saved with every checkpoint: a resumed run sees exactly the batches it would have.
"""

from __future__ import annotations

from collections.abc import Iterator

import grain
import numpy as np

from data.shards import TokenStream
from data.special_tokens import BOS, special_id


def _window(stream: TokenStream, seq_len: int, i: int) -> dict[str, np.ndarray]:
    w = stream.read(i * seq_len, i * seq_len + seq_len + 1)
    x = w[:-1]
    return {"inputs": x, "targets": w[1:],
            "segment_ids": np.cumsum(x == special_id(BOS)).astype(np.int32)}


def n_windows(stream: TokenStream, seq_len: int) -> int:
    return (len(stream) - 1) // seq_len


def require_windows(stream: TokenStream, seq_len: int, text_rows: int, global_batch: int,
                    process_count: int) -> int:
    """The split's number of windows, once the global batch splits over the processes and the
    split holds the text_rows windows one batch takes."""
    if global_batch % process_count:
        raise ValueError(f"batch size {global_batch} does not split over {process_count} processes")
    n = n_windows(stream, seq_len)
    if n < text_rows:
        raise ValueError(f"the training split holds {len(stream)} tokens: {n} windows of "
                         f"{seq_len + 1}, fewer than one batch's {text_rows} text rows; use more "
                         "text, a shorter seq_len or a smaller batch")
    return n


def train_dataset(stream: TokenStream, seq_len: int, global_batch: int, seed: int,
                  process_index: int = 0, process_count: int = 1) -> grain.IterDataset:
    """Infinite shuffled packed batches for this process (global_batch / process_count rows)."""
    n = require_windows(stream, seq_len, global_batch, global_batch, process_count)
    return shuffled_batches(n, lambda i: _window(stream, seq_len, i), global_batch, seed,
                            process_index, process_count)


def shuffled_batches(n_rows: int, row, global_batch: int, seed: int, process_index: int = 0,
                     process_count: int = 1) -> grain.IterDataset:
    """Rows 0..n_rows-1 (row(i) -> dict of arrays), a fresh seeded permutation per epoch, cut into
    global batches of which this process stacks only its rows. Its state is grain's, so a
    resumed run sees exactly the batches it would have."""
    local = global_batch // process_count
    ds = grain.MapDataset.range(n_rows).shuffle(seed=seed).repeat()
    ds = ds.batch(global_batch, drop_remainder=True)

    def load(idx: np.ndarray) -> dict[str, np.ndarray]:
        rows = [row(int(i)) for i in idx[process_index * local:(process_index + 1) * local]]
        return {k: np.stack([r[k] for r in rows]) for k in rows[0]}

    return ds.map(load).to_iter_dataset()


def eval_batches(stream: TokenStream, seq_len: int, global_batch: int, max_batches: int,
                 process_index: int = 0, process_count: int = 1) -> Iterator[dict]:
    """The first max_batches batches of the split, in order (the same every call)."""
    local = global_batch // process_count
    n = n_windows(stream, seq_len)
    for b in range(min(max_batches, n // global_batch)):
        first = b * global_batch + process_index * local
        rows = [_window(stream, seq_len, i) for i in range(first, first + local)]
        yield {k: np.stack([r[k] for r in rows]) for k in rows[0]}


class TokenData:
    """Pretraining data for the host loop: packed windows of a token stream. The loop asks any
    data object (this, or data.chat.ConversationData) for `train(...)` and `eval(...)`."""

    def __init__(self, stream: TokenStream):
        self.stream = stream

    def __len__(self) -> int:
        return len(self.stream)

    def train(self, seq_len: int, global_batch: int, seed: int, process_index: int = 0,
              process_count: int = 1) -> grain.IterDataset:
        return train_dataset(self.stream, seq_len, global_batch, seed, process_index, process_count)

    def eval(self, seq_len: int, global_batch: int, max_batches: int, process_index: int = 0,
             process_count: int = 1) -> Iterator[dict]:
        return eval_batches(self.stream, seq_len, global_batch, max_batches, process_index,
                            process_count)
