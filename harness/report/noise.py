"""How far to trust a leaderboard: each row's 95% interval of its mean best FID, every pair of rows
tested, and ranks that claim no more than those tests support across the whole board.

The model behind it. One run's best FID is its architecture's mean plus a training-seed effect plus
the FID's own sampling noise; the variance of one run around its architecture's mean (its *per-seed
variance*) holds both. A row's per-seed variance comes from, in this order:

- **measured**: its own seeds (n >= 2): the sample variance, n - 1 degrees of freedom;
- **borrowed**: one seed, and other rows of the same board (same task, tier, settings and
  conditions) have two or more: their pooled within-row variance (one-way ANOVA's, with
  sum(n_i - 1) degrees of freedom) on the relative scale, a seed CV, scaled to the row's FID (the
  spread of FID grows with FID);
- **assumed**: one seed, nothing to borrow, and the user gave a seed-to-seed CV (``report
  --seed-cv 0.02``; the field measures 1-2%): (cv x FID)^2 plus the record's FID sampling variance,
  treated as known (normal);
- **unknown**: otherwise. The row has no interval and is separated from nothing.

No per-seed variance is taken below the FID's sampling variance, the bootstrap variance of the FID of the
row's best evaluation (``evaluations[].fid_std``): a run varies at least that much from its samples alone.
The split shown beside each row: that sampling part, and the rest, the seed part.

Two rows are compared as a paired sample when both ran the same two or more seeds and each seed's
first training step drew the same images and noise in both (``stream_sha256``): the difference of
their FIDs per seed removes what the seed does to both, and the test is t over those differences.
Otherwise the gap of the means has variance s_a^2/n_a + s_b^2/n_b and t with Welch-Satterthwaite
degrees of freedom (an assumed variance has infinitely many). A borrowed variance is pooled from the
measured rows, so it is not independent of theirs: a pair with a borrowing row takes the smaller of
the two rows' degrees of freedom instead.

Ranks. Every pair of rows with known noise is tested (two-sided); Holm's step-down over those tests
keeps the chance that a board claims any false separation at 5% or less. A row's rank is 1 + the
number of rows separated from it and ahead of it; its range runs to (rows) - (rows separated from it
and behind it). A tie never chains: rows A~B and B~C with A, C separated rank 1, 1, 2. These rules'
false-separation rate, coverage and power are measured on simulated boards in tests/test_statistics.py.

Power. The seeds needed to separate a gap are those giving 80% power to a two-sided t test at the
per-seed spread (noncentral t, scipy.stats.nct), paired or unpaired as the rows are, at 5% divided by
the board's number of pairs: a lower bound on the power under Holm's correction, so the count is
enough on that board (with two rows, the plain 5% test).

Written with scipy.stats' distributions; the choice of noise source, the pairing check, Holm's
procedure (a dozen lines, so not worth statsmodels as a dependency) and the ranks are this harness's.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import stats

LEVEL = 0.95
ALPHA = 1 - LEVEL
POWER = 0.80
FIELD_SEED_CV = (0.01, 0.02)  # seed-to-seed CV of FID the literature reports; only ever used as a stated assumption
PROCEDURE = ("Each pair of rows is tested (paired t over shared seeds with identical training draws, else Welch t); "
             "Holm's correction over all the board's tested pairs keeps the chance of any false separation at 5%. "
             "A row's rank is 1 + the rows separated from it and ahead of it; its range runs to the rows not "
             "separated from it and behind it. A row with one seed and no seed spread to borrow or assume is "
             "separated from nothing.")


@dataclass(frozen=True)
class Row:
    """One leaderboard row: the best FIDs of its seeds and what the noise estimate needs."""

    name: str
    fids: dict[int, float]  # seed -> best FID
    streams: dict[int, str | None] = field(default_factory=dict)  # seed -> stream_sha256 of its first batch
    sampling_std: float | None = None  # the FID's bootstrap sampling SD at the best evaluation

    @property
    def n(self) -> int:
        return len(self.fids)

    @property
    def mean(self) -> float:
        return float(np.mean(list(self.fids.values()))) if self.fids else math.nan


@dataclass(frozen=True)
class SeedNoise:
    """A row's per-seed variance of best FID (seed-to-seed and sampling together) and where it comes from."""

    variance: float
    df: float  # its degrees of freedom; inf when assumed known
    source: str  # "measured", "borrowed", "assumed" or "unknown"
    label: str  # in words, for the page: "measured over 3 seeds", ...

    @property
    def known(self) -> bool:
        return not math.isnan(self.variance)


