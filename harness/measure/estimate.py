"""``estimate``: the wall time of a run, a sweep or a search, predicted from seconds of bursts on this device.

A run's time is a sum of pieces, each a count the task fixes times a cost a burst measures
(harness/measure/bursts.py):

    startup      interpreter and imports (this process's, measured by the caller)
    prepare      build + validate the model, count its MACs, load the data, load Inception
    reference    computing the FID reference and its covariance root when they are not cached (once per
                 machine, then kept in the cache)
    training     steps x seconds per step, plus the first step's extra (allocation, compilation)
    sampling     evaluations x samples / batch x seconds per DDIM batch
    features     evaluations x samples x seconds per image of Inception
    scoring      evaluations x (FID + its bootstrap + KID)
    grid         the sampler grid's pairs (samplers.grid) at the evaluations that have it: each pair's batches at
                 its step count (the DDIM burst's fixed cost plus steps x its cost per step: a multistep
                 solver's step is one model call, as DDIM's), its features and its scores; the best
                 evaluation's extra grid (samplers.at final, when it is not the last) is not known ahead
    checkpoints  (steps / checkpoint_every + evaluations) x seconds per checkpoint

A study's runs share the machine's reference (paid by the first run), and run ``slots`` at a time
(longest first onto the first free slot: the order a pool fills).

    result = estimate(["standard"], ["smoke"], task="shapes", device=torch.device("cpu"))
    result["runs"][0]["predicted"]["total"]
"""
from __future__ import annotations

import heapq
import time
from typing import Callable

import torch

from harness.errors import HarnessError
from harness.files import now
from harness.measure import bursts
from harness.peaks import matmul_precision, mfu
from harness.protocol.data import load_images
from harness.protocol.recipe import recipe_for
from harness.protocol.reference import reference_plan, root_cached
from harness.protocol.samplers import grid_points
from harness.protocol.spec import TaskSpec
from harness.protocol.tasks import resolve_task
from harness.run.records import device_info, library_versions

SCHEMA_VERSION = 1
PIECES = ("startup", "prepare", "reference", "training", "sampling", "features", "scoring", "grid", "checkpoints")


def startup_seconds() -> float:
    """Seconds since this process started: its interpreter start and imports, when called right after them."""
    import psutil

    return max(0.0, time.time() - psutil.Process().create_time())


def counts(spec: TaskSpec, from_step: int = 0) -> dict:
    """How many of each unit a whole run has (one resumed at ``from_step``: what it has left)."""
    training, evaluation = spec.training, spec.evaluation
    # a checkpoint at an evaluation point is written after that evaluation (step 0 has none before it)
    evaluations = sum(p > from_step or p == 0 == from_step for p in evaluation.eval_points)
    steps = max(0, training.steps - from_step)
    checkpoints = training.steps // training.checkpoint_every - from_step // training.checkpoint_every
    return {"steps": steps, "evaluations": evaluations, "samples_per_evaluation": evaluation.num_samples,
            "checkpoints": checkpoints + evaluations}


def predict(spec: TaskSpec, m: dict, from_step: int = 0) -> dict:
    """Seconds per piece of one run of ``spec`` from the measured costs ``m`` (see the module docstring);
    with ``from_step``, of what is left of it when it resumes there."""
    n = counts(spec, from_step)
    evaluations, samples = n["evaluations"], n["samples_per_evaluation"]
    pieces = {
        "startup": m["startup_seconds"],
        "prepare": m["build_seconds"] + m["profile_seconds"] + m["data_load_seconds"] + m["inception_load_seconds"],
        "reference": m["reference_seconds"] if evaluations else 0.0,
        "training": n["steps"] * m["step_seconds"]
                    + (max(0.0, m["first_step_seconds"] - m["step_seconds"]) if n["steps"] else 0.0),
        "sampling": evaluations * samples / m["sampling_batch"] * m["sampling_batch_seconds"],
        "features": evaluations * samples * m["feature_seconds_per_image"],
        "scoring": evaluations * m["scoring_seconds"],
        "grid": grid_seconds(spec, m, from_step),
        "checkpoints": n["checkpoints"] * m["checkpoint_seconds"],
    }
    pieces["total"] = sum(pieces.values())
    return {k: round(v, 3) for k, v in pieces.items()}


