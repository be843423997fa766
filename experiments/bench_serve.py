"""Benchmark (not a test): the server under N concurrent clients on loopback.

  python -m experiments.bench_serve --init_from runs/demo/sft [--clients 1,4,16,32 --slots 32]

Starts `python -m experiments.serve` as a separate process on a free loopback port (so that the
clients do not share its interpreter); for each N, N clients (threads with the official openai
client) each stream --requests greedy chat completions of --max_tokens tokens
(a stop token can end one sooner). Reported: aggregate completion tokens/s, time to first token
and whole-request latency (p50 / p99), and the speed-up over one client asking the same number
of questions one after another. A table goes to stdout.
"""

import concurrent.futures
import socket
import statistics
import time

from absl import flags

from experiments.workdir import StageFlags, run_entry

_FLAGS = StageFlags("the stage whose model to serve", workdir=None)
_CLIENTS = flags.DEFINE_list("clients", ["1", "4", "16", "32"], "concurrent clients per row")
_SLOTS = flags.DEFINE_integer("slots", 32, "the server's decode slots")
_REQUESTS = flags.DEFINE_integer("requests", 2, "requests per client")
_MAX_TOKENS = flags.DEFINE_integer("max_tokens", 48, "max_tokens of each request")


def _pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def run_clients(client, n: int, per_client: int, max_tokens: int) -> dict:
    """n threads, each streaming per_client requests; the figures of the whole."""
    def one(i):
        out = []
        for j in range(per_client):
            t0 = time.perf_counter()
            first, tokens = None, 0
            stream = client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": f"Question {i}.{j}: who are you?"}],
                temperature=0, max_tokens=max_tokens, stream=True,
                stream_options={"include_usage": True})
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content and first is None:
                    first = time.perf_counter() - t0
                if chunk.usage is not None:
                    tokens = chunk.usage.completion_tokens
            out.append((first if first is not None else time.perf_counter() - t0,
                        time.perf_counter() - t0, tokens))
        return out

    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        rows = [r for rs in pool.map(one, range(n)) for r in rs]
    wall = time.perf_counter() - t0
    ttft, latency = [r[0] for r in rows], [r[1] for r in rows]
    return {"tok_s": sum(r[2] for r in rows) / wall, "ttft_p50": statistics.median(ttft),
            "ttft_p99": _pct(ttft, 0.99), "lat_p50": statistics.median(latency),
            "lat_p99": _pct(latency, 0.99), "requests": len(rows), "wall": wall}


def main(argv):
    del argv
    import subprocess
    import sys

    import httpx
    import openai

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "experiments.serve", "--init_from",
                               str(_FLAGS.init_from), "--port", str(port), "--slots",
                               str(_SLOTS.value), "--name", "m"])
    try:
        deadline = time.time() + 300
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/health").raise_for_status()
                break
            except httpx.HTTPError:
                if server.poll() is not None or time.time() > deadline:
                    raise RuntimeError("the server did not start") from None
                time.sleep(0.2)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none",
                               max_retries=0, timeout=600)
        run_clients(client, 2, 1, 4)  # compile the step and the prompt buckets
        print(f"{_FLAGS.init_from}: {_SLOTS.value} slots, {_REQUESTS.value} requests per client, "
              f"max_tokens {_MAX_TOKENS.value}, greedy")
        print("| clients | tokens/s | x one at a time | TTFT p50 / p99 (s) | latency p50 / p99 (s) |")
        print("| --- | --- | --- | --- | --- |")
        for n in map(int, _CLIENTS.value):
            alone = run_clients(client, 1, n * _REQUESTS.value, _MAX_TOKENS.value)
            crowd = run_clients(client, n, _REQUESTS.value, _MAX_TOKENS.value)
            print(f"| {n} | {crowd['tok_s']:,.0f} | {crowd['tok_s'] / alone['tok_s']:.1f} | "
                  f"{crowd['ttft_p50']:.2f} / {crowd['ttft_p99']:.2f} | "
                  f"{crowd['lat_p50']:.2f} / {crowd['lat_p99']:.2f} |", flush=True)
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    run_entry(main)
