"""Successive halving across tiers: which finished trials of one rung go on to the next tier.

``search --tier smoke,small,medium --reduction 3`` keeps one Optuna study per rung in the same
storage: rung 0 is the study a one-tier search at the first tier would make (``<study>``), rung k
is ``<study>.<tier k>``. A promoted point is enqueued in the next rung's study with its parameters
fixed and ``source_trial`` (the rung below) and ``origin_trial`` (rung 0, whose architecture file
every rung runs) recorded, so ``optuna trials`` reads each rung and a killed driver never promotes
a point twice: what the next rung's study holds is what was promoted.

Promotion is ASHA's rule (Li et al. 2020, "A System for Massively Parallel Hyperparameter
Tuning"): when n distinct points of a rung have finished (completed, pruned or failed), its top
n // reduction completed points are promoted, each as soon as it is among them; nobody waits for
a whole rung. Optuna's SuccessiveHalvingPruner and Ray Tune's ASHA move budget along the steps
of one run; neither moves a point to a wider model in another study, which is why this is here.
"""
from __future__ import annotations

import json

from harness.errors import HarnessError


def parse_tiers(text: str) -> tuple[str, ...]:
    """``smoke,small,medium`` -> the rungs' tiers, in order."""
    tiers = tuple(t.strip() for t in text.split(",") if t.strip())
    if not tiers or len(set(tiers)) != len(tiers):
        raise HarnessError(f"--tier {text!r}: give one tier, or several distinct ones in order, comma-separated "
                           f"(e.g. smoke,small,medium: a search at the first, its best promoted to the next).")
    return tiers


def check_reduction(reduction: int) -> int:
    if reduction < 2:
        raise HarnessError(f"--reduction {reduction}: each rung promotes 1/reduction of its finished points, so it "
                           f"must be at least 2 (3 is the usual: a third goes on).")
    return reduction


def rung_name(base: str, tiers: tuple[str, ...], rung: int) -> str:
    return base if rung == 0 else f"{base}.{tiers[rung]}"


def planned(trials: int, tiers: int, reduction: int) -> list[int]:
    """Points each rung ends with when every promoted run completes: 27, 9, 3."""
    counts = [trials]
    for _ in range(tiers - 1):
        counts.append(counts[-1] // reduction)
    return counts


def check_halving(study, tiers: tuple[str, ...], reduction: int) -> str | None:
    """Record the rungs on rung 0's study; a later command may add tiers, not change them. Returns
    a note when the command leaves out tiers the study has (their trials are not resumed)."""
    stored = study.user_attrs.get("successive_halving")
    if stored:
        old = tuple(stored["tiers"])
        shorter = min(len(old), len(tiers))
        if old[:shorter] != tiers[:shorter] or (len(tiers) > 1 and stored["reduction"] != reduction):
            raise HarnessError(
                f"Study {study.study_name!r} promotes across tiers {','.join(old)} with --reduction "
                f"{stored['reduction']}; this command asks for {','.join(tiers)} with --reduction {reduction}. "
                f"Continue it with the same tiers (more may be added at the end) and reduction, or pass another "
                f"--study.")
        if len(tiers) < len(old):
            return (f"note       study {study.study_name} has the tiers {','.join(old)}; this command runs "
                    f"{','.join(tiers)} only (pass --tier {','.join(old)} to continue every tier)")
        if len(tiers) == len(old):
            return None
    if len(tiers) > 1:
        study.set_user_attr("successive_halving", {"tiers": list(tiers), "reduction": reduction})
    return None


def point_key(params: dict) -> str:
    return json.dumps(params, sort_keys=True, default=str)


def tell_unplanned(study, trial, choices: dict, why: str) -> None:
    """A trial whose run could not be planned: told FAIL with ``why`` and its choices, marked as not run."""
    from optuna.trial import TrialState

    for key, value in (("choices", dict(choices)), ("unplanned", True), ("failure", why)):
        trial.set_user_attr(key, value)
    study.tell(trial.number, state=TrialState.FAIL)


def finished(trials: list) -> list:
    """Trials that ended (completed, pruned, failed), points that could not be built and runs that could not be
    planned left out (neither was run: they do not use up --trials)."""
    return [t for t in trials if t.state.is_finished() and not t.user_attrs.get("infeasible")
            and not t.user_attrs.get("unplanned")]


def ranked(trials: list) -> list:
    """Completed trials, one per distinct point (its best), best first: by non-dominated front
    (Deb et al. 2002) for two objectives, FID breaking ties within a front; by FID for one."""
    best: dict[str, object] = {}
    for t in trials:
        if t.state.name == "COMPLETE":
            key = point_key(t.params)
            if key not in best or tuple(t.values) < tuple(best[key].values):
                best[key] = t
    points = list(best.values())
    front = _fronts(points) if points and len(points[0].values) > 1 else {}
    return sorted(points, key=lambda t: (front.get(id(t), 0), tuple(t.values), t.number))


def _fronts(points: list) -> dict[int, int]:
    """id(trial) -> its front: 0 for the points nothing dominates, 1 for those only front 0
    dominates, ... Peeled one front at a time, O(fronts x n^2) comparisons; written here because
    Optuna's non-dominated sort is private."""
    front, left, k = {}, list(points), 0
    while left:
        top = [t for t in left if not any(_dominates(p.values, t.values) for p in left)]
        front.update((id(t), k) for t in top)
        left, k = [t for t in left if id(t) not in front], k + 1
    return front


def _dominates(a, b) -> bool:
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))


