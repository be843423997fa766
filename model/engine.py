"""The decoding engine: prefill, a jitted decode step over an explicit KV cache, and generation.

A batch of prompts of different lengths is right-padded to a power-of-two bucket and prefilled
in one pass; each row then decodes at its own position. Two drivers share one step function:
  - `generate`: the whole loop inside one jit (`lax.while_loop`), fastest; stops early once
    every row has hit a stop token.
  - `stream`: a Python loop over the jitted `decode_step` (cache donated), yielding tokens as
    they are made (chat streaming).
  - `generate_with_tools`: the Python loop, where a row that closes a tool call is fed the
    tool's result before it samples again; the other rows go on.
Both draw the token for step i with `fold_in(key(seed), i)`, so they produce the same tokens.
Shapes are bucketed so that new prompts or sampling knobs do not recompile. The cache starts at
twice the prompt bucket and doubles as it fills (`cache_widths`), so that a decode step's
attention reads about the positions written so far, not the full length.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import functools
from collections.abc import Callable, Iterator, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from model.config import ModelConfig
from model.padding import bucket, right_pad
from model.sampling import sample_logits
from model.transformer import Cache, Params, cache_width, forward, init_cache, resize_cache

MAX_STOP_TOKENS = 8  # stop ids are padded to this many slots so their number never recompiles


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    max_new_tokens: int = 64
    temperature: float = 1.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    stop_tokens: tuple[int, ...] = ()
    seed: int = 0

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={self.max_new_tokens} must be >= 1")
        if self.temperature < 0:
            raise ValueError(f"temperature={self.temperature} must be >= 0 (0 is greedy)")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p={self.top_p} must be in (0, 1]")
        if len(self.stop_tokens) > MAX_STOP_TOKENS:
            raise ValueError(f"{len(self.stop_tokens)} stop tokens given; at most {MAX_STOP_TOKENS}")


@dataclasses.dataclass
class Generation:
    tokens: list[list[int]]  # new tokens per row, the stop token excluded
    finished: list[bool]  # True where a stop token ended the row, False where the budget did


def pad_prompts(prompts: Sequence[Sequence[int]], cfg: ModelConfig, max_new_tokens: int,
                pad_id: int = 0) -> tuple[np.ndarray, np.ndarray, int]:
    """Right-pads prompts into [B, T] with T a power-of-two bucket; returns (tokens, lengths, S)."""
    if not prompts:
        raise ValueError("no prompts given")
    lengths = np.array([len(p) for p in prompts], np.int32)
    if lengths.min() == 0:
        raise ValueError(f"prompt {int(np.argmin(lengths))} is empty; every prompt needs a token "
                         "(start it with the tokenizer's <|bos|>)")
    longest = int(lengths.max())
    if longest + max_new_tokens > cfg.max_seq_len:
        raise ValueError(f"longest prompt ({longest} tokens) + max_new_tokens ({max_new_tokens}) "
                         f"exceeds the model's max_seq_len={cfg.max_seq_len}: shorten the prompt "
                         "or ask for fewer tokens")
    t = bucket(longest, 8, cfg.max_seq_len)
    return right_pad(prompts, t, pad_id), lengths, t + max_new_tokens


@functools.partial(jax.jit, static_argnames=("cfg", "cache_len"))
def prefill(params: Params, tokens_BT: jax.Array, lengths_B: jax.Array, cfg: ModelConfig,
            cache_len: int) -> tuple[jax.Array, Cache]:
    """Runs the padded prompts through the model; returns each row's last logits and the cache."""
    b = tokens_BT.shape[0]
    cache = init_cache(cfg, b, cache_len)
    logits_B1V, cache = forward(params, tokens_BT, cfg, cache=cache, prefill=True,
                                logits_at_B=lengths_B - 1)
    return logits_B1V[:, 0], cache


def _decode(params, cache, tokens_B, positions_B, cfg):
    logits_B1V, cache = forward(params, tokens_B[:, None], cfg, cache=cache,
                                cache_start_B=positions_B)
    return logits_B1V[:, 0], cache


decode_step = jax.jit(_decode, static_argnames=("cfg",), donate_argnames=("cache",))
decode_step.__doc__ = """Feeds one token per row at its position; returns logits [B, V] and the
updated cache (the cache argument is donated and must not be used again)."""


def _knobs(s: SamplingConfig) -> dict:
    stop = np.full((MAX_STOP_TOKENS,), -1, np.int32)
    stop[: len(s.stop_tokens)] = s.stop_tokens
    return {"temperature": np.float32(s.temperature), "top_k": np.int32(s.top_k),
            "top_p": np.float32(s.top_p), "stop": stop, "key": jax.random.key(s.seed)}


