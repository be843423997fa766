"""Corpus pipeline, tokenizer, token shards, loaders, conversation rendering, the synthetic world."""
