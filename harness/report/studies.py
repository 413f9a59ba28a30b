"""Find the Optuna studies and sweep manifests under a results folder (read-only)."""
from __future__ import annotations

import json
from pathlib import Path


def find_studies(results_dir: Path) -> list[dict]:
    """Every study in ``RESULTS_DIR/studies/*.db`` (SQLite) and ``*.journal`` (journal files):
    name, storage, the study, its objectives, its summary and the summary as text."""
    import optuna

    from harness.search.study import load_study, open_storage, summary, summary_text

    found = []
    folder = results_dir / "studies"
    paths = sorted(folder.glob("*.db")) + sorted(folder.glob("*.journal")) if folder.is_dir() else []
    for path in paths:
        url = f"sqlite:///{path.resolve()}" if path.suffix == ".db" else str(path.resolve())
        storage = open_storage(url, create=False)
        for name in sorted(optuna.study.get_all_study_names(storage)):
            study = load_study(name, storage)
            result = summary(study)
            found.append({"name": name, "storage": url, "study": study, "objectives": result["objectives"],
                          "summary": result, "text": summary_text(result)})
    return found


def read_sweeps(results_dir: Path) -> list[dict]:
    manifests = []
    for path in sorted((results_dir / "sweeps").glob("*.json")) if (results_dir / "sweeps").is_dir() else []:
        try:
            manifests.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return manifests
