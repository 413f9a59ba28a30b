"""Successive halving across tiers: the promotion rule on real Optuna studies (SQLite files), without
Ray; tests/test_search.py runs a whole 3-tier search on Ray."""
import optuna
import pytest
from conftest import TINY_ARCH

from harness.errors import HarnessError
from harness.search.driver import SearchSpec, rung_settings
from harness.search.rungs import Ladder, planned, promotions, ranked
from harness.search.study import open_storage, storage_url

# A space of tiny denoisers whose one choice is the width; a width of 8 cannot be built where the
# tier's first width is above 32 (small, medium), as a space that depends on the tier's widths would.
SPACE = TINY_ARCH + '''

def suggest(trial):
    return {"channels": trial.suggest_int("channels", 1, 12)}


def infeasible(choices, block_out_channels):
    if choices["channels"] == 8 and block_out_channels[0] > 32:
        return "8 channels only at widths up to 32"
    return None


def build(choices, block_out_channels, device="cpu"):
    return Tiny(choices["channels"]).to(device)
'''
CHANNELS = optuna.distributions.IntDistribution(1, 12)


def completed(values, channels, state="COMPLETE"):
    """A finished trial as the search's driver leaves it: its params, and its choices stored beside them."""
    values = [values] if isinstance(values, (int, float)) else values
    kwargs = {"values": values} if state == "COMPLETE" else {}
    return optuna.trial.create_trial(params={"channels": channels}, distributions={"channels": CHANNELS},
                                     state=optuna.trial.TrialState[state],
                                     user_attrs={"choices": {"channels": channels}}, **kwargs)


def ladder(tmp_path, tiers, reduction=3, trials=9, objectives="fid"):
    space = tmp_path / "space.py"
    space.write_text(SPACE)
    spec = SearchSpec(task="shapes", tier=tiers, trials=trials, study="sh", space=str(space), results_dir=tmp_path,
                      reduction=reduction, objectives=objectives)
    rungs = Ladder(rung_settings(spec), reduction, trials)
    return rungs, rungs.settings[0].space, open_storage(storage_url(None, tmp_path, "sh"))


def test_a_rung_promotes_its_top_third_of_finished_distinct_points_best_first():
    # 7 finished points (one run twice, one pruned, one failed): 7 // 3 = 2 promoted, the two best
    # completed; the duplicate counts once and keeps its better value
    source = [completed(50.0, 1), completed(40.0, 2), completed(45.0, 2), completed(30.0, 3),
              completed(None, 4, "PRUNED"), completed(None, 5, "FAIL"), completed(60.0, 6), completed(70.0, 7),
              completed(None, 9, "RUNNING")]
    for number, trial in enumerate(source):
        trial.number = number
    found = promotions(source, [], reduction=3)
    assert [t.params["channels"] for t, _ in found] == [3, 2]
    assert [why for _, why in found] == [{"rank": 1, "finished": 7, "quota": 2},
                                          {"rank": 2, "finished": 7, "quota": 2}]
    assert found[1][0].number == 1  # channels 2's better trial (40 against 45)
    # a point the next rung holds (in any state) is not promoted again; the next one is not either
    # (it is not among the top 2)
    assert promotions(source, [completed(None, 3, "RUNNING")], reduction=3) == [found[1]]
    assert planned(27, 3, 3) == [27, 9, 3] and planned(10, 3, 2) == [10, 5, 2]


def test_two_objectives_promote_by_non_dominated_front_then_fid():
    # (FID, GFLOPs) of the points with channels c: the first front is c=1 (10, 9), c=2 (20, 1) and
    # c=3 (15, 5); then c=4 (30, 8), which c=3 dominates; then c=5 (40, 9), which c=4 dominates
    source = [completed(v, c) for v, c in (([30, 8], 4), ([10, 9], 1), ([40, 9], 5), ([20, 1], 2), ([15, 5], 3))]
    for number, trial in enumerate(source):
        trial.number = number
    assert [t.params["channels"] for t in ranked(source)] == [1, 3, 2, 4, 5]


