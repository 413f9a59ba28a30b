"""Training images from a folder of image files (``data.dataset: folder``): CelebA, FFHQ, LSUN, your own PNGs.

Every image file under ``data.path`` (recursively, in sorted order; hidden files and folders skipped) is
decoded with PIL, converted to RGB and brought to ``image_size`` x ``image_size`` as ``data.fit`` says:
``center_crop`` (PIL's ``ImageOps.fit``: the largest centred square, resized), ``stretch`` (resized
as it is) or ``exact`` (refused unless already that size), with ``data.resample`` (bicubic by default).
Decoding a large folder takes minutes, so the result is cached as one ``.npy`` under the harness cache,
keyed by the folder's listing (every file's path, size and modification time) and those settings: a
changed folder is decoded again. ``folder_identity`` is that key; the FID reference is keyed by it too.
"""
from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from harness.errors import HarnessError
from harness.files import atomic_write_bytes
from harness.protocol.spec import FOLDER_FITS, DataSpec

FOLDER_SIZES = (32, 64)
FITS = FOLDER_FITS
RESAMPLES = {"bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS,
             "bilinear": Image.Resampling.BILINEAR, "box": Image.Resampling.BOX}
CHANNELS = {1: "grayscale", 2: "grayscale with alpha", 3: "RGB", 4: "RGBA or CMYK"}


def _listing(root: Path) -> list[Path]:
    """Every file under ``root``, sorted, hidden ones (and those in hidden folders) left out."""
    if not root.exists():
        raise HarnessError(f"data.path {root} does not exist. Point data.path (in the task file, or --set "
                           f"data.path=DIR) at the folder of your images.")
    if not root.is_dir():
        raise HarnessError(f"data.path {root} is a file, not a folder. Point it at the folder that holds the images.")
    files = sorted(p for p in root.rglob("*") if p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(root).parts))
    if not files:
        raise HarnessError(f"data.path {root} is empty: it holds no image files (hidden files are not read). Put "
                           f"the PNG or JPEG files there, in any sub-folders.")
    return files


def _scan(data: DataSpec) -> tuple[list[Path], dict]:
    """The folder's files, and what defines its images: the listing's hash (every file's path, size and
    modification time) and the settings that turn files into images."""
    root = Path(data.path)
    files = _listing(root)
    digest = hashlib.sha256()
    for p in files:
        stat = p.stat()
        digest.update(f"{p.relative_to(root)}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
    return files, {"path": str(root), "files": len(files), "listing_sha256": digest.hexdigest(),
                   "image_size": data.image_size, "fit": data.fit, "resample": data.resample,
                   "num_images": data.num_images}


def folder_identity(data: DataSpec) -> dict:
    """What keys the folder's decoded images and its FID reference (see _scan)."""
    return _scan(data)[1]


def _named(paths: list[Path], root: Path, count: int = 5) -> str:
    shown = ", ".join(str(p.relative_to(root)) for p in paths[:count])
    return shown + (f" and {len(paths) - count} more" if len(paths) > count else "")


def _decode(path: Path, size: int, fit: str, resample: int) -> tuple[np.ndarray | None, int, str | None]:
    """(uint8 [3,S,S], channel count, None) or (None, 0, why it cannot be used)."""
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode == "P":  # a palette: its colours (and transparency) are the channels
                image = image.convert("RGBA" if "transparency" in image.info else "RGB")
            channels = len(image.getbands())
            if fit == "exact" and image.size != (size, size):
                return None, channels, f"is {image.size[0]}x{image.size[1]}"
            rgb = image.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        return None, 0, f"cannot be read as an image ({type(exc).__name__})"
    if fit == "center_crop":
        rgb = ImageOps.fit(rgb, (size, size), method=resample, centering=(0.5, 0.5))
    elif fit == "stretch":
        rgb = rgb.resize((size, size), resample=resample)
    return np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1), channels, None


def _decode_all(data: DataSpec, root: Path, files: list[Path]) -> np.ndarray:
    files = files[: data.num_images or None]
    images, channels, unreadable, wrong_size = [], {}, [], []
    for path in files:
        array, count, why = _decode(path, data.image_size, data.fit, RESAMPLES[data.resample])
        if why is None:
            images.append(array)
            channels.setdefault(count, path)
        elif why.startswith("is "):
            wrong_size.append(path)
        else:
            unreadable.append(path)
    if unreadable:
        raise HarnessError(f"{len(unreadable)} of the {len(files)} files in {root} cannot be read as images: "
                           f"{_named(unreadable, root)}. Remove or move them (hidden files are skipped), or "
                           f"convert them to PNG or JPEG.")
    if wrong_size:
        raise HarnessError(f"data.fit is 'exact' but {len(wrong_size)} images in {root} are not "
                           f"{data.image_size}x{data.image_size}: {_named(wrong_size, root)}. Resize them, or set "
                           f"data.fit to center_crop or stretch.")
    if len(channels) > 1:
        kinds = "; ".join(f"{CHANNELS.get(c, c)} ({c} channels), e.g. {p.relative_to(root)}"
                          for c, p in sorted(channels.items()))
        raise HarnessError(f"The images in {root} have mixed channel counts: {kinds}. A dataset's images must all "
                           f"have the same channels; convert them to one (e.g. all RGB) first.")
    return np.stack(images)  # uint8 [N,3,S,S]


def load_folder(data: DataSpec, cache: Path) -> np.ndarray:
    """The folder's images as uint8 ``[N,3,S,S]``, decoded once and then read from ``cache``."""
    files, identity = _scan(data)
    digest = hashlib.sha256(repr(sorted(identity.items())).encode()).hexdigest()[:16]
    path = cache / f"{Path(identity['path']).name}-{data.image_size}px-{digest}.npy"
    if path.is_file():
        return np.load(path)
    images = _decode_all(data, Path(identity["path"]), files)
    buffer = io.BytesIO()
    np.save(buffer, images)
    atomic_write_bytes(path, buffer.getvalue())
    return images
