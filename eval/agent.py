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
               system: str = TOOLS_SYSTEM, temperature: float = 0.0, seed: int = 0,
               log: list | None = None, recall=None) -> list[AgentRun]:
    """Runs every task as one agent (a batch); `index` is the search tool's collection; recall
    the recall tool for a model taught to call it; `log` collects every tool call."""
    log = [] if log is None else log
    tok = lm.tok
    hooks = make_hooks(tok, index, tool_cfg or ToolConfig(), log=log, recall=recall)
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


def chain_eval(lm: LM, tasks: list[dict], index: BM25, tool_cfg: ToolConfig | None = None,
               recall=None, max_steps: int = 4, max_new_tokens: int = 160) -> dict:
    """Two-step tasks (data.agent_tasks.chain_tasks) done by the agent loop with tools, against
    the same model answering in one turn without them; scored by score_chain."""
    from eval.chat_eval import ask, recall_hooks

    runs = run_agents(lm, [t["question"] for t in tasks], index, tool_cfg or ToolConfig(),
                      max_steps=max_steps, max_new_tokens=max_new_tokens, recall=recall)
    one = ask(lm, [t["question"] for t in tasks], hooks=recall_hooks(lm.tok, recall),
              max_new_tokens=max_new_tokens)
    return score_chain(tasks, runs, [r["answer"] for r in one])


def score_chain(tasks: list[dict], runs: list[AgentRun], one_turn: list[str]) -> dict:
    """Success (the final "The answer is N" is the task's answer) of the agent runs and of the
    one-turn answers; for the agent also the tool calls used, the share whose first two calls
    were search then python (recall calls aside), and how the runs ended; overall and per
    task kind."""
    from eval.tasks import extract_answer

    if not len(tasks) == len(runs) == len(one_turn):
        raise ValueError(f"{len(tasks)} tasks, {len(runs)} agent runs, {len(one_turn)} answers")

    def rates(keep) -> dict:
        idx = [i for i, t in enumerate(tasks) if keep(t)]
        n = max(len(idx), 1)
        plan = [[s["tool"] for s in runs[i].steps if s["tool"] != "recall"][:2] == ["search", "python"]
                for i in idx]
        return {"n": len(idx),
                "one_turn": round(sum(extract_answer(one_turn[i]) == tasks[i]["answer"]
                                      for i in idx) / n, 4),
                "agent": round(sum(extract_answer(runs[i].answer) == tasks[i]["answer"]
                                   for i in idx) / n, 4),
                "agent_mean_steps": round(sum(len(runs[i].steps) for i in idx) / n, 3),
                "agent_search_then_python": round(sum(plan) / n, 4),
                "agent_ended": {e: sum(runs[i].ended == e for i in idx)
                                for e in ("answered", "step limit", "token budget")}}

    out = rates(lambda t: True)
    out["by_kind"] = {k: rates(lambda t, k=k: t["kind"] == k) for k in sorted({t["kind"] for t in tasks})}
    out["example"] = runs[0].transcript if runs else ""
    return out