def test_a_one_tier_study_given_more_tiers_promotes_its_finished_trials_once(tmp_path):
    rungs, space, storage = ladder(tmp_path, "smoke")
    first = rungs.open(storage)
    for value, channels in ((50.0, 1), (20.0, 8), (40.0, 3), (30.0, 4), (60.0, 5), (70.0, 6)):
        first.add_trial(completed(value, channels))
    assert not optuna.get_all_study_names(storage)[1:]  # one tier: no second rung's study is made

    rungs, space, storage = ladder(tmp_path, "smoke,small")
    rungs.open(storage)
    said = []
    rung, trial, choices = rungs.next_promotion(space, said.append)
    # 6 // 3 = 2 promoted: channels 8 (FID 20) cannot be built at small's widths, so it is recorded
    # there as FAIL and channels 4 (FID 30) is the first to run; 3 (FID 40) is third and stays
    assert rung == 1 and choices == {"channels": 4} and trial.user_attrs["source_trial"] == 3
    assert trial.user_attrs["promotion"] == {"rank": 2, "finished": 6, "quota": 2}
    assert said == ["skipped    promotion of trial 1 to tier small: 8 channels only at widths up to 32"]
    assert rungs.next_promotion(space, said.append) is None
    second = optuna.load_study(study_name="sh.small", storage=storage)
    assert [(t.params, t.state.name, t.user_attrs.get("infeasible")) for t in second.trials] == [
        ({"channels": 8}, "FAIL", True), ({"channels": 4}, "RUNNING", None)]
    assert rungs.left() == {"smoke": 3, "small": 3}  # planned 9 and 3, less those finished
    # a driver killed after enqueuing a promotion, before starting it: the next one starts that trial
    second.enqueue_trial({"channels": 3}, user_attrs={"source_trial": 2, "origin_trial": 2})
    rungs, space, storage = ladder(tmp_path, "smoke,small")
    rungs.open(storage)
    rung, trial, choices = rungs.next_promotion(space, said.append)
    assert choices == {"channels": 3} and trial.number == 2 and len(second.trials) == 3


@pytest.mark.parametrize("tiers, reduction", [("smoke,medium", 3), ("smoke,small", 2)])
def test_a_study_continued_with_other_rungs_is_refused(tmp_path, tiers, reduction):
    rungs, _, storage = ladder(tmp_path, "smoke,small")
    rungs.open(storage)
    rungs, _, storage = ladder(tmp_path, "smoke,small,medium")  # more tiers at the end: allowed
    rungs.open(storage)
    rungs, _, storage = ladder(tmp_path, tiers, reduction)
    with pytest.raises(HarnessError, match="promotes across tiers smoke,small,medium with --reduction 3; this "):
        rungs.open(storage)


def test_a_promoted_tiers_winner_exports_with_the_depth_it_was_chosen_at(tmp_path, capsys):
    """A tier's study lives in the first tier's storage file, and its points keep the first tier's
    depth: exported from `<study>.small`, the file builds at small what the trial's run built."""
    from harness.cli.main import main

    rungs, _, storage = ladder(tmp_path, "smoke,small")
    rungs.open(storage)
    rungs.studies[1].add_trial(completed(30.0, 4))
    code = main(["export", "--study", "sh.small", "--results-dir", str(tmp_path), "--best", "--name", "winner",
                 "--out-dir", str(tmp_path)])
    assert code == 0, capsys.readouterr().err
    text = (tmp_path / "winner.py").read_text()
    # smoke's widths and depth: the trial's run read its file (written at smoke) at small's widths
    assert "SEARCHED_BLOCK_OUT_CHANNELS = (32, 64, 64, 64)" in text and "SEARCHED_LAYERS_PER_BLOCK = 1" in text
    assert "trial 0 of the architecture search 'sh.small'" in text


@pytest.mark.parametrize("objectives", [1, 2])
def test_ranking_a_realistic_rung_keeps_no_point_behind_one_it_dominates(objectives):
    # 300 distinct points: a ranking that recursed into every dominating point without memory would
    # take 2^300 steps with one objective (every pair of FIDs is a domination)
    rng, x = __import__("random").Random(0), optuna.distributions.IntDistribution(0, 299)
    source = [optuna.trial.create_trial(params={"x": n}, distributions={"x": x},
                                        values=[rng.uniform(10, 100) for _ in range(objectives)]) for n in range(300)]
    for number, trial in enumerate(source):
        trial.number = number
    order = [tuple(t.values) for t in ranked(source)]
    assert len(order) == 300
    assert not any(all(b <= a for a, b in zip(order[i], order[j])) for i in range(300) for j in range(i + 1, 300))
    if objectives == 1:
        assert order == sorted(order)


