"""The model handle: what it takes to use a model, in one value that evaluations, tools, RL and
the samplers pass around instead of (params, config, tokenizer).

`tok` and `chat` are data-layer objects (data.tokenizer.Tokenizer, data.chat.ChatFormat) held
here untyped, so that model/ keeps importing nothing of data/; `train.stage.load_stage` builds a
handle from a stage directory.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from model.config import ModelConfig
from model.transformer import Params


@dataclasses.dataclass(frozen=True)
class LM:
    params: Params
    cfg: ModelConfig
    tok: Any = None  # encode / decode / is_special / vocab_size (data.tokenizer.Tokenizer)
    chat: Any = None  # how a conversation becomes tokens (data.chat.ChatFormat)

    def with_params(self, params: Params) -> LM:
        """The same model with other parameters (a training step's, a reference's)."""
        return dataclasses.replace(self, params=params)

    def prompt(self, question: str, system: str | None = None) -> list[int]:
        """The tokens that ask one question (after an optional system message) and wait for
        the reply, in this model's chat format."""
        if self.chat is None:
            raise ValueError("this model has no chat format (a base model imported without a "
                             "chat template): use a completion evaluation, or fine-tune it")
        return self.chat.prompt(self.tok, question, system)

    @property
    def stop_ids(self) -> tuple[int, ...]:
        """The token ids that end the assistant's turn in this model's chat format."""
        return self.chat.stop_ids(self.tok)
