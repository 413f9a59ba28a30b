"""The report's sampler view on records whose truth is known: a grid point that keeps the protocol's order
agrees at tau +1 with an interval of [+1, +1], a reversed one at -1; the area under FID against log-steps
is the trapezoid by hand; two scheduler settings under one key are two points, never one average."""
import numpy as np
import pandas as pd
import pytest

from harness.report.samplers import grid_rows, sampler_view

ARGS = {"scheduler": "X", "steps": 0, "arguments": {"a": 1}}


def records_of(fids: dict, other_args: bool = False):
    """fids: arch -> seed -> {"ddim:50": protocol FID, "ddim:10": ..., ...}: runs and records as load_runs gives."""
    runs, records = [], {}
    for arch, by_seed in fids.items():
        for seed, points in by_seed.items():
            path = f"{arch}/{seed}/record.json"
            samplers = {k: {"fid": v, "sampler": ARGS} for k, v in points.items() if k != "ddim:50"}
            if other_args:
                samplers["unipc:20"]["sampler"] = {**ARGS, "arguments": {"a": 2}}
            records[path] = {"config": {"sampling": {"sampler": "ddim", "steps": 50}},
                             "evaluations": [{"step": 4, "fid": points["ddim:50"] + 9.0},  # an earlier, worse one
                                             {"step": 8, "fid": points["ddim:50"], "samplers": samplers}]}
            runs.append({"task": "t", "tier": "s", "arch": arch, "seed": seed, "record": path})
    return pd.DataFrame(runs), records


def truth(shift=0.0, reverse=False, seeds=(1, 2, 3)):
    """Four architectures 10 FID apart, seed noise of 0.5: the protocol's order is a < b < c < d. unipc:20 is
    each run's protocol FID plus a constant (the same order in every resample) or its mirror (the reverse)."""
    rng = np.random.default_rng(0)
    out = {}
    for i, arch in enumerate("abcd"):
        out[arch] = {}
        for seed in seeds:
            protocol = 100 + 10 * i + rng.normal(0, 0.5)
            out[arch][seed] = {"ddim:50": protocol, "ddim:10": protocol + 30.0, "ddim:20": protocol + 12.0,
                               "unipc:20": 400 - protocol if reverse else protocol + shift}
    return out


def test_a_point_that_keeps_the_order_agrees_at_plus_one_and_a_reversed_one_at_minus_one():
    view = sampler_view(*records_of(truth(shift=5.0, reverse=False)))
    assert view.points == ["ddim:50", "ddim:10", "ddim:20", "unipc:20"]  # the protocol's first, then by sampler
    assert list(view.fids.index) == ["a", "b", "c", "d"] and list(view.ranks["unipc:20"]) == ["1", "2", "3", "4"]
    row = view.agreement.set_index("point").loc["unipc:20"]
    assert row["kendall_tau"] == 1.0 and (row["tau_low"], row["tau_high"]) == (1.0, 1.0)
    reversed_view = sampler_view(*records_of(truth(reverse=True)))
    row = reversed_view.agreement.set_index("point").loc["unipc:20"]
    assert row["kendall_tau"] == -1.0 and (row["tau_low"], row["tau_high"]) == (-1.0, -1.0)
    assert list(reversed_view.ranks["unipc:20"]) == ["4", "3", "2", "1"]


def test_the_area_under_fid_against_log_steps_is_the_trapezoid_over_the_log_range():
    view = sampler_view(*records_of(truth()))
    fids = view.fids.loc["a"]
    x = np.log10([10, 20, 50])
    y = [fids["ddim:10"], fids["ddim:20"], fids["ddim:50"]]
    by_hand = sum((x[i + 1] - x[i]) * (y[i] + y[i + 1]) / 2 for i in range(2)) / (x[-1] - x[0])
    assert view.areas.loc["a", "ddim 10-50 steps: mean"] == pytest.approx(by_hand)
    assert view.areas.loc["a", "ddim 10-50 steps: loss"] == pytest.approx(y[0] - y[2])
    assert list(view.areas.columns) == ["ddim 10-50 steps: mean", "ddim 10-50 steps: loss"]  # unipc: one count


def test_other_scheduler_settings_under_one_key_are_another_point():
    runs, records = records_of(truth())
    other_runs, other_records = records_of({"e": truth()["a"]}, other_args=True)
    view = sampler_view(pd.concat([runs, other_runs], ignore_index=True), {**records, **other_records})
    assert "unipc:20 #2" in view.points
    assert view.fids.loc["e", "unipc:20 #2"] == pytest.approx(np.mean([v["unipc:20"] for v in truth()["a"].values()]))
    assert pd.isna(view.fids.loc["e", "unipc:20"]) and pd.isna(view.fids.loc["a", "unipc:20 #2"])


def test_the_grid_table_holds_every_result_and_the_protocols_beside_them():
    runs, records = records_of(truth())
    rows = grid_rows(runs, records)
    assert len(rows) == 4 * 3 * 4 and set(rows["step"]) == {8}  # only the evaluation that has a grid
    protocol = rows[rows["point"] == "ddim:50"]
    assert (protocol["arguments"] == "protocol").all() and len(protocol) == 12
    assert sampler_view(runs.iloc[:0], records) is None


def test_two_architectures_a_point_cannot_tell_apart_share_a_rank_range():
    """Equal truth at a point (the same FIDs up to seed noise): no order is claimed there, as on a leaderboard."""
    fids = truth()
    for seed, value in fids["b"].items():
        value["unipc:20"] = fids["a"][seed]["unipc:20"] + np.random.default_rng(seed).normal(0, 1.0)
    view = sampler_view(*records_of(fids))
    assert list(view.ranks.loc[["a", "b"], "unipc:20"]) == ["1–2", "1–2"]
    assert list(view.ranks.loc[["c", "d"], "unipc:20"]) == ["3", "4"]


def test_only_each_runs_last_evaluation_counts_and_two_versions_of_an_architecture_stay_apart():
    """The view compares runs at the same weights: a run whose last evaluation has no grid (a grid computed at
    an earlier step only) gives no point; two files of one name are two rows, named by their hash."""
    runs, records = records_of(truth())
    runs["arch_sha256"] = ["1111aaaa2222" if arch == "a" and seed == 1 else f"{arch}sha" for arch, seed in
                           zip(runs["arch"], runs["seed"])]
    view = sampler_view(runs, records)
    assert set(view.fids.index) == {"a (1111aaaa)", "a (asha)", "b", "c", "d"}
    assert view.seeds["unipc:20"]["a (1111aaaa)"].keys() == {1} and view.seeds["unipc:20"]["a (asha)"].keys() == {2, 3}
    later = records["b/1/record.json"]["evaluations"]
    later.append({"step": 12, "fid": 1.0})  # trained on past the grid: its last evaluation has none
    view = sampler_view(runs, records)
    assert 1 not in view.seeds["unipc:20"]["b"]