def test_work_left_counts_a_rung_s_running_and_promoted_trials_not_rung_0_s_spare_baselines(tmp_path):
    rungs, _, storage = ladder(tmp_path, "smoke,small", trials=3)
    first = rungs.open(storage)
    for value, channels in ((50.0, 1), (40.0, 3), (30.0, 4)):
        first.add_trial(completed(value, channels))
    first.enqueue_trial({"channels": 5})  # a baseline --trials left unrun
    rungs.studies[1].add_trial(completed(30.0, 4))  # 3 // 3 = 1 promoted: it has run
    assert not rungs.work_left()
    rungs.studies[1].enqueue_trial({"channels": 3})  # a promotion enqueued by a killed driver
    assert rungs.work_left()


def test_a_command_with_fewer_tiers_continues_them_with_a_note_and_too_few_trials_are_refused(tmp_path):
    rungs, _, storage = ladder(tmp_path, "smoke,small", reduction=2)
    rungs.open(storage)
    rungs, _, storage = ladder(tmp_path, "smoke")  # one tier: its (default) reduction is not compared
    rungs.open(storage)
    assert rungs.note == ("note       study sh has the tiers smoke,small; this command runs smoke only "
                          "(pass --tier smoke,small to continue every tier)")
    with pytest.raises(HarnessError, match="--trials 8 with --reduction 3 promotes no point to tier medium: .* at "
                                           "least 9 trials"):
        ladder(tmp_path, "smoke,small,medium", trials=8)


def test_a_resumed_promotion_that_cannot_be_built_is_told_fail_not_run(tmp_path):
    """A driver killed between asking a promoted trial and checking it leaves it RUNNING with its
    parameters fixed; the next driver checks it before running it."""
    import io

    from harness.search.driver import Search

    space = tmp_path / "space.py"
    space.write_text(SPACE)
    search = Search(SearchSpec(task="shapes", tier="smoke,small", trials=3, study="sh", space=str(space),
                               results_dir=tmp_path), stream=io.StringIO())
    first = search.ladder.open(open_storage(search.url))
    for value, channels in ((20.0, 8), (40.0, 3), (30.0, 4)):
        first.add_trial(completed(value, channels))
    second = search.ladder.studies[1]
    second.enqueue_trial({"channels": 8}, user_attrs={"source_trial": 0, "origin_trial": 0})
    second.ask()  # the killed driver's last step
    slot = search._next_slot(search.ladder.studies, search.ladder.running(), [], first_rung=0)
    assert slot is None  # rung 0 has its 3 trials, and the quota of 1 went to the point that cannot be built
    assert [(t.state.name, t.user_attrs.get("infeasible")) for t in second.trials] == [("FAIL", True)]
    assert "skipped    promotion of trial 0 to tier small" in search.stream.getvalue()


def test_a_trial_whose_run_cannot_be_planned_fails_alone_and_the_search_goes_on(tmp_path):
    """The task file broken after the search started: each trial asked is told FAIL with the reason and left
    out of --trials; three in a row stop the search with that reason (not every trial left burnt); once the
    file is mended the same search plans its next trial."""
    import io
    import shutil

    from harness.protocol.tasks import tasks_dir
    from harness.search.driver import MAX_UNPLANNED_IN_A_ROW, Search
    from harness.search.rungs import finished

    space, task = tmp_path / "space.py", tmp_path / "mine.yaml"
    space.write_text(SPACE)
    shutil.copy(tasks_dir() / "shapes.yaml", task)
    shutil.copy(tasks_dir() / "cifar10.yaml", tmp_path)  # the task shapes.yaml builds on
    search = Search(SearchSpec(task=str(task), tier="smoke", trials=2, study="sh", space=str(space),
                               results_dir=tmp_path), stream=io.StringIO())
    search.ladder.open(open_storage(search.url))
    search.slots, search.resumable, search.waiting = {}, [], []
    good = task.read_text()
    task.write_text("name: mine\ntraining: [not, a, mapping]\n")
    with pytest.raises(HarnessError, match=f"{MAX_UNPLANNED_IN_A_ROW} trials in a row could not be planned"):
        search.next_job()
    trials = search.ladder.studies[0].trials
    assert [t.state.name for t in trials] == ["FAIL"] * MAX_UNPLANNED_IN_A_ROW and not finished(trials)
    assert all(t.user_attrs["failure"].startswith("its run could not be planned: ") for t in trials)
    assert all("choices" in t.user_attrs for t in trials)
    assert search.stream.getvalue().count("its run could not be planned") == MAX_UNPLANNED_IN_A_ROW
    task.write_text(good)
    job = search.next_job()  # mended: the next trial is planned, and --trials still has both to give
    assert job is not None and job.key == f"trial{MAX_UNPLANNED_IN_A_ROW}"
