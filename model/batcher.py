"""Continuous batching: a fixed number of decode slots over one KV cache, which requests join and
leave at step boundaries (the serving engine; model/engine.py decodes one fixed batch).

Each step decodes one token for every slot, each at its own position with its own sampling
settings and seed (the token of a request's step i is drawn with fold_in(key(seed), i), whoever
shares the batch). A new request is prefilled alone (its prompt padded to a power-of-two bucket)
and its cache copied into a free slot. The cache holds a power-of-two number of positions, the
bucket of the furthest position a live slot needs (at least `min_width`, at most the context): it
doubles when a slot reaches its end and halves when every slot fits in a quarter of it, so a step
reads the part of the cache in use, not the whole context. Shapes depend only on the slot count,
the cache's width and the prompt bucket, so a request compiles nothing that an earlier one of its
length did not; and since a slot's row is computed the same way whatever the other slots hold, a
greedy request gives the same tokens alone or in a crowd.
"""

from __future__ import annotations

import dataclasses
import functools
import queue
import threading
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from model.config import ModelConfig
from model.padding import bucket, right_pad
from model.sampling import sample_logits
from model.transformer import Params, cache_width, forward, init_cache, resize_cache


@dataclasses.dataclass
class Request:
    """One completion. on_token(token) is called from the batcher's thread with every new
    token; `finish_reason` ("stop", "length", "cancelled" or "error") is set and `done` is set
    at the end."""
    prompt: list[int]
    max_new_tokens: int
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    stop_tokens: tuple[int, ...] = ()
    on_token: Callable[[int], None] | None = None
    on_finish: Callable[[], None] | None = None  # called once, after the last on_token
    # tools: closing-tag id -> hook(row, tokens so far, calls so far) -> ids to feed after it
    # (data.tools.make_hooks); fed one a step in place of sampling, marked in `injected`
    hooks: dict | None = None
    max_calls: int = 4
    injected: list[bool] = dataclasses.field(default_factory=list)
    queue: list[int] = dataclasses.field(default_factory=list)
    calls: int = 0
    tool_error: str | None = None  # a hook that raised ends its request ("error"), no other
    tokens: list[int] = dataclasses.field(default_factory=list)
    finish_reason: str | None = None
    cancelled: bool = False  # set by the caller (a client went away): the slot is freed
    done: threading.Event = dataclasses.field(default_factory=threading.Event)

    def cancel(self) -> None:
        self.cancelled = True


def _sample_rows(logits_NV, keys_N, steps_N, temp_N, topk_N, topp_N):
    """One token per row, each with its own key (folded with its own step) and knobs. Only
    what some row needs is computed (lax.cond runs one branch): the argmax when every row is
    greedy, no sort of the vocabulary unless a row asks for top-k or top-p."""
    keys = jax.vmap(lambda k, s: jax.random.fold_in(jax.random.wrap_key_data(k), s))(keys_N, steps_N)
    greedy = jnp.argmax(logits_NV, axis=-1).astype(jnp.int32)

    def filtered(_):
        return jax.vmap(lambda lg, k, t, tk, tp: sample_logits(lg[None], k, t, tk, tp)[0])(
            logits_NV, keys, temp_N, topk_N, topp_N)

    def plain(_):
        scaled = logits_NV.astype(jnp.float32) / jnp.maximum(temp_N, 1e-6)[:, None]
        # drawn as sample_logits draws it (a [1, V] row), so a row's token never depends on
        # which branch its batch took
        return jax.vmap(lambda k, lg: jax.random.categorical(k, lg[None])[0])(
            keys, scaled).astype(jnp.int32)

    def sampled(_):
        return jax.lax.cond(jnp.any((topk_N > 0) | (topp_N < 1)), filtered, plain, None)

    tok = jax.lax.cond(jnp.any(temp_N > 0), sampled, lambda _: greedy, None)
    return jnp.where(temp_N > 0, tok, greedy)


