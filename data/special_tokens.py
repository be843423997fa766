"""The special-token table: the one place where their spelling and ids are fixed.

Id 0 is sentencepiece's <unk> (never produced, thanks to byte fallback); the tokens below follow at
ids 1, 2, ... in this order, in every tokenizer the project trains, whatever its corpus or size.
They are sentencepiece *control* symbols: text that merely spells `<|user|>` encodes to ordinary
pieces, never to the special id. Special ids enter a sequence only through rendering code that
asks for them by name (`special_id`).

Append new tokens by renaming a reserved slot, never by reordering: ids must stay stable.
"""

from __future__ import annotations

BOS = "<|bos|>"  # starts every document and every conversation
PAD = "<|pad|>"
SYSTEM = "<|system|>"
USER = "<|user|>"
ASSISTANT = "<|assistant|>"
END = "<|end|>"  # ends one turn
SEARCH = "<|search|>"
SEARCH_END = "<|/search|>"
PYTHON = "<|python|>"
PYTHON_END = "<|/python|>"
RESULT = "<|result|>"
RESULT_END = "<|/result|>"
RECALL = "<|recall|>"  # the model asks its own memory about a name (data.tools: recall)
RECALL_END = "<|/recall|>"

SPECIAL_TOKENS: tuple[str, ...] = (
    PAD, BOS, SYSTEM, USER, ASSISTANT, END,
    SEARCH, SEARCH_END, PYTHON, PYTHON_END, RESULT, RESULT_END,
    RECALL, RECALL_END,  # were <|reserved_0|> and <|reserved_1|>
    *(f"<|reserved_{i}|>" for i in range(2, 4)),
)
FIRST_SPECIAL_ID = 1


def special_id(token: str) -> int:
    """The fixed id of a special token, e.g. special_id(USER)."""
    try:
        return FIRST_SPECIAL_ID + SPECIAL_TOKENS.index(token)
    except ValueError:
        raise KeyError(f"{token!r} is not a special token; known: {SPECIAL_TOKENS}") from None


def special_table() -> dict[str, int]:
    return {t: special_id(t) for t in SPECIAL_TOKENS}
