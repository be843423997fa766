"""The decoding engine: KV-cached decoding equals the full forward pass, sampling, no retracing."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tiny import tiny_config

from model import engine
from model import transformer as tf
from model.sampling import sample_logits

# A large init_std makes a random model's greedy choices vary from step to step, so that
# agreement between the cached and the full computation is not trivially "repeat one token".
CFG = tiny_config(tie_embeddings=False, init_std=0.3)
CFG_MHA = tiny_config(tie_embeddings=False, init_std=0.3, n_kv_heads=4)  # keys cached [Z, S, H]
PROMPTS = [[1, 5, 7, 9, 11, 3], [1, 2], [1, 4, 8, 15, 16, 23, 42, 4, 4, 60, 61]]


@pytest.fixture(scope="module")
def params():
    return tf.init(CFG, jax.random.key(0))


_full_forward = jax.jit(lambda p, t, cfg: tf.forward(p, t, cfg)[0], static_argnums=2)


def _full_forward_greedy(params, prompt, n, cfg=CFG):
    """Recomputes the whole sequence at every step (right-padded to one length: causal)."""
    seq, logits = list(prompt), []
    for _ in range(n):
        padded = np.zeros((1, 32), np.int32)
        padded[0, : len(seq)] = seq
        last = np.asarray(_full_forward(params, padded, cfg)[0, len(seq) - 1])
        logits.append(last)
        seq.append(int(last.argmax()))
    return seq[len(prompt):], logits


@pytest.mark.parametrize("gqa", [True, False], ids=["gqa", "mha"])
def test_kv_cache_decoding_equals_full_forward_for_ragged_prompts(params, gqa):
    # the two cache layouts: keys [Z, H, S] with query heads sharing a kv head, else [Z, S, H]
    cfg = CFG if gqa else CFG_MHA
    assert tf.cache_pos_axis(cfg)["k"] == (2 if gqa else 1)
    if not gqa:
        params = tf.init(cfg, jax.random.key(0))
    n_new = 10
    tokens, lengths, cache_len = engine.pad_prompts(PROMPTS, cfg, n_new)
    logits, cache = engine.prefill(params, tokens, lengths, cfg, cache_len)
    cached_logits, cached_tokens = [], []
    tok, pos = jnp.argmax(logits, -1).astype(jnp.int32), jnp.asarray(lengths)
    for _ in range(n_new):
        cached_logits.append(np.asarray(logits))
        cached_tokens.append(np.asarray(tok))
        logits, cache = engine.decode_step(params, cache, tok, pos, cfg)
        tok, pos = jnp.argmax(logits, -1).astype(jnp.int32), pos + 1
    cached_tokens = np.stack(cached_tokens, 1)
    for b, prompt in enumerate(PROMPTS):
        want_tokens, want_logits = _full_forward_greedy(params, prompt, n_new, cfg)
        assert cached_tokens[b].tolist() == want_tokens
        assert len(set(want_tokens)) > 2  # the check is not vacuous
        for step in range(n_new):
            np.testing.assert_allclose(cached_logits[step][b], want_logits[step], atol=1e-5)
    generated = engine.generate(params, cfg, PROMPTS,
                                engine.SamplingConfig(max_new_tokens=n_new, temperature=0.0))
    assert generated.tokens == cached_tokens.tolist()


@pytest.mark.parametrize("gqa,attention", [(True, "einsum"), (False, "einsum"),
                                           (True, "dot_product")])
def test_a_prefill_into_an_empty_cache_equals_the_general_cached_forward(gqa, attention,
                                                                        monkeypatch):
    # prefill=True attends over the new tokens alone, in query blocks (16 tokens in 4 here)
    monkeypatch.setattr(tf, "QUERY_BLOCK", 4)
    cfg = dataclasses.replace(CFG if gqa else CFG_MHA, attention=attention)
    params = tf.init(cfg, jax.random.key(1))
    tokens, lengths, cache_len = engine.pad_prompts(PROMPTS + [list(range(1, 17))], cfg, 4)
    assert tokens.shape[1] == 16
    cache = tf.init_cache(cfg, len(tokens), cache_len)
    fresh = jax.jit(lambda p, t, c: tf.forward(p, t, cfg, cache=c, prefill=True))
    general = jax.jit(lambda p, t, c: tf.forward(p, t, cfg, cache=c, cache_start_B=jnp.zeros(
        (len(t),), jnp.int32)))
    (got, got_cache), (want, want_cache) = fresh(params, tokens, cache), general(params, tokens,
                                                                                  cache)
    np.testing.assert_allclose(got, want, atol=1e-5)
    for g, w in zip(jax.tree.leaves(got_cache), jax.tree.leaves(want_cache), strict=True):
        np.testing.assert_allclose(g, w, atol=1e-5)
    assert float(jnp.abs(want_cache[0]["k"]).max()) > 0  # the prompts were written
    with pytest.raises(ValueError, match="prefill=True fills an empty cache"):
        tf.forward(params, tokens, cfg, prefill=True)


def test_the_cache_grows_through_its_widths_and_changes_no_token(params):
    # short prompts (bucket 8) and 40 new tokens: the cache is 16, then 32, then 48 positions wide
    prompts, n_new = [[1, 5, 7], [1, 2, 9, 9, 9, 9, 9], [1]], 40
    tokens, lengths, cache_len = engine.pad_prompts(prompts, CFG, n_new)
    assert (tokens.shape[1], cache_len) == (8, 48)
    assert engine.cache_widths(8, cache_len) == [16, 32, 48]
    assert engine.cache_widths(16, 28) == [28] and engine.cache_widths(8, 32) == [16, 32]
    # the reference: every step over a cache at its final width from the start
    logits, cache = engine.prefill(params, tokens, lengths, CFG, cache_len)
    tok, pos, want = jnp.argmax(logits, -1).astype(jnp.int32), jnp.asarray(lengths), []
    for _ in range(n_new):
        want.append(np.asarray(tok))
        logits, cache = engine.decode_step(params, cache, tok, pos, CFG)
        tok, pos = jnp.argmax(logits, -1).astype(jnp.int32), pos + 1
    want = np.stack(want, 1).tolist()
    assert all(len(set(row)) > 5 for row in want)  # not one token repeated
    greedy = engine.SamplingConfig(max_new_tokens=n_new, temperature=0.0)
    assert engine.generate(params, CFG, prompts, greedy).tokens == want
    assert np.stack([t for t, _ in engine.stream(params, CFG, prompts, greedy)], 1).tolist() == want
    assert engine.generate_with_tools(params, CFG, prompts, greedy, {}).tokens == want
    sampled = engine.SamplingConfig(max_new_tokens=n_new, temperature=1.0, seed=5)
    assert (np.stack([t for t, _ in engine.stream(params, CFG, prompts, sampled)], 1).tolist()
            == engine.generate(params, CFG, prompts, sampled).tokens)


def test_generate_and_stream_agree_and_are_reproducible(params):
    s = engine.SamplingConfig(max_new_tokens=12, temperature=1.0, top_k=20, top_p=0.9, seed=3)
    a = engine.generate(params, CFG, PROMPTS, s).tokens
    assert engine.generate(params, CFG, PROMPTS, s).tokens == a
    streamed = np.stack([tok for tok, _ in engine.stream(params, CFG, PROMPTS, s)], 1)
    assert streamed.tolist() == a
    other = engine.generate(params, CFG, PROMPTS,
                            engine.SamplingConfig(max_new_tokens=12, top_k=20, top_p=0.9, seed=4))
    assert other.tokens != a


def test_no_recompilation_per_token_or_per_prompt(params):
    s = engine.SamplingConfig(max_new_tokens=12, temperature=0.7, seed=0)
    engine.generate(params, CFG, PROMPTS, s)
    list(engine.stream(params, CFG, PROMPTS, s))
    loops, steps = engine._generate_loop._cache_size(), engine._next_jit._cache_size()
    # New prompts of the same length bucket (9-16), other knobs and seeds: nothing is retraced.
    prompts = [[1, 3, 3], [1, 9, 8, 7, 6] * 2, [1, 2, 3, 4] * 4]
    for knobs in [dict(temperature=0.0), dict(temperature=1.3, top_k=5, top_p=0.5, seed=9)]:
        s2 = engine.SamplingConfig(max_new_tokens=12, stop_tokens=(5,), **knobs)
        engine.generate(params, CFG, prompts, s2)
        n = sum(1 for _ in engine.stream(params, CFG, prompts, s2))
    assert n > 1
    assert engine._generate_loop._cache_size() == loops
    assert engine._next_jit._cache_size() == steps


def test_stop_tokens_end_only_their_row(params):
    free = engine.generate(params, CFG, PROMPTS,
                           engine.SamplingConfig(max_new_tokens=10, temperature=0.0))
    stop = free.tokens[0][3]
    first = free.tokens[0].index(stop)
    out = engine.generate(params, CFG, PROMPTS,
                          engine.SamplingConfig(max_new_tokens=10, temperature=0.0,
                                                stop_tokens=(stop,)))
    assert out.tokens[0] == free.tokens[0][:first] and out.finished[0]
    for b in (1, 2):
        if stop not in free.tokens[b]:
            assert out.tokens[b] == free.tokens[b] and not out.finished[b]
    streamed = list(engine.stream(params, CFG, PROMPTS[:1],
                                  engine.SamplingConfig(max_new_tokens=10, temperature=0.0,
                                                        stop_tokens=(stop,))))
    assert len(streamed) == first + 1 and streamed[-1][0][0] == stop


def test_sample_logits_knobs():
    logits = jax.random.normal(jax.random.key(0), (4, 50)) * 3
    greedy = jnp.argmax(logits, -1)
    key = jax.random.key(1)
    np.testing.assert_array_equal(sample_logits(logits, key, 0.0), greedy)
    np.testing.assert_array_equal(sample_logits(logits, key, 1.0, top_k=1), greedy)
    np.testing.assert_array_equal(sample_logits(logits, key, 1.0, top_p=1e-6), greedy)
    keys = jax.random.split(jax.random.key(2), 400)
    draws = jax.vmap(lambda k: sample_logits(logits, k, 2.0, top_k=5))(keys)
    top5 = jnp.argsort(-logits, -1)[:, :5]
    assert all(set(np.asarray(draws[:, b]).tolist()) <= set(np.asarray(top5[b]).tolist())
               for b in range(4))
    assert len(set(np.asarray(draws[:, 0]).tolist())) > 1
    # top-p: only the smallest set of tokens holding 50% of the mass (here at most 3) is drawn.
    probs = jax.nn.softmax(jnp.array([[4.0, 3.5, 3.0, 1.0, 0.0, -1.0]]))
    nucleus = jax.vmap(lambda k: sample_logits(jnp.log(probs), k, 1.0, top_p=0.5))(keys)
    assert set(np.asarray(nucleus[:, 0]).tolist()) <= {0, 1}


def test_bad_requests_fail_clearly(params):
    with pytest.raises(ValueError, match="empty"):
        engine.generate(params, CFG, [[1, 2], []], engine.SamplingConfig())
    with pytest.raises(ValueError, match="max_seq_len"):
        engine.generate(params, CFG, [[1] * 60], engine.SamplingConfig(max_new_tokens=10))
    with pytest.raises(ValueError, match="temperature"):
        engine.SamplingConfig(temperature=-1)


def _scripted_model(next_of: dict[int, int], vocab: int = 32, max_seq_len: int = 64):
    """A one-layer model whose blocks add nothing, so logits depend on the current token only:
    greedy decoding follows `next_of` exactly (a fixed token script)."""
    from model.config import ModelConfig

    cfg = ModelConfig(vocab_size=vocab, d_model=vocab, n_layers=1, n_heads=1, n_kv_heads=1,
                      head_dim=8, d_ff=8, max_seq_len=max_seq_len, tie_embeddings=False)
    p = jax.tree.map(np.asarray, tf.init(cfg, jax.random.key(0)))
    p["blocks"][0]["attn"]["wo_NHD"] = np.zeros_like(p["blocks"][0]["attn"]["wo_NHD"])
    p["blocks"][0]["mlp"]["w_down_FD"] = np.zeros_like(p["blocks"][0]["mlp"]["w_down_FD"])
    p["embed_VD"] = np.eye(vocab, dtype=np.float32)
    head = np.zeros((vocab, vocab), np.float32)
    for a, b in next_of.items():
        head[a, b] = 10.0
    p["head_DV"] = head
    return cfg, jax.tree.map(jnp.asarray, p)


def test_a_tool_call_in_one_row_gets_its_result_in_that_row_only():
    generate_with_tools = engine.generate_with_tools

    A, B, CLOSE, JUNK, RES, X, RES_END, C, STOP, D, E = range(1, 12)
    cfg, params = _scripted_model({A: B, B: CLOSE, CLOSE: JUNK, JUNK: JUNK, RES: JUNK, X: JUNK,
                                   RES_END: C, C: STOP, D: E, E: STOP})
    seen = []

    def hook(row, tokens, calls):
        seen.append((row, list(tokens), calls))
        return [RES, X, RES_END]

    out = generate_with_tools(params, cfg, [[A], [D]], engine.SamplingConfig(
        max_new_tokens=12, temperature=0.0, stop_tokens=(STOP,)), hooks={CLOSE: hook})
    assert out.tokens == [[B, CLOSE, RES, X, RES_END, C], [E]]
    assert out.injected[0] == [False, False, True, True, True, False] and out.injected[1] == [False]
    assert out.finished == [True, True] and out.calls == [1, 0]
    assert seen == [(0, [B, CLOSE], 1)]
    # A row that keeps calling stops being served after max_calls.
    cfg2, params2 = _scripted_model({A: CLOSE, CLOSE: JUNK, RES_END: CLOSE, JUNK: JUNK})
    out = generate_with_tools(params2, cfg2, [[A]], engine.SamplingConfig(max_new_tokens=20, temperature=0.0),
                              hooks={CLOSE: lambda r, t, c: [RES, RES_END]}, max_calls=2)
    assert out.calls == [2] and out.tokens[0][:7] == [CLOSE, RES, RES_END, CLOSE, RES, RES_END, CLOSE]
    assert out.tokens[0][7] == JUNK and not out.finished[0]


def test_tool_calls_drawn_in_one_step_run_on_threads_and_change_nothing():
    import threading
    import time

    from data.tools import ToolHooks

    A, B, CLOSE, JUNK, RES, RES_END, C, STOP, D = range(1, 10)
    cfg, params = _scripted_model({A: B, B: CLOSE, CLOSE: JUNK, JUNK: JUNK, RES: JUNK,
                                   RES_END: C, C: STOP, D: STOP})
    running, most = [0], [0]
    lock = threading.Lock()

    def hook(row, tokens, calls):  # a slow tool: the three rows' calls come in the same step
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.1)
        with lock:
            running[0] -= 1
        return [RES, 20 + row, RES_END]

    sampling = engine.SamplingConfig(max_new_tokens=12, temperature=0.0, stop_tokens=(STOP,))
    outs = {}
    for threads in (1, 3):
        most[0] = 0
        outs[threads] = engine.generate_with_tools(params, cfg, [[A], [D], [A], [A]], sampling,
                                                   hooks=ToolHooks({CLOSE: hook}, threads))
        assert most[0] >= 2 if threads > 1 else most[0] == 1
    assert outs[3] == outs[1]
    assert outs[3].tokens[2] == [B, CLOSE, RES, 22, RES_END, C] and outs[3].tokens[1] == []


def test_the_padding_helper_buckets_to_powers_of_two_and_refuses_long_rows():
    from model.padding import bucket, right_pad

    assert [bucket(n) for n in (1, 2, 3, 5, 8, 9)] == [1, 2, 4, 8, 8, 16]
    assert bucket(3, minimum=16) == 16 and bucket(100, 8, maximum=64) == 64
    rows = right_pad([[1, 2], [3], []], 4, fill=-1)
    assert rows.tolist() == [[1, 2, -1, -1], [3, -1, -1, -1], [-1] * 4] and rows.dtype == np.int32
    assert right_pad([[0.5]], 2, dtype=np.float32).tolist() == [[0.5, 0.0]]
    with pytest.raises(ValueError, match="row 1 has 3 tokens; the padded width is 2"):
        right_pad([[1], [1, 2, 3]], 2)
