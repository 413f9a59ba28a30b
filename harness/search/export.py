"""A point of a search space as an ordinary architecture file.

Every trial runs such a file, and ``python -m harness export`` writes the winner's into
``architectures/``. The file is the space's own code (verbatim, minus its docstring) plus the
chosen values as literals and a ``build_model(device)`` that reads ``BLOCK_OUT_CHANNELS`` and
``LAYERS_PER_BLOCK`` like every other architecture file: no harness import, so it drops into the
MLS-Bench task unchanged.

Depth is both a searched choice and a tier setting. The file keeps the searched depth where the
search ran and follows the tier elsewhere: ``layers_per_block = chosen + LAYERS_PER_BLOCK - searched
at``, at least 1. The smoke tier has 1 layer per block and the others 2, so a depth of 2 chosen at
smoke becomes 3 at small, medium and large: the trial's depth relative to its tier is kept.
"""
from __future__ import annotations

import ast
import hashlib
import math
import textwrap
from pathlib import Path
from typing import NamedTuple

from harness.errors import HarnessError

TEMPLATE = '''\
"""{title}

{about}

Choices:
{choices_text}

Widths come from the environment like every architecture file (BLOCK_OUT_CHANNELS; default: the
widths searched at). Depth: the chosen layers_per_block where LAYERS_PER_BLOCK is
{searched_depth} (the tier searched at), shifted by the difference elsewhere. The code below the
choices is the search space's ({space_name}), verbatim; the file imports nothing from the harness.
"""
{future}import os as _os

CHOSEN = {chosen}
SEARCHED_BLOCK_OUT_CHANNELS = {widths!r}
SEARCHED_LAYERS_PER_BLOCK = {searched_depth!r}


def build_model(device):
    widths = tuple(int(c) for c in _os.environ.get(
        "BLOCK_OUT_CHANNELS", ",".join(map(str, SEARCHED_BLOCK_OUT_CHANNELS))).split(","))
    choices = dict(CHOSEN)
    if "layers_per_block" in choices:
        tier_depth = int(_os.environ.get("LAYERS_PER_BLOCK", SEARCHED_LAYERS_PER_BLOCK))
        choices["layers_per_block"] = max(1, choices["layers_per_block"] + tier_depth - SEARCHED_LAYERS_PER_BLOCK)
    return build(choices, widths, device)


# ---- the search space's code ({space_name}) ----
{space_code}
'''


def render(space_source: str, space_name: str, choices: dict, block_out_channels: tuple[int, ...],
           layers_per_block: int, title: str, about: str) -> str:
    """The text of a standalone architecture file building ``choices`` with the space's ``build``. Every text
    that comes from a study (names, values) is escaped for the docstring, and values are written with repr():
    nothing a study holds can end the docstring or a literal early."""
    code, future = _without_docstring_and_future(space_source)
    space_name = " ".join(space_name.split())  # it also stands in a comment line
    return TEMPLATE.format(
        title=_in_docstring(title), about=_in_docstring(textwrap.fill(about, width=100)),
        choices_text=_in_docstring("\n".join(f"    {k} = {v!r}" for k, v in choices.items())),
        searched_depth=int(layers_per_block), widths=tuple(int(c) for c in block_out_channels),
        chosen="{\n" + "".join(f"    {k!r}: {v!r},\n" for k, v in choices.items()) + "}",
        future="from __future__ import annotations\n\n" if future else "",
        space_name=_in_docstring(space_name), space_code=code.strip() + "\n",
    )


def _in_docstring(text: str) -> str:
    """``text`` as it may stand inside a triple-quoted docstring: backslashes and quotes escaped."""
    return text.replace("\\", "\\\\").replace('"', '\\"')