def _choose(logits_BV, step, done_B, knobs):
    key = jax.random.fold_in(knobs["key"], step)
    tok_B = sample_logits(logits_BV, key, knobs["temperature"], knobs["top_k"], knobs["top_p"])
    tok_B = jnp.where(done_B, 0, tok_B)
    new_done_B = done_B | jnp.isin(tok_B, knobs["stop"])
    return tok_B, new_done_B


def cache_widths(t: int, cache_len: int) -> list[int]:
    """The widths generation's cache grows through: twice the prompt bucket `t`, doubling, then
    cache_len. A decode step reads its cache's whole width, so the cache grows as it fills."""
    widths = []
    while (t := 2 * t) < cache_len:
        widths.append(t)
    return widths + [cache_len]


_resize_jit = jax.jit(resize_cache, static_argnames=("width", "cfg"))


def _fit(state: dict, need: int, widths: list[int], cfg: ModelConfig) -> dict:
    """The state with its cache grown to the first width of at least `need` positions."""
    if need <= cache_width(state["cache"]):
        return state
    width = next(w for w in widths if w >= need)
    return {**state, "cache": _resize_jit(state["cache"], width, cfg)}


def _first(params, tokens_BT, lengths_B, knobs, cfg, cache_len):
    logits_BV, cache = prefill(params, tokens_BT, lengths_B, cfg, cache_len)
    done_B = jnp.zeros(lengths_B.shape, bool)
    tok_B, done_B = _choose(logits_BV, 0, done_B, knobs)
    return {"cache": cache, "token": tok_B, "pos": lengths_B, "done": done_B,
            "step": jnp.int32(1)}


def _next(params, state, knobs, cfg):
    logits_BV, cache = _decode(params, state["cache"], state["token"], state["pos"], cfg)
    tok_B, done_B = _choose(logits_BV, state["step"], state["done"], knobs)
    return {"cache": cache, "token": tok_B, "pos": state["pos"] + 1, "done": done_B,
            "step": state["step"] + 1}


_first_jit = jax.jit(_first, static_argnames=("cfg", "cache_len"))
_next_jit = jax.jit(_next, static_argnames=("cfg",), donate_argnames=("state",))


@functools.partial(jax.jit, static_argnames=("cfg", "cache_len", "max_new_tokens"))
def _generate_loop(params, tokens_BT, lengths_B, knobs, cfg, cache_len, max_new_tokens):
    t = tokens_BT.shape[1]
    widths = cache_widths(t, cache_len)
    state = _first(params, tokens_BT, lengths_B, knobs, cfg, widths[0])
    out_BN = jnp.zeros((tokens_BT.shape[0], max_new_tokens), jnp.int32)
    out_BN = out_BN.at[:, 0].set(state["token"])

    def cond(carry, end):
        state, _ = carry
        return (state["step"] < end) & ~jnp.all(state["done"])

    def body(carry):
        state, out_BN = carry
        state = _next(params, state, knobs, cfg)
        out_BN = jax.lax.dynamic_update_slice(out_BN, state["token"][:, None],
                                              (0, state["step"] - 1))
        return state, out_BN

    carry = (state, out_BN)
    for i, width in enumerate(widths):  # step s writes at position <= t + s - 1: s <= width - t
        if i:
            carry = ({**carry[0], "cache": resize_cache(carry[0]["cache"], width, cfg)}, carry[1])
        carry = jax.lax.while_loop(functools.partial(cond, end=min(max_new_tokens, width - t + 1)),
                                   body, carry)
    return carry[1]


def _trim(rows: np.ndarray, stop_tokens: tuple[int, ...]) -> Generation:
    tokens, finished = [], []
    for row in rows.tolist():
        cut = next((i for i, t in enumerate(row) if t in stop_tokens), None)
        tokens.append(row if cut is None else row[:cut])
        finished.append(cut is not None)
    return Generation(tokens, finished)


def generate(params: Params, cfg: ModelConfig, prompts: Sequence[Sequence[int]],
             sampling: SamplingConfig) -> Generation:
    """Samples continuations for a batch of prompts, the whole loop in one compiled call."""
    tokens_BT, lengths_B, cache_len = pad_prompts(prompts, cfg, sampling.max_new_tokens)
    out_BN = _generate_loop(params, tokens_BT, lengths_B, _knobs(sampling), cfg, cache_len,
                            sampling.max_new_tokens)
    return _trim(np.asarray(out_BN), sampling.stop_tokens)


