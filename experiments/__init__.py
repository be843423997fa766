"""One absl entrypoint per stage, with its Python config files."""
