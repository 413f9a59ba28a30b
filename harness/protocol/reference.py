"""FID reference statistics of a task's real images, computed (or downloaded) once and cached.

A reference is the mean and covariance of the Inception features of the training images, plus
up to ``KID_FEATURES`` of the features themselves for KID. For CIFAR-10 with the whole train
split, clean-fid's precomputed statistics are used when they can be downloaded; otherwise (said in
the run's log and record) and always for shapes, or for a subset, they are computed with the same
pipeline and cached under the harness cache directory. A cached reference is never recomputed: its
file name is a hash of everything that defines it (dataset, image count, clean-fid mode, Inception
weights). Only clean-fid's KID features are fetched again, by each run asking for KID, while the
cache file lacks them (their download failed): a missing KID is a recorded substitution, never a cached one.
"""
from __future__ import annotations

import hashlib
import io
import json
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from harness import files
from harness.errors import CannotWrite, HarnessError
from harness.files import atomic_write_bytes
from harness.protocol.data import cache_dir
from harness.protocol.fid import InceptionFeatures, mean_cov, symmetric_sqrt
from harness.protocol.folder_data import SUBSET_RULE, folder_identity, sample_indices
from harness.protocol.spec import SHAPE_KINDS, DataSpec, EvaluationSpec

KID_FEATURES = 10_000  # features kept for KID (clean-fid's KID draws subsets of at most 1000)


@dataclass
class Reference:
    mu: np.ndarray  # [2048] float64
    sigma: np.ndarray  # [2048,2048] float64
    kid_features: np.ndarray | None  # [n,2048] float32
    source: str  # "computed from N training images" or "clean-fid precomputed ..."
    num_images: int
    path: Path  # the cache file
    substitution: str | None = None  # why the reference the task asks for was not used, if it was not
    computed: bool = False  # made by this call (not read from the cache)
    kid_substitution: str | None = None  # why there is no KID though evaluation.kid asks for it, if there is none

    @property
    def sigma_root(self) -> np.ndarray:
        """sigma^(1/2) [2048,2048] (every FID and its bootstrap use it): computed once per machine (an
        eigendecomposition, about 2 s on one CPU thread), kept beside the reference file, and once per process."""
        key = (str(self.path), self.path.stat().st_mtime_ns)
        if key not in _ROOTS:
            _ROOTS[key] = _cached_root(self.sigma, self.path)
        return _ROOTS[key]


_ROOTS: dict[tuple[str, int], np.ndarray] = {}


def root_path(sigma: np.ndarray, reference_path: Path) -> Path:
    """Where the covariance root of ``sigma`` is kept: beside its reference, named by a hash of sigma's bytes
    (a reference rewritten with other statistics finds no stale root)."""
    digest = hashlib.sha256(np.ascontiguousarray(sigma).tobytes()).hexdigest()[:16]
    return reference_path.with_name(f"{reference_path.stem}.root-{digest}.npy")


def _cached_root(sigma: np.ndarray, reference_path: Path) -> np.ndarray:
    """The root from its file, or computed and written (atomically); an unreadable file is computed again.
    It is a cache of a deterministic function of sigma, so a folder that cannot be written only costs time."""
    path = root_path(sigma, reference_path)
    try:
        root = np.load(path, allow_pickle=False)
        if root.shape == sigma.shape and root.dtype == sigma.dtype:
            return root
    except (OSError, ValueError, EOFError):
        pass
    root = symmetric_sqrt(sigma)
    buffer = io.BytesIO()
    np.save(buffer, root, allow_pickle=False)
    try:
        atomic_write_bytes(path, buffer.getvalue())
    except (OSError, CannotWrite):  # a full disk, a read-only cache: the next process computes it again
        pass
    return root


def root_cached(reference_path: Path) -> bool:
    """Whether a covariance root was kept beside the reference at ``reference_path`` (for the estimate)."""
    return any(reference_path.parent.glob(f"{reference_path.stem}.root-*.npy"))


def reference_key(data: DataSpec, evaluation: EvaluationSpec, weights_id: str, reference: str | None = None) -> dict:
    """Everything that defines a reference; its hash names the cache file. ``reference`` replaces the
    task's evaluation.reference (the fallback from clean-fid's statistics to the local data)."""
    dataset = {"dataset": data.dataset, "image_size": data.image_size}
    if data.dataset == "shapes":
        dataset.update(num_images=data.num_images, seed=data.seed)
        if data.max_shapes != 3:  # named only when not the default, so that earlier caches keep their names
            dataset.update(max_shapes=data.max_shapes)
        if tuple(data.shape_radius) != (4.0, 10.0):
            dataset.update(shape_radius=list(data.shape_radius))
        if tuple(data.shape_kinds) != SHAPE_KINDS:
            dataset.update(shape_kinds=list(data.shape_kinds))
        if data.background != "gradient":
            dataset.update(background=data.background)
    elif data.dataset == "folder":  # the folder's listing: a changed folder gets a new reference
        # and the rule that draws the reference's images and KID's features from it (a new rule: a new cache)
        dataset.update(folder_identity(data), reference_subset=SUBSET_RULE, seed=data.seed)
    elif data.num_images:
        dataset.update(num_images=data.num_images)
    return {"data": dataset, "reference": reference or evaluation.reference, "images": evaluation.reference_images,
            "mode": evaluation.mode, "inception": weights_id}


