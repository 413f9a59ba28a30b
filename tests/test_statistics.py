"""The report's statistics on simulated boards whose truth is known.

Each board is drawn from the model the report assumes: a run's best FID is its architecture's true mean
plus a training-seed effect plus FID sampling noise (SD 0.3, the seed effect 5x that, as the field
measures seed variation at several times the sampling variation). Paired boards share each seed's effect
across architectures (the same seed draws the same batches and noise: equal streams), plus a smaller
architecture-specific part. The boards run through noise.judge, the function tables.leaderboards calls,
and one scenario through the whole report path (groups -> leaderboards). Fixed seeds: the rates are the
same on every run, and printed at the end of the test output ("measured by the tests").
"""
import math
import warnings

import numpy as np
import pandas as pd
import pytest

from harness.report import noise

SAMPLING_SD, SEED_SD, MEAN = 0.3, 1.5, 60.0  # seed SD = 5 x sampling SD; seed CV 2.5%
BOARDS = 1000


def draw_board(rng, means, seeds, paired=False, shared_share=0.8) -> list[noise.Row]:
    """Rows of a board: ``means[i]`` the truth of architecture i, ``seeds[i]`` how many seeds it ran."""
    effects = rng.normal(0, SEED_SD * math.sqrt(shared_share), max(seeds))  # what a seed does to every arch
    rows = []
    for i, (mu, n) in enumerate(zip(means, seeds)):
        if paired:
            seed_part = effects[:n] + rng.normal(0, SEED_SD * math.sqrt(1 - shared_share), n)
        else:
            seed_part = rng.normal(0, SEED_SD, n)
        fids = mu + seed_part + rng.normal(0, SAMPLING_SD, n)
        streams = {s: (f"stream{s}" if paired else f"arch{i}-stream{s}") for s in range(n)}
        rows.append(noise.Row(f"arch{i}", {s: float(f) for s, f in enumerate(fids)}, streams, SAMPLING_SD))
    order = sorted(range(len(rows)), key=lambda i: rows[i].mean)  # a board is ordered by mean best FID
    return [rows[i] for i in order], [means[i] for i in order]


def separation_rate(means, seeds, paired=False, seed_cv=None, seed=0) -> float:
    rng = np.random.default_rng(seed)
    claims = 0
    for _ in range(BOARDS):
        rows, _ = draw_board(rng, means, seeds, paired)
        claims += bool(noise.judge(rows, seed_cv).separated)
    return claims / BOARDS


@pytest.mark.parametrize("case, seeds, paired, seed_cv", [
    ("1 seed each, spread unknown", [1] * 5, False, None),
    ("1 seed each, seed CV assumed 2.5%", [1] * 5, False, SEED_SD / MEAN),
    ("2 seeds against 1", [2, 1], False, None),
    ("2,1,2,1 seeds (1-seed rows borrow)", [2, 1, 2, 1], False, None),
    ("3 seeds each, unpaired", [3] * 5, False, None),
    ("3 seeds each, paired", [3] * 5, True, None),
    ("5 seeds each, paired", [5] * 8, True, None),
])
def test_with_equal_truth_few_boards_claim_a_separation(case, seeds, paired, seed_cv,
                                                                        record_property):
    rate = separation_rate([MEAN] * len(seeds), seeds, paired, seed_cv)
    record_property("measured", f"equal truth, {case}: {rate:.1%} of {BOARDS} boards claim a separation")
    # Holm keeps it at 5% under the model; 7.5% is 3.5 standard errors of a 1,000-board rate above that
    assert rate <= 0.075, f"{case}: {rate:.1%} of boards separate architectures that are equal"
    if case.startswith("1 seed each, spread unknown"):
        assert rate == 0.0  # nothing to test against: nothing is separated


