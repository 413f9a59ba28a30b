"""Training images: CIFAR-10 (local folder, tarball, cache, or download), the procedural shapes set, and a
folder of your own images (harness/protocol/folder_data.py).

Each ends as one uint8 tensor ``[N,3,S,S]`` on the training device (CIFAR-10 train is 150 MB),
and ``ImageBatches`` draws shuffled, flipped, [-1,1]-scaled batches from it with device ops
only: no DataLoader workers and no per-step host work. A dataset larger than ``HOST_SHARE`` of the
GPU's memory (a large folder) stays in host memory instead, and each batch is gathered there into
pinned memory and copied to the GPU asynchronously (``keep_on_host``).
"""
from __future__ import annotations

import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import torch

from harness.errors import HarnessError
from harness.protocol.folder_data import load_folder
from harness.protocol.spec import SHAPE_KINDS, DataSpec

CIFAR_FOLDER = "cifar-10-batches-py"
CIFAR_TARBALL = "cifar-10-python.tar.gz"
CIFAR_TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]


def cache_dir() -> Path:
    """Where downloads, reference statistics and Inception lookups are cached."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "diffusion-harness"
    return Path(os.environ.get("HARNESS_CACHE_DIR", default))


# ----------------------------------------------------------------------------- CIFAR-10


# What a CIFAR-10 batch's pickle may name: numpy's array rebuilding (under numpy 1's and 2's module names) and
# the codec Python 3 uses for bytes in protocol 2. Anything else could run code when unpickled, and a real batch
# never holds it (a downloaded or copied file is data, not code).
_CIFAR_GLOBALS = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                  ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}


class _CifarUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _CIFAR_GLOBALS:
            raise pickle.UnpicklingError(f"it names {module}.{name}")
        return super().find_class(module, name)


def _decode_cifar_batch(blob: bytes, name: str) -> np.ndarray:
    try:
        batch = _CifarUnpickler(io.BytesIO(blob), encoding="bytes").load()
    except pickle.UnpicklingError as exc:
        raise HarnessError(f"CIFAR-10 file {name} is not a CIFAR-10 batch: {exc}, which a batch never holds and which "
                           f"could run code if it were unpickled, so it was not. Delete it and download CIFAR-10 again "
                           f"(or pass --data-dir with a copy you trust).") from None
    data = np.asarray(batch[b"data"], dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise HarnessError(f"CIFAR-10 file {name} has data of shape {data.shape}; expected [N, 3072].")
    return data.reshape(-1, 3, 32, 32)  # rows are R (1024), G (1024), B (1024), each row-major


def _read_cifar_folder(folder: Path) -> np.ndarray:
    missing = [b for b in CIFAR_TRAIN_BATCHES if not (folder / b).is_file()]
    if missing:
        raise HarnessError(f"CIFAR-10 folder {folder} lacks {', '.join(missing)}. Re-download or re-extract it.")
    return np.concatenate([_decode_cifar_batch((folder / b).read_bytes(), b) for b in CIFAR_TRAIN_BATCHES])


def _read_cifar_tarball(path: Path) -> np.ndarray:
    with tarfile.open(path, "r:gz") as tar:
        members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
        missing = [b for b in CIFAR_TRAIN_BATCHES if b not in members]
        if missing:
            raise HarnessError(f"{path} lacks {', '.join(missing)}; it is not the CIFAR-10 python tarball.")
        return np.concatenate([_decode_cifar_batch(tar.extractfile(members[b]).read(), b) for b in CIFAR_TRAIN_BATCHES])


def _find_cifar(root: Path) -> Path | None:
    for candidate in (root, root / CIFAR_FOLDER, root / CIFAR_TARBALL):
        if candidate.is_dir() and (candidate / CIFAR_TRAIN_BATCHES[0]).is_file():
            return candidate
        if candidate.is_file() and candidate.name.endswith(".tar.gz"):
            return candidate
    return None


def load_cifar10(data_dir: str | Path | None = None, download: bool = True) -> np.ndarray:
    """CIFAR-10 train as uint8 ``[N,3,32,32]`` from, in order: ``data_dir`` (or env
    HARNESS_DATA_DIR), the harness cache, a torchvision download into the cache."""
    data_dir = data_dir or os.environ.get("HARNESS_DATA_DIR")
    roots = ([Path(data_dir)] if data_dir else []) + [cache_dir() / "cifar10"]
    for root in roots:
        found = _find_cifar(root)
        if found is not None:
            return _read_cifar_folder(found) if found.is_dir() else _read_cifar_tarball(found)
    if data_dir:
        raise HarnessError(
            f"No CIFAR-10 found in --data-dir {data_dir}: expected a '{CIFAR_FOLDER}' folder or "
            f"'{CIFAR_TARBALL}' there (the python version from https://www.cs.toronto.edu/~kriz/cifar.html)."
        )
    target = cache_dir() / "cifar10"
    if download:
        try:
            import torchvision

            target.mkdir(parents=True, exist_ok=True)
            torchvision.datasets.CIFAR10(root=str(target), train=True, download=True)
            return _read_cifar_folder(target / CIFAR_FOLDER)
        except (OSError, RuntimeError) as exc:  # URLError is an OSError; torchvision raises RuntimeError on bad files
            reason = f"{type(exc).__name__}: {exc}"
    else:
        reason = "downloading was turned off"
    raise HarnessError(
        f"CIFAR-10 is not available locally and could not be downloaded ({reason}). Provide it: put "
        f"'{CIFAR_TARBALL}' or the extracted '{CIFAR_FOLDER}' folder in a directory and pass --data-dir DIR "
        f"(or set HARNESS_DATA_DIR), or copy it to {target}. Offline, the 'shapes' task needs no download."
    )


# ----------------------------------------------------------------------------- shapes

def _signed_distance(kind: str, dx: np.ndarray, dy: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Distance-like field of one shape kind, negative inside: dx, dy [M,32,32], r [M,1,1]."""
    ax, ay = np.abs(dx), np.abs(dy)
    if kind == "circle":
        return np.hypot(dx, dy) - r
    if kind == "square":
        return np.maximum(ax, ay) - r * 0.85
    if kind == "triangle":  # pointing down
        return np.maximum(ax * 0.866 + dy * 0.5, -dy) - r * 0.5
    if kind == "ring":
        return np.abs(np.hypot(dx, dy) - r * 0.75) - r * 0.25
    if kind == "diamond":
        return ax + ay - r
    if kind == "cross":
        return np.minimum(np.maximum(ax - r * 0.3, ay - r), np.maximum(ay - r * 0.3, ax - r))
    raise ValueError(kind)