@dataclass(frozen=True)
class Interval:
    value: float
    low: float
    high: float
    kind: str

    @property
    def known(self) -> bool:
        return not (math.isnan(self.low) or math.isnan(self.high))


@dataclass(frozen=True)
class Comparison:
    """Row b's mean best FID minus row a's, with its 95% interval and two-sided p-value."""

    gap: float
    low: float
    high: float
    p: float
    kind: str
    sd: float  # the per-seed SD the power calculation uses (of paired differences, or of one row's FIDs)
    paired: bool = False

    @property
    def known(self) -> bool:
        return not math.isnan(self.p)


def _sampling_var(row: Row) -> float:
    return 0.0 if row.sampling_std is None or math.isnan(row.sampling_std) else float(row.sampling_std) ** 2


def pooled_relative_variance(rows: list[Row]) -> tuple[float, int, int]:
    """The squared seed CV pooled over the rows with two or more seeds: sum((n_i - 1) s_i^2 / m_i^2) /
    sum(n_i - 1), one-way ANOVA's pooled variance on the relative scale (a row's spread grows with its FID,
    so it is borrowed as a CV and scaled to the borrowing row's FID). Returns (CV^2, its df, rows pooled)."""
    sums, df, count = 0.0, 0, 0
    for row in rows:
        if row.n >= 2 and row.mean > 0:
            sums += float(np.var(list(row.fids.values()), ddof=1)) / row.mean**2 * (row.n - 1)
            df, count = df + row.n - 1, count + 1
    return (sums / df if df else math.nan), df, count


def seed_noise(row: Row, pool: tuple[float, int, int], seed_cv: float | None) -> SeedNoise:
    """Where ``row``'s per-seed variance comes from: its seeds, the board's pool, an assumed CV, or nowhere.
    Never below the record's FID sampling variance: a run's FID varies at least that much from the
    generated samples alone, whatever a few seeds happened to show."""
    floor = _sampling_var(row)
    if row.n >= 2:
        return SeedNoise(max(float(np.var(list(row.fids.values()), ddof=1)), floor), row.n - 1, "measured",
                         f"measured over {row.n} seeds")
    cv2, df, count = pool
    if row.n == 0:  # no usable best FID (an unfinished run without an evaluation)
        return SeedNoise(math.nan, math.nan, "unknown", "no best FID")
    if df >= 1:
        return SeedNoise(max(cv2 * row.mean**2, floor), df, "borrowed",
                         f"1 seed; seed CV {math.sqrt(cv2):.1%} borrowed from {count} other row(s) (pooled, {df} df)")
    if seed_cv is not None:
        return SeedNoise((seed_cv * row.mean) ** 2 + floor, math.inf, "assumed",
                         f"1 seed; seed CV {seed_cv:.1%} assumed")
    return SeedNoise(math.nan, math.nan, "unknown", "1 seed: rank not established (seed spread unknown)")


def _t(df: float) -> float:
    return float(stats.norm.ppf(1 - ALPHA / 2) if math.isinf(df) else stats.t.ppf(1 - ALPHA / 2, df))


def _p(statistic: float, df: float) -> float:
    tail = stats.norm.sf(abs(statistic)) if math.isinf(df) else stats.t.sf(abs(statistic), df)
    return float(min(1.0, 2 * tail))


def mean_interval(row: Row, noise: SeedNoise) -> Interval:
    """95% interval of the row's mean best FID from its per-seed variance (none when that is unknown)."""
    if row.n == 0 or not noise.known:
        return Interval(row.mean if row.n else math.nan, math.nan, math.nan, noise.label)
    half = _t(noise.df) * math.sqrt(noise.variance / row.n)
    return Interval(row.mean, row.mean - half, row.mean + half, noise.label)


def variance_split(row: Row, noise: SeedNoise) -> tuple[float, float]:
    """(seed-to-seed SD, FID sampling SD) of one run's best FID: the sampling part is the bootstrap's,
    the seed part the rest of the per-seed variance (nan when that is unknown)."""
    sampling = _sampling_var(row)
    seed = max(noise.variance - sampling, 0.0) if noise.known else math.nan
    return math.sqrt(seed) if not math.isnan(seed) else math.nan, (
        math.sqrt(sampling) if row.sampling_std is not None else math.nan)