def _cache_path(key: dict) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir() / "fid_refs" / f"{key['data']['dataset']}-{digest}.npz"


def _save_atomic(path: Path, **arrays) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())


def _load(path: Path, substitution: str | None = None, computed: bool = False) -> Reference:
    with np.load(path, allow_pickle=False) as z:
        kid = z["kid_features"] if z["kid_features"].size else None
        return Reference(z["mu"], z["sigma"], kid, str(z["source"]), int(z["num_images"]), path, substitution, computed)


_DOWNLOAD_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile)


def _fetch_cleanfid(spec: str, metric: str = "FID") -> tuple:
    """(clean-fid's precomputed statistics for ``cleanfid:NAME/SPLIT/RES``, "") or (None, why not):
    ``metric`` "FID" gives (mu, sigma), "KID" the features."""
    import socket

    import cleanfid
    from cleanfid.features import get_reference_statistics

    name, split, res = spec.split(":", 1)[1].split("/")
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(30)  # an offline machine should fail fast, not hang
    try:
        return get_reference_statistics(name, int(res), mode="clean", split=split, metric=metric), ""
    except _DOWNLOAD_ERRORS as exc:
        # URLError, timeouts, DNS failures; or a file a broken earlier download left truncated: clean-fid
        # writes it in place and never fetches an existing file again, so a damaged one is removed here
        suffix = "_kid" if metric == "KID" else ""
        stats = Path(cleanfid.__file__).parent / "stats" / f"{name}_clean_{split}_{res}{suffix}.npz".lower()
        removed = ""
        if not isinstance(exc, OSError) and stats.is_file():
            stats.unlink(missing_ok=True)
            removed = f"; the damaged file {stats} was removed, so the next run downloads it again"
        return None, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}{removed}"
    finally:
        socket.setdefaulttimeout(previous)


def _cleanfid_reference(path: Path, key: dict, evaluation: EvaluationSpec) -> tuple[Reference | None, str]:
    """clean-fid's statistics from the cache file ``path``, else downloaded and cached there; (None, why)
    when they cannot be fetched. The cache holds the KID features only once they were fetched: a file
    without them (KID failed to download, or a run without KID made it) is never taken as "no KID", so
    every run asking for KID tries again, and ``kid_substitution`` says why there is none this time."""
    cached = _load(path) if path.is_file() else None
    if cached is None:
        stats, why = _fetch_cleanfid(evaluation.reference, "FID")
        if stats is None:
            return None, why
        mu, sigma = stats
    else:
        mu, sigma = cached.mu, cached.sigma
    kid, kid_why = (cached.kid_features if cached is not None else None), ""
    if kid is None and (evaluation.kid or evaluation.manifold_k is not None):  # KID's and the manifold metrics'
        kid, kid_why = _fetch_cleanfid(evaluation.reference, "KID")
    if cached is None or (kid is not None and cached.kid_features is None):
        _save(path, key, mu, sigma, kid, f"clean-fid precomputed {evaluation.reference}", 0)
    reference = _load(path, computed=cached is None)
    if evaluation.kid and reference.kid_features is None:
        reference.kid_substitution = (f"clean-fid's KID features for {evaluation.reference} could not be fetched "
                                      f"({kid_why}): this evaluation has no KID; the next run tries again")
    return reference, ""


def reference_plan(data: DataSpec, evaluation: EvaluationSpec, weights_id: str) -> tuple[str, Path]:
    """What ``get_reference`` would do now, without doing it: ("cached", file), ("download", file) for
    clean-fid's statistics (computed from the local data when they cannot be fetched), or ("compute", file)."""
    key = reference_key(data, evaluation, weights_id)
    if evaluation.reference.startswith("cleanfid:") and evaluation.reference_images is None:
        path = _cache_path(key)
        return ("cached" if path.is_file() else "download"), path
    path = _cache_path(key)
    return ("cached" if path.is_file() else "compute"), path


