"""The agent loop: the model works on a task with tools over several steps, until it answers or
runs out of steps; every step is kept.

One step is: the model writes (thinking text and) a tool call, the call runs, its result is pasted
into the context, the model goes on. The loop lives in the decoding engine
(`generate_with_tools`), so a batch of tasks runs together and each task advances at its own pace.
It ends for a task when the model closes its turn with <|end|> (an answer), when it asks for a
step beyond `max_steps` (the call is not run: "step limit"), or when the token budget is spent.
"""

from __future__ import annotations

import dataclasses

from data.chat import TOOLS
from data.sft_mix import TOOLS_SYSTEM
from data.special_tokens import special_id
from data.tools import BM25, ToolConfig, make_hooks
from eval.chat_eval import after_last_result
from model.engine import SamplingConfig, generate_with_tools
from model.handle import LM


@dataclasses.dataclass
class AgentRun:
    task: str
    answer: str  # what the model wrote after its last tool result
    steps: list[dict]  # {"tool", "input", "result"} per tool call, in order
    ended: str  # "answered", "step limit" or "token budget"
    transcript: str  # the whole turn, special tokens spelled out


def run_agents(lm: LM, tasks: list[str], index: BM25 | None,
               tool_cfg: ToolConfig | None = None, max_steps: int = 4, max_new_tokens: int = 160,
               system: str = TOOLS_SYSTEM, temperature: float = 0.0, seed: int = 0) -> list[AgentRun]:
    """Runs every task as one agent (a batch); `index` is the search tool's collection."""
    log: list[dict] = []
    tok = lm.tok
    hooks = make_hooks(tok, index, tool_cfg or ToolConfig(), log=log)
    prompts = [lm.prompt(t, system) for t in tasks]
    budget = min(max_new_tokens, lm.cfg.max_seq_len - max(map(len, prompts)))
    gen = generate_with_tools(lm.params, lm.cfg, prompts, SamplingConfig(
        max_new_tokens=budget, temperature=temperature, stop_tokens=lm.stop_ids, seed=seed),
        hooks, max_calls=max_steps)
    closes = {special_id(close) for _, close in TOOLS.values()}
    runs = []
    for r, (task, ids, fin) in enumerate(zip(tasks, gen.tokens, gen.finished, strict=True)):
        after = after_last_result(ids)
        unserved = gen.calls[r] >= max_steps and any(
            t in closes for t, inj in zip(ids[after:], gen.injected[r][after:], strict=True)
            if not inj)
        ended = "step limit" if unserved else ("answered" if fin else "token budget")
        runs.append(AgentRun(task=task, answer=tok.decode(ids[after:]).strip(),
                             steps=[{k: e[k] for k in ("tool", "input", "result")}
                                    for e in log if e["row"] == r],
                             ended=ended, transcript=tok.decode(ids, show_special=True)))
    return runs