def grid_seconds(spec: TaskSpec, m: dict, from_step: int = 0) -> float:
    """The sampler grid's pairs at the evaluations still to come that run it (samplers.at: the last, or each)."""
    points = grid_points(spec)
    if not points:
        return 0.0
    evaluation, steps = spec.evaluation, spec.training.steps
    at = [p for p in evaluation.eval_points if p > from_step or p == 0 == from_step]
    evaluations = len(at) if spec.samplers.at == "every" else int(steps in at)
    per_step = m.get("sampling_step_seconds") or m["sampling_batch_seconds"] / spec.sampling.steps
    fixed = m.get("sampling_fixed_seconds") or 0.0
    batches = evaluation.num_samples / m["sampling_batch"]
    one = sum(batches * (fixed + point.steps * per_step) for point in points) \
        + len(points) * (evaluation.num_samples * m["feature_seconds_per_image"] + m["scoring_seconds"])
    return evaluations * one


def makespan(durations: list[float], slots: int) -> float:
    """Wall time of ``durations`` on ``slots`` workers, each taken in order by the first free one (as the
    pool hands out a sweep's cells and a search's trials)."""
    free = [0.0] * max(1, slots)
    for d in durations:
        heapq.heappush(free, heapq.heappop(free) + d)
    return max(free)