def stream(params: Params, cfg: ModelConfig, prompts: Sequence[Sequence[int]],
           sampling: SamplingConfig) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yields (tokens [B], live [B]) per step; live is False for rows already stopped.

    A stop token is yielded (live) on the step it is drawn; the loop ends when every row has
    stopped or max_new_tokens steps were taken.
    """
    tokens_BT, lengths_B, cache_len = pad_prompts(prompts, cfg, sampling.max_new_tokens)
    knobs, t = _knobs(sampling), tokens_BT.shape[1]
    widths = cache_widths(t, cache_len)
    state = _first_jit(params, tokens_BT, lengths_B, knobs, cfg, widths[0])
    live = np.ones(len(prompts), bool)
    for step in range(sampling.max_new_tokens):
        if step:
            state = _next_jit(params, _fit(state, t + step, widths, cfg), knobs, cfg)
        token, done = np.asarray(state["token"]), np.asarray(state["done"])
        yield token, live
        live = ~done
        if done.all():
            return


@dataclasses.dataclass
class ToolGeneration(Generation):
    injected: list[list[bool]]  # per new token: True where a tool hook wrote it, not the model
    calls: list[int]  # tool calls per row


ToolHook = Callable[[int, list[int], int], list[int]]


def generate_with_tools(params: Params, cfg: ModelConfig, prompts: Sequence[Sequence[int]],
                        sampling: SamplingConfig, hooks: Mapping[int, ToolHook],
                        max_calls: int = 4) -> ToolGeneration:
    """Batched sampling in which a row can call tools mid-generation.

    hooks maps a closing tag id (e.g. <|/python|>) to hook(row, tokens_so_far, calls_so_far) ->
    the token ids to insert after it (e.g. <|result|> output <|/result|>). When a row samples a
    closing tag, its next steps feed those ids one per step instead of sampling (its KV cache
    fills as if they were a prompt); the other rows sample on unaffected, and the row resumes
    sampling after the last inserted id. A row's inserted ids count against max_new_tokens.
    After max_calls calls a row's closing tags are not acted on. The model never writes the
    inserted ids: `injected` marks them (RL must not train on them). The calls drawn in one
    step run in row order, or on `hooks.threads` threads where the mapping has that attribute
    (data.tools.make_hooks(threads=N): a sandboxed program mostly waits on its own process).
    """
    tokens_BT, lengths_B, cache_len = pad_prompts(prompts, cfg, sampling.max_new_tokens)
    knobs, t_prompt = _knobs(sampling), tokens_BT.shape[1]
    widths = cache_widths(t_prompt, cache_len)
    n = len(prompts)
    state = _first_jit(params, tokens_BT, lengths_B, knobs, cfg, widths[0])
    out: list[list[int]] = [[] for _ in range(n)]
    injected: list[list[bool]] = [[] for _ in range(n)]
    queue: list[list[int]] = [[] for _ in range(n)]
    calls = [0] * n
    finished = [False] * n
    live = np.ones(n, bool)
    stop = set(sampling.stop_tokens)
    threads = getattr(hooks, "threads", 1)
    with (concurrent.futures.ThreadPoolExecutor(threads) if threads > 1
          else contextlib.nullcontext()) as pool:
        for step in range(sampling.max_new_tokens):
            token = np.asarray(state["token"]).copy()
            forced = np.zeros(n, bool)
            called = []  # (row, closing tag, its tokens so far, its call count): this step's calls
            for r in np.flatnonzero(live):
                if queue[r]:  # this step feeds an inserted id, whatever was sampled
                    token[r] = queue[r].pop(0)
                    forced[r] = True
                t = int(token[r])
                if not forced[r] and t in stop:
                    finished[r], live[r] = True, False
                    continue
                out[r].append(t)
                injected[r].append(bool(forced[r]))
                if not forced[r] and t in hooks and calls[r] < max_calls:
                    calls[r] += 1
                    called.append((int(r), t, list(out[r]), calls[r]))
            if not live.any():
                break
            if step + 1 < sampling.max_new_tokens:  # dispatched now: the tools run meanwhile
                state = _fit(state, t_prompt + step + 1, widths, cfg)
                state = _next_jit(params, {**state, "token": jnp.asarray(token),
                                           "done": jnp.asarray(~live)}, knobs, cfg)
            # a call's ids are first fed at the next step's end, after its sampled token
            results = (pool.map if pool else map)(lambda c: hooks[c[1]](c[0], c[2], c[3]), called)
            for (r, *_), ids in zip(called, results, strict=True):
                queue[r] = list(ids)
    return ToolGeneration(tokens=out, finished=finished, injected=injected, calls=calls)
