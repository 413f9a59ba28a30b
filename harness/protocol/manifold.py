"""Fidelity and diversity apart: precision and recall (Kynkäänniemi et al. 2019), density and coverage (Naeem
et al. 2020), on the Inception features FID uses, computed by the ``prdc`` package (its authors' code).

Each generated image's features are compared with the k-nearest-neighbour balls of the reference's features
(and the reverse): precision is the share of generated images inside the real manifold (fidelity), recall the
share of real images inside the generated one (diversity); density and coverage are their versions robust to
outliers. The reference's features are the ones cached with its statistics (harness/protocol/reference.py
keeps up to 10,000 for KID), so no second pass over the reference is made.

The metrics depend on how many images each side has (a k-NN ball shrinks as N grows), so both sides use the same
count, at most ``evaluation.manifold_samples``: the first of the generated images in seed order, and the first of
the reference's kept features. Three N x N distance matrices are held (10,000: 1.2 GB).
"""
from __future__ import annotations

import contextlib
import io

import numpy as np

METRICS = ("precision", "recall", "density", "coverage")


def manifold_metrics(features: np.ndarray, reference_features: np.ndarray, k: int, max_rows: int) -> dict | None:
    """{"precision", "recall", "density", "coverage", "manifold_k", "manifold_rows"} of generated ``features``
    [N,2048] against ``reference_features`` [M,2048]; None when too few rows for k neighbours (k + 2 at least)."""
    from prdc import compute_prdc

    rows = min(len(features), len(reference_features), max_rows)
    if rows < k + 2:
        return None
    real = np.ascontiguousarray(reference_features[:rows], dtype=np.float32)
    fake = np.ascontiguousarray(features[:rows], dtype=np.float32)
    with contextlib.redirect_stdout(io.StringIO()):  # prdc prints the two counts
        values = compute_prdc(real_features=real, fake_features=fake, nearest_k=k)
    return {**{name: float(values[name]) for name in METRICS}, "manifold_k": k, "manifold_rows": rows}
