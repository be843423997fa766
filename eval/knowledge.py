"""What a base model remembers of the synthetic world: biography recall by completion.

For every person and attribute, the model gets `<|bos|>` and the start of a biography sentence
("Maya Okafor was born in") and continues it greedily; the item counts as recalled when the
continuation starts with the true value ("Lisbon"). Phrasing 0 of each attribute is used by
default; any phrasing the biographies were written in may be chosen. This needs no chat format, so
it measures pretraining alone (question answering is measured after SFT).
"""

from __future__ import annotations

from collections import defaultdict

from data.special_tokens import BOS, special_id
from data.tokenizer import Tokenizer
from data.world import ATTRIBUTES, BIO_TEMPLATES, World
from model.config import ModelConfig
from model.engine import SamplingConfig, generate


def recall_items(world: World, phrasing: int = 0) -> list[dict]:
    """{prompt, value, name, attribute, split} for every person of the world and attribute."""
    if not 0 <= phrasing < world.config.phrasings:
        raise ValueError(f"phrasing={phrasing}: the biographies use phrasings "
                         f"0..{world.config.phrasings - 1}")
    items = []
    for p in world.people:
        facts = p.facts()
        for a in ATTRIBUTES:
            template = BIO_TEMPLATES[a][phrasing]
            head, _, _ = template.partition("{" + a + "}")
            prompt = head.format(**facts).rstrip()
            items.append({"prompt": prompt, "value": facts[a], "name": p.name, "attribute": a,
                          "split": world.split_of(p.name)})
    return items


def biography_recall(params, cfg: ModelConfig, tok: Tokenizer, world: World, phrasing: int = 0,
                     batch_size: int = 64, max_new_tokens: int = 12) -> dict:
    """Greedy completion accuracy: overall, per attribute, per split ('train' / 'heldout')."""
    items = recall_items(world, phrasing)
    sampling = SamplingConfig(max_new_tokens=max_new_tokens, temperature=0.0)
    hits: dict[str, list[int]] = defaultdict(list)
    examples = []
    for i in range(0, len(items), batch_size):
        chunk = items[i: i + batch_size]
        prompts = [[special_id(BOS)] + tok.encode(it["prompt"]) for it in chunk]
        out = generate(params, cfg, prompts, sampling)
        for it, ids in zip(chunk, out.tokens, strict=True):
            completion = tok.decode(ids)
            ok = int(completion.lstrip().startswith(it["value"]))
            for key in ("all", it["attribute"], it["split"]):
                hits[key].append(ok)
            if len(examples) < 5:
                examples.append({"prompt": it["prompt"], "completion": completion, "value": it["value"]})
    return {"recall": {k: round(sum(v) / len(v), 4) for k, v in hits.items()},
            "items": len(items), "examples": examples}