@functools.partial(jax.jit, static_argnames=("cfg",), donate_argnames=("cache",))
def _admit(params, cache, tokens_1T, length, slot, knobs, cfg):
    """Prefills one prompt, copies its cache into `slot`, samples its first token."""
    small = init_cache(cfg, 1, cache_width(cache))
    logits_11V, small = forward(params, tokens_1T, cfg, cache=small, prefill=True,
                                logits_at_B=jnp.reshape(length - 1, (1,)))
    cache = jax.tree.map(lambda big, one: jax.lax.dynamic_update_slice(
        big, one, (slot * cfg.n_kv_heads, 0, 0)), cache, small)
    tok = _sample_rows(logits_11V[0], knobs["key"][None], jnp.zeros((1,), jnp.int32),
                       knobs["temperature"][None], knobs["top_k"][None], knobs["top_p"][None])
    return tok[0], cache


_resize = jax.jit(resize_cache, static_argnames=("width", "cfg"))


@functools.partial(jax.jit, static_argnames=("cfg",), donate_argnames=("cache",))
def _step(params, cache, tokens_N, pos_N, steps_N, knobs, cfg):
    """One token for every slot at its own position."""
    logits_N1V, cache = forward(params, tokens_N[:, None], cfg, cache=cache, cache_start_B=pos_N)
    return _sample_rows(logits_N1V[:, 0], knobs["key"], steps_N, knobs["temperature"],
                        knobs["top_k"], knobs["top_p"]), cache


