"""Training images from a folder of image files (``data.dataset: folder``): CelebA, FFHQ, LSUN, your own PNGs.

Every image file under ``data.path`` (recursively, in sorted order; hidden files and folders skipped) is
decoded with PIL, turned as its EXIF orientation says (as a viewer shows it), brought to 8 bits per sample
(16-bit samples keep their high byte; 32-bit integer and floating-point images are refused), converted to
RGB and brought to ``image_size`` x ``image_size`` as ``data.fit`` says: ``center_crop`` (PIL's
``ImageOps.fit``: the largest centred square, resized), ``stretch`` (resized as it is) or ``exact`` (refused
unless already that size), with ``data.resample`` (bicubic by default). ``data.num_images`` takes a uniform
random sample of the listing, seeded by ``data.seed`` (``sample_indices``; the FID reference and its KID
features are drawn by the same rule), so a folder sorted into class sub-folders is not cut to its first classes.
Decoding a large folder takes minutes, so the result is cached as one ``.npy`` under the harness cache,
keyed by the folder's listing (every file's path, size and modification time), those settings and the rules
above: a changed folder is decoded again. ``folder_identity`` is that key; the FID reference is keyed by it too.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from harness.errors import HarnessError
from harness.files import atomic_write_with
from harness.protocol.spec import FOLDER_FITS, DataSpec

FOLDER_SIZES = (32, 64)
FITS = FOLDER_FITS
RESAMPLES = {"bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS,
             "bilinear": Image.Resampling.BILINEAR, "box": Image.Resampling.BOX}
CHANNELS = {1: "grayscale", 2: "grayscale with alpha", 3: "RGB", 4: "RGBA or CMYK"}
# How files become images, named in the cache keys: a new rule gets new caches, never an old one's images.
DECODING = "EXIF orientation applied; 16-bit samples scaled to 8 bits by value >> 8"
SUBSET_RULE = "uniform random sample without replacement, seeded by data.seed, kept in listing order"
# One stream of the seed for each subset drawn, so that they do not depend on each other's sizes.
STREAMS = {"num_images": 0, "reference": 1, "kid": 2}
# PIL modes of 16-bit unsigned samples (PNG and TIFF); np.asarray reads each in its byte order.
SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N")


def sample_indices(total: int, count: int | None, seed: int, purpose: str) -> np.ndarray:
    """Which ``count`` of ``total`` items a subset holds: int64 [count], ascending, a uniform random sample
    without replacement from numpy's PCG64 seeded by (``seed``, the stream of ``purpose``: see STREAMS);
    all of them, in order, when ``count`` is None or at least ``total``. A permutation, not
    ``Generator.choice``: numpy keeps its permutation stream stable, so a cached subset stays reproducible."""
    if count is None or count >= total:
        return np.arange(total)
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([STREAMS[purpose], seed % 2 ** 64])))
    return np.sort(rng.permutation(total)[:count])


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
    modification time), the settings and the rules that turn files into images."""
    root = Path(data.path)
    files = _listing(root)
    digest = hashlib.sha256()
    for p in files:
        stat = p.stat()
        digest.update(f"{p.relative_to(root)}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
    identity = {"path": str(root), "files": len(files), "listing_sha256": digest.hexdigest(),
                "image_size": data.image_size, "fit": data.fit, "resample": data.resample,
                "num_images": data.num_images, "decoding": DECODING}
    if data.num_images and data.num_images < len(files):  # the seed picks the images only when it draws a subset
        identity.update(subset=SUBSET_RULE, seed=data.seed)
    return files, identity


def folder_identity(data: DataSpec) -> dict:
    """What keys the folder's decoded images and its FID reference (see _scan)."""
    return _scan(data)[1]


def _named(paths: list[Path], root: Path, count: int = 5) -> str:
    shown = ", ".join(str(p.relative_to(root)) for p in paths[:count])
    return shown + (f" and {len(paths) - count} more" if len(paths) > count else "")


def _eight_bit(image: Image.Image, file_format: str | None) -> Image.Image | str:
    """``image`` with 8-bit samples, or why it cannot be brought to them faithfully. PIL's convert("RGB")
    clips a 16-bit image at 255 (a 0..65535 ramp would be 99.6% white). Its high byte is kept instead
    (value >> 8): PIL itself reads 16-bit RGB, RGBA and grey-alpha PNGs so, and a 16-bit grayscale file then
    gives the same bytes as its RGB copy; it is within 1 of round(value / 257) and undoes the 8-to-16-bit
    widening (v * 257) exactly. A 32-bit integer or floating-point image has no fixed range: refused."""
    if image.mode in SIXTEEN_BIT or (image.mode == "I" and file_format == "PNG"):  # PNG samples are <= 16 bits
        samples = np.asarray(image).astype(np.uint16)  # [H,W], 0..65535, native byte order
        return Image.fromarray((samples >> 8).astype(np.uint8), mode="L")
    if image.mode == "I":
        return "32-bit integer samples (PIL mode I)"
    if image.mode == "F":
        return "floating-point samples (PIL mode F)"
    return image


def _decode(path: Path, size: int, fit: str, resample: int) -> tuple[np.ndarray | None, int, tuple[str, str] | None]:
    """(uint8 [S,S,3], channel count, None) or (None, channels, (what is wrong: "read", "size" or "depth", detail))."""
    try:
        with Image.open(path) as image:
            image.load()
            file_format = image.format  # the transposed copy below has none
            # a phone photo stores its pixels as the sensor saw them and says in EXIF how to turn them
            image = ImageOps.exif_transpose(image)
            if image.mode == "P":  # a palette: its colours (and transparency) are the channels
                image = image.convert("RGBA" if "transparency" in image.info else "RGB")
            channels = len(image.getbands())
            if fit == "exact" and image.size != (size, size):
                return None, channels, ("size", f"is {image.size[0]}x{image.size[1]}")
            image = _eight_bit(image, file_format)
            if isinstance(image, str):
                return None, channels, ("depth", image)
            rgb = image.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        return None, 0, ("read", f"cannot be read as an image ({type(exc).__name__})")
    if fit == "center_crop":
        rgb = ImageOps.fit(rgb, (size, size), method=resample, centering=(0.5, 0.5))
    elif fit == "stretch":
        rgb = rgb.resize((size, size), resample=resample)
    return np.asarray(rgb, dtype=np.uint8), channels, None


def _decode_all(data: DataSpec, root: Path, files: list[Path]) -> np.ndarray:
    """The chosen files' images, uint8 [N,3,S,S]: each written into one array allocated up front (no list of
    images and no np.stack, which held the data twice), in the layout the cache and the training keep."""
    files = [files[i] for i in sample_indices(len(files), data.num_images, data.seed, "num_images")]
    size = data.image_size
    images = np.empty((len(files), 3, size, size), dtype=np.uint8)  # [N,3,S,S]
    channels, problems = {}, {"read": [], "size": [], "depth": []}
    for i, path in enumerate(files):
        array, count, problem = _decode(path, size, data.fit, RESAMPLES[data.resample])
        if problem is None:
            images[i] = array.transpose(2, 0, 1)  # [S,S,3] -> [3,S,S]
            channels.setdefault(count, path)
        else:
            problems[problem[0]].append((path, problem[1]))
    if problems["read"]:
        unreadable = [p for p, _ in problems["read"]]
        raise HarnessError(f"{len(unreadable)} of the {len(files)} files in {root} cannot be read as images: "
                           f"{_named(unreadable, root)}. Remove or move them (hidden files are skipped), or "
                           f"convert them to PNG or JPEG.")
    if problems["size"]:
        wrong_size = [p for p, _ in problems["size"]]
        raise HarnessError(f"data.fit is 'exact' but {len(wrong_size)} images in {root} are not "
                           f"{data.image_size}x{data.image_size}: {_named(wrong_size, root)}. Resize them, or set "
                           f"data.fit to center_crop or stretch.")
    if problems["depth"]:
        deep = [p for p, _ in problems["depth"]]
        kinds = sorted({why for _, why in problems["depth"]})
        raise HarnessError(f"{len(deep)} images in {root} have {' or '.join(kinds)}, which cannot be brought to 8 "
                           f"bits without knowing their range: {_named(deep, root)}. Convert them to 8- or 16-bit "
                           f"PNG (scaled as you mean them) or remove them.")
    if len(channels) > 1:
        kinds = "; ".join(f"{CHANNELS.get(c, c)} ({c} channels), e.g. {p.relative_to(root)}"
                          for c, p in sorted(channels.items()))
        raise HarnessError(f"The images in {root} have mixed channel counts: {kinds}. A dataset's images must all "
                           f"have the same channels; convert them to one (e.g. all RGB) first.")
    return images


def _save_array(path: Path, images: np.ndarray) -> None:
    """``images`` as a .npy at ``path``, atomically, written from the array itself: np.save into a real file
    calls ndarray.tofile, so no second copy of the data is made (a BytesIO buffer and its getvalue() held it
    twice more)."""
    atomic_write_with(path, lambda f: np.save(f, images))


def load_folder(data: DataSpec, cache: Path) -> np.ndarray:
    """The folder's images as uint8 ``[N,3,S,S]``, decoded once and then read from ``cache``."""
    files, identity = _scan(data)
    digest = hashlib.sha256(repr(sorted(identity.items())).encode()).hexdigest()[:16]
    path = cache / f"{Path(identity['path']).name}-{data.image_size}px-{digest}.npy"
    if path.is_file():
        return np.load(path)
    images = _decode_all(data, Path(identity["path"]), files)
    _save_array(path, images)
    return images