def _shape_masks(kind: np.ndarray, cx, cy, r, yy, xx) -> np.ndarray:
    """Soft (anti-aliased) masks in [0,1], one per shape: kind, cx, cy, r are [M]; yy, xx [32,32]."""
    out = np.empty((len(kind), *xx.shape))
    for index, name in enumerate(SHAPE_KINDS):
        sel = kind == index
        dx = xx[None] - cx[sel, None, None]  # [m,32,32]
        dy = yy[None] - cy[sel, None, None]
        out[sel] = _signed_distance(name, dx, dy, r[sel, None, None])
    return np.clip(0.5 - out, 0.0, 1.0)  # one-pixel anti-aliased edge


def generate_shapes(num_images: int, seed: int, max_shapes: int = 3, radius: tuple[float, float] = (4.0, 10.0),
                    kinds: tuple[str, ...] = SHAPE_KINDS, size: int = 32, background: str = "gradient",
                    chunk: int = 2000) -> np.ndarray:
    """``num_images`` RGB images, uint8 ``[N,3,size,size]``: 1 to ``max_shapes`` (at most 3)
    coloured shapes of the given ``kinds``, of size ``radius`` [min, max) pixels, on a two-colour
    gradient background (or, with ``background="plain"``, the gradient's first colour). Drawn at
    32x32; a smaller ``size`` averages each block of pixels (the same images, at lower
    resolution). The same arguments always give the same bytes: everything is drawn from one
    numpy PCG64 stream in a fixed order, the same draws whatever the other arguments (so a
    variant keeps the colours and places of the default set)."""
    rng = np.random.Generator(np.random.PCG64(seed))
    yy, xx = np.mgrid[0:32, 0:32].astype(np.float64) + 0.5
    images = np.empty((num_images, size, size, 3), dtype=np.uint8)
    for start in range(0, num_images, chunk):
        n = min(chunk, num_images - start)
        # background: linear gradient between two colours along a random direction
        c0, c1 = rng.uniform(0, 1, (2, n, 1, 1, 3))
        if background == "plain":
            c1 = c0
        angle = rng.uniform(0, 2 * np.pi, (n, 1, 1))
        ramp = ((xx - 16) * np.cos(angle) + (yy - 16) * np.sin(angle)) / 45 + 0.5  # [n,32,32]
        canvas = c0 + (c1 - c0) * np.clip(ramp, 0, 1)[..., None]
        count = rng.integers(1, max_shapes + 1, n)
        for slot in range(3):
            kind = rng.integers(0, len(kinds), n)
            if tuple(kinds) != SHAPE_KINDS:  # indices into SHAPE_KINDS
                kind = np.array([SHAPE_KINDS.index(k) for k in kinds])[kind]
            r = rng.uniform(radius[0], radius[1], n)
            cx, cy = rng.uniform(6, 26, (2, n))
            colour = rng.uniform(0, 1, (n, 3))
            mask = _shape_masks(kind, cx, cy, r, yy, xx) * (slot < count)[:, None, None]
            canvas = canvas * (1 - mask[..., None]) + colour[:, None, None, :] * mask[..., None]
        if size != 32:  # [n,32,32,3] -> [n,size,size,3], each output pixel the mean of its block
            f = 32 // size
            canvas = canvas.reshape(n, size, f, size, f, 3).mean(axis=(2, 4))
        images[start : start + n] = np.round(canvas * 255).astype(np.uint8)
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2))


# ----------------------------------------------------------------------------- on-device batches