class Batcher:
    """Up to `slots` requests decoding together; `submit` from any thread, `run` in one."""

    def __init__(self, params: Params, cfg: ModelConfig, slots: int = 8,
                 cache_len: int | None = None, min_width: int = 128):
        self.params, self.cfg, self.n = params, cfg, slots
        self.cache_len = cache_len or cfg.max_seq_len  # the context: the most positions a slot has
        self.min_width = min(min_width, self.cache_len)
        # committed to its device, as every later cache is: else the first request compiles twice
        self.cache = jax.device_put(init_cache(cfg, slots, self.min_width), jax.devices()[0])
        self.slots: list[Request | None] = [None] * slots
        self.pending: queue.Queue[Request] = queue.Queue()
        self.token = np.zeros(slots, np.int32)
        self.pos = np.zeros(slots, np.int32)
        self.steps = np.zeros(slots, np.int32)
        self.knobs = {"temperature": np.zeros(slots, np.float32), "top_k": np.zeros(slots, np.int32),
                      "top_p": np.ones(slots, np.float32),
                      "key": np.zeros((slots, 2), np.uint32)}
        self.steps_run = 0  # decode steps taken (each one token for every busy slot)
        self._wake = threading.Event()

    def check(self, req: Request) -> None:
        """Refuses a request the cache cannot hold, naming the numbers."""
        if not req.prompt:
            raise ValueError("the prompt is empty")
        if req.max_new_tokens < 1:
            raise ValueError(f"max_tokens={req.max_new_tokens} must be at least 1")
        if len(req.prompt) + 1 > self.cache_len:
            raise ValueError(f"the prompt is {len(req.prompt)} tokens; the model's context is "
                             f"{self.cache_len}")

    def submit(self, req: Request) -> Request:
        self.check(req)
        self.pending.put(req)
        self._wake.set()
        return req

    @property
    def width(self) -> int:
        """Positions the cache holds now (a power of two, or the context)."""
        return cache_width(self.cache)

    def _fit(self, need: int) -> None:
        """Resizes the cache to the bucket of `need` positions when it is too short, or when
        `need` fits in a quarter of it (to twice the bucket: room to grow before resizing)."""
        want = bucket(need, self.min_width, self.cache_len)
        if want > self.width:
            self.cache = _resize(self.cache, width=want, cfg=self.cfg)
        elif 4 * want <= self.width:
            self.cache = _resize(self.cache, width=2 * want, cfg=self.cfg)

    def _live_need(self) -> int:
        """Positions the live slots' next step needs: each writes at its position."""
        return max((int(self.pos[i]) + 1 for i, r in enumerate(self.slots) if r is not None),
                   default=1)

    @property
    def busy(self) -> int:
        return sum(r is not None for r in self.slots)

    def _finish(self, i: int, reason: str) -> None:
        req, self.slots[i] = self.slots[i], None
        req.finish_reason = reason
        req.done.set()
        if req.on_finish is not None:
            req.on_finish()

    def _emit(self, i: int, token: int, forced: bool = False) -> None:
        """Records slot i's new token (forced: fed by a tool, not sampled), runs a tool on its
        closing tag, and ends the request on a stop token or its budget."""
        req = self.slots[i]
        if req.cancelled:
            return self._finish(i, "cancelled")
        if not forced and token in req.stop_tokens:
            return self._finish(i, "stop")
        req.tokens.append(token)
        req.injected.append(forced)
        if req.on_token is not None:
            req.on_token(token)
        if not forced and req.hooks and token in req.hooks and req.calls < req.max_calls:
            req.calls += 1
            try:
                req.queue = list(req.hooks[token](i, list(req.tokens), req.calls))
            except Exception as e:  # noqa: BLE001 - a tool's failure must not stop every slot
                req.tool_error = f"{type(e).__name__}: {e}"
                return self._finish(i, "error")
        if len(req.tokens) >= req.max_new_tokens or self.pos[i] + 1 >= self.cache_len:
            self._finish(i, "length")

    def _admit_pending(self) -> None:
        while not self.pending.empty() and None in self.slots:
            req = self.pending.get()
            if req.cancelled:
                req.finish_reason = "cancelled"
                req.done.set()
                if req.on_finish is not None:
                    req.on_finish()
                continue
            i = self.slots.index(None)
            width = bucket(len(req.prompt), 16, self.cache_len)
            self._fit(max(self._live_need(), width, len(req.prompt) + 1))
            key = np.asarray(jax.random.key_data(jax.random.key(req.seed)), np.uint32)
            one = {"temperature": np.float32(req.temperature), "top_k": np.int32(req.top_k),
                   "top_p": np.float32(req.top_p), "key": key}
            tok, self.cache = _admit(self.params, self.cache, right_pad([req.prompt], width),
                                     np.int32(len(req.prompt)), np.int32(i), one, self.cfg)
            for name, v in one.items():
                self.knobs[name][i] = v
            self.slots[i] = req
            self.token[i], self.pos[i], self.steps[i] = int(tok), len(req.prompt), 1
            self._emit(i, int(tok))

    def run_once(self) -> bool:
        """Admits what fits, then one decode step; False when nothing is left to do."""
        self._admit_pending()
        live = [i for i, r in enumerate(self.slots) if r is not None]
        if not live:
            return False
        self._fit(self._live_need())
        tokens, self.cache = _step(self.params, self.cache, self.token, self.pos, self.steps,
                                   self.knobs, self.cfg)
        tokens = np.asarray(tokens)
        self.steps_run += 1
        for i in live:
            req = self.slots[i]
            forced = bool(req.queue)  # a tool's result goes in whatever was sampled
            self.token[i] = req.queue.pop(0) if forced else tokens[i]
            self.pos[i] += 1
            self.steps[i] += 1
            self._emit(i, int(self.token[i]), forced)
        return True

    def run(self, stop: threading.Event) -> None:
        """Serves until `stop` is set; sleeps on the queue while idle."""
        while not stop.is_set():
            self._wake.clear()
            if not self.run_once():
                self._wake.wait(timeout=0.1)

    def generate(self, req: Request) -> Request:
        """Serves one request to the end on the calling thread (no other thread may run)."""
        self.submit(req)
        while not req.done.is_set():
            self.run_once()
        return req
