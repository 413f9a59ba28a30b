"""Studies: many runs driven on the Ray pool from one driver process. A sweep (sweep.py: archs x tiers x seeds)
and a search (harness/search/: an Optuna study whose trials are runs) share how they hold a pool (session.py:
the writable check, the driver lock, connect, allocate, the pool, the node checks, shutdown) and how they drive
it (drive.py: next job, events, outcomes, Ctrl-C and SIGTERM).

The search stays a package of its own, harness/search/, beside this one rather than inside it: its default space
file, harness/search/space.py, is a path users meet (``--help``, docs/search.md, the path each study stores and
``export`` names, the file a new space starts as a copy of), and it has five modules of its own. Sweep and search
are peers: neither imports the other (tests/test_layers.py).
"""
