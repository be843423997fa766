"""Serving (experiments.serve, model/batcher.py) through the official `openai` client against a
server on a free loopback port: the API's shapes, errors, streaming, and continuous batching."""

import concurrent.futures
import json
import socket
import threading
import time

import httpx
import openai
import pytest

from model import batcher
from tests.test_import import TEXT
from tests.tiny import project_lm

USER = [{"role": "user", "content": "Who are you?"}]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    import uvicorn

    from experiments.serve import Server, make_app

    lm = project_lm(tmp_path_factory.mktemp("serve"), TEXT, max_seq_len=128)
    server = Server(lm, "tiny", slots=4)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    uv = uvicorn.Server(uvicorn.Config(make_app(server), host="127.0.0.1", port=port,
                                       log_level="warning"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    while not uv.started:
        time.sleep(0.02)
    url = f"http://127.0.0.1:{port}"
    yield {"url": url, "server": server, "lm": lm,
           "client": openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)}
    uv.should_exit = True
    thread.join()
    server.close()


def _ask(client, **kw):
    return client.chat.completions.create(model="tiny", messages=kw.pop("messages", USER), **kw)


def test_the_api_answers_in_its_own_shapes(served):
    c = served["client"]
    assert [m.id for m in c.models.list().data] == ["tiny"]
    assert httpx.get(served["url"] + "/health").json()["status"] == "ok"
    r = _ask(c, temperature=0, max_tokens=12)
    text = r.choices[0].message.content
    assert r.object == "chat.completion" and r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason in ("stop", "length") and text
    assert r.usage.prompt_tokens == len(served["lm"].prompt("Who are you?"))
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    # streamed: the same text in pieces, a role first, a finish reason last, then [DONE]
    chunks = list(_ask(c, temperature=0, max_tokens=12, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks) == text
    assert chunks[-1].choices[0].finish_reason == r.choices[0].finish_reason
    with httpx.stream("POST", served["url"] + "/v1/chat/completions", json={
            "messages": USER, "max_tokens": 4, "stream": True}) as resp:
        lines = [ln for ln in resp.iter_lines() if ln]
    assert lines[-1] == "data: [DONE]" and all(ln.startswith("data: ") for ln in lines)
    # max_tokens cuts with "length"; a stop string cuts before it with "stop"
    short = _ask(c, temperature=0, max_tokens=3)
    assert short.choices[0].finish_reason == "length" and short.usage.completion_tokens == 3
    long = _ask(c, temperature=0, max_tokens=40)
    full = long.choices[0].message.content
    cut = full[len(full) // 2:][:3]
    if cut.strip():
        stopped = _ask(c, temperature=0, max_tokens=40, stop=[cut])
        assert stopped.choices[0].message.content == full[: full.index(cut)]
        assert stopped.choices[0].finish_reason == "stop"
    # n choices, each its own seed: reproducible with a seed
    a = _ask(c, temperature=1.0, n=3, seed=5, max_tokens=10)
    b = _ask(c, temperature=1.0, n=3, seed=5, max_tokens=10)
    assert [x.index for x in a.choices] == [0, 1, 2]
    assert [x.message.content for x in a.choices] == [x.message.content for x in b.choices]
    with pytest.raises(openai.BadRequestError, match="temperature"):
        _ask(c, temperature=-1)
    comp = c.completions.create(model="tiny", prompt="Hello", max_tokens=5, temperature=0)
    assert comp.object == "text_completion" and comp.choices[0].finish_reason == "length"


@pytest.mark.parametrize("body,param", [
    ({"messages": USER, "temperature": -1}, "temperature"),
    ({"messages": USER, "top_p": 0}, "top_p"),
    ({"messages": USER, "n": 99}, "n"),
    ({"messages": USER, "max_tokens": 0}, "max_tokens"),
    ({"messages": USER, "stop": [1, 2]}, "stop"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages"),
    ({"messages": [{"role": "user", "content": "word " * 400}]}, "messages"),
])
def test_bad_requests_get_400_in_openais_error_shape_and_the_server_goes_on(served, body, param):
    r = httpx.post(served["url"] + "/v1/chat/completions", json=body)
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_request_error" and r.json()["error"]["param"] == param
    r = httpx.post(served["url"] + "/v1/chat/completions", content=b"{not json")
    assert r.status_code == 400
    assert _ask(served["client"], temperature=0, max_tokens=2).choices[0].finish_reason == "length"


def test_sixteen_at_once_answer_as_each_alone_without_recompiling_or_leaking_slots(served):
    c, server = served["client"], served["server"]
    questions = [f"Question number {i}: who are you?" for i in range(16)]

    def ask(q):
        return _ask(c, messages=[{"role": "user", "content": q}], temperature=0,
                    max_tokens=16).choices[0].message.content

    alone = [ask(q) for q in questions]
    compiled = batcher._step._cache_size(), batcher._admit._cache_size()
    steps = server.batcher.steps_run
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        crowd = list(pool.map(ask, questions))
    assert crowd == alone
    assert server.batcher.steps_run - steps < 16 * 16  # the requests shared decode steps
    # no request recompiled the step or the prefill (the prompts share one bucket)
    assert (batcher._step._cache_size(), batcher._admit._cache_size()) == compiled
    # a client that goes away mid-stream frees its slot
    stream = _ask(c, temperature=0, max_tokens=100, stream=True)
    next(iter(stream))
    stream.close()
    deadline = time.time() + 10
    while (server.batcher.busy or not server.batcher.pending.empty()) and time.time() < deadline:
        time.sleep(0.05)
    assert server.batcher.busy == 0 and server.batcher.pending.empty()
    assert json.loads(httpx.get(served["url"] + "/health").text)["busy_slots"] == 0


def test_a_rows_sampled_token_does_not_depend_on_what_its_batch_peers_ask():
    """Each row's own key and step; the argmax-only and sort-free branches give a row the
    token the full top-k / top-p path would."""
    import jax.numpy as jnp
    import numpy as np

    rng = np.random.default_rng(0)
    n = 6
    logits = jnp.asarray(rng.standard_normal((n, 300)) * 3, jnp.float32)
    keys = jnp.asarray(np.stack([np.asarray(batcher.jax.random.key_data(batcher.jax.random.key(i)))
                                 for i in range(n)]), jnp.uint32)
    temp = jnp.array([0.0, 1.0, 0.7, 1.0, 1.3, 0.0], jnp.float32)
    sample = batcher.jax.jit(batcher._sample_rows)
    for step in range(20):
        steps = jnp.full((n,), step, jnp.int32)
        plain = sample(logits, keys, steps, temp, jnp.zeros(n, jnp.int32), jnp.ones(n))
        peer = sample(logits, keys, steps, temp, jnp.zeros(n, jnp.int32), jnp.ones(n).at[5].set(0.5))
        assert (plain == peer).all()
        greedy = sample(logits, keys, steps, jnp.zeros(n), jnp.zeros(n, jnp.int32), jnp.ones(n))
        assert (greedy == jnp.argmax(logits, -1)).all()
        assert plain[0] == greedy[0] and plain[5] == greedy[5]  # temperature 0 rows


def test_the_chat_page_streams_a_reply_in_a_real_browser(served, tmp_path):
    """Debian's chromium, headless, driven by selenium: type, send, see the reply the API gives."""
    import shutil

    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        pytest.skip("needs Debian's chromium and chromium-driver (.ci/run installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    try:
        driver.get(served["url"] + "/")
        wait = WebDriverWait(driver, 60)
        wait.until(lambda d: d.find_element(By.ID, "model").text == "tiny")
        temperature = driver.find_element(By.ID, "temperature")
        temperature.clear()
        temperature.send_keys("0")
        budget = driver.find_element(By.ID, "max_tokens")
        budget.clear()
        budget.send_keys("16")  # two turns fit the tiny model's 128-token context
        for turn, question in enumerate(("Who are you?", "And then?")):
            driver.find_element(By.ID, "input").send_keys(question)
            driver.find_element(By.ID, "send").click()
            done = wait.until(lambda d, n=turn + 1: (lambda e: e if len(e) >= n else False)(
                d.find_elements(By.CSS_SELECTOR, ".assistant[data-done='1']")))
        shown = [e.text for e in driver.find_elements(By.CSS_SELECTOR, ".msg")]
        driver.save_screenshot(str(tmp_path / "chat_page.png"))
    finally:
        driver.quit()
    first = _ask(served["client"], temperature=0, max_tokens=16).choices[0].message.content
    second = _ask(served["client"], temperature=0, max_tokens=16, messages=USER + [
        {"role": "assistant", "content": first}, {"role": "user", "content": "And then?"}])
    assert len(done) == 2 and shown[0] == "Who are you?" and shown[2] == "And then?"
    # the page shows the API's greedy replies (the browser trims trailing whitespace in .text)
    assert shown[1] == first.strip() and shown[3] == second.choices[0].message.content.strip()
    assert (tmp_path / "chat_page.png").stat().st_size > 1000


def test_tools_in_the_batcher_feed_their_results_as_the_engines_tool_loop_does(served):
    """A hook on the token the model writes first: the batcher feeds its ids in place of
    sampling and the model goes on from there, token for token as generate_with_tools."""
    from model.batcher import Batcher, Request
    from model.engine import SamplingConfig, generate_with_tools

    lm = served["lm"]
    prompt = lm.prompt("Who are you?")
    b = Batcher(lm.params, lm.cfg, slots=2)
    first = b.generate(Request(prompt, 1)).tokens[0]
    calls = []

    def hook(row, tokens, n):
        calls.append((list(tokens), n))
        return [7, 8, 9]

    got = b.generate(Request(prompt, 12, hooks={first: hook}, max_calls=2))
    want = generate_with_tools(lm.params, lm.cfg, [prompt], SamplingConfig(
        max_new_tokens=12, temperature=0.0), {first: hook}, max_calls=2)
    assert got.tokens[:4] == [first, 7, 8, 9] and got.injected[:4] == [False, True, True, True]
    assert got.tokens == want.tokens[0] and got.injected == want.injected[0]
    assert got.calls == want.calls[0] >= 1 and calls[0] == ([first], 1)


def test_a_tool_that_raises_ends_its_request_and_no_other(served):
    from model.batcher import Batcher, Request

    lm = served["lm"]
    prompt = lm.prompt("Who are you?")
    b = Batcher(lm.params, lm.cfg, slots=2)
    first = b.generate(Request(prompt, 1)).tokens[0]

    def broken(row, tokens, n):
        raise RuntimeError("the tool broke")

    bad = b.submit(Request(prompt, 8, hooks={first: broken}))
    good = b.submit(Request(prompt, 8))
    while not (bad.done.is_set() and good.done.is_set()):
        b.run_once()
    assert bad.finish_reason == "error" and "the tool broke" in bad.tool_error
    assert good.finish_reason in ("stop", "length") and len(good.tokens) >= 1 and b.busy == 0


def test_the_batchers_cache_grows_and_shrinks_with_what_its_slots_need_and_changes_no_token(served):
    """A cache that starts at 16 positions doubles as a long request goes on and halves after it
    ends; the tokens are the engine's, alone and beside a short request."""
    from model.batcher import Batcher, Request
    from model.engine import SamplingConfig, generate

    lm = served["lm"]
    long_prompt, short_prompt = lm.prompt("Who are you?"), lm.prompt("Hi")
    want = [generate(lm.params, lm.cfg, [p], SamplingConfig(max_new_tokens=n, temperature=0.0))
            .tokens[0] for p, n in ((long_prompt, 70), (short_prompt, 4))]
    b = Batcher(lm.params, lm.cfg, slots=2, min_width=16)
    widths = []
    long = b.submit(Request(long_prompt, 70))
    b.run_once()
    short = b.submit(Request(short_prompt, 4))
    while not long.done.is_set():
        b.run_once()
        widths.append(b.width)
    assert long.tokens == want[0] and short.tokens == want[1]
    assert widths[0] < 64 and max(widths) == 128 and b.width == 128  # grew as the long one went
    again = b.generate(Request(short_prompt, 4))  # alone now: the cache shrinks to fit it
    assert again.tokens == want[1] and b.width == 32
