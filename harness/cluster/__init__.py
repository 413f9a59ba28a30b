"""Ray: the pool that runs one task per run (retries, stop requests), joining a cluster, fitting runs onto it."""
