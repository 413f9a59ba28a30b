"""The protocol: everything that defines a number (task spec, architecture registry, data, diffusion, trainer, FID)."""