def promotions(source: list, target: list, reduction: int) -> list[tuple[object, dict]]:
    """The source rung's trials to promote now, each with why (its rank among how many finished)."""
    done = finished(source)
    distinct = len({point_key(t.params) for t in done})
    quota = distinct // reduction
    held = {point_key(t.params) for t in target}  # promoted already (in any state, infeasible included)
    return [(t, {"rank": i + 1, "finished": distinct, "quota": quota})
            for i, t in enumerate(ranked(done)[:quota]) if point_key(t.params) not in held]


def rung_attributes(source_study, trial, why: dict) -> dict:
    """What a promoted trial records about where it came from."""
    attrs = trial.user_attrs
    return {"source_trial": trial.number, "promoted_from": source_study.study_name,
            "origin_trial": attrs.get("origin_trial", trial.number), "promotion": why,
            **({"baseline": attrs["baseline"]} if "baseline" in attrs else {})}


class Ladder:
    """The rungs of one search: each tier's study settings and, once opened, its study."""

    def __init__(self, settings: list, reduction: int, trials: int):
        self.settings, self.reduction, self.trials = settings, reduction, trials
        self.studies: list = []
        self.note: str | None = None  # set by open(): tiers the study has that this command leaves out

    def open(self, storage):
        """Open (or create) every rung's study in ``storage``; return rung 0's."""
        from harness.search.study import open_study

        first = open_study(self.settings[0], storage)
        self.note = check_halving(first, tuple(s.tier for s in self.settings), self.reduction)
        self.studies = [first] + [open_study(s, storage) for s in self.settings[1:]]
        return first

    def text(self) -> str:
        """`` rungs smoke (27) -> small (9) -> medium (3) (...);`` for the start line; nothing for one tier."""
        if len(self.settings) == 1:
            return ""
        counts = planned(self.trials, len(self.settings), self.reduction)
        return (" rungs " + " -> ".join(f"{s.tier} ({n})" for s, n in zip(self.settings, counts))
                + f" (the best 1/{self.reduction} of each promoted, as soon as it ranks there);")

    def running(self) -> list[tuple[int, object]]:
        """A live Trial for each RUNNING one, highest rung first (Optuna has no public way from a
        FrozenTrial to a Trial)."""
        import optuna

        return [(k, optuna.trial.Trial(self.studies[k], t._trial_id)) for k in reversed(range(len(self.studies)))
                for t in self.studies[k].get_trials(deepcopy=False) if t.state.name == "RUNNING"]

    def running_count(self) -> int:
        return sum(t.state.name == "RUNNING" for study in self.studies for t in study.get_trials(deepcopy=False))

    def work_left(self) -> bool:
        """Once rung 0 has its --trials: whether any rung has a trial to resume, a promoted one
        enqueued, or a point to promote (rung 0's enqueued baselines beyond --trials are not work)."""
        for k, study in enumerate(self.studies):
            trials = study.get_trials(deepcopy=False)
            if any(t.state.name == "RUNNING" or (k and t.state.name == "WAITING") for t in trials):
                return True
            if k and promotions(self.studies[k - 1].get_trials(deepcopy=False), trials, self.reduction):
                return True
        return False

    def bar_counts(self) -> tuple[int, int]:
        """Finished trials over all rungs, and the total the bar aims at: the planned count of each
        rung, or more where early promotions ran points that later fell out of the top."""
        counts = [len(finished(study.get_trials(deepcopy=False))) for study in self.studies]
        aims = planned(self.trials, len(self.studies), self.reduction)
        return sum(counts), sum(max(n, aim) for n, aim in zip(counts, aims))

    def left(self) -> dict[str, int]:
        """Trials each tier has still to finish, as planned (27, 9, 3 less those finished)."""
        aims = planned(self.trials, len(self.studies), self.reduction)
        return {s.tier: max(0, aim - len(finished(study.get_trials(deepcopy=False))))
                for s, study, aim in zip(self.settings, self.studies, aims)}

    def next_promotion(self, space, say) -> tuple[int, object, dict] | None:
        """The next promoted trial to run, highest rung first, as (rung, trial, choices); None when
        no point ranks high enough yet. A trial enqueued by a driver killed before it started comes
        first. A point that cannot be built at a rung's widths is recorded there as FAIL, not run."""
        from optuna.trial import TrialState

        for k in range(len(self.studies) - 1, 0, -1):
            study = self.studies[k]
            while True:
                if not study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
                    below = self.studies[k - 1]
                    found = promotions(below.get_trials(deepcopy=False), study.get_trials(deepcopy=False),
                                       self.reduction)
                    if not found:
                        break
                    source, why = found[0]
                    study.enqueue_trial(source.params, user_attrs=rung_attributes(below, source, why))
                trial = study.ask()  # the enqueued trial, its parameters fixed
                choices = space.suggest(trial)
                if not self.skipped_if_infeasible(k, trial, choices, space, say):
                    return k, trial, choices
        return None

    def skipped_if_infeasible(self, k: int, trial, choices: dict, space, say) -> bool:
        """Tell a promoted point that cannot be built at rung k's widths FAIL (marked infeasible)."""
        from optuna.trial import TrialState

        s = self.settings[k]
        why_not = space.infeasible(choices, s.block_out_channels)
        if why_not is None:
            return False
        trial.set_user_attr("infeasible", True)
        trial.set_user_attr("failure", f"not run at tier {s.tier}: infeasible at widths "
                                       f"{list(s.block_out_channels)}: {why_not}")
        self.studies[k].tell(trial, state=TrialState.FAIL)
        say(f"skipped    promotion of trial {trial.user_attrs.get('source_trial')} to tier {s.tier}: {why_not}")
        return True

    def best_text(self) -> str:
        """The highest rung with a completed trial: its best FID, or its Pareto set's size."""
        for k in reversed(range(len(self.studies))):
            study = self.studies[k]
            if any(t.state.name == "COMPLETE" for t in study.get_trials(deepcopy=False)):
                at = f" at {self.settings[k].tier}" if len(self.studies) > 1 else ""
                if len(self.settings[0].objectives) == 1:
                    return f"best FID{at} {study.best_value:.2f} (trial {study.best_trial.number})"
                return f"Pareto set{at}: {len(study.best_trials)} trials"
        return ""
