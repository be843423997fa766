"""Talk to a chat model in the terminal, with streamed tokens and multi-turn history.

  python -m experiments.chat --init_from runs/demo/sft [--system "You are ..."] [--temperature 0.7]
  python -m experiments.chat --init_from runs/demo/sft --prompt "Who are you?" [--prompt "And?"]

Interactive by default (empty line or Ctrl-D quits, /reset clears the history). With --prompt
(repeatable) it answers each prompt in turn, as one conversation, prints the transcript and exits:
the mode for scripts. A model in the project's chat format gets its tools (search over the run's
world, python in the sandbox, recall when taught), run mid-reply by the same code as
experiments.serve (model/batcher.py, experiments.workdir.tool_hooks); a call and its result are
shown with their tags and kept in the history. When the history no longer fits the model's
context, the oldest turns are dropped (the system message is kept) and a note says so.
"""

from __future__ import annotations

import sys

from absl import flags

from data.chat import reply_messages
from experiments.serve import Choice
from experiments.workdir import StageFlags, define_config, define_quant, run_entry, tool_hooks
from model.batcher import Batcher, Request
from model.engine import SamplingConfig
from model.handle import LM
from train.stage import load_stage


class Chat:
    """A conversation with a model: history, context trimming, streamed replies, tools."""

    def __init__(self, lm: LM, system: str | None, sampling: SamplingConfig,
                 hooks: dict | None = None, max_calls: int = 3):
        """hooks: the model's tools (experiments.workdir.tool_hooks), run mid-reply by the
        serving batcher as experiments.serve runs them, at most max_calls a turn; the calls and
        their results stay in the history."""
        self.lm, self.cfg, self.tok, self.sampling = lm, lm.cfg, lm.tok, sampling
        self.system, self.hooks, self.max_calls = system, hooks, max_calls
        self.batcher = Batcher(lm.params, lm.cfg, slots=1)
        self.messages: list[dict] = []
        self.turn = 0

    def _prompt(self) -> tuple[list[int], int]:
        """Prompt tokens for the current history; drops the oldest turns until the prompt and
        the reply budget fit the context. Returns (tokens, turns dropped)."""
        dropped = 0
        while True:
            msgs = ([{"role": "system", "content": self.system}] if self.system else []) + self.messages
            ids, _ = self.lm.chat.render({"messages": msgs}, self.tok, for_prompt=True)
            if len(ids) + self.sampling.max_new_tokens <= self.cfg.max_seq_len or len(self.messages) <= 1:
                if len(ids) + 1 > self.cfg.max_seq_len:
                    raise ValueError(f"the message is {len(ids)} tokens; the model's context is "
                                     f"{self.cfg.max_seq_len}")
                return ids, dropped
            # the oldest turn: its user message and the assistant's messages up to the next one
            rest = [i for i, m in enumerate(self.messages) if i and m["role"] == "user"]
            self.messages = self.messages[rest[0]:] if rest else self.messages[-1:]
            dropped += 1

    def reply(self, text: str, out=sys.stdout) -> str:
        """Streams the reply to `text` (tool calls and results shown with their tags) and
        returns its last text; the turn's messages join the history."""
        self.messages.append({"role": "user", "content": text})
        ids, dropped = self._prompt()
        if dropped:
            print(f"[history trimmed: {dropped} oldest turn(s) dropped to fit the context]", file=out)
        s = self.sampling
        shown = Choice(self.tok, [], show_special=True)  # the server's incremental text

        def show(token):
            out.write(shown.add(token))
            out.flush()

        req = Request(ids, min(s.max_new_tokens, self.cfg.max_seq_len - len(ids)), s.temperature,
                      s.top_k, s.top_p, s.seed + self.turn, tuple(self.lm.stop_ids),
                      on_token=show, hooks=self.hooks, max_calls=self.max_calls)
        self.turn += 1
        self.batcher.generate(req)
        out.write(shown.rest() + "\n")
        turn = reply_messages(req.tokens, self.tok)
        self.messages += turn
        return turn[-1]["content"]

    def reset(self):
        self.messages = []


def main(argv):
    del argv
    lm, meta = load_stage(_FLAGS.init_from, _QUANT.value)
    sampling = SamplingConfig(max_new_tokens=_MAX_NEW.value, temperature=_TEMP.value,
                              top_k=_TOP_K.value, top_p=_TOP_P.value,
                              stop_tokens=lm.stop_ids, seed=_SEED.value)
    hooks = tool_hooks(_CONFIG.value, lm, meta, _FLAGS.init_from.parent) if _TOOLS.value else None
    chat = Chat(lm, _SYSTEM.value, sampling, hooks, _CONFIG.value.tools.max_calls)
    if _PROMPT.value:
        for p in _PROMPT.value:
            print(f"User: {p}\nAssistant: ", end="", flush=True)
            chat.reply(p)
        return
    print(f"chatting with {_FLAGS.init_from} ({meta.get('stage')}, step "
          f"{meta.get('figures', {}).get('step')}). Empty line or Ctrl-D quits; /reset clears.")
    while True:
        try:
            text = input("User: ").strip()
        except EOFError:
            print()
            return
        if not text:
            return
        if text == "/reset":
            chat.reset()
            continue
        print("Assistant: ", end="", flush=True)
        chat.reply(text)


if __name__ == "__main__":  # flags only for the command line: the functions import cleanly
    _CONFIG = define_config()
    _FLAGS = StageFlags("a chat stage (W/sft, W/rl, ...)", workdir=None)
    _QUANT = define_quant()
    _TOOLS = flags.DEFINE_bool("tools", True, "run the model's tools while it replies")
    _SYSTEM = flags.DEFINE_string("system", None, "system message at the start of the conversation")
    _PROMPT = flags.DEFINE_multi_string("prompt", None, "answer these turns and exit (repeatable)")
    _TEMP = flags.DEFINE_float("temperature", 0.0, "0 is greedy")
    _TOP_K = flags.DEFINE_integer("top_k", 0, "0 disables top-k")
    _TOP_P = flags.DEFINE_float("top_p", 1.0, "1 disables top-p")
    _MAX_NEW = flags.DEFINE_integer("max_new_tokens", 96, "longest reply, in tokens")
    _SEED = flags.DEFINE_integer("seed", 0, "sampling seed")
    run_entry(main)
