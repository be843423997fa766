"""The Transformer, its sharding rules and the decoding engine. Imports only jax, flax, numpy."""
