"""A search: an Optuna study whose trials are harness runs, executed on Ray like sweep cells.

The driver owns the study (ask and tell; nothing else writes it). Each trial is a point of the space, written as
an architecture file ``RESULTS_DIR/studies/<study>/<study>_t<N>.py`` and run by the Ray pool (cluster/pool.py) as
``run`` runs it, in ``RESULTS_DIR/<task>/<study>_t<N>/<tier>/seed<seed>``. FID at each evaluation point comes back
through the pool's channel as the trial's intermediate value (its long work as notes); a pruned trial's run is
stopped (it checkpoints) and told PRUNED. The Ray session and the drive loop (Ctrl-C, SIGTERM) are the ones sweeps
use (harness/studies/session.py, drive.py); ``Search`` is the drive loop's ``Driver``.

Resume: a trial left RUNNING by a killed driver is run again under the same number and its run continues from its
checkpoint; finished trials are never redone; the baselines are enqueued once.

Several tiers (``tier="smoke,small,medium"``): successive halving, one study per rung in one storage (rungs.py).
Rung 0 is the search above at the first tier; whenever a rung's finished points rank one among its top 1/reduction,
it is enqueued in the next rung's study, run at the next tier from rung 0's file in ``.../<study>_t<N>/<tier>``.

    Search(SearchSpec(task="shapes", tier="smoke", trials=5, overrides={"training.steps": 20})).execute()
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from tqdm.auto import tqdm

from harness.cluster.pool import Job, Outcome, RayPool
from harness.cluster.resources import Resources, allocate
from harness.errors import HarnessError
from harness.files import atomic_write_bytes
from harness.protocol.tasks import resolve_task
from harness.run.records import read_record
from harness.run.request import RunRequest, plan_run
from harness.search.export import render
from harness.search.rungs import Ladder, check_reduction, finished, parse_tiers, planned, rung_name, tell_unplanned
from harness.search.space_file import load_space
from harness.search.study import (
    LABELS,
    StudySettings,
    check_study_name,
    describe,
    objective_values,
    open_storage,
    parse_objectives,
    resolve_methods,
    storage_url,
)
from harness.studies.drive import Driver, drive
from harness.studies.session import absolute_inputs, driver_lock, ray_session
from harness.world import refuse_cpu_fallback

LOCKED_RETRY_SECONDS = 15  # a trial's folder still locked by a run of the killed driver: try again this often
LOCKED_RETRIES = 20
MAX_INFEASIBLE_IN_A_ROW = 100  # a space whose points mostly cannot be built at this tier is an error, not a loop
MAX_UNPLANNED_IN_A_ROW = 3  # runs that cannot be planned (a task file broken mid-search): then the search stops


@dataclass
class SearchSpec:
    task: str = "cifar10"
    tier: str = "small"  # or several, comma-separated: successive halving across them
    trials: int = 64
    study: str | None = None  # default: <task>-<tier>-<objectives>
    storage: str | None = None  # default: sqlite:///RESULTS_DIR/studies/<study>.db
    space: str | None = None  # default: harness/search/space.py
    objectives: str = "fid"
    sampler: str | None = None  # default: tpe for one objective, nsga2 for two
    pruner: str | None = None  # default: median for one objective, none for two
    seed: int | None = None  # the runs' seed and the sampler's (default: the task's)
    overrides: dict = field(default_factory=dict)
    results_dir: str | Path = "results"
    data_dir: str | Path | None = None
    device: str = "auto"
    reduction: int = 3  # with several tiers: each rung promotes 1/reduction of its finished points


@dataclass
class _Slot:
    """A trial in flight."""

    study: object  # its rung's optuna.Study
    rung: int
    trial: object  # optuna.Trial
    choices: dict
    job: Job
    pruned: bool = False
    locked_tries: int = 0
    retry_at: float = 0.0


def settings_for(spec: SearchSpec, tier: str | None = None, name: str | None = None,
                 chosen_at: StudySettings | None = None) -> StudySettings:
    """The study's settings from the command's, every input checked before anything starts. A rung
    above the first names the study its points were chosen in (``chosen_at``: their depth is relative
    to that tier's)."""
    if spec.trials < 1:
        raise HarnessError(f"--trials {spec.trials}: a search needs at least one trial.")
    objectives = parse_objectives(spec.objectives)
    sampler, pruner = resolve_methods(objectives, spec.sampler, spec.pruner)
    task = resolve_task(spec.task, tier or spec.tier,
                        dict(spec.overrides, **({"seed": spec.seed} if spec.seed is not None else {})))
    space = load_space(spec.space)
    name = check_study_name(name or spec.study or f"{task.name}-{task.tier}-{'-'.join(objectives)}")
    origin = None if chosen_at is None else {"study": chosen_at.name, "tier": chosen_at.tier,
                                             "block_out_channels": list(chosen_at.block_out_channels),
                                             "layers_per_block": chosen_at.layers_per_block}
    return StudySettings(name=name, task=task.name, task_version=task.version, tier=task.tier, seed=task.seed,
                         objectives=objectives, sampler=sampler, pruner=pruner, steps=task.training.steps,
                         block_out_channels=tuple(task.model.block_out_channels),
                         layers_per_block=task.model.layers_per_block, space=space, overrides=dict(spec.overrides),
                         chosen_at=origin, resolved=task)


def rung_settings(spec: SearchSpec) -> list[StudySettings]:
    """One study's settings per tier of ``spec.tier``: rung 0's, then each promoted rung's."""
    tiers = parse_tiers(spec.tier)
    if len(tiers) > 1:
        check_reduction(spec.reduction)
        counts = planned(spec.trials, len(tiers), spec.reduction)
        if counts[-1] < 1:
            empty = tiers[counts.index(0)]
            raise HarnessError(f"--trials {spec.trials} with --reduction {spec.reduction} promotes no point to tier "
                               f"{empty}: each tier keeps 1/{spec.reduction} of the one below. Give at least "
                               f"{spec.reduction ** (len(tiers) - 1)} trials, a smaller --reduction, or fewer tiers.")
    first = settings_for(spec, tiers[0])
    return [first] + [settings_for(spec, tier, rung_name(first.name, tiers, k), chosen_at=first)
                      for k, tier in enumerate(tiers) if k]


class Search(Driver):
    what, runs = "search", "every trial's run"

    def __init__(self, spec: SearchSpec, *, address: str | None = None, gpus_per_trial: float | None = None,
                 cpus_per_trial: float | None = None, max_parallel: int | None = None, max_retries: int = 3,
                 progress: bool = True, stream=None, devices: int | None = None, before_start=None):
        # before_start(allocation, {tier: trials left}): told once the study's checks pass, before any trial
        # starts (the CLI prints `estimate`'s prediction there)
        super().__init__(stream, progress)
        self.before_start = before_start
        task, self.results_dir, data_dir = absolute_inputs(spec.task, spec.results_dir, spec.data_dir)
        self.spec = replace(spec, task=task, results_dir=self.results_dir, data_dir=data_dir,
                            overrides=dict(spec.overrides))
        self.rungs = rung_settings(self.spec)
        self.settings = self.rungs[0]  # the study trials are sampled in; it names the storage and the files
        self.ladder = Ladder(self.rungs, self.spec.reduction, self.spec.trials)  # each rung's study, once opened
        self.url = storage_url(spec.storage, self.results_dir, self.settings.name)
        self.address, self.max_retries = address, max_retries
        self.requested = {"gpus_per_run": gpus_per_trial, "cpus_per_run": cpus_per_trial, "max_parallel": max_parallel,
                          "devices": devices}
        self.trials_dir = self.results_dir / "studies" / self.settings.name
        # while driving (drive.py): the trials in flight by job key, those a killed driver left RUNNING, and
        # those whose folders were locked, to try again; the progress bar
        self.slots: dict[str, _Slot] = {}
        self.resumable: list = []
        self.waiting: list[_Slot] = []
        self.pool: RayPool | None = None
        self.bar = None

    # -- files ----------------------------------------------------------------------------------

    def arch_file(self, number: int) -> Path:
        return self.trials_dir / f"{self.settings.name}_t{number:04d}.py"

    def write_arch_file(self, number: int, choices: dict) -> Path:
        """The trial's architecture file; the same bytes every time (a resumed run checks them)."""
        s = self.settings
        text = render(s.space.source, s.space.path.name, choices, s.block_out_channels, s.layers_per_block,
                      title=f"Trial {number} of the architecture search {s.name!r} ({s.task}, tier {s.tier}).",
                      about=f"Written by `python -m harness search` for the trial's run; `python -m harness export "
                            f"--study {s.name} --trial {number}` writes it with the trial's results.")
        path = self.arch_file(number)
        if not path.exists() or path.read_text() != text:
            atomic_write_bytes(path, text.encode())
        return path

    # -- the search -----------------------------------------------------------------------------

    def execute(self):
        """Run trials until the study has ``trials`` finished ones; return the study. Raises
        KeyboardInterrupt after a Ctrl-C has stopped every run with a checkpoint."""
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)  # the driver says what happens, once per trial
        # one driver per study: one writer of its storage
        with driver_lock(self.results_dir, self.results_dir / "studies" / f"{self.settings.name}.lock",
                         f"study {self.settings.name}"):
            study = self.ladder.open(open_storage(self.url))
            if self.ladder.note:
                self.say(self.ladder.note)
            self._enqueue_baselines(study)
            done = self._finished(study)
            if done >= self.spec.trials and not self.ladder.work_left():
                self.say(f"Study {self.settings.name} already has {done} finished trials "
                         f"(--trials {self.spec.trials}){' and every promotion run' if len(self.rungs) > 1 else ''}; "
                         f"nothing to run. Pass a larger --trials to continue it.")
                return study
            with ray_session(self.address, self._allocation, self.max_retries, self.results_dir, lambda: {},
                             "search") as session:
                allocation = session.allocation
                self.say(f"Study {self.settings.name}: {done} of {self.spec.trials} trials finished, "
                         f"{self.ladder.running_count()} to resume;{self.ladder.text()} objectives "
                         f"{', '.join(self.settings.objectives)} (minimized), sampler {self.settings.sampler}, "
                         f"pruner {self.settings.pruner}; up to {allocation['max_parallel']} "
                         f"trials at once, {allocation['gpus_per_run']:g} GPU and {allocation['cpus_per_run']:g} CPU "
                         f"each. Storage: {self.url}")
                if self.before_start is not None:
                    self.before_start(allocation, self.ladder.left())
                self._drive(session.pool, allocation["max_parallel"])
        return study

    def _allocation(self, resources: Resources) -> dict:
        allocation = allocate(resources, self.spec.device, runs=self.spec.trials, **self.requested)
        refuse_cpu_fallback([s.resolved for s in self.rungs], self.spec.device, allocation["device_type"])
        return allocation

    def _enqueue_baselines(self, study) -> None:
        """The space's baselines become the first trials, once per study."""
        if study.user_attrs.get("baselines_enqueued"):
            return
        for name, choices in self.settings.space.baselines(self.settings.layers_per_block).items():
            study.enqueue_trial(choices, user_attrs={"baseline": name}, skip_if_exists=True)
        study.set_user_attr("baselines_enqueued", True)

    def _finished(self, study) -> int:
        """Finished trials of rung 0, which count towards --trials (infeasible points do not)."""
        return len(finished(study.get_trials(deepcopy=False)))

    def _drive(self, pool: RayPool, max_parallel: int) -> None:
        self.pool, self.resumable, self.slots, self.waiting = pool, self.ladder.running(), {}, []
        done, total = self.ladder.bar_counts()
        self.bar = tqdm(total=total, initial=done, unit="trial", desc=f"search {self.settings.name}",
                        disable=not self.progress, dynamic_ncols=True)
        try:
            drive(pool, self, max_parallel)
        finally:
            if not self.stopping:
                self.bar.total = self.bar.n  # promoted points that could not be built at their tier never ran
            self.bar.close()

    def next_job(self) -> Job | None:
        for _ in range(MAX_UNPLANNED_IN_A_ROW):  # a trial whose run cannot be planned is told FAIL; the next is asked
            first_rung = sum(slot.rung == 0 for slot in self.slots.values())
            slot = self._next_slot(self.ladder.studies, self.resumable, self.waiting, first_rung)
            if slot is None or slot.job is not None:
                if slot is not None:
                    self.slots[slot.job.key] = slot
                return None if slot is None else slot.job
        raise HarnessError(f"{MAX_UNPLANNED_IN_A_ROW} trials in a row could not be planned (the last: "
                           f"{slot.trial.user_attrs['failure']}), so the search stops rather than fail every trial "
                           f"left. Fix the cause and run the same command: those trials do not count towards --trials.")

    def held_back(self) -> bool:
        return bool(self.waiting)

    def on_stop(self) -> None:
        self.waiting.clear()

    def on_event(self, key: str, event: dict) -> None:
        if key in self.slots and event["kind"] == "evaluation":
            self._on_evaluation(self.slots[key], event, self.pool)
        elif key in self.slots and event["kind"] == "note":  # long work that is not training
            self.say(f"note       trial {self._trial_name(self.slots[key])}: {event['text']}")

    def on_outcome(self, outcome: Outcome) -> None:
        slot = self.slots.pop(outcome.key)
        if outcome.status == "locked" and slot.locked_tries < LOCKED_RETRIES and not self.stopping:
            slot.locked_tries, slot.retry_at = slot.locked_tries + 1, time.monotonic() + LOCKED_RETRY_SECONDS
            self.waiting.append(slot)
            self.slots[outcome.key] = slot
            return
        self._on_outcome(slot, outcome)
        done, self.bar.total = self.ladder.bar_counts()
        self.bar.update(done - self.bar.n)
        self.bar.set_postfix_str(self.ladder.best_text(), refresh=True)

    def _next_slot(self, studies: list, resumable: list, waiting: list[_Slot], first_rung: int) -> _Slot | None:
        """A trial to start: a locked one whose wait is over, one the last driver left RUNNING, a
        promotion (the highest rung first), or a new one from the sampler while the budget allows
        (``first_rung``: rung-0 trials in flight). Infeasible points are told FAIL at once."""
        from optuna.trial import TrialState

        for slot in waiting:
            if time.monotonic() >= slot.retry_at:
                waiting.remove(slot)
                return slot
        while resumable:  # a promoted trial asked by a killed driver may not have been checked yet
            k, trial = resumable.pop(0)
            choices = self.settings.space.suggest(trial)
            if not (k and self.ladder.skipped_if_infeasible(k, trial, choices, self.settings.space, self.say)):
                return self._slot(studies[k], k, trial, choices, resumed=True)
        promoted = self.ladder.next_promotion(self.settings.space, self.say)
        if promoted is not None:
            k, trial, choices = promoted
            return self._slot(studies[k], k, trial, choices, resumed=False)
        study = studies[0]
        for _ in range(MAX_INFEASIBLE_IN_A_ROW):
            if self._finished(study) + first_rung >= self.spec.trials:
                return None
            trial = study.ask()
            choices = self.settings.space.suggest(trial)
            why = self.settings.space.infeasible(choices, self.settings.block_out_channels)
            if why is None:
                return self._slot(study, 0, trial, choices, resumed=False)
            trial.set_user_attr("infeasible", True)
            trial.set_user_attr("failure", f"infeasible at widths {list(self.settings.block_out_channels)}: {why}")
            study.tell(trial, state=TrialState.FAIL)
            self.say(f"skipped    trial {trial.number}: {why} (told FAIL; it does not count towards --trials)")
        raise HarnessError(f"The sampler proposed {MAX_INFEASIBLE_IN_A_ROW} points in a row that cannot be built at "
                           f"widths {list(self.settings.block_out_channels)} (the last: {why}). Narrow the space's "
                           f"choices for this tier (--space), or search a wider tier.")

    def _slot(self, study, k: int, trial, choices: dict, resumed: bool) -> _Slot:
        """A trial's run: rung 0's architecture file (the same bytes at every tier), at rung k's tier."""
        s, number = self.rungs[k], trial.number
        origin = trial.user_attrs["origin_trial"] if k else number
        tags = {"study": s.name, "trial": number, **({"rung": k, "tier": s.tier} if len(self.rungs) > 1 else {})}
        try:  # e.g. the task file edited mid-search: this trial fails, the search goes on
            plan = plan_run(RunRequest(task=self.spec.task, arch=str(self.write_arch_file(origin, choices)),
                                       tier=s.tier, seed=s.seed, overrides=dict(s.overrides), device=self.spec.device,
                                       results_dir=self.results_dir, data_dir=self.spec.data_dir, progress=False,
                                       tags=tags))
        except HarnessError as error:
            return self._unplanned(study, k, trial, choices, error)
        for key, value in (("arch_file", plan.request.arch), ("run_folder", str(plan.folder)),
                           ("choices", dict(choices))):
            trial.set_user_attr(key, value)  # choices: what export writes, as a study's stored code is never run
        job = Job(key=f"r{k}trial{number}" if k else f"trial{number}", request=plan.request, folder=str(plan.folder),
                  measure_latency="latency" in s.objectives)
        baseline = trial.user_attrs.get("baseline")
        name = f"trial {number}" + (f" ({baseline})" if baseline else "")
        if k:
            promotion = trial.user_attrs.get("promotion", {})
            name = (f"trial {number} at {s.tier} (trial {trial.user_attrs.get('source_trial')} of "
                    f"{self.rungs[k - 1].tier}, ranked {promotion.get('rank')} of {promotion.get('finished')})"
                    + (f" ({baseline})" if baseline else ""))
        verb = "resuming" if resumed else "promoted" if k else "started"
        self.say(f"{verb:<11}{name}: {describe(choices)}")
        return _Slot(study, k, trial, choices, job)

    def _unplanned(self, study, k: int, trial, choices: dict, error: HarnessError) -> _Slot:
        """A trial whose run could not be planned: told FAIL with the reason (a slot without a job)."""
        why = f"its run could not be planned: {error}"
        tell_unplanned(study, trial, choices, why)
        self.say(f"failed     trial {trial.number}{f' at {self.rungs[k].tier}' if k else ''}: {why}")
        return _Slot(study, k, trial, choices, None)

    def _on_evaluation(self, slot: _Slot, event: dict, pool: RayPool) -> None:
        if len(self.settings.objectives) > 1 or slot.pruned:
            return  # Optuna keeps no intermediate values for a multi-objective study
        slot.trial.report(event["fid"], event["step"])
        if event["step"] < self.rungs[slot.rung].steps and slot.trial.should_prune():  # at the end: its value
            slot.pruned = True
            pool.stop(slot.job.key)
            self.say(f"pruning    trial {self._trial_name(slot)}: FID {event['fid']:.2f} at step {event['step']} "
                     f"is worse than the {self.settings.pruner} pruner allows; its run stops with a checkpoint")

    def _on_outcome(self, slot: _Slot, outcome: Outcome) -> None:
        """Tell the trial's study how it ended."""
        from optuna.trial import TrialState

        study, trial, name = slot.study, slot.trial, self._trial_name(slot)
        attrs = self._run_attributes(slot, outcome)
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        if slot.pruned and outcome.status in ("interrupted", "completed"):  # completed: it ended before the stop
            study.tell(trial.number, state=TrialState.PRUNED)
            self.say(f"pruned     trial {name} at step {outcome.step or attrs.get('step')}")
            return
        if outcome.status == "interrupted":  # Ctrl-C: stays RUNNING, the next session resumes it
            return
        values = objective_values(self.settings.objectives, attrs) if outcome.status == "completed" else None
        if values is None:
            why = outcome.message or "the run completed without an FID evaluation"
            trial.set_user_attr("failure", why)
            study.tell(trial.number, state=TrialState.FAIL)
            self.say(f"failed     trial {name}: {why} (log: {outcome.log})")
            return
        study.tell(trial.number, values=values)
        shown = ", ".join(f"{LABELS[name]} {value:.2f}" if name == "fid" else f"{LABELS[name]} {value:.4g}"
                          for name, value in zip(self.settings.objectives, values))
        self.say(f"completed  trial {name}: {shown}  ({outcome.wall_seconds:.0f} s on {outcome.node})")

    def _trial_name(self, slot: _Slot) -> str:
        """``3``, or ``3 at small`` above rung 0 (each rung's study numbers its trials from 0)."""
        return f"{slot.trial.number}" + (f" at {self.rungs[slot.rung].tier}" if slot.rung else "")

    def _run_attributes(self, slot: _Slot, outcome: Outcome) -> dict:
        """What the run's record says, as trial user attributes (readable with Optuna's tools)."""
        attrs = {"record": outcome.record, "log": outcome.log, "node": outcome.node, "best_step": outcome.best_step,
                 "best_fid": outcome.best_fid, "step": outcome.step, "latency_ms": outcome.latency_ms}
        record, problem = read_record(Path(outcome.record)) if outcome.record else (None, None)
        if problem:
            self.say(f"warning    trial {self._trial_name(slot)}: {problem}; its parameter count and MACs are left out")
        if record is not None:
            profile = record.profile or {}
            attrs.update(param_count=record.param_count, gmacs=profile.get("gmacs"), gflops=profile.get("gflops"),
                         step=record.step, final_fid=record.final_fid,
                         train_images_per_sec=(record.timings or {}).get("train_images_per_sec"))
        return {k: v for k, v in attrs.items() if v is not None}
