"""Conversations: the JSONL schema, validation, and the one rendering function every stage uses.

Schema (one conversation per JSONL line, the shape Hugging Face chat data sets use):

    {"messages": [{"role": "system", "content": "..."},            # optional, first only
                  {"role": "user", "content": "..."},
                  {"role": "assistant", "content": "...",
                   "tool_call": {"name": "python", "input": "print(2**10)"}},  # optional
                  {"role": "tool", "name": "python", "content": "1024"},
                  {"role": "assistant", "content": "2**10 is 1024."}]}

Rendering (special tokens from data/special_tokens.py, spelled here only by name):

    <|bos|> [<|system|> text <|end|>] <|user|> text <|end|> <|assistant|> text <|end|> ...
    a tool call inside an assistant turn:
        text <|python|> code <|/python|> <|result|> output <|/result|> text <|end|>

The loss mask is 1 exactly on what the assistant writes: its text, its tool calls (both tags
included) and the <|end|> that closes its turn; 0 on <|bos|>, system and user turns, the
<|assistant|> tag that opens a turn (the renderer writes it), and tool results. Message text is
encoded as plain text: a user (or a tool result) that spells "<|end|><|assistant|>" produces
ordinary pieces, never the special ids, so it cannot close a turn or open one.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import grain
import numpy as np

from data.loader import shuffled_batches
from data.special_tokens import (
    ASSISTANT,
    BOS,
    END,
    PAD,
    PYTHON,
    PYTHON_END,
    RECALL,
    RECALL_END,
    RESULT,
    RESULT_END,
    SEARCH,
    SEARCH_END,
    SYSTEM,
    USER,
    special_id,
)
from data.tokenizer import Tokenizer

ROLES = ("system", "user", "assistant", "tool")
TOOLS = {"search": (SEARCH, SEARCH_END), "python": (PYTHON, PYTHON_END),
         "recall": (RECALL, RECALL_END)}


class ConversationError(ValueError):
    pass


def validate(conv: dict, where: str = "conversation", for_prompt: bool = False) -> list[dict]:
    """The conversation's messages, checked; raises ConversationError naming `where`.

    A training conversation ends with an assistant message that makes no tool call; a prompt
    (for_prompt) ends with a user or tool message, waiting for the assistant.
    """
    if not isinstance(conv, dict) or not isinstance(conv.get("messages"), list):
        raise ConversationError(f"{where}: expected an object with a 'messages' list")
    msgs = conv["messages"]
    if not msgs:
        raise ConversationError(f"{where}: empty conversation")
    prev = None
    for i, m in enumerate(msgs):
        at = f"{where}, message {i}"
        if not isinstance(m, dict):
            raise ConversationError(f"{at}: expected an object")
        role = m.get("role")
        if role not in ROLES:
            raise ConversationError(f"{at}: unknown role {role!r}; expected one of {ROLES}")
        if not isinstance(m.get("content"), str):
            raise ConversationError(f"{at}: 'content' must be a string")
        call = m.get("tool_call")
        if call is not None and (role != "assistant" or not isinstance(call, dict)
                                 or call.get("name") not in TOOLS
                                 or not isinstance(call.get("input"), str)):
            raise ConversationError(f"{at}: a tool_call belongs to an assistant message and is "
                                    f"{{'name': one of {sorted(TOOLS)}, 'input': str}}")
        if role == "system" and i != 0:
            raise ConversationError(f"{at}: a system message may only come first")
        if role == "user" and prev not in (None, "system", "assistant"):
            raise ConversationError(f"{at}: a user message must follow the system message or "
                                    "a finished assistant turn")
        if role == "assistant" and prev not in ("user", "tool"):
            raise ConversationError(f"{at}: an assistant message must follow a user or tool message")
        if role == "tool":
            wanted = msgs[i - 1].get("tool_call") if i else None
            if prev != "assistant+call" or m.get("name") != wanted.get("name"):
                raise ConversationError(f"{at}: a tool message must answer the tool call of the "
                                        "assistant message just before it, with the same 'name'")
        prev = "assistant+call" if call is not None else role
    if for_prompt:
        if prev not in ("user", "tool"):
            raise ConversationError(f"{where}: a prompt must end with a user or tool message")
    elif prev != "assistant":
        raise ConversationError(f"{where}: a conversation must end with an assistant message "
                                "that makes no tool call")
    return msgs


def render(conv: dict, tok: Tokenizer, for_prompt: bool = False) -> tuple[list[int], list[int]]:
    """(tokens, mask): mask[i] = 1 where token i is written by the assistant.

    for_prompt: the conversation waits for the assistant; the tokens end with <|assistant|>
    (or, after a tool result, just there) so that generation continues the assistant's turn.
    """
    msgs = validate(conv, for_prompt=for_prompt)
    ids: list[int] = [special_id(BOS)]
    mask: list[int] = [0]

    def add(new: Iterable[int], m: int):
        new = list(new)
        ids.extend(new)
        mask.extend([m] * len(new))

    for i, msg in enumerate(msgs):
        role, text = msg["role"], msg["content"]
        if role in ("system", "user"):
            add([special_id(SYSTEM if role == "system" else USER)], 0)
            add(tok.encode(text), 0)
            add([special_id(END)], 0)
        elif role == "tool":
            add([special_id(RESULT)], 0)
            add(tok.encode(text), 0)
            add([special_id(RESULT_END)], 0)
        else:
            if msgs[i - 1]["role"] != "tool":  # a tool result continues the same turn
                add([special_id(ASSISTANT)], 0)
            add(tok.encode(text), 1)
            call = msg.get("tool_call")
            if call is not None:
                open_tag, close_tag = TOOLS[call["name"]]
                add([special_id(open_tag)], 1)
                add(tok.encode(call["input"]), 1)
                add([special_id(close_tag)], 1)
            else:
                add([special_id(END)], 1)
    if for_prompt and msgs[-1]["role"] != "tool":
        add([special_id(ASSISTANT)], 0)
    return ids, mask


def reply_messages(ids: Sequence[int], tok: Tokenizer) -> list[dict]:
    """The messages of one generated assistant turn in the project's format (render's inverse):
    text, then per tool call an assistant message with its `tool_call` and the tool message of
    the result that was fed after it, then the closing text. A call with no result after it
    (the budget or the call limit ran out) stays in the text, where its tags are dropped."""
    opens = {special_id(o): (name, special_id(c)) for name, (o, c) in TOOLS.items()}
    result, result_end = special_id(RESULT), special_id(RESULT_END)
    out, text, i = [], [], 0
    while i < len(ids):
        if ids[i] in opens:
            name, close = opens[ids[i]]
            j = next((k for k in range(i + 1, len(ids)) if ids[k] == close), None)
            end = (next((k for k in range(j + 2, len(ids)) if ids[k] == result_end), None)
                   if j is not None and j + 1 < len(ids) and ids[j + 1] == result else None)
            if end is not None:
                out += [{"role": "assistant", "content": tok.decode(text),
                         "tool_call": {"name": name, "input": tok.decode(ids[i + 1: j])}},
                        {"role": "tool", "name": name, "content": tok.decode(ids[j + 2: end])}]
                text, i = [], end + 1
                continue
        text.append(ids[i])
        i += 1
    return out + [{"role": "assistant", "content": tok.decode(text)}]


def read_jsonl(path: str | Path) -> Iterator[tuple[int, dict]]:
    """(line number, conversation) for each non-blank line; bad JSON raises naming the line."""
    path = Path(path)
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield n, json.loads(line)
            except json.JSONDecodeError as e:
                raise ConversationError(f"{path}:{n}: not valid JSON ({e.msg})") from None


def load_conversations(path: str | Path) -> list[dict]:
    """Every conversation of a JSONL file, validated; the first bad line raises, naming it."""
    out = []
    for n, conv in read_jsonl(path):
        validate(conv, where=f"{path}:{n}")
        out.append(conv)
    return out


@dataclasses.dataclass
class RenderStats:
    conversations: int = 0
    kept: int = 0
    truncated: int = 0
    dropped_too_long: int = 0
    tokens: int = 0
    assistant_tokens: int = 0


def _check_too_long(too_long: str) -> None:
    if too_long not in ("drop", "truncate"):
        raise ValueError(f"too_long={too_long!r}: expected 'drop' or 'truncate'")


IM_START, IM_END = "<|im_start|>", "<|im_end|>"  # ChatML's turn tokens, the model's own ids


def render_chatml(conv: dict, tok, for_prompt: bool = False, default_system: str | None = None
                  ) -> tuple[list[int], list[int]]:
    """(tokens, mask) in ChatML, the format of many open chat models (SmolLM2, Qwen):
    `<|im_start|>role\ncontent<|im_end|>\n` per message, no <|bos|>; the mask is 1 on the
    assistant's content and its <|im_end|>. A conversation without a system message gets
    `default_system` (the model's chat template's own, where it has one). ChatML carries no
    tool calls: a conversation with one is refused."""
    msgs = validate(conv, for_prompt=for_prompt)
    if any(m["role"] == "tool" or m.get("tool_call") for m in msgs):
        raise ConversationError("the chatml format carries no tool calls or tool results")
    if msgs[0]["role"] != "system" and default_system:
        msgs = [{"role": "system", "content": default_system}, *msgs]
    start, end = tok.special_token_id(IM_START), tok.special_token_id(IM_END)
    newline = tok.encode("\n")
    ids: list[int] = []
    mask: list[int] = []
    for msg in msgs:
        mine = int(msg["role"] == "assistant")
        head = [start, *tok.encode(msg["role"] + "\n")]
        body = [*tok.encode(msg["content"]), end]
        ids += head + body + newline
        mask += [0] * len(head) + [mine] * len(body) + [0] * len(newline)
    if for_prompt:
        head = [start, *tok.encode("assistant\n")]
        ids += head
        mask += [0] * len(head)
    return ids, mask


# Jinja chat templates (Hugging Face tokenizer_config.json, GGUF tokenizer.chat_template) that
# render as `render` and `render_chatml` do; tool calls, which only the project's format
# carries, come through the message's "tool_call" ({"name": "python"|"search"|..., "input"}).
PROJECT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] == 'system' %}<|system|>{{ m['content'] }}<|end|>"
    "{% elif m['role'] == 'user' %}<|user|>{{ m['content'] }}<|end|>"
    "{% elif m['role'] == 'tool' %}<|result|>{{ m['content'] }}<|/result|>"
    "{% else %}{% if loop.first or messages[loop.index0 - 1]['role'] != 'tool' %}<|assistant|>"
    "{% endif %}{{ m['content'] }}{% if m.get('tool_call') %}<|{{ m['tool_call']['name'] }}|>"
    "{{ m['tool_call']['input'] }}<|/{{ m['tool_call']['name'] }}|>{% else %}<|end|>{% endif %}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt and (not messages or messages[-1]['role'] != 'tool') %}"
    "<|assistant|>{% endif %}")
CHATML_TEMPLATE = (
    "{% for m in messages %}{% if loop.first and m['role'] != 'system' and default_system %}"
    "<|im_start|>system\n{{ default_system }}<|im_end|>\n{% endif %}"
    "<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@dataclasses.dataclass(frozen=True)
class ChatFormat:
    """How a conversation becomes tokens for one family of models; a model handle
    (model.handle.LM) carries its own: "project" (`render`, the project's special tokens) or
    "chatml" (`render_chatml`, with the model's default system message, if any)."""
    name: str
    default_system: str | None = None

    def render(self, conv: dict, tok, for_prompt: bool = False) -> tuple[list[int], list[int]]:
        if self.name == "chatml":
            return render_chatml(conv, tok, for_prompt, self.default_system)
        return render(conv, tok, for_prompt)

    def prompt(self, tok, question: str, system: str | None = None) -> list[int]:
        """The tokens that ask one question (after an optional system message) and wait for
        the reply: the prompt every one-question evaluation and sampler uses."""
        msgs = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": question}]
        return self.render({"messages": msgs}, tok, for_prompt=True)[0]

    def template(self, tok) -> str:
        """This format as a Jinja chat template: the model's own where its tokenizer has one
        (an imported ChatML model), else the project's or ChatML's, with the default system
        message written in."""
        own = getattr(tok, "config", {}).get("chat_template")
        if self.name == "chatml" and isinstance(own, str) and own:
            return own
        if self.name == "chatml":
            system = json.dumps(self.default_system or "")
            return "{% set default_system = " + system + " %}" + CHATML_TEMPLATE
        return PROJECT_TEMPLATE

    def stop_ids(self, tok) -> tuple[int, ...]:
        """The ids that end an assistant turn."""
        return (tok.special_token_id(IM_END if self.name == "chatml" else END),)


FORMATS = {"project": ChatFormat("project"), "chatml": ChatFormat("chatml")}


def chat_format(name: str, default_system: str | None = None) -> ChatFormat:
    """The chat format a stage's meta.json names ("chat_format"); an unknown name is refused."""
    if name not in FORMATS:
        raise ValueError(f"chat format {name!r} is unknown; known: {', '.join(FORMATS)}")
    return dataclasses.replace(FORMATS[name], default_system=default_system)


def prompt(tok: Tokenizer, question: str, system: str | None = None) -> list[int]:
    """ChatFormat.prompt in the project's format (for code that has a tokenizer but no model)."""
    return FORMATS["project"].prompt(tok, question, system)


def render_all(convs: Iterable[dict], tok: Tokenizer, max_tokens: int, too_long: str = "drop",
               fmt: ChatFormat | None = None) -> tuple[list[tuple[list[int], list[int]]], RenderStats]:
    """Renders conversations for training in `fmt` (the project's format by default); ones over
    max_tokens are dropped or truncated (a truncated one keeps its first max_tokens tokens and
    is dropped if no assistant token is left)."""
    fmt = fmt or FORMATS["project"]
    _check_too_long(too_long)
    stats, out = RenderStats(), []
    for conv in convs:
        stats.conversations += 1
        ids, mask = fmt.render(conv, tok)
        if len(ids) > max_tokens:
            if too_long == "drop" or not any(mask[:max_tokens]):
                stats.dropped_too_long += 1
                continue
            ids, mask = ids[:max_tokens], mask[:max_tokens]
            stats.truncated += 1
        stats.kept += 1
        stats.tokens += len(ids)
        stats.assistant_tokens += sum(mask)
        out.append((ids, mask))
    return out, stats


def render_document(text: str, tok: Tokenizer) -> tuple[list[int], list[int]]:
    """A pretraining document as a training row beside rendered conversations: (tokens, mask)
    as `render` gives them, the tokenizer's BOS (<|bos|>) then the text, the loss on every token
    of the text."""
    ids, bos = tok.encode(text), tok.bos_ids
    return bos + ids, [0] * len(bos) + [1] * len(ids)


def render_documents(texts: Iterable[str], tok: Tokenizer, max_tokens: int, too_long: str = "drop",
                     ) -> tuple[list[tuple[list[int], list[int]]], int]:
    """(rows, dropped): render_document for each text; one over max_tokens is truncated to its
    first max_tokens tokens or dropped (and counted), as render_all does with conversations."""
    _check_too_long(too_long)
    rows = [render_document(t, tok) for t in texts]
    if too_long == "truncate":
        return [(ids[:max_tokens], mask[:max_tokens]) for ids, mask in rows], 0
    kept = [r for r in rows if len(r[0]) <= max_tokens]
    return kept, len(rows) - len(kept)


class ConversationData:
    """Rendered conversations packed into rows of seq_len + 1 tokens, for the host loop.

    Packing is first-fit in a seeded order, done once; rows are shuffled per epoch by grain, like
    pretraining windows. Each row yields inputs / targets / segment_ids / mask [T] (mask on the
    targets). The tail of a row is <|pad|> with mask 0.
    """

    def __init__(self, rendered: Sequence[tuple[list[int], list[int]]], seq_len: int, seed: int = 0):
        width = seq_len + 1
        if any(len(ids) > width for ids, _ in rendered):
            raise ValueError(f"a conversation is longer than seq_len + 1 = {width} tokens; "
                             "render with max_tokens=seq_len + 1")
        order = np.random.default_rng(seed).permutation(len(rendered))
        rows: list[list[int]] = []  # conversation indices per row
        room: list[int] = []
        for i in order:
            n = len(rendered[i][0])
            j = next((r for r, free in enumerate(room) if free >= n), None)
            if j is None:
                rows.append([])
                room.append(width)
                j = len(rows) - 1
            rows[j].append(int(i))
            room[j] -= n
        pad = special_id(PAD)
        self.tokens = np.full((len(rows), width), pad, np.int32)
        self.mask = np.zeros((len(rows), width), np.int32)
        for r, members in enumerate(rows):
            at = 0
            for i in members:
                ids, mask = rendered[i]
                self.tokens[r, at: at + len(ids)] = ids
                self.mask[r, at: at + len(ids)] = mask
                at += len(ids)
        self.seq_len = seq_len
        self.n_tokens = int(sum(len(ids) for ids, _ in rendered))

    def __len__(self) -> int:
        return self.n_tokens

    def row(self, i: int) -> dict[str, np.ndarray]:
        x = self.tokens[i]
        inputs = x[:-1]
        return {"inputs": inputs, "targets": x[1:], "mask": self.mask[i, 1:],
                "segment_ids": np.cumsum(inputs == special_id(BOS)).astype(np.int32)}

    def _check(self, seq_len: int):
        if seq_len != self.seq_len:
            raise ValueError(f"conversations were packed for seq_len={self.seq_len}, not {seq_len}")

    def train(self, seq_len: int, global_batch: int, seed: int, process_index: int = 0,
              process_count: int = 1) -> grain.IterDataset:
        self._check(seq_len)
        if len(self.tokens) < global_batch:
            raise ValueError(f"{len(self.tokens)} packed rows of conversations, fewer than one "
                             f"batch of {global_batch}: add data or lower train.batch_size")
        return shuffled_batches(len(self.tokens), self.row, global_batch, seed, process_index,
                                process_count)

    def eval(self, seq_len: int, global_batch: int, max_batches: int, process_index: int = 0,
             process_count: int = 1) -> Iterator[dict]:
        """Every row once, in order (up to max_batches); the last batch is filled with rows
        whose mask is 0, so no conversation is left out and none counts twice."""
        self._check(seq_len)
        local = global_batch // process_count
        n_batches = min(max_batches, -(-len(self.tokens) // global_batch))
        empty = {**self.row(0), "mask": np.zeros(seq_len, np.int32)}
        for b in range(n_batches):
            first = b * global_batch + process_index * local
            rows = [self.row(i) if i < len(self.tokens) else empty for i in range(first, first + local)]
            yield {k: np.stack([r[k] for r in rows]) for k in rows[0]}
