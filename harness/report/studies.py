"""Find the Optuna studies and sweep manifests under a results folder (read-only)."""
from __future__ import annotations

import json
from pathlib import Path


def find_studies(results_dir: Path, unreadable: list | None = None) -> list[dict]:
    """Every study in ``RESULTS_DIR/studies/*.db`` (SQLite) and ``*.journal`` (journal files):
    name, storage, the study, its objectives, its summary and the summary as text. A file Optuna
    cannot open goes into ``unreadable`` as ``{"path", "reason"}`` (the report lists it)."""
    import optuna

    from harness.search.study import load_study, open_storage, summary, summary_text

    found = []
    folder = results_dir / "studies"
    paths = sorted(folder.glob("*.db")) + sorted(folder.glob("*.journal")) if folder.is_dir() else []
    for path in paths:
        url = f"sqlite:///{path.resolve()}" if path.suffix == ".db" else str(path.resolve())
        try:
            storage = open_storage(url, create=False)
            names = sorted(optuna.study.get_all_study_names(storage))
        except Exception as exc:  # a damaged or foreign file: SQLAlchemy's, Optuna's or our own error
            if unreadable is not None:
                cause = exc.__cause__ or exc  # the storage's own error, not open_storage's advice on --storage
                first = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
                unreadable.append({"path": str(path), "reason": f"is not a study Optuna can open ({first})"})
            continue
        for name in names:
            study = load_study(name, storage)
            result = summary(study)
            found.append({"name": name, "storage": url, "study": study, "objectives": result["objectives"],
                          "summary": result, "text": summary_text(result)})
    return found


def read_sweeps(results_dir: Path, unreadable: list | None = None) -> list[dict]:
    """Every sweep manifest; one that cannot be read goes into ``unreadable`` as ``{"path", "reason"}``."""
    manifests = []
    for path in sorted((results_dir / "sweeps").glob("*.json")) if (results_dir / "sweeps").is_dir() else []:
        try:
            manifests.append(json.loads(path.read_text()))
        except (OSError, ValueError) as exc:
            if unreadable is not None:
                reason = f"cannot be read ({exc.strerror})" if isinstance(exc, OSError) else f"is not valid JSON: {exc}"
                unreadable.append({"path": str(path), "reason": reason})
    return manifests