def test_a_row_interval_covers_the_true_mean_where_seeds_are_measured_or_borrowed(record_property):
    rng = np.random.default_rng(1)
    covered = {"measured": [0, 0], "borrowed": [0, 0], "assumed": [0, 0]}
    for paired in (False, True):
        for _ in range(BOARDS):
            rows, truth = draw_board(rng, [MEAN, MEAN + 2, MEAN + 4, MEAN + 6], [2, 3, 5, 1], paired)
            judged = noise.judge(rows)
            for interval, source, mu in zip(judged.intervals, (n.source for n in judged.noises), truth):
                covered[source][0] += interval.low <= mu <= interval.high
                covered[source][1] += 1
    rng = np.random.default_rng(2)
    for _ in range(BOARDS):
        rows, truth = draw_board(rng, [MEAN, MEAN + 3], [1, 1])
        judged = noise.judge(rows, seed_cv=SEED_SD / MEAN)
        for interval, mu in zip(judged.intervals, truth):
            covered["assumed"][0] += interval.low <= mu <= interval.high
            covered["assumed"][1] += 1
    rates = {k: hit / total for k, (hit, total) in covered.items()}
    record_property("measured", "coverage of the true mean by 95% row intervals: " + ", ".join(
        f"{k} {v:.1%}" for k, v in rates.items()))
    assert rates["measured"] >= 0.90 and rates["borrowed"] >= 0.90 and rates["assumed"] >= 0.90, rates


@pytest.mark.parametrize("paired", [False, True])
def test_gaps_of_three_seed_sds_with_five_seeds_are_separated_on_nearly_every_board(paired, record_property):
    rng = np.random.default_rng(3)
    found = 0
    for _ in range(BOARDS):
        rows, truth = draw_board(rng, [MEAN, MEAN + 3 * SEED_SD], [5, 5], paired)
        found += bool(noise.judge(rows).separated)
    rate = found / BOARDS
    three = np.random.default_rng(4)
    every_pair = 0
    for _ in range(BOARDS):  # three architectures 3 seed-SDs apart: all three pairs under Holm
        rows, truth = draw_board(three, [MEAN, MEAN + 3 * SEED_SD, MEAN + 6 * SEED_SD], [5, 5, 5], paired)
        every_pair += len(noise.judge(rows).separated) == 3
    record_property("measured", f"power, gap 3 seed-SDs, 5 seeds each, {'paired' if paired else 'unpaired'}: "
                                f"{rate:.1%} of 2-row boards separate it; {every_pair / BOARDS:.1%} of 3-row boards "
                                f"separate all 3 pairs")
    assert rate >= 0.90 and every_pair / BOARDS >= 0.80


def test_a_tie_never_chains_and_a_rank_claims_only_what_holm_supports():
    # A~B and B~C within noise, A vs C far apart: A and B rank 1, C ranks 2 (only A is separated ahead of it)
    rows = [noise.Row(name, {0: mu - 1, 1: mu + 1, 2: mu}, {}, 0.1) for name, mu in (("A", 60), ("B", 62), ("C", 64))]
    judged = noise.judge(rows)
    assert judged.separated == {(0, 2)}
    assert [(v.rank, v.rank_high) for v in judged.verdicts] == [(1, 2), (1, 3), (2, 3)]
    assert judged.verdicts[2].behind == ["A"] and judged.verdicts[2].tied_with == ["B"]
    # Holm: three pairs, the smallest p faces 0.05/3
    assert noise.holm([0.02, 0.04, 0.5]) == [False, False, False]
    assert noise.holm([0.01, 0.04, 0.5]) == [True, False, False]
    assert noise.holm([0.01, 0.02, 0.04]) == [True, True, True]


def test_two_seeds_against_one_uses_t_with_its_degrees_of_freedom_not_z():
    # the case: rows {10, 14} against {20} with sampling SD 0.3; the 1-seed row borrows the pooled
    # spread as a CV (variance 8 at mean 12, 1 df) scaled to its FID of 20: the gap's interval is t(1) wide
    a, b = noise.Row("a", {0: 10.0, 1: 14.0}, {}, 0.3), noise.Row("b", {2: 20.0}, {}, 0.3)
    judged = noise.judge([a, b])
    c = judged.comparisons[0, 1]
    half = 12.706 * math.sqrt(8 / 2 + 8 * (20 / 12) ** 2 / 1)
    assert c.gap == 8.0 and c.low == pytest.approx(8 - half, abs=0.01) and c.high == pytest.approx(8 + half, abs=0.01)
    assert not judged.separated and judged.noises[1].source == "borrowed"
    # the row's own interval: t(1) over its 2 seeds, (-13.4, 37.4)
    assert judged.intervals[0].low == pytest.approx(-13.41, abs=0.01)