def _without_docstring_and_future(source: str) -> tuple[str, bool]:
    """The space's code without its module docstring (the file has its own) and without
    ``from __future__`` imports (which must come first: the file puts one at its top)."""
    tree = ast.parse(source)
    lines = source.splitlines()
    drop: set[int] = set()
    future = False
    body = tree.body
    if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
            and isinstance(body[0].value.value, str):
        drop |= set(range(body[0].lineno - 1, body[0].end_lineno))
    for node in body:
        if isinstance(node, ast.ImportFrom) and node.module == "__future__":
            future = True
            drop |= set(range(node.lineno - 1, node.end_lineno))
    return "\n".join(line for i, line in enumerate(lines) if i not in drop), future


def export_trial(study, number: int | None, name: str | None, out_dir: Path, force: bool = False,
                 space: Path | None = None) -> Exported:
    """Write trial ``number`` of ``study`` (its best with None) as ``out_dir/<name>.py``. Nothing the study
    holds is run: the file is the study's stored space source as text (checked against the recorded hash and
    compared with the space file), with the trial's stored choices."""
    from harness.files import atomic_write_bytes, now
    from harness.search.study import LABELS

    settings = study.user_attrs.get("harness")
    if settings is None:
        raise HarnessError(f"Study {study.study_name!r} was not made by `python -m harness search` (it has no harness "
                           f"settings), so there is no space to build its trials from.")
    trial = _chosen_trial(study, number, settings)
    choices = trial_choices(study, trial, settings, space)
    name = name or f"{study.study_name}_t{trial.number}".replace("-", "_").replace(".", "_")
    if not name.isidentifier():
        raise HarnessError(f"--name {name!r} must be a Python identifier (letters, digits, '_'): it names "
                           f"architectures/<name>.py.")
    path = Path(out_dir) / f"{name}.py"
    if path.exists() and not force:
        raise HarnessError(f"{path} exists. Pass another --name, or --force to replace it.")
    attrs, values = trial.user_attrs, trial.values
    measured = ", ".join(f"{LABELS[objective]} {value:.4g}" for objective, value in zip(settings["objectives"], values))
    about = (f"Exported on {now()[:10]} from trial {trial.number} of the architecture search {study.study_name!r} "
             f"(task {settings['task']}, tier {settings['tier']}, seed {settings['seed']}, {settings['steps']} steps, "
             f"sampler {settings['sampler']}): {measured}; at step {attrs.get('best_step')}; "
             f"{attrs.get('param_count', 0):,} parameters and {attrs.get('gflops', float('nan')):.4g} GFLOPs at the "
             f"tier searched.")
    source, origin = space_source(study, settings)
    chosen_at = settings.get("chosen_at") or settings  # a promoted rung's points were chosen at rung 0's tier
    text = render(source, Path(settings["space_path"]).name, choices,
                  tuple(chosen_at["block_out_channels"]), chosen_at["layers_per_block"],
                  title=f"Trial {trial.number} of the architecture search {study.study_name!r}, exported.",
                  about=f"{about} {origin}")
    atomic_write_bytes(path, text.encode())
    return Exported(path, origin, same_as_file=origin.startswith(SAME_AS_FILE))


class Exported(NamedTuple):
    path: Path
    origin: str  # where the space's code in the file came from, in a sentence
    same_as_file: bool  # the code is byte for byte the space file the search names, as it is on disk now


SAME_AS_FILE = "The space's code below is byte for byte"


def space_source(study, settings: dict) -> tuple[str, str]:
    """The space's code a study stores, checked against the hash the search recorded, and a sentence saying
    where it comes from: the space file it names, when that file is on disk with the same bytes; else the
    study alone (a study can be edited: read the code before running it)."""
    source = study.user_attrs.get("space_source")
    recorded = str(settings.get("space_sha256"))
    if not isinstance(source, str) or hashlib.sha256(source.encode()).hexdigest() != recorded:
        raise HarnessError(f"The search-space code stored in study {study.study_name!r} is not the code the search "
                           f"ran (its sha256 is not the recorded {recorded[:12]}): the study was changed after the "
                           f"search wrote it. Nothing was written.")
    where = Path(str(settings.get("space_path")))
    try:
        on_disk = hashlib.sha256(where.read_text().encode()).hexdigest()  # as the search hashed it (space_file)
    except OSError:
        on_disk = None
    if on_disk == recorded:
        return source, f"{SAME_AS_FILE} {where} as it is on disk now (sha256 {recorded[:12]})."
    now = "is not on disk" if on_disk is None else f"has changed since (sha256 {on_disk[:12]} now)"
    return source, (f"The space's code below is the copy stored in the study (sha256 {recorded[:12]}): the space file "
                    f"it was searched with, {where}, {now}, so read the code before running it.")