def halving_makespan(tiers: list[list[float]], slots: int, reduction: int | None = None) -> float:
    """Wall time of a successive-halving search on ``slots`` workers: ``tiers[k]`` the durations of tier k's
    runs in launch order. It simulates the asynchronous schedule harness/search/rungs.py drives: when n
    distinct points of a tier have finished, the top n // reduction are promoted; a free slot takes a
    promotion (the highest tier first) before a new first-tier trial. FIDs are unknown here, so a point is
    assumed to rank among the top as soon as it finishes: the j-th promotion to tier k+1 waits for j x
    reduction finishes at tier k (or, when tier k has fewer runs left than that, as a resumed search
    has, for all but (promotions left - j) x reduction of them). Without ``reduction`` it is the ratio of
    the tiers' counts. A promotion waits for the tier below, so no tier's runs overlap the whole of it."""
    counts = [len(t) for t in tiers]
    slots = max(1, slots)

    def needed(k: int, j: int) -> int:  # finishes at tier k before the j-th (1-based) promotion to tier k+1
        r = reduction or max(1, counts[k] // max(1, counts[k + 1]))
        return max(0, min(j * r, counts[k] - (counts[k + 1] - j) * r))

    started, finished = [0] * len(tiers), [0] * len(tiers)
    running: list[tuple[float, int]] = []  # (finish time, tier)
    clock = 0.0
    while True:
        while len(running) < slots:  # fill the free slots: promotions, the highest tier first, then tier 0
            ready = [k for k in range(len(tiers) - 1, 0, -1)
                     if started[k] < counts[k] and finished[k - 1] >= needed(k - 1, started[k] + 1)]
            k = ready[0] if ready else (0 if started[0] < counts[0] else None)
            if k is None:
                break
            heapq.heappush(running, (clock + tiers[k][started[k]], k))
            started[k] += 1
        if not running:
            return clock
        clock, k = heapq.heappop(running)
        finished[k] += 1


def study_totals(runs: list[tuple[dict, dict]], slots: int) -> dict:
    """Device-hours and wall time of runs in queue order, each an estimated (arch, tier) entry and the
    prediction of what it has to do. A reference is computed once per machine: only the first run that
    needs it pays for it."""
    paid, durations = set(), []
    for run, predicted in runs:
        if "predicted" not in run:
            continue
        total = predicted["total"]
        if run["reference_file"] in paid:
            total -= predicted["reference"]
        paid.add(run["reference_file"])
        durations.append(total)
    return {"runs": len(durations), "slots": slots, "device_seconds": round(sum(durations), 1),
            "device_hours": round(sum(durations) / 3600, 3),
            "wall_seconds": round(makespan(durations, slots), 1) if durations else 0.0}


class Estimator:
    """Measures (arch, tier) pairs on one device. Costs that do not depend on the architecture (the
    data, Inception, a feature batch, an evaluation's statistics) are measured once and reused."""

    def __init__(self, task: str, device: torch.device, overrides: dict | None = None, data_dir=None,
                 min_seconds: float = 1.0, startup: float = 0.0, progress: Callable[[str], None] | None = None):
        self.task, self.device, self.overrides = task, device, dict(overrides or {})
        self.data_dir, self.min_seconds, self.startup = data_dir, min_seconds, startup
        self.progress = progress or (lambda message: None)
        self.notes: list[str] = []
        self.costs: dict = {}  # (arch, tier) -> (spec, measured costs), to predict a resumed run's rest
        self._cache: dict = {}

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def _once(self, key, fn):
        """fn()'s result, measured once per key; a failure (no Inception weights, say) is kept and raised again."""
        if key not in self._cache:
            try:
                self._cache[key] = fn()
            except HarnessError as exc:
                self._cache[key] = exc
        if isinstance(self._cache[key], HarnessError):
            raise self._cache[key]
        return self._cache[key]

    def _data(self, spec: TaskSpec) -> dict:
        def load() -> dict:
            start = time.perf_counter()
            try:
                count = len(load_images(spec.data, self.data_dir))
            except HarnessError as exc:  # a CIFAR-10 not on this machine: the bursts use random images
                self.note(f"The {spec.data.dataset} data could not be loaded, so its loading time is not "
                          f"in the estimate (the bursts use random images of its size): {exc}")
                return {"data_load_seconds": 0.0, "data_images": spec.data.num_images}
            return {"data_load_seconds": time.perf_counter() - start, "data_images": count}
        return self._once(("data", spec.data), load)

    def _evaluation_costs(self, spec: TaskSpec) -> dict:
        try:
            inception, features = self._once("inception", lambda: bursts.inception_burst(spec, self.device))
        except HarnessError as exc:  # no Inception weights here (a bare GPU machine): time the rest
            self.note(f"Features and the FID reference are not in the estimate: {exc}")
            return {"inception_load_seconds": 0.0, "feature_seconds_per_image": 0.0, "feature_images_per_sec": None,
                    "reference_plan": "not measured", "reference_file": "", "reference_seconds": 0.0,
                    "not_measured": ["features", "reference"],
                    **self._once(("scoring", spec.evaluation), lambda: bursts.scoring_burst(spec, self.device))}
        ev = spec.evaluation
        out = dict(inception)
        out.update(self._once(("features", spec.data.image_size, ev.feature_batch_size),
                              lambda: bursts.feature_burst(features, spec, self.device)))
        out.update(self._once(("scoring", ev),
                              lambda: bursts.scoring_burst(spec, self.device)))
        plan, path = reference_plan(spec.data, ev, features.weights_id)
        out["reference_plan"], out["reference_file"] = plan, str(path)
        out["reference_seconds"] = 0.0
        if plan == "compute":
            images = min(ev.reference_images or 10**9, self._data(spec)["data_images"] or 0)
            out["reference_images"] = images
            out["reference_seconds"] = images * out["feature_seconds_per_image"] + self._once(
                ("reference stats", images), lambda: bursts.reference_stats_seconds(images))
        elif plan == "download":
            self.note(f"The FID reference {ev.reference} is downloaded from clean-fid by the first run "
                      f"(not timed here; computed from the local data where it cannot be fetched).")
        if plan != "cached" or not root_cached(path):  # the first run keeps the root beside the reference
            out["reference_seconds"] += out["sigma_root_seconds"]
        return out

    def measure(self, arch: str, tier: str) -> dict:
        """One (arch, tier): its measured costs, predicted pieces, throughput, MFU and memory."""
        spec = resolve_task(self.task, tier, self.overrides)
        entry = {"arch": arch, "tier": tier, "task": spec.name, "task_version": spec.version}
        self.progress(f"measuring {arch}/{tier} on {self.device} ...")
        if self.device.type == "cuda":
            torch.cuda.empty_cache()  # what an earlier architecture's burst (or its out-of-memory) left cached
        try:
            built, architecture, model = bursts.build_burst(arch, spec, self.device)  # a broken file fails first
            m = {"startup_seconds": self.startup, **built}
            m.update(self._data(spec))
            m.update(self._evaluation_costs(spec))
            train, trainer = bursts.train_burst(model, spec, self.device, self.min_seconds)
            m.update(train)
            m.update(bursts.sampling_burst(trainer, spec, self.device))
            m.update(bursts.checkpoint_burst(trainer))
        except HarnessError as exc:
            entry["error"] = str(exc)
            return entry
        except Exception as exc:  # out of memory at this tier, say: the other architectures are still measured
            entry["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            return entry
        entry["arch"] = architecture.name
        precision = recipe_for(spec, self.device).precision
        peak = matmul_precision(precision, self.device.type, device_info(self.device).get("capability"))
        entry.update(counts=counts(spec), precision=precision, reference_file=m.pop("reference_file"),
                     not_measured=m.pop("not_measured", []),
                     measured={k: round(v, 6) if isinstance(v, float) else v for k, v in m.items()},
                     predicted=predict(spec, m))
        self.costs[arch, tier] = (spec, m)
        entry["throughput"] = {
            "train_images_per_sec": round(m["train_images_per_sec"], 2),
            "sampling_images_per_sec": round(m["sampling_images_per_sec"], 3),
            "feature_images_per_sec": round(m["feature_images_per_sec"], 2) if m["feature_images_per_sec"] else None,
            "train_mfu": mfu(m["gflops"], m["train_images_per_sec"], device_info(self.device)["name"], peak)
                         if m.get("gflops") else None, "mfu_peak": peak}
        entry["memory"] = {"train_peak_mb": m["train_peak_memory_mb"], "sampling_peak_mb": m["sampling_peak_memory_mb"],
                           "train_increase_mb": m["train_memory_increase_mb"], "kind": m["memory_kind"]}
        return entry


def estimate(archs: list[str], tiers: list[str], task: str = "cifar10", device: torch.device | None = None,
             overrides: dict | None = None, data_dir=None, repeats: int = 1, trials: int | dict | None = None,
             left: list[tuple[str, str, int]] | None = None, slots: int = 1, threads: int | None = None,
             min_seconds: float = 1.0, startup: float = 0.0, progress: Callable[[str], None] | None = None,
             reduction: int | None = None) -> dict:
    """Measure every (arch, tier) and predict each run, and the study of them: ``repeats`` runs of each
    (seeds); or ``left``, the runs in queue order as (arch, tier, step it resumes from), as a sweep's plan
    has them; or with ``trials`` that many runs per tier at the mean cost of the measured architectures
    (a search; a dict of counts per tier over several tiers is successive halving, its wall time simulated
    with ``reduction``: ``halving_makespan``). ``threads``: the torch threads each run will have (a CPU
    sweep's share of the cores)."""
    device = device or torch.device("cpu")
    started, before = time.perf_counter(), torch.get_num_threads()
    torch.set_num_threads(threads or before)
    try:
        estimator = Estimator(task, device, overrides, data_dir, min_seconds, startup, progress)
        measured = {(arch, tier): estimator.measure(arch, tier) for tier in tiers for arch in archs}
    finally:
        torch.set_num_threads(before)
        if device.type == "cuda":
            torch.cuda.empty_cache()  # a search driver keeps running beside its trials
    result = {"kind": "estimate", "schema_version": SCHEMA_VERSION, "created_at": now(),
              "device": device_info(device), "versions": library_versions(), "task": task,
              "overrides": dict(overrides or {}), "threads": threads or before, "runs": list(measured.values())}
    if trials:
        per_tier, by_tier = [], {}
        for tier in tiers:
            done = [r for (_, t), r in measured.items() if t == tier and "predicted" in r]
            if done:  # trials: a count per tier, or (successive halving) each tier's own count
                mean = {p: sum(r["predicted"][p] for r in done) / len(done) for p in (*PIECES, "total")}
                count = trials.get(tier, 0) if isinstance(trials, dict) else trials
                by_tier[tier] = [({"predicted": mean, "reference_file": done[0]["reference_file"]}, mean)] * count
                per_tier += by_tier[tier]
        study = dict(study_totals(per_tier, slots), trials=trials,
                     note="every trial run to the end: pruned trials stop early and cost less")
        if isinstance(trials, dict) and len(trials) > 1:
            # successive halving: a tier's runs wait for promotions from the tier below, so its wall time is
            # the simulated schedule, not a makespan of independent runs (that was under the chain itself)
            durations, paid = [], set()
            for tier in trials:
                durations.append([])
                for run, predicted in by_tier.get(tier, []):
                    reference = predicted["reference"] if run["reference_file"] in paid else 0.0
                    paid.add(run["reference_file"])
                    durations[-1].append(predicted["total"] - reference)
            study["wall_seconds"] = round(halving_makespan(durations, slots, reduction), 1)
            study["reduction"] = reduction
            study["schedule"] = ("successive halving simulated: a promotion waits for the tier below (ASHA, top "
                                 f"1/{reduction or 'count ratio'} of the finished, promoted in finishing order: "
                                 "FIDs are unknown before the runs)")
        result["study"] = study
    else:
        def rest(arch: str, tier: str, from_step: int) -> tuple[dict, dict]:
            entry = measured[arch, tier]
            if from_step and (arch, tier) in estimator.costs:
                return entry, predict(*estimator.costs[arch, tier], from_step)
            return entry, entry.get("predicted", {})
        order = left if left is not None else [(a, t, 0) for _ in range(repeats) for t in tiers for a in archs]
        result["study"] = study_totals([rest(*run) for run in order], slots)
    result["notes"] = estimator.notes
    result["measured_seconds"] = round(time.perf_counter() - started, 1)
    return result