def test_the_seeds_needed_give_eighty_percent_power_when_simulated(record_property):
    gap, sd = 2.0, 1.5
    n = noise.seeds_for_power(gap, sd, paired=False)
    assert noise.power(n, gap, sd, False) >= 0.80 > noise.power(n - 1, gap, sd, False)
    rng = np.random.default_rng(5)
    hits = 0
    for _ in range(BOARDS):  # the claim checked on data: n seeds of each row separate the gap 80% of the time
        a, b = rng.normal(MEAN, sd, n), rng.normal(MEAN + gap, sd, n)
        rows = [noise.Row("a", dict(enumerate(a))), noise.Row("b", dict(enumerate(b, start=n)))]
        hits += bool(noise.judge(rows).separated)
    record_property("measured", f"seeds for 80% power at gap {gap} / seed SD {sd}: {n} each; simulated power "
                                f"{hits / BOARDS:.1%}")
    assert 0.74 <= hits / BOARDS <= 0.90
    assert noise.seeds_for_power(gap, math.nan, False) is None and noise.seeds_for_power(0.0, sd, False) is None
    assert noise.seeds_for_power(gap, sd, True) < n  # the same SD of paired differences needs fewer


def test_a_simulated_board_through_the_whole_report_path_ranks_as_noise_judge_does():
    from harness.report import tables

    rng = np.random.default_rng(6)
    rows, _ = draw_board(rng, [MEAN, MEAN, MEAN + 20, MEAN + 20.5], [3, 3, 3, 1])
    runs = []
    for row in rows:
        for seed, fid in row.fids.items():
            runs.append({**{c: np.nan for c in SIM_COLUMNS}, "task": "sim", "task_version": 1, "tier": "t",
                         "arch": row.name, "arch_sha256": "0" * 12, "variant": "", "settings_key": "{}",
                         "conditions": "c", "seed": seed, "status": "completed", "best_fid": fid,
                         "best_fid_sampling_std": SAMPLING_SD, "stream": row.streams[seed], "device": "cpu",
                         "exact_protocol": False, "reference_results": "null", "arch_file": f"{row.name}.py"})
    (board,) = tables.leaderboards(tables.groups(pd.DataFrame(runs))).values()
    judged = noise.judge(rows)
    assert list(board["arch"]) == [r.name for r in rows]
    assert list(board["rank"]) == [v.rank for v in judged.verdicts]
    assert list(board["ci_low"]) == pytest.approx([i.low for i in judged.intervals])
    assert [s for n, s in zip(board["seeds"], board["noise_source"]) if n == 1] == ["borrowed"]
    assert (board["rank"] <= 2).sum() == 2 and set(board["rank"].iloc[2:]) == {3}


SIM_COLUMNS = ["step", "steps", "best_step", "final_fid", "final_kid", "early_fid", "params", "gmacs", "gflops",
               "train_img_s", "train_mfu", "sample_img_s", "fid_samples"]


def proxy_measures(rng, proxy_of, archs=5, seeds=3):
    """Measures as fidelity.collect_measures returns them: arch -> seed -> (FID, cost), for a target with
    seed noise larger than some gaps and a proxy made from each run's target value by ``proxy_of``."""
    truth = np.linspace(40, 80, archs)
    target = {f"a{i}": {s: (float(mu + rng.normal(0, 8)), 100.0) for s in range(seeds)} for i, mu in enumerate(truth)}
    proxy = {a: {s: (proxy_of(v[0]), 30.0) for s, v in runs.items()} for a, runs in target.items()}
    return proxy, target


@pytest.mark.parametrize("name, proxy_of, expected", [("perfect", lambda y: y + 40, 1.0),
                                                      ("reversed", lambda y: 500 - y, -1.0)])