def load_images(spec: DataSpec, data_dir: str | Path | None = None) -> np.ndarray:
    """The task's training images, uint8 ``[N,3,S,S]`` (S = ``spec.image_size``), on the host."""
    if spec.dataset == "cifar10":
        images = load_cifar10(data_dir)
        return images[: spec.num_images] if spec.num_images else images
    if spec.dataset == "shapes":
        return generate_shapes(spec.num_images or 20000, spec.seed, spec.max_shapes, spec.shape_radius,
                               tuple(spec.shape_kinds), spec.image_size, spec.background)
    if spec.dataset == "folder":
        return load_folder(spec, cache_dir() / "folders")
    raise HarnessError(f"Unknown dataset '{spec.dataset}': use 'cifar10', 'shapes' or 'folder'.")


# A dataset above this share of the GPU's memory stays on the host: the model, its optimizer state, the
# activations and the sampler need the rest (64 px: 200,000 images are 2.5 GB, 1.28 million 15.7 GB).
HOST_SHARE = 0.25


def keep_on_host(nbytes: int, device_memory: int | None, share: float = HOST_SHARE) -> bool:
    """Whether a dataset of ``nbytes`` stays in host memory rather than going to a device of ``device_memory``
    bytes in all (None: the device is the host's own memory, a CPU or Apple's unified memory: nothing to decide)."""
    return device_memory is not None and nbytes > share * device_memory


def _device_memory(device: torch.device) -> int | None:
    return torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else None


class ImageBatches:
    """Epoch-shuffled batches from a uint8 image tensor that lives on the training device (or, above
    ``HOST_SHARE`` of a GPU's memory or with ``on_host``, in host memory: see ``keep_on_host``).

    ``next(gen)`` -> float32 ``[B,3,32,32]`` in [-1,1], each image flipped left-right with
    probability 1/2. Every random draw comes from ``gen`` (on the device), and the position in
    the epoch is part of ``state_dict``, so a resumed run sees exactly the same batches; both
    placements draw the same numbers and so give the same batches. ``placement`` says which was chosen.
    """

    def __init__(self, images: np.ndarray | torch.Tensor, batch_size: int, device: torch.device, flip: bool = True,
                 on_host: bool | None = None):
        images = torch.as_tensor(images)  # uint8 [N,3,S,S]; shares a numpy array's memory
        nbytes, memory = images.numel() * images.element_size(), _device_memory(device)
        self.on_host = keep_on_host(nbytes, memory) if on_host is None else on_host
        # not pinned as a whole: that would copy the data once more and lock it; each batch is (in _gather)
        self.images = images if self.on_host else images.to(device)
        self.placement = "on the device"
        if self.on_host:
            why = f"above {HOST_SHARE:.0%} of the GPU's {memory / 1e9:.1f} GB" if on_host is None else "as asked"
            self.placement = (f"in host memory ({nbytes / 1e9:.2f} GB, {why}): each batch is gathered into pinned "
                              f"memory and copied to the device asynchronously")
        self.host_order = torch.empty(0, dtype=torch.int64)  # this epoch's permutation on the host, to gather there
        if batch_size > len(self.images):
            raise HarnessError(f"Batch size {batch_size} is larger than the dataset ({len(self.images)} images).")
        self.batch_size = batch_size
        self.flip = flip
        self.device = device
        self.order = torch.empty(0, dtype=torch.int64, device=device)  # this epoch's permutation
        self.position = 0

    def next(self, gen: torch.Generator) -> torch.Tensor:
        if self.position + self.batch_size > len(self.order):  # new epoch; drop the ragged tail
            self.order = torch.randperm(len(self.images), generator=gen, device=self.device)
            self.host_order = self.order.cpu() if self.on_host else self.host_order  # one sync an epoch
            self.position = 0
        span = slice(self.position, self.position + self.batch_size)
        self.position += self.batch_size
        batch = self._gather(self.host_order[span]) if self.on_host else self.images[self.order[span]]
        x = batch.float().div_(127.5).sub_(1.0)  # [B,3,S,S] in [-1,1]
        if self.flip:
            flip = torch.rand(self.batch_size, 1, 1, 1, generator=gen, device=self.device) < 0.5
            x = torch.where(flip, x.flip(3), x)
        return x

    def _gather(self, index: torch.Tensor) -> torch.Tensor:
        """The host-held images at ``index`` (int64 [B], on the host), uint8 [B,3,S,S] on the device. A CUDA
        copy from pinned memory with non_blocking returns at once (the host goes on queueing the step's
        kernels); torch's pinned-memory cache keeps the buffer from reuse until that copy has run. Untested
        on a GPU here: tests/test_folder_data.py checks on the CPU that it gives the device path's batches."""
        pin = self.device.type == "cuda"
        staging = torch.empty((len(index), *self.images.shape[1:]), dtype=torch.uint8, pin_memory=pin)
        torch.index_select(self.images, 0, index, out=staging)
        return staging.to(self.device, non_blocking=pin)

    def state_dict(self) -> dict:
        return {"order": self.order.cpu(), "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.order = state["order"].to(self.device)
        self.host_order = state["order"].cpu() if self.on_host else self.host_order
        self.position = state["position"]
