"""Serves a stage's model over the OpenAI API shape, with continuous batching (model/batcher.py).

  python -m experiments.serve --init_from runs/demo/sft [--port 8000 --slots 8]

Then any OpenAI client talks to it (base_url http://127.0.0.1:8000/v1, any api_key):
  POST /v1/chat/completions  messages, temperature, top_p, max_tokens, stop, seed, n, stream
  POST /v1/completions       prompt (continued after <|bos|>), the same knobs
  GET  /v1/models, GET /health
  GET  /                     a chat page (experiments/chat_page.html): multi-turn, a system
                             message box, the reply shown as it streams; nothing from elsewhere
Streaming is server-sent events in the API's chunk format, whole UTF-8 characters only, ending
with `data: [DONE]`. Bad requests get 400 with OpenAI's error shape and the server goes on; a
client that disconnects frees its slot. A model in the project's chat format runs its tools
(search over the run's world, python in the sandbox, recall when taught) while it generates,
as experiments.chat does: a call and its result stay in the reply's text with their tags,
`<|python|>print(6 * 7)<|/python|><|result|>42<|/result|>`, and count as completion tokens; a
tool that fails outright ends its choice with finish_reason "error" (the other requests go on).
FastAPI + uvicorn: the usual Python pair for an HTTP API with streaming responses.
"""


import asyncio
import json
import threading
import time
import uuid
from pathlib import Path

from absl import flags

from experiments.workdir import StageFlags, define_config, define_quant, run_entry

MAX_N = 8  # choices per request
PAGE = Path(__file__).with_name("chat_page.html")


class BadRequest(ValueError):
    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


def _error(message: str, param: str | None = None, status: int = 400):
    from fastapi.responses import JSONResponse

    return JSONResponse(status_code=status, content={"error": {
        "message": message, "type": "invalid_request_error", "param": param, "code": None}})


def _knob(body: dict, name: str, kind, default, lo=None, hi=None):
    """body[name] checked: its type and range, else BadRequest naming it."""
    v = body.get(name)
    if v is None:
        return default
    if kind is float and isinstance(v, int) and not isinstance(v, bool):
        v = float(v)
    if not isinstance(v, kind) or isinstance(v, bool) and kind is not bool:
        raise BadRequest(f"'{name}' must be of type {kind.__name__}", name)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise BadRequest(f"'{name}'={v} is out of range [{lo}, {hi}]", name)
    return v


class Server:
    """The model, its batcher thread, and the request handling that the routes share."""

    def __init__(self, lm, name: str, slots: int = 8, hooks: dict | None = None,
                 max_calls: int = 4):
        from model.batcher import Batcher

        self.lm, self.name, self.hooks, self.max_calls = lm, name, hooks, max_calls
        self.batcher = Batcher(lm.params, lm.cfg, slots)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self.batcher.run, args=(self._stop,), daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()

    def parse(self, body: dict, chat: bool) -> dict:
        """The request's prompt tokens and knobs, checked."""
        from data.chat import ConversationError

        if not isinstance(body, dict):
            raise BadRequest("the body must be a JSON object")
        lm = self.lm
        if chat:
            msgs = body.get("messages")
            if not isinstance(msgs, list) or not msgs:
                raise BadRequest("'messages' must be a non-empty list", "messages")
            if lm.chat is None:
                raise BadRequest("this model has no chat format: use /v1/completions", "messages")
            clean = [{k: m.get(k) for k in ("role", "content")} if isinstance(m, dict) else m
                     for m in msgs]
            try:
                prompt = lm.chat.render({"messages": clean}, lm.tok, for_prompt=True)[0]
            except ConversationError as e:
                raise BadRequest(str(e), "messages") from None
        else:
            text = body.get("prompt")
            if not isinstance(text, str):
                raise BadRequest("'prompt' must be a string", "prompt")
            prompt = lm.tok.bos_ids + lm.tok.encode(text)
        stop = body.get("stop")
        stop = [stop] if isinstance(stop, str) else (stop or [])
        if not isinstance(stop, list) or len(stop) > 4 or not all(
                isinstance(s, str) and s for s in stop):
            raise BadRequest("'stop' must be a string or a list of up to 4 non-empty strings", "stop")
        room = self.batcher.cache_len - len(prompt)
        if room < 1:
            raise BadRequest(f"the prompt is {len(prompt)} tokens; the model's context is "
                             f"{self.batcher.cache_len}", "messages" if chat else "prompt")
        max_tokens = _knob(body, "max_completion_tokens", int, None, 1) if chat else None
        max_tokens = max_tokens or _knob(body, "max_tokens", int, min(room, 256), 1)
        return {"prompt": prompt, "stop": stop, "max_tokens": min(max_tokens, room),
                "temperature": _knob(body, "temperature", float, 1.0, 0.0, 2.0),
                "top_p": _knob(body, "top_p", float, 1.0, 1e-6, 1.0),
                "n": _knob(body, "n", int, 1, 1, MAX_N),
                "seed": _knob(body, "seed", int, None),
                "stream": _knob(body, "stream", bool, False), "chat": chat}

    def start(self, p: dict, on_event) -> list:
        """Submits p["n"] requests; on_event(index, token or None) runs on the batcher thread."""
        from model.batcher import Request

        seed = p["seed"] if p["seed"] is not None else int(time.time_ns() % (1 << 31))
        reqs = []
        for i in range(p["n"]):
            req = Request(p["prompt"], p["max_tokens"], p["temperature"], 0, p["top_p"],
                          seed + i, tuple(self.lm.stop_ids) if self.lm.chat else (),
                          hooks=self.hooks if p["chat"] else None, max_calls=self.max_calls)
            req.on_token = lambda t, i=i: on_event(i, t)
            req.on_finish = lambda i=i: on_event(i, None)
            reqs.append(self.batcher.submit(req))
        return reqs