def check_reference_size(data: DataSpec, evaluation: EvaluationSpec, count: int) -> None:
    """A reference of more images than the dataset has is refused (before training, by the run)."""
    if evaluation.reference_images and count < evaluation.reference_images:
        raise HarnessError(f"The FID reference asks for {evaluation.reference_images:,} images "
                           f"(evaluation.reference_images) but the {data.dataset} dataset has only {count:,}. Add "
                           f"images, or ask for fewer: --set evaluation.reference_images={count}.")


NOTE = "FID reference: "  # starts every line that announces its long work (a sweep's driver prints them)


def get_reference(
    data: DataSpec,
    evaluation: EvaluationSpec,
    features: InceptionFeatures,
    load_images: Callable[[], np.ndarray],
    progress_factory=None,
    announce: Callable[[str], None] | None = None,
) -> Reference:
    """The cached reference, else clean-fid's (when configured and reachable), else computed.

    One process makes a reference at a time (a lock file beside the cache file, held while it is downloaded
    or computed); the others wait and then read it, so a sweep whose runs reach their first evaluation
    together computes it once. When clean-fid's statistics are asked for but cannot be fetched, the
    reference is computed from the local data and cached under the key of a computed one (never under
    clean-fid's), and ``substitution`` on the result says why; when only their KID features cannot,
    ``kid_substitution`` says why, and the next call tries them again. ``announce`` is told, in a line starting
    with NOTE, of every step that may take minutes: a download, a wait for another process, a computation."""
    say = announce or (lambda line: None)
    wanted = evaluation.reference.startswith("cleanfid:") and evaluation.reference_images is None
    key = reference_key(data, evaluation, features.weights_id)
    substitution = None
    if wanted:
        path = _cache_path(key)
        with files.waiting(path.with_name(path.name + ".lock"), lambda: say(f"{NOTE}waiting for another process "
                                                                           f"that is making {path.name}")):
            if not path.is_file():
                say(f"{NOTE}fetching clean-fid's statistics {evaluation.reference} (once, then cached)")
            reference, why = _cleanfid_reference(path, key, evaluation)
            if reference is not None:
                return reference
        substitution = (f"clean-fid's precomputed statistics {evaluation.reference} could not be fetched ({why}): "
                        f"the FID reference is computed from the local training images with the same pipeline "
                        f"instead (cached as a computed reference)")
        key = reference_key(data, evaluation, features.weights_id, reference="dataset")
    path = _cache_path(key)
    with files.waiting(path.with_name(path.name + ".lock"), lambda: say(f"{NOTE}waiting for another process "
                                                                       f"that is computing {path.name}")):
        if path.is_file():
            return _load(path, substitution)
        images = load_images()
        check_reference_size(data, evaluation, len(images))
        images, sampled = reference_subset(data, evaluation, images)
        start = time.perf_counter()
        say(f"{NOTE}computing the Inception features of {len(images):,} training images{sampled} (once: later "
            f"runs read {path.name} from the cache); this can take minutes on a CPU")
        bar = progress_factory(len(images)) if progress_factory else None
        feats = features.of_array(images, evaluation.feature_batch_size, progress=bar)
        if bar is not None:
            bar.close()
        mu, sigma = mean_cov(feats)
        _save(path, key, mu, sigma, feats, f"computed from {len(images)} training images{sampled}", len(images))
        say(f"{NOTE}computed from {len(images):,} images in {time.perf_counter() - start:.0f} s")
        return _load(path, substitution, computed=True)


def reference_subset(data: DataSpec, evaluation: EvaluationSpec, images: np.ndarray) -> tuple[np.ndarray, str]:
    """The images the reference is computed from (uint8 [n,3,S,S]) and how they were chosen, for its source.
    A folder's are a seeded uniform sample (a folder sorted by class would give its first classes); CIFAR-10's
    and shapes' stay the first n, so that their cached references keep their keys and their meaning."""
    count = evaluation.reference_images
    if not count or count >= len(images):
        return images, ""
    if data.dataset == "folder":
        return (images[sample_indices(len(images), count, data.seed, "reference")],
                f" (a uniform random sample of the {len(images)}, seeded by data.seed={data.seed})")
    return images[:count], ""  # their source text as before: the report's fixtures and records hold it


def _save(path: Path, key: dict, mu, sigma, kid, source: str, count: int) -> None:
    if kid is not None and len(kid) > KID_FEATURES:  # a folder's by its subset rule; the others' strided, as cached
        folder = key["data"]["dataset"] == "folder"
        kid = kid[sample_indices(len(kid), KID_FEATURES, key["data"]["seed"], "kid") if folder
                  else np.linspace(0, len(kid) - 1, KID_FEATURES).astype(int)]
    _save_atomic(path, mu=mu, sigma=sigma, kid_features=kid if kid is not None else np.zeros((0, 2048), np.float32),
                 source=np.array(source), num_images=np.array(count), key=np.array(json.dumps(key)))