def _paired_seeds(a: Row, b: Row) -> list[int]:
    """The seeds two rows are paired over: all of them, when both ran the same 2+ seeds with identical draws.
    Rows whose seed sets differ are not paired: a gap over the shared seeds alone could have the other
    sign than the gap of the means the board is ordered by."""
    same = all(a.streams.get(s) and a.streams.get(s) == b.streams.get(s) for s in a.fids)
    return sorted(a.fids) if set(a.fids) == set(b.fids) and a.n >= 2 and same else []


def compare(a: Row, noise_a: SeedNoise, b: Row, noise_b: SeedNoise) -> Comparison:
    """b's mean best FID minus a's: paired t over shared seeds with identical draws, else Welch t."""
    shared = _paired_seeds(a, b)
    if shared:
        d = np.array([b.fids[s] - a.fids[s] for s in shared])
        # floored at the two FIDs' sampling variances: two seeds that agree by chance are not certainty (where
        # the rows share sampling seeds their sampling errors correlate and the floor is conservative)
        sd, n = math.sqrt(max(float(np.var(d, ddof=1)), _sampling_var(a) + _sampling_var(b))), len(d)
        gap = float(d.mean())
        kind = f"paired over {n} shared seeds"
        if sd == 0:
            return Comparison(gap, gap, gap, 1.0 if gap == 0 else 0.0, kind, 0.0, paired=True)
        half = _t(n - 1) * sd / math.sqrt(n)
        return Comparison(gap, gap - half, gap + half, _p(gap / (sd / math.sqrt(n)), n - 1), kind, sd, paired=True)
    gap = b.mean - a.mean
    if not (noise_a.known and noise_b.known):
        return Comparison(gap, math.nan, math.nan, math.nan, "not tested: a row's seed spread is unknown", math.nan)
    va, vb = noise_a.variance / a.n, noise_b.variance / b.n
    if "borrowed" in (noise_a.source, noise_b.source):
        # a borrowed spread is pooled from the board's measured rows, so it is not independent of theirs (or of
        # another row borrowing it): the test takes the smaller degrees of freedom, not Welch-Satterthwaite's
        df = min(noise_a.df, noise_b.df)
    else:
        parts = [(v, n.df) for v, n in ((va, noise_a), (vb, noise_b)) if v > 0 and not math.isinf(n.df)]
        denominator = sum(v * v / d for v, d in parts)
        df = (va + vb) ** 2 / denominator if denominator > 0 else math.inf
    se = math.sqrt(va + vb)
    sources = sorted({noise_a.source, noise_b.source})
    kind = ("Welch t" if sources == ["measured"] else "t") + f", {a.n} and {b.n} seeds" + (
        "" if sources == ["measured"] else f" ({' and '.join(sources)} spread)")
    sd = math.sqrt((noise_a.variance + noise_b.variance) / 2)
    if se == 0:
        return Comparison(gap, gap, gap, 1.0 if gap == 0 else 0.0, kind, 0.0)
    half = _t(df) * se
    return Comparison(gap, gap - half, gap + half, _p(gap / se, df), kind, sd)


def holm(pvalues: list[float], alpha: float = ALPHA) -> list[bool]:
    """Which hypotheses Holm's step-down rejects: the k-th smallest p against alpha / (m - k + 1), stopping
    at the first that fails. The chance of any false rejection is at most alpha."""
    order = sorted(range(len(pvalues)), key=lambda i: pvalues[i])
    rejected = [False] * len(pvalues)
    for k, i in enumerate(order):
        if pvalues[i] > alpha / (len(pvalues) - k):
            break
        rejected[i] = True
    return rejected


