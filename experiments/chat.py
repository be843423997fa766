"""Talk to a chat model in the terminal, with streamed tokens and multi-turn history.

  python -m experiments.chat --init_from runs/demo/sft [--system "You are ..."] [--temperature 0.7]
  python -m experiments.chat --init_from runs/demo/sft --prompt "Who are you?" [--prompt "And?"]

Interactive by default (empty line or Ctrl-D quits, /reset clears the history). With --prompt
(repeatable) it answers each prompt in turn, as one conversation, prints the transcript and exits:
the mode for scripts. A model fine-tuned to call the recall tool (sft.recall) gets it: the call
runs mid-reply and its result is shown. When the history no longer fits the model's context, the
oldest turns are dropped (the system message is kept) and a note says so.
"""

from __future__ import annotations

import sys

from absl import flags

from data.special_tokens import RECALL, RECALL_END, RESULT, RESULT_END, special_id
from experiments.workdir import StageFlags, recall_tool, run_entry
from model.engine import SamplingConfig, stream
from model.handle import LM
from train.stage import load_stage

_FLAGS = StageFlags("a chat stage (W/sft, W/rl, ...)", workdir=None)
_SYSTEM = flags.DEFINE_string("system", None, "system message at the start of the conversation")
_PROMPT = flags.DEFINE_multi_string("prompt", None, "answer these turns and exit (repeatable)")
_TEMP = flags.DEFINE_float("temperature", 0.0, "0 is greedy")
_TOP_K = flags.DEFINE_integer("top_k", 0, "0 disables top-k")
_TOP_P = flags.DEFINE_float("top_p", 1.0, "1 disables top-p")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 96, "longest reply, in tokens")
_SEED = flags.DEFINE_integer("seed", 0, "sampling seed")


class Chat:
    """A conversation with a model: history, context trimming, streamed replies."""

    def __init__(self, lm: LM, system: str | None, sampling: SamplingConfig, recall=None,
                 max_calls: int = 3):
        """recall: the recall tool (eval.knowledge.Recall) for a model taught to call it; its
        calls run mid-reply, at most max_calls a turn, and stay in the history."""
        self.lm, self.cfg, self.tok, self.sampling = lm, lm.cfg, lm.tok, sampling
        self.system = system
        self.recall, self.max_calls = recall, max_calls
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
        self.messages.append({"role": "user", "content": text})
        for calls in range(self.max_calls + 1):
            new, shown = self._stream(out, calls < self.max_calls and self.recall is not None)
            if new and new[-1] == special_id(RECALL_END):  # run the call, then go on
                opens = [i for i, t in enumerate(new) if t == special_id(RECALL)]
                at = opens[-1] if opens else 0  # a call closed without its opening tag: no text
                name = self.tok.decode(new[at + 1 if opens else 0:-1])
                result = self.recall(name)
                out.write(self.tok.decode(new, show_special=True)[len(shown):] +
                          f"{RESULT}{result}{RESULT_END}")
                out.flush()
                self.messages += [{"role": "assistant", "content": self.tok.decode(new[:at]),
                                   "tool_call": {"name": "recall", "input": name}},
                                  {"role": "tool", "name": "recall", "content": result}]
                continue
            answer = self.tok.decode(new)
            out.write(self.tok.decode(new, show_special=True)[len(shown):] + "\n")
            self.messages.append({"role": "assistant", "content": answer})
            return answer
        raise AssertionError("unreachable: the last round does not stop at a recall call")

    def _stream(self, out, stop_at_recall: bool) -> tuple[list[int], str]:
        """Streams the assistant's tokens for the current history until <|end|> (not kept), or,
        with stop_at_recall, a closed recall call (kept). Returns (tokens, text shown)."""
        ids, dropped = self._prompt()
        if dropped:
            print(f"[history trimmed: {dropped} oldest turn(s) dropped to fit the context]", file=out)
        budget = min(self.sampling.max_new_tokens, self.cfg.max_seq_len - len(ids))
        sampling = SamplingConfig(**{**vars(self.sampling), "max_new_tokens": budget,
                                     "seed": self.sampling.seed + self.turn})
        self.turn += 1
        new: list[int] = []
        shown = ""
        for token, live in stream(self.lm.params, self.cfg, [ids], sampling):
            t = int(token[0])
            if not live[0] or t in self.lm.stop_ids:
                break
            new.append(t)
            if stop_at_recall and t == special_id(RECALL_END):
                break
            text_now = self.tok.decode(new, show_special=True)
            if not text_now.endswith("\ufffd"):  # wait for the rest of a multi-byte character
                out.write(text_now[len(shown):])
                out.flush()
                shown = text_now
        return new, shown

    def reset(self):
        self.messages = []


def main(argv):
    del argv
    lm, meta = load_stage(_FLAGS.init_from)
    sampling = SamplingConfig(max_new_tokens=_MAX_NEW.value, temperature=_TEMP.value,
                              top_k=_TOP_K.value, top_p=_TOP_P.value,
                              stop_tokens=lm.stop_ids, seed=_SEED.value)
    chat = Chat(lm, _SYSTEM.value, sampling, recall_tool(meta, lm))
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


if __name__ == "__main__":
    run_entry(main)