class Choice:
    """One choice's text as it grows: whole characters only, cut at a stop string. With
    show_special (a model with tools), tool calls and results keep their tags in the text."""

    def __init__(self, tok, stop: list[str], show_special: bool = False):
        self.tok, self.stop, self.ids, self.sent, self.stopped = tok, stop, [], 0, False
        self.show = show_special
        self.hold = max((len(s) for s in stop), default=1) - 1

    def add(self, token: int) -> str:
        """The new text safe to send after `token`."""
        self.ids.append(token)
        text = self.tok.decode(self.ids, show_special=self.show)
        for s in self.stop:
            if s in text[max(0, self.sent - len(s)):]:
                self.stopped = True
                text = text[: text.index(s, max(0, self.sent - len(s)))]
                return self._take(text, len(text))
        end = len(text) - self.hold
        while end > self.sent and text[end - 1] == "\ufffd":  # an unfinished UTF-8 character
            end -= 1
        return self._take(text, end)

    def _take(self, text: str, end: int) -> str:
        out = text[self.sent: max(end, self.sent)]
        self.sent = max(end, self.sent)
        return out

    def rest(self) -> str:
        """What is left to send once the request ended."""
        if self.stopped:
            return ""
        text = self.tok.decode(self.ids, show_special=self.show)
        return self._take(text, len(text))