@dataclass
class Verdict:
    rank: int  # 1 + the rows separated from this one and ahead of it
    rank_high: int  # (rows) - the rows separated from this one and behind it
    ahead_of: list[str]
    behind: list[str]
    tied_with: list[str]  # tested and not separated
    untested: list[str]  # no test possible (a seed spread unknown)

    @property
    def rank_text(self) -> str:
        return str(self.rank) if self.rank == self.rank_high else f"{self.rank}–{self.rank_high}"

    @property
    def text(self) -> str:
        """e.g. "behind standard; tied with no_attn, adm; ahead of 2"."""
        def names(label, items, most=3):
            return f"{label} {', '.join(items) if len(items) <= most else f'{len(items)} rows'}" if items else ""

        parts = [names("behind", self.behind), names("tied with", self.tied_with),
                 names("ahead of", self.ahead_of), names("not tested against", self.untested)]
        return "; ".join(p for p in parts if p) or "alone on the board"


@dataclass
class Judgement:
    """A board's statistics: per row its noise, interval and verdict; per pair its comparison and decision."""

    rows: list[Row]
    noises: list[SeedNoise]
    intervals: list[Interval]
    comparisons: dict[tuple[int, int], Comparison]  # (i, j), i < j: row j minus row i
    separated: set[tuple[int, int]]  # pairs Holm rejects
    verdicts: list[Verdict]


def judge(rows: list[Row], seed_cv: float | None = None) -> Judgement:
    """Every statistic of one board. ``rows`` are in the board's order (by mean best FID)."""
    pool = pooled_relative_variance(rows)
    noises = [seed_noise(r, pool, seed_cv) for r in rows]
    intervals = [mean_interval(r, n) for r, n in zip(rows, noises)]
    comparisons = {(i, j): compare(rows[i], noises[i], rows[j], noises[j])
                   for i in range(len(rows)) for j in range(i + 1, len(rows))}
    tested = [pair for pair, c in comparisons.items() if c.known]
    separated = {pair for pair, yes in zip(tested, holm([comparisons[p].p for p in tested])) if yes}
    verdicts = []
    for i in range(len(rows)):
        ahead, behind, tied, untested = [], [], [], []
        for j in range(len(rows)):
            if j == i:
                continue
            pair = (min(i, j), max(i, j))
            c = comparisons[pair]
            if not c.known:
                untested.append(rows[j].name)
            elif pair not in separated:
                tied.append(rows[j].name)
            elif (c.gap > 0) == (j > i):  # row j is worse than row i
                ahead.append(rows[j].name)
            else:
                behind.append(rows[j].name)
        verdicts.append(Verdict(1 + len(behind), len(rows) - len(ahead), ahead, behind, tied, untested))
    return Judgement(rows, noises, intervals, comparisons, separated, verdicts)


def power(n: int, gap: float, sd: float, paired: bool, alpha: float = ALPHA) -> float:
    """The chance a two-sided t test at ``alpha`` separates a true gap with n seeds per row. On a board of m
    pairs, power at alpha / m is a lower bound on the power under Holm: a p-value below alpha / m is
    rejected at whatever step it comes (every smaller one is below its own threshold too)."""
    df = n - 1 if paired else 2 * n - 2
    se = sd / math.sqrt(n) if paired else sd * math.sqrt(2 / n)
    crit = float(stats.t.ppf(1 - alpha / 2, df))
    ncp = abs(gap) / se
    value = float(stats.nct.sf(crit, df, ncp) + stats.nct.cdf(-crit, df, ncp))
    if not math.isfinite(value):  # scipy's nct fails far in the tail (ncp ~ 30): the normal limit is exact there
        value = float(stats.norm.sf(crit - ncp) + stats.norm.cdf(-crit - ncp))
    return value


def seeds_for_power(gap: float, sd: float, paired: bool, target: float = POWER, limit: int = 1000,
                    pairs: int = 1) -> int | None:
    """The least seeds per row that give ``target`` power to separate ``gap`` at a per-seed SD ``sd`` (of
    paired differences when ``paired``) on a board of ``pairs`` tested pairs (at alpha / pairs: see power);
    None when no spread is known or the gap is 0, limit + 1 past ``limit``."""
    alpha = ALPHA / max(pairs, 1)
    if sd is None or math.isnan(sd) or gap == 0 or math.isnan(gap):
        return None
    if sd == 0:
        return 2
    low, high = 2, limit + 1
    if power(limit, gap, sd, paired, alpha) < target:
        return limit + 1
    while low < high:  # power grows with n: the least n that reaches the target
        middle = (low + high) // 2
        if power(middle, gap, sd, paired, alpha) >= target:
            high = middle
        else:
            low = middle + 1
    return low
