"""One process's run: ``Run`` and what its folder holds (checkpoints, lock, record, log, sample grid)."""