def make_app(server: Server):
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse

    app = FastAPI(title="tinylab serve")

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, exc):
        return _error(f"invalid request: {exc.errors()[:1]}")

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return PAGE.read_text(encoding="utf-8")

    @app.get("/health")
    async def health():
        return {"status": "ok", "busy_slots": server.batcher.busy, "slots": server.batcher.n}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": server.name, "object": "model",
                                            "created": 0, "owned_by": "tinylab"}]}

    async def complete(request: Request, chat: bool):
        try:
            body = json.loads(await request.body() or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            return _error(f"the body is not JSON: {e}")
        try:
            p = server.parse(body, chat)
        except BadRequest as e:
            return _error(str(e), e.param)
        loop, events = asyncio.get_running_loop(), asyncio.Queue()
        choices = [Choice(server.lm.tok, p["stop"], server.hooks is not None and chat)
                   for _ in range(p["n"])]

        def on_event(i, token):
            loop.call_soon_threadsafe(events.put_nowait, (i, token))

        reqs = server.start(p, on_event)
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        head = {"id": rid, "object": "chat.completion.chunk" if chat else "text_completion",
                "created": int(time.time()), "model": server.name}

        def finish(i):
            r = reqs[i]
            if r.finish_reason == "error":  # a tool raised; its message is in the server log
                print(f"tool error in {rid}: {r.tool_error}", flush=True)
                return "error"
            return "stop" if choices[i].stopped or r.finish_reason == "stop" else "length"

        async def events_until_done():
            """(index, new text) as tokens come, then (index, None) as each choice ends."""
            ended = 0
            while ended < len(reqs):
                i, token = await events.get()
                if token is None:
                    ended += 1
                    yield i, None
                elif not choices[i].stopped:
                    text = choices[i].add(token)
                    if choices[i].stopped:  # a stop string: the rest is not wanted
                        reqs[i].cancel()
                    yield i, text

        def usage():
            done = sum(len(c.ids) for c in choices)
            return {"prompt_tokens": len(p["prompt"]), "completion_tokens": done,
                    "total_tokens": len(p["prompt"]) + done}

        def chunk(i, text=None, role=False, reason=None):
            if chat:
                delta = {"role": "assistant", "content": ""} if role else (
                    {"content": text} if text else {})
                c = {"index": i, "delta": delta, "logprobs": None, "finish_reason": reason}
            else:
                c = {"index": i, "text": text or "", "logprobs": None, "finish_reason": reason}
            return "data: " + json.dumps({**head, "choices": [c]}) + "\n\n"

        if p["stream"]:
            async def sse():
                try:
                    if chat:
                        for i in range(p["n"]):
                            yield chunk(i, role=True)
                    async for i, text in events_until_done():
                        if text is None:
                            rest = choices[i].rest()
                            if rest:
                                yield chunk(i, rest)
                            yield chunk(i, reason=finish(i))
                        elif text:
                            yield chunk(i, text)
                    if (body.get("stream_options") or {}).get("include_usage"):
                        yield "data: " + json.dumps({**head, "choices": [], "usage": usage()}) + "\n\n"
                    yield "data: [DONE]\n\n"
                finally:  # a client that went away frees its slots
                    for r in reqs:
                        r.cancel()

            return StreamingResponse(sse(), media_type="text/event-stream")
        texts = [""] * p["n"]
        try:
            async for i, text in events_until_done():
                texts[i] += choices[i].rest() if text is None else text
        finally:
            for r in reqs:
                r.cancel()
        if chat:
            out = [{"index": i, "message": {"role": "assistant", "content": t},
                    "logprobs": None, "finish_reason": finish(i)} for i, t in enumerate(texts)]
        else:
            out = [{"index": i, "text": t, "logprobs": None, "finish_reason": finish(i)}
                   for i, t in enumerate(texts)]
        return JSONResponse({**head, "object": "chat.completion" if chat else "text_completion",
                             "choices": out, "usage": usage()})

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await complete(request, chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await complete(request, chat=False)

    return app


def main(argv):
    del argv
    import uvicorn

    from experiments.workdir import tool_hooks
    from train.stage import load_stage

    lm, meta = load_stage(_FLAGS.init_from, _QUANT.value)
    cfg = _CONFIG.value
    hooks = tool_hooks(cfg, lm, meta, _FLAGS.init_from.parent) if _TOOLS.value else None
    server = Server(lm, _NAME.value or f"{meta.get('stage')}", _SLOTS.value, hooks,
                    cfg.tools.max_calls)
    print(f"serving {_FLAGS.init_from} on http://{_HOST.value}:{_PORT.value}/v1 "
          f"({_SLOTS.value} slots)", flush=True)
    try:
        uvicorn.run(make_app(server), host=_HOST.value, port=_PORT.value, log_level="warning")
    finally:
        server.close()


if __name__ == "__main__":  # flags only for the command line: the functions import cleanly
    _CONFIG = define_config()
    _FLAGS = StageFlags("the stage whose model to serve", workdir=None)
    _QUANT = define_quant()
    _TOOLS = flags.DEFINE_bool("tools", True, "run the model's tools while it generates")
    _HOST = flags.DEFINE_string("host", "127.0.0.1", "address to listen on")
    _PORT = flags.DEFINE_integer("port", 8000, "port to listen on")
    _SLOTS = flags.DEFINE_integer("slots", 8, "requests decoded together (continuous batching)")
    _NAME = flags.DEFINE_string("name", None, "the model id clients see (default: the stage)")
    run_entry(main)
