"""Versioned task protocols (``tasks/*.yaml``) resolved into one frozen, typed spec per run.

A task file holds the whole protocol (data, diffusion, optimizer, training, sampling,
evaluation) plus named tiers. A tier is a partial task, deep-merged on top: it sets the widths,
the batch size, the step count, and may override anything else. A task may ``include:``
another file and override parts of it (shapes reuses cifar10's protocol with other data).

    spec = resolve_task("shapes", "smoke", {"training.steps": 10})
    spec.training.batch_size       # 32
    spec.to_dict()                 # what a run record stores

Every field is checked: an unknown or mistyped field is an error that names the file and the
field, so a typo cannot silently fall back to a default.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import hashlib
import os
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from harness.errors import HarnessError
from harness.files import REPO_ROOT
from harness.protocol.folder_data import FOLDER_SIZES
from harness.protocol.samplers import grid_points
from harness.protocol.spec import SHAPE_KINDS, TaskSpec, declared_choices, fields_where

DEFAULT_TASK = "cifar10"


def tasks_dir() -> Path:
    return Path(os.environ.get("HARNESS_TASKS_DIR", REPO_ROOT / "tasks"))


# ----------------------------------------------------------------------------- loading


def task_names() -> list[str]:
    return sorted(p.stem for p in tasks_dir().glob("*.yaml"))


def _task_path(name: str) -> Path:
    path = Path(name)
    if path.suffix in (".yaml", ".yml") and path.exists():
        return path
    path = tasks_dir() / f"{name}.yaml"
    if not path.exists():
        known = task_names()
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise HarnessError(
            f"Unknown task '{name}'.{hint} Available tasks: {', '.join(known) or '(none)'}; "
            f"each is a YAML file in {tasks_dir()}. Pass one with --task."
        )
    return path


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def load_task_file(name: str) -> tuple[dict, Path]:
    """Read a task file with its ``include:`` chain merged in. Returns (raw dict, path)."""
    raw, path, _ = _read_task_file(name)
    return raw, path


def _read_task_file(name: str, _seen: tuple[Path, ...] = ()) -> tuple[dict, Path, bytes]:
    """(raw dict with the includes merged in, path, the file's bytes as read)."""
    path = _task_path(name).resolve()
    if path in _seen:
        chain = " -> ".join(p.name for p in (*_seen, path))
        raise HarnessError(f"Task files include each other in a loop: {chain}. Remove one of the includes.")
    data = path.read_bytes()
    try:
        raw = yaml.safe_load(data.decode()) or {}
    except yaml.YAMLError as exc:
        raise HarnessError(f"Task file {path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise HarnessError(f"Task file {path} must be a mapping of fields, not {type(raw).__name__}.")
    include = raw.pop("include", None)
    if include is not None:
        base, _, _ = _read_task_file(str(path.parent / include), (*_seen, path))
        raw = _deep_merge(base, raw)
    return raw, path, data


def tier_names(task: str = DEFAULT_TASK) -> list[str]:
    raw, _ = load_task_file(task)
    return list(raw.get("tiers", {}))


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = tree
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise HarnessError(f"Cannot set '{dotted}': '{part}' is not a section of the task.")
    node[leaf] = value


def _field_paths(cls=None, prefix: str = "") -> list[str]:
    """Every settable dotted field of a task: ``seed``, ``training.steps``, ``optimizer.lr``, ..."""
    out = []
    hints = typing.get_type_hints(cls or TaskSpec)
    for f in dataclasses.fields(cls or TaskSpec):
        if f.name in ("version", "tier"):  # set by the harness, not the user
            continue
        if dataclasses.is_dataclass(hints[f.name]):
            out += _field_paths(hints[f.name], f"{prefix}{f.name}.")
        else:
            out.append(prefix + f.name)
    return out


def field_defaults(cls=None, prefix: str = "") -> dict[str, Any]:
    """The default of every field that has one, by dotted name (``data.max_shapes``: 3). A record
    or checkpoint written before a field existed is read as having its default: fields are only
    ever added with the default that keeps earlier results what they were."""
    out = {}
    hints = typing.get_type_hints(cls or TaskSpec)
    for f in dataclasses.fields(cls or TaskSpec):
        if dataclasses.is_dataclass(hints[f.name]):
            out.update(field_defaults(hints[f.name], f"{prefix}{f.name}."))
        elif f.default is not dataclasses.MISSING:
            out[prefix + f.name] = list(f.default) if isinstance(f.default, tuple) else f.default
    return out


def complete_config(config: dict) -> dict:
    """A stored config (a record's) with the fields added since it was written set to their defaults."""
    out = {key: dict(value) if isinstance(value, dict) else value for key, value in config.items()}
    for dotted, default in field_defaults().items():
        section, _, name = dotted.rpartition(".")
        if section and section not in out:  # a section added since (samplers): all its fields at their defaults
            out[section] = {}
        node = out.get(section) if section else out
        if isinstance(node, dict) and name not in node:
            node[name] = default
    return out


def flatten(config: dict, prefix: str = "") -> dict:
    """A nested config as dotted keys: {"training": {"steps": 6}} -> {"training.steps": 6}."""
    out = {}
    for key, value in config.items():
        if isinstance(value, dict) and key != "reference_results":
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def result_settings(config: dict) -> dict:
    """The fields of a stored config that change a result (spec.py declares which), as dotted keys, lists for
    tuples: what runs must share to be averaged, and a completed run to count as done."""
    hidden = set(fields_where(result=False))
    plain = {k: list(v) if isinstance(v, tuple) else v for k, v in flatten(complete_config(config)).items()}
    return {k: v for k, v in plain.items() if k not in hidden}


def spec_from_config(config: dict, where: str) -> TaskSpec:
    """The TaskSpec a record's ``config`` was resolved to (fields added since at their defaults)."""
    return _build(TaskSpec, complete_config(config), where=where)


def _check_override_key(key: str) -> None:
    """An override names a real field; a wrong one is reported as the user's --set, with the
    closest real field (``training.lr`` -> ``optimizer.lr``), not as an error in the task file."""
    paths = _field_paths()
    if key in paths or key.startswith("reference_results."):  # a free-form mapping
        return
    leaf = key.rsplit(".", 1)[-1]
    same_leaf = [p for p in paths if p.rsplit(".", 1)[-1] == leaf]
    close = same_leaf or difflib.get_close_matches(key, paths, n=1, cutoff=0.6)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    raise HarnessError(
        f"Cannot override '{key}': the task has no such field.{hint} Overrides (--set KEY=VALUE) take a "
        f"dotted field of the task, e.g. optimizer.lr or training.batch_size (all fields: the dataclasses in "
        f"harness/protocol/spec.py)."
    )


def resolve_task(task: str, tier: str, overrides: dict[str, Any] | None = None) -> TaskSpec:
    """Merge task file, tier and overrides (dotted keys, e.g. ``training.steps``) into a TaskSpec."""
    raw, path = load_task_file(task)
    return _merged_spec(raw, path, task, tier, overrides)


def resolve_with_tier(task: str, tier: str, overrides: dict[str, Any] | None = None) -> tuple[TaskSpec, TaskSpec, dict]:
    """From one read of the task file: the TaskSpec with ``overrides``, the tier as the file defines it (with the
    first's seed: what a run changed from its tier is the difference), and the file read ({"path", "sha256"})."""
    raw, path, data = _read_task_file(task)
    spec = _merged_spec(copy.deepcopy(raw), path, task, tier, overrides)
    read = {"path": str(path), "sha256": hashlib.sha256(data).hexdigest()}
    return spec, _merged_spec(raw, path, task, tier, {"seed": spec.seed}), read


def _merged_spec(raw: dict, path: Path, task: str, tier: str, overrides: dict[str, Any] | None) -> TaskSpec:
    tiers = raw.pop("tiers", {}) or {}
    if tier not in tiers:
        close = difflib.get_close_matches(tier, list(tiers), n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise HarnessError(
            f"Unknown tier '{tier}' for task '{raw.get('name', task)}'.{hint} "
            f"Available tiers: {', '.join(tiers)}. Pass one with --tier."
        )
    merged = _deep_merge(raw, tiers[tier] or {})
    for key, value in (overrides or {}).items():
        _check_override_key(key)
        _set_dotted(merged, key, value)
    metadata = merged.pop("metadata", {}) or {}
    if not isinstance(metadata.get("version"), int):
        raise HarnessError(f"{path}: required field 'metadata.version' (an integer) is missing; "
                           f"every task is versioned.")
    merged["version"] = metadata["version"]
    merged["tier"] = tier
    merged.setdefault("description", "")
    spec = _build(TaskSpec, merged, where=str(path))
    return _normalise(spec, path)


def _normalise(spec: TaskSpec, path: Path) -> TaskSpec:
    """Checks that need more than one field, and the rule that the last step is always evaluated."""
    steps = spec.training.steps
    if steps < 0 or spec.training.batch_size < 1:
        raise HarnessError(f"{path}: training.steps must be >= 0 and training.batch_size >= 1.")
    if spec.evaluation.num_samples < 2:
        raise HarnessError(f"{path}: evaluation.num_samples must be at least 2 (FID needs a covariance).")
    _check_choices(spec, path)
    if spec.data.dataset == "folder":
        if not spec.data.path:
            raise HarnessError(f"{path}: data.dataset is 'folder' but data.path is not set. Set it in the task file "
                               f"or pass --set data.path=DIR (the folder of your images).")
        # absolute, so that every process of a sweep (whatever its working directory) reads the same folder
        spec = dataclasses.replace(spec, data=dataclasses.replace(
            spec.data, path=str(Path(spec.data.path).expanduser().resolve())))
    points = sorted({p for p in spec.evaluation.eval_points if 0 <= p <= steps} | {steps})
    evaluation = dataclasses.replace(spec.evaluation, eval_points=tuple(points))
    return dataclasses.replace(spec, evaluation=evaluation)


# ----------------------------------------------------------------------------- typed building

_SCALARS = {int: (int,), float: (int, float), str: (str,), bool: (bool,), dict: (dict,)}


def _check_value(hint: Any, value: Any, where: str, name: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        (inner,) = [o for o in options if o is not type(None)]
        return _check_value(inner, value, where, name)
    if origin is tuple:
        item_type = typing.get_args(hint)[0]
        if not isinstance(value, (list, tuple)):
            raise HarnessError(f"{where}: field '{name}' must be a list, not {value!r}.")
        return tuple(_check_value(item_type, v, where, f"{name}[{i}]") for i, v in enumerate(value))
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise HarnessError(f"{where}: field '{name}' must be a section (a mapping), not {value!r}.")
        return _build(hint, value, where, prefix=f"{name}.")
    allowed = _SCALARS[hint]
    # bool is an int in Python; a YAML `true` must not pass as a number or the reverse.
    if isinstance(value, bool) != (hint is bool) or not isinstance(value, allowed):
        raise HarnessError(f"{where}: field '{name}' must be {hint.__name__}, not {value!r}.")
    return float(value) if hint is float else value


def _build(cls, values: dict, where: str, prefix: str = ""):
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        close = difflib.get_close_matches(unknown[0], known, n=1)
        hint = f" Did you mean '{prefix}{close[0]}'?" if close else ""
        raise HarnessError(
            f"{where}: unknown field '{prefix}{unknown[0]}'.{hint} "
            f"Fields allowed here: {', '.join(sorted(prefix + k for k in known))}."
        )
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in values:
            kwargs[f.name] = _check_value(hints[f.name], values[f.name], where, prefix + f.name)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise HarnessError(f"{where}: required field '{prefix}{f.name}' is missing (set it in the task or tier).")
    return cls(**kwargs)


def parse_override(text: str) -> tuple[str, Any]:
    """``--set optimizer.lr=1e-3`` -> ("optimizer.lr", 0.001). Values are YAML; bare numbers like 1e-3 too."""
    if "=" not in text:
        raise HarnessError(f"--set expects KEY=VALUE (e.g. optimizer.lr=1e-3), got '{text}'.")
    key, value_text = text.split("=", 1)
    value = yaml.safe_load(value_text)
    if isinstance(value, str):
        try:  # YAML 1.1 reads "1e-3" as a string
            value = float(value)
        except ValueError:
            pass
    return key.strip(), value


_POSITIVE = ("training.log_every", "training.checkpoint_every", "sampling.steps", "sampling.batch_size",
             "evaluation.feature_batch_size", "diffusion.num_train_timesteps")


def check_spec(spec: TaskSpec, where: str) -> None:
    """The checks a task file gets when it is read, on a spec built another way (a record's config with
    ``evaluate --set``): a HarnessError starting with ``where``."""
    _check_choices(spec, where)


def _check_choices(spec: TaskSpec, path: Path | str) -> None:
    config = spec.to_dict()

    def get(dotted: str):
        node = config
        for part in dotted.split("."):
            node = node[part]
        return node

    # the values the harness implements (spec.py declares them): refused when the task is read, not hours in
    for dotted, allowed in declared_choices().items():
        value = get(dotted)
        if isinstance(value, (list, tuple)):
            if not set(value) <= set(allowed):
                raise HarnessError(f"{path}: {dotted} must list values among {', '.join(map(repr, allowed))}, not "
                                   f"{list(value)!r}; the protocol implements only these.")
        elif value not in allowed:
            raise HarnessError(f"{path}: {dotted} must be {' or '.join(repr(a) for a in allowed)}, "
                               f"not {value!r}; the protocol implements only these.")
    for dotted in _POSITIVE:
        if not isinstance(get(dotted), int) or get(dotted) < 1:
            raise HarnessError(f"{path}: {dotted} must be a positive integer, not {get(dotted)!r}.")
    if spec.sampling.steps > spec.diffusion.num_train_timesteps:
        raise HarnessError(f"{path}: sampling.steps ({spec.sampling.steps}) cannot exceed "
                           f"diffusion.num_train_timesteps ({spec.diffusion.num_train_timesteps}).")
    gamma = spec.diffusion.snr_gamma
    if gamma is not None and gamma <= 0:
        raise HarnessError(f"{path}: diffusion.snr_gamma must be a positive number (5 is the usual choice) or "
                           f"null for the plain loss, not {gamma!r}.")
    if spec.sampling.steps_offset < 0 or spec.evaluation.fid_bootstrap < 0 or spec.evaluation.fid_bootstrap == 1:
        raise HarnessError(f"{path}: sampling.steps_offset must be >= 0 and evaluation.fid_bootstrap 0 (none) or at "
                           f"least 2 (a standard deviation needs two resamples).")
    grid_points(spec, str(path))  # the sampler grid's pairs
    k = spec.evaluation.manifold_k
    if k is not None and (k < 1 or spec.evaluation.manifold_samples < k + 2):
        raise HarnessError(f"{path}: evaluation.manifold_k must be null (no precision/recall/density/coverage) or a "
                           f"positive number of neighbours (3 is the usual choice), and evaluation.manifold_samples at "
                           f"least manifold_k + 2; not {k!r} and {spec.evaluation.manifold_samples!r}.")
    if not 0.0 <= spec.sampling.eta <= 1.0:
        raise HarnessError(f"{path}: sampling.eta must be between 0 (DDIM) and 1, not {spec.sampling.eta!r}.")
    if not 1 <= spec.data.max_shapes <= 3:
        raise HarnessError(f"{path}: data.max_shapes must be 1, 2 or 3, not {spec.data.max_shapes!r}.")
    radius = spec.data.shape_radius
    if len(radius) != 2 or not 1.0 <= radius[0] <= radius[1] <= 16.0:
        raise HarnessError(f"{path}: data.shape_radius must be [min, max] with 1 <= min <= max <= 16 (pixels), "
                           f"not {list(radius)!r}.")
    kinds = spec.data.shape_kinds
    if not kinds or len(set(kinds)) != len(kinds):
        raise HarnessError(f"{path}: data.shape_kinds must be distinct names among {', '.join(SHAPE_KINDS)}, "
                           f"not {list(kinds)!r}.")
    sizes = {"shapes": (8, 16, 32), "folder": FOLDER_SIZES}.get(spec.data.dataset, (32,))
    if spec.data.image_size not in sizes:
        raise HarnessError(f"{path}: data.image_size must be {' or '.join(map(str, sizes))} for the "
                           f"{spec.data.dataset} dataset, not {spec.data.image_size!r}.")
    if not 0.0 <= spec.training.ema_decay < 1.0:
        raise HarnessError(f"{path}: training.ema_decay must be in [0, 1), not {spec.training.ema_decay!r}.")
    reference = spec.evaluation.reference
    if reference != "dataset":
        parts = reference.split(":", 1)[1].split("/") if reference.startswith("cleanfid:") else []
        if len(parts) != 3 or not parts[2].isdigit():
            raise HarnessError(f"{path}: evaluation.reference must be 'dataset' or 'cleanfid:NAME/SPLIT/RES' "
                               f"(e.g. 'cifar10/train/32'), not {reference!r}.")
