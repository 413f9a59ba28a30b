"""FID reference statistics: one writer when many processes need the same one, and a fallback from
clean-fid's statistics that is said and cached under its own key, never under clean-fid's."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.protocol.data import load_images
from harness.protocol.fid import InceptionFeatures
from harness.protocol.reference import get_reference
from harness.protocol.tasks import resolve_task

SMALL_DATA = {"data.num_images": 48, "evaluation.feature_batch_size": 16}

# one process of a sweep reaching its first evaluation: waits at a barrier with the others, then asks for
# the reference; prints whether it computed it
WORKER = """
import json, sys, time, torch
from pathlib import Path
torch.set_num_threads(1)
from harness.protocol.data import load_images
from harness.protocol.fid import InceptionFeatures
from harness.protocol.reference import get_reference
from harness.protocol.tasks import resolve_task
spec = resolve_task("shapes", "smoke", json.loads(sys.argv[3]))
features = InceptionFeatures(torch.device("cpu"))
barrier, me, count = Path(sys.argv[1]), sys.argv[2], int(sys.argv[4])
(barrier / me).touch()
while len(list(barrier.iterdir())) < count:
    time.sleep(0.01)
notes = []
ref = get_reference(spec.data, spec.evaluation, features, lambda: load_images(spec.data, None), None, notes.append)
print(json.dumps({"computed": ref.computed, "path": str(ref.path), "mu": ref.mu[:4].tolist(), "notes": notes}))
"""


@pytest.mark.slow  # three processes load Inception at once (about 40 s on 2 cores)
def test_many_processes_needing_one_reference_compute_it_once(tmp_path):
    barrier, cache = tmp_path / "barrier", tmp_path / "cache"
    barrier.mkdir()
    env = dict(os.environ, HARNESS_CACHE_DIR=str(cache), OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    settings = json.dumps(dict(SMALL_DATA, **{"evaluation.reference_images": 48}))
    workers = [subprocess.Popen([sys.executable, "-c", WORKER, str(barrier), str(i), settings, "3"], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(3)]
    outputs = [w.communicate(timeout=300) for w in workers]
    assert all(w.returncode == 0 for w in workers), [err[-2000:] for _, err in outputs]
    results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
    assert sum(r["computed"] for r in results) == 1  # one writer; the others waited and read its file
    # the long work is announced, never silent: the writer says what it computes and when it is done, a process
    # that finds another one computing says it waits
    (writer,) = [r for r in results if r["computed"]]
    assert [n.split(" (")[0] for n in writer["notes"][:1]] == [
        "FID reference: computing the Inception features of 48 training images"]
    assert writer["notes"][1].startswith("FID reference: computed from 48 images in ")
    waited = [r for r in results if not r["computed"] and r["notes"]]
    assert waited and all(r["notes"] == [f"FID reference: waiting for another process that is computing "
                                         f"{Path(r['path']).name}"] for r in waited)
    assert len({r["path"] for r in results}) == 1 and len({json.dumps(r["mu"]) for r in results}) == 1
    leftovers = [p.name for p in (cache / "fid_refs").iterdir() if not p.name.endswith((".npz", ".lock"))]
    assert leftovers == []  # no temporary file left behind


def test_a_reference_clean_fid_cannot_serve_is_computed_said_and_cached_as_computed():
    features = InceptionFeatures(torch.device("cpu"))
    # a name clean-fid has no statistics for: offline the download fails, online it is a 404; either way
    asked = resolve_task("shapes", "smoke", dict(SMALL_DATA, **{"evaluation.reference": "cleanfid:no_such_set/train/32",
                                                                "evaluation.reference_images": None}))

    def images():
        return load_images(asked.data, None)

    first = get_reference(asked.data, asked.evaluation, features, images)
    assert first.substitution and "cleanfid:no_such_set/train/32 could not be fetched" in first.substitution
    assert first.source == "computed from 48 training images"
    # the same file a run asking for the local data gets: cached under the computed key, not clean-fid's
    local = resolve_task("shapes", "smoke", dict(SMALL_DATA, **{"evaluation.reference_images": None}))
    second = get_reference(local.data, local.evaluation, features, images)
    assert second.path == first.path and second.substitution is None and not second.computed
    again = get_reference(asked.data, asked.evaluation, features, images)  # asked again: tried again, said again
    assert again.substitution and not again.computed and np.array_equal(again.mu, first.mu)


def test_a_run_says_and_records_every_substitution(tiny_arch, tmp_path):
    from conftest import FAST

    from harness.launch import run

    lines = []
    overrides = dict(FAST, **{"evaluation.reference": "cleanfid:no_such_set/train/32",
                              "evaluation.reference_images": None,
                              "data.num_images": 48, "training.precision": "bf16", "evaluation.precision": "bf16"})
    record = run("shapes", str(tiny_arch), "smoke", 1, device="auto", results_dir=tmp_path, overrides=overrides,
                 progress=False, log=lines.append)
    said = [line for line in lines if line.startswith("Substitution: ")]
    whats = [n["what"] for n in record.substitutions]
    assert whats[:1] == ["device"] and {"training.precision", "evaluation.precision", "FID reference"} <= set(whats)
    assert len(said) == len(record.substitutions)  # each one line, said once
    assert record.precision == record.eval_precision == "fp32"
    assert record.reference["substitution"] and record.reference["asked"] == "cleanfid:no_such_set/train/32"
    log = (Path(tmp_path) / "shapes" / "tiny" / "smoke" / "seed1" / "run.log").read_text()
    assert all(line in log for line in said)


@pytest.fixture
def cleanfid_set():
    """A data set name of this test's own in clean-fid's stats folder (where clean-fid keeps what it
    downloads, and never fetches an existing file again): ``put(suffix, **arrays)`` places a file there
    as a finished download would; every file of the name is removed afterwards."""
    import uuid

    import cleanfid

    stats = Path(cleanfid.__file__).parent / "stats"
    made = not stats.exists()
    stats.mkdir(exist_ok=True)
    if not os.access(stats, os.W_OK):
        pytest.skip(f"clean-fid's stats folder {stats} is not writable here")
    name = f"harness_test_{uuid.uuid4().hex[:8]}"

    def put(suffix, **arrays):
        np.savez(stats / f"{name}_clean_train_32{suffix}.npz", **arrays)

    put.name, put.stats = name, stats
    yield put
    for path in stats.glob(f"{name}_*"):
        path.unlink()
    if made and not any(stats.iterdir()):
        stats.rmdir()


def test_kid_features_that_cannot_be_fetched_are_a_recorded_substitution_and_fetched_again(
        cleanfid_set, tiny_arch, tmp_path):
    from conftest import FAST

    from harness.launch import run

    # clean-fid's FID statistics are here, its KID features are not: offline their download fails, online
    # it is a 404 (no such set on clean-fid's server); either way, not a file clean-fid has
    rng = np.random.default_rng(0)
    cleanfid_set("", mu=np.zeros(2048), sigma=np.eye(2048))
    asked = f"cleanfid:{cleanfid_set.name}/train/32"
    overrides = dict(FAST, **{"evaluation.reference": asked, "evaluation.reference_images": None})
    lines = []
    first = run("shapes", str(tiny_arch), "smoke", 1, device="cpu", results_dir=tmp_path / "first",
                overrides=overrides, progress=False, log=lines.append)
    (note,) = [n for n in first.substitutions if n["what"] == "kid"]
    assert note["used"] == "none" and asked in note["asked"] and "could not be fetched" in note["why"]
    assert "Error" in note["why"]  # the download's error, named (URLError offline, HTTPError online)
    assert [line for line in lines if line.startswith("Substitution: ") and "KID" in line]  # said, not only kept
    assert first.evaluations[-1]["kid"] is None and first.reference["source"] == f"clean-fid precomputed {asked}"
    assert not [n for n in first.substitutions if n["what"] == "FID reference"]  # the FID's statistics were there
    cache = Path(first.reference["cache_file"])
    with np.load(cache) as z:
        assert z["kid_features"].size == 0  # what was fetched (mu, sigma) is cached; no KID is not taken for final
    # The next run asks again: the features are there now, so it has a KID, read from the file clean-fid fetched.
    features = rng.standard_normal((200, 2048)).astype(np.float32)
    cleanfid_set("_kid", feats=features)
    second = run("shapes", str(tiny_arch), "smoke", 1, device="cpu", results_dir=tmp_path / "second",
                 overrides=overrides, progress=False)
    assert second.evaluations[-1]["kid"] is not None
    assert not [n for n in second.substitutions if n["what"] == "kid"]
    with np.load(cache) as z:
        assert np.array_equal(z["kid_features"], features)  # now cached: clean-fid's file is no longer needed
    (cleanfid_set.stats / f"{cleanfid_set.name}_clean_train_32_kid.npz").unlink()
    spec = resolve_task("shapes", "smoke", overrides)
    again = get_reference(spec.data, spec.evaluation, InceptionFeatures(torch.device("cpu")), lambda: None)
    assert np.array_equal(again.kid_features, features) and again.kid_substitution is None


def test_the_covariance_root_is_kept_beside_the_reference_and_read_back_unchanged(tmp_path):
    """The root every FID uses is computed once per machine: the next process reads the same bytes; a
    damaged file is computed again; other statistics (a rewritten reference) never meet a stale root."""
    from harness.protocol import reference as module
    from harness.protocol.fid import symmetric_sqrt

    rng = np.random.default_rng(0)
    features = rng.standard_normal((300, 64))
    sigma = np.cov(features, rowvar=False)
    path = tmp_path / "fid_refs" / "shapes-0123.npz"
    path.parent.mkdir()
    path.write_bytes(b"a reference")
    ref = module.Reference(features.mean(0), sigma, None, "test", 300, path)
    assert not module.root_cached(path)
    computed = ref.sigma_root
    assert np.array_equal(computed, symmetric_sqrt(sigma)) and module.root_cached(path)
    kept = module.root_path(sigma, path)
    module._ROOTS.clear()  # a new process
    assert np.array_equal(module.Reference(ref.mu, sigma, None, "test", 300, path).sigma_root, computed)
    kept.write_bytes(kept.read_bytes()[:100])  # a file cut short (a full disk, a kill before the rename)
    module._ROOTS.clear()
    assert np.array_equal(module.Reference(ref.mu, sigma, None, "test", 300, path).sigma_root, computed)
    assert np.array_equal(np.load(kept), computed)  # and written again whole
    other = np.cov(features[:200], rowvar=False)
    assert module.root_path(other, path) != kept
    module._ROOTS.clear()
    assert np.array_equal(module.Reference(ref.mu, other, None, "test", 200, path).sigma_root, symmetric_sqrt(other))


def test_a_covariance_root_that_cannot_be_kept_costs_time_not_the_run(tmp_path, monkeypatch):
    """A full disk or a read-only cache when the root is written: the root is still returned (and computed
    again by the next process), the run goes on."""
    from harness.errors import CannotWrite
    from harness.protocol import reference as module
    from harness.protocol.fid import symmetric_sqrt

    def full(path, data):
        raise CannotWrite(f"no space left to write {path}")

    sigma = np.cov(np.random.default_rng(1).standard_normal((100, 16)), rowvar=False)
    path = tmp_path / "shapes-x.npz"
    path.write_bytes(b"a reference")
    monkeypatch.setattr(module, "atomic_write_bytes", full)
    module._ROOTS.clear()
    root = module.Reference(np.zeros(16), sigma, None, "test", 100, path).sigma_root
    assert np.array_equal(root, symmetric_sqrt(sigma)) and not module.root_cached(path)