def test_a_perfect_proxy_gets_the_interval_plus_one_and_a_reversed_one_minus_one(name, proxy_of, expected,
                                                                                 record_property):
    from harness.report import fidelity

    proxy, target = proxy_measures(np.random.default_rng(7), proxy_of)
    archs = sorted(target)
    (tau_low, tau_high), (rho_low, rho_high), dropped = fidelity.bootstrap(proxy, target, archs, True,
                                                                           np.random.default_rng(0))
    record_property("measured", f"proxy fidelity, {name} proxy of 5 architectures x 3 noisy seeds: tau interval "
                                f"[{tau_low:+.2f}, {tau_high:+.2f}] ({dropped} of {fidelity.RESAMPLES} resamples "
                                f"dropped)")
    assert [tau_low, tau_high, rho_low, rho_high] == pytest.approx([expected] * 4, abs=1e-12)
    assert dropped < fidelity.RESAMPLES * 0.01


def test_the_bootstraps_tau_and_rho_are_scipys_ties_included_and_exactly_one_for_one_order():
    """The bootstrap's batched tau and rho (fidelity.kendall_tau_b, spearman_rho) against scipy.stats.kendalltau
    and spearmanr one row at a time, on rows with many ties (a resample draws an architecture several times) and
    constant rows (nan in both); rows in one order give exactly +1, also through the whole bootstrap."""
    from scipy.stats import kendalltau, rankdata, spearmanr

    from harness.report import fidelity

    rng = np.random.default_rng(3)
    x, y = rng.integers(0, 4, (3000, 6)).astype(float), rng.integers(0, 4, (3000, 6)).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy's own warning for its constant rows
        ours = [fidelity.kendall_tau_b(x, y), fidelity.spearman_rho(rankdata(x, axis=1), rankdata(y, axis=1))]
        theirs = [np.array([kendalltau(a, b).statistic for a, b in zip(x, y)]),
                  np.array([spearmanr(a, b).statistic for a, b in zip(x, y)])]
    for mine, scipys in zip(ours, theirs):
        assert np.isnan(scipys).sum() > 0 and np.array_equal(np.isnan(mine), np.isnan(scipys))
        assert np.allclose(mine, scipys, atol=1e-14, equal_nan=True)
    same = np.array([[3.0, 1, 2], [1, 1, 2], [1, 1, 2], [5, 2, 9]])  # pearsonr of these ranks gives 1 - 2e-16
    assert (fidelity.kendall_tau_b(same, same + 4) == 1.0).all()
    assert (fidelity.spearman_rho(rankdata(same, axis=1), rankdata(same, axis=1)) == 1.0).all()
    for archs in (4, 6):
        for paired in (True, False):
            proxy, target = proxy_measures(np.random.default_rng(7), lambda v: v + 40, archs=archs)
            tau, rho, _ = fidelity.bootstrap(proxy, target, sorted(target), paired, np.random.default_rng(0))
            assert max(tau) == max(rho) == 1.0 and (not paired or min(tau) == min(rho) == 1.0), (archs, paired)


def test_the_fidelity_section_says_why_it_is_empty_when_no_measures_share_three_architectures():
    from harness.report import fidelity

    measures = {fidelity.Measure(("t", 1, "smoke", "", "c", "{}"), "smoke", None): {
                    a: {0: (50.0 + i, 10.0)} for i, a in enumerate(["a", "b", "c", "d"])},
                fidelity.Measure(("t", 1, "small", "", "c", "{}"), "small", None): {
                    a: {0: (40.0 + i, 90.0)} for i, a in enumerate(["a", "b"])}}
    assert fidelity.pairs(measures) == []
    (line,) = fidelity.explain_missing(measures)
    assert "small: best FID (2 architecture(s)) and smoke: best FID (4) share 2 (a, b)" in line
    assert "fewer than the 3 a comparison needs" in line and "promotes 3 or more" in line
    # an earlier evaluation of the smoke runs is a proxy of their best FID: that pair is compared, the tiers still
    # are not, and the section says so for them
    measures[fidelity.Measure(("t", 1, "smoke", "", "c", "{}"), "smoke", 5)] = {
        a: {0: (70.0 + i, 5.0)} for i, a in enumerate(["a", "b", "c", "d"])}
    assert len(fidelity.pairs(measures)) == 1 and len(fidelity.explain_missing(measures)) == 1


