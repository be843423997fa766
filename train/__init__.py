"""Training: mesh, train state, losses, optimizers, jitted step functions, checkpointing."""