def trial_choices(study, trial, settings: dict, space: Path | None) -> dict:
    """The values the trial's architecture was built from, as the search stored them with the trial. A study
    made before they were stored needs the space file it was searched with (``space``, checked against the
    study's hash): the study's own copy of that code is data, and data is never run."""
    stored = trial.user_attrs.get("choices")
    if stored is not None:
        return _checked_literals(stored, f"trial {trial.number} of study {study.study_name!r}")
    if space is None:
        raise HarnessError(
            f"Trial {trial.number} of study {study.study_name!r} was searched before the harness stored each trial's "
            f"choices, so they can only be rebuilt by running the search space's code. The study holds a copy of that "
            f"code, but a study is data and the harness does not run it. Pass --space with the space file the search "
            f"used ({settings.get('space_path')}); its sha256 must be the study's "
            f"({str(settings.get('space_sha256'))[:12]}).")
    import optuna

    from harness.search.space_file import load_space

    own = load_space(space)
    if own.sha256 != settings.get("space_sha256"):
        raise HarnessError(f"--space {space} is not the space study {study.study_name!r} was searched with (sha256 "
                           f"{own.sha256[:12]}, the study's {str(settings.get('space_sha256'))[:12]}). Pass that file "
                           f"as it was (`git log -- {settings.get('space_path')}`).")
    return own.suggest(optuna.trial.FixedTrial(trial.params))


def _checked_literals(choices, where: str) -> dict:
    """``choices`` if it is a dict of identifier keys to plain values (numbers, booleans, None, strings or lists
    of them), whose repr() is a Python literal of the same value; else a HarnessError: a study can be edited by
    anyone. (Not NaN or infinities: their repr is not a literal.)"""
    def plain(value) -> bool:
        if isinstance(value, list):
            return all(plain(v) for v in value)
        if isinstance(value, float):
            return math.isfinite(value)
        return value is None or isinstance(value, (bool, int, str))

    bad = [k for k, v in choices.items() if not (isinstance(k, str) and k.isidentifier() and plain(v))] \
        if isinstance(choices, dict) else ["(not a mapping)"]
    if bad:
        raise HarnessError(f"The choices stored with {where} are not plain values ({', '.join(map(str, bad))}), so "
                           f"they cannot be written into an architecture file. The study was changed after the search "
                           f"wrote it; export another trial, or search again.")
    return dict(choices)


def _chosen_trial(study, number: int | None, settings: dict):

    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    if number is None:
        if not complete:
            raise HarnessError(f"Study {study.study_name!r} has no completed trial yet: nothing to export.")
        if len(settings["objectives"]) > 1:
            raise ParetoChoice(study)
        return study.best_trial
    trial = next((t for t in study.get_trials(deepcopy=False) if t.number == number), None)
    if trial is None or trial.state.name != "COMPLETE":
        state = "does not exist" if trial is None else f"is {trial.state.name}"
        raise HarnessError(f"Trial {number} of study {study.study_name!r} {state}; only completed trials can be "
                           f"exported (completed: {', '.join(str(t.number) for t in complete) or 'none'}).")
    return trial


class ParetoChoice(HarnessError):
    """--best on a multi-objective study: there is no one best; the caller shows the Pareto set."""

    def __init__(self, study):
        numbers = ", ".join(str(t.number) for t in sorted(study.best_trials, key=lambda t: t.values))
        super().__init__(f"Study {study.study_name!r} has two objectives, so no single best trial: its Pareto set is "
                         f"trials {numbers} (above). Pick one and pass --trial N.")
        self.study = study