def test_pairing_is_used_where_seeds_share_their_draws(record_property):
    """Boards whose seeds share their effect across architectures: the paired test separates a gap of one
    seed-SD with 4 seeds far more often than the same FIDs compared unpaired (their streams made distinct)."""
    rng = np.random.default_rng(8)
    paired = unpaired = 0
    for _ in range(BOARDS):
        rows, _ = draw_board(rng, [MEAN, MEAN + SEED_SD], [4, 4], paired=True, shared_share=0.9)
        apart = [noise.Row(r.name, r.fids, {s: f"{r.name}-{s}" for s in r.fids}, r.sampling_std) for r in rows]
        paired += bool(noise.judge(rows).separated)
        unpaired += bool(noise.judge(apart).separated)
    record_property("measured", f"gap of 1 seed-SD, 4 shared seeds: paired separates {paired / BOARDS:.1%} of boards, "
                                f"the same FIDs unpaired {unpaired / BOARDS:.1%}")
    assert paired / BOARDS > unpaired / BOARDS + 0.3


def test_rows_with_other_seed_sets_are_not_paired_so_a_gap_keeps_the_sign_of_the_means():
    # A's mean is lower only through a seed B did not run: pairing over the shared three would reverse it
    a = noise.Row("A", {1: 10.0, 2: 10.0, 3: 10.1, 4: 3.0}, {1: "x", 2: "x", 3: "x", 4: "y"}, 0.01)
    b = noise.Row("B", {1: 9.0, 2: 9.01, 3: 9.02}, {1: "x", 2: "x", 3: "x"}, 0.01)
    judged = noise.judge([a, b])
    c = judged.comparisons[0, 1]
    assert not c.paired and c.gap == pytest.approx(b.mean - a.mean) and c.gap > 0
    assert judged.verdicts[0].behind == [] and judged.verdicts[1].ahead_of == []


def test_no_per_seed_variance_is_below_the_fid_sampling_variance():
    # two seeds that happen to agree exactly: the row still varies by its sampling noise, so nothing separates
    rows = [noise.Row("a", {0: 10.0, 1: 10.0}, {}, 0.3), noise.Row("b", {2: 10.1}, {}, 0.3),
            noise.Row("c", {3: 10.2}, {}, 0.3)]
    judged = noise.judge(rows)
    assert not judged.separated and judged.noises[0].variance == pytest.approx(0.09)
    assert noise.variance_split(rows[0], judged.noises[0]) == pytest.approx((0.0, 0.3))


def test_seeds_sized_for_a_board_of_many_pairs_keep_their_power_under_holm(record_property):
    """Five rows, the top two 2 apart at seed SD 1.5 and the rest close behind: the seeds sized at the board's
    10 pairs separate the top pair on at least 80% of boards (power at alpha / 10 bounds Holm's from below)."""
    gap, sd = 2.0, 1.5
    n = noise.seeds_for_power(gap, sd, paired=False, pairs=10)
    assert n > noise.seeds_for_power(gap, sd, paired=False)
    rng = np.random.default_rng(9)
    hits = 0
    for _ in range(400):
        rows = [noise.Row(f"r{i}", {s + 100 * i: float(v) for s, v in enumerate(rng.normal(mu, sd, n))})
                for i, mu in enumerate([MEAN, MEAN + gap, MEAN + gap + 0.5, MEAN + gap + 1, MEAN + gap + 1.5])]
        judged = noise.judge(rows)
        first, second = (next(i for i, r in enumerate(judged.rows) if r.name == name) for name in ("r0", "r1"))
        hits += (min(first, second), max(first, second)) in judged.separated
    record_property("measured", f"seeds for 80% power at gap {gap} / seed SD {sd} on a 5-row board (10 pairs): {n} "
                                f"each; top pair separated on {hits / 400:.1%} of boards")
    assert hits / 400 >= 0.78
