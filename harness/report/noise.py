"""How far to trust a leaderboard's gaps: 95% intervals of a row's mean best FID and of the difference
between two rows, from the seeds when there are several, else from the FID's own sampling noise.

A row's runs are seeds of one configuration. With n >= 2 seeds the interval is Student's t over
them (the seed-to-seed spread includes each FID's sampling noise). With one seed only the sampling
noise is known: the standard deviation of the FIDs of bootstrap resamples of the generated features
(``evaluations[].fid_std`` in the record); seed-to-seed variation, usually the larger part, is then
not in the interval, and the label says so.

Two rows are compared as a paired sample when they share at least two seeds and, for every shared
seed, their first training step drew the same images and noise (``stream_sha256``): equal seeds then
saw equal batches, timesteps, noise and sampling seeds, and the difference of their FIDs removes
what the seed does to both. Otherwise Welch's t (both rows with two or more seeds), else a normal
interval from the two standard errors. Written with scipy.stats' distributions; the pairing check and
the choice between the three are this harness's.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

LEVEL = 0.95
Z = float(stats.norm.ppf(0.5 + LEVEL / 2))  # 1.96


@dataclass(frozen=True)
class Interval:
    value: float  # a mean, or a difference (lower row minus upper row)
    low: float
    high: float
    kind: str  # what it comes from, in words: "t over 3 seeds", "FID sampling noise only (1 seed)", ...
    spread: float | None = None  # per-seed standard deviation behind it (of the FIDs, or of paired differences)
    paired: bool = False

    @property
    def known(self) -> bool:
        return not (math.isnan(self.low) or math.isnan(self.high))

    @property
    def excludes_zero(self) -> bool:
        return self.known and (self.low > 0 or self.high < 0)


UNKNOWN = Interval(math.nan, math.nan, math.nan,
                   "no noise estimate (one seed, and its record has no FID sampling noise)")


def mean_interval(values: list[float], sampling_std: float | None) -> Interval:
    """95% interval of the mean of one row's best FIDs (one per seed)."""
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return UNKNOWN
    mean = float(np.mean(values))
    if len(values) >= 2:
        sd = float(np.std(values, ddof=1))
        half = float(stats.t.ppf(0.5 + LEVEL / 2, len(values) - 1)) * sd / math.sqrt(len(values))
        return Interval(mean, mean - half, mean + half, f"t over {len(values)} seeds", sd)
    if sampling_std is None or math.isnan(sampling_std):
        return Interval(mean, math.nan, math.nan, UNKNOWN.kind)
    half = Z * sampling_std
    return Interval(mean, mean - half, mean + half, "FID sampling noise only (1 seed; seed-to-seed spread unknown)")


def _standard_error(values: list[float], sampling_std: float | None) -> float:
    if len(values) >= 2:
        return float(np.std(values, ddof=1)) / math.sqrt(len(values))
    return math.nan if sampling_std is None else float(sampling_std)


def difference(upper: dict, lower: dict) -> Interval:
    """95% interval of ``lower``'s mean best FID minus ``upper``'s. Each argument holds ``fids`` (seed ->
    best FID), ``streams`` (seed -> stream_sha256 or None) and ``sampling_std`` (one seed's FID noise)."""
    shared = sorted(set(upper["fids"]) & set(lower["fids"]))
    same_draws = all(upper["streams"].get(s) and upper["streams"].get(s) == lower["streams"].get(s) for s in shared)
    a, b = list(upper["fids"].values()), list(lower["fids"].values())
    gap = float(np.mean(b) - np.mean(a))
    if len(shared) >= 2 and same_draws:
        d = np.array([lower["fids"][s] - upper["fids"][s] for s in shared])
        sd = float(np.std(d, ddof=1))
        half = float(stats.t.ppf(0.5 + LEVEL / 2, len(d) - 1)) * sd / math.sqrt(len(d))
        mean = float(d.mean())
        return Interval(mean, mean - half, mean + half, f"paired over {len(d)} shared seeds", sd, paired=True)
    if len(a) >= 2 and len(b) >= 2:
        va, vb = np.var(a, ddof=1) / len(a), np.var(b, ddof=1) / len(b)
        se = math.sqrt(va + vb)
        df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1)) if se > 0 else len(a) + len(b) - 2
        half = float(stats.t.ppf(0.5 + LEVEL / 2, df)) * se
        pooled = math.sqrt((np.var(a, ddof=1) + np.var(b, ddof=1)) / 2)
        return Interval(gap, gap - half, gap + half, f"Welch t, {len(a)} and {len(b)} seeds", pooled)
    se = math.hypot(_standard_error(a, upper["sampling_std"]), _standard_error(b, lower["sampling_std"]))
    if math.isnan(se):
        return Interval(gap, math.nan, math.nan, UNKNOWN.kind)
    kind = "normal, from FID sampling noise" + (" and seeds" if max(len(a), len(b)) >= 2 else " only (1 seed each)")
    return Interval(gap, gap - Z * se, gap + Z * se, kind)


def seeds_to_separate(gap: float, interval: Interval, limit: int = 1000) -> int | None:
    """Roughly how many seeds per architecture would make a gap of this size exclude zero at the observed
    per-seed spread: the least n whose t interval half-width is below |gap|. None when no spread is known."""
    sd = interval.spread
    if sd is None or math.isnan(sd) or gap == 0:
        return None
    if sd == 0:
        return 2
    for n in range(2, limit + 1):
        df = n - 1 if interval.paired else 2 * n - 2
        se = sd / math.sqrt(n) if interval.paired else sd * math.sqrt(2 / n)
        if float(stats.t.ppf(0.5 + LEVEL / 2, df)) * se < abs(gap):
            return n
    return limit + 1


def shared_ranks(tied_with_above: list[bool]) -> list[int]:
    """Ranks 1, 2, ...; a row tied with the row above takes its rank."""
    ranks: list[int] = []
    for i, tied in enumerate(tied_with_above):
        ranks.append(ranks[-1] if i and tied else i + 1)
    return ranks
