"""The run folder's own files beside the record: the log every message of a run goes to, and the sample grid."""
from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
from PIL import Image

from harness.files import atomic_write_bytes, now

if TYPE_CHECKING:
    import torch  # annotations only: a report reads GRID_FILE from here without loading torch

LOG_FILE = "run.log"
GRID_FILE = "samples.png"


def grid_canvas(images: torch.Tensor, columns: int = 8) -> np.ndarray:
    """uint8 [N,3,H,W] -> uint8 [rows*H, columns*W, 3], ``columns`` images per row."""
    n, c, h, w = images.shape
    rows = -(-n // columns)
    canvas = np.zeros((rows * h, columns * w, c), dtype=np.uint8)
    for i, img in enumerate(images.numpy()):
        r, col = divmod(i, columns)
        canvas[r * h : (r + 1) * h, col * w : (col + 1) * w] = img.transpose(1, 2, 0)
    return canvas


def save_grid(images: torch.Tensor, path: Path, columns: int = 8) -> None:
    """uint8 [N,3,H,W] -> one PNG with ``columns`` images per row."""
    buf = io.BytesIO()
    Image.fromarray(grid_canvas(images, columns)).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


class RunLog:
    """Every message of a run, appended with a UTC time to ``run.log`` in its folder, and echoed."""

    def __init__(self, path: Path, echo: Callable[[str], None]):
        self.path, self.echo, self._file = path, echo, None

    def __enter__(self) -> "RunLog":
        if self.path is not None:  # None: a DDP rank other than 0, which writes no files
            self._file = open(self.path, "a", encoding="utf-8")
        return self

    def __exit__(self, *exc) -> None:
        if self._file is not None:
            self._file.close()
        self._file = None

    def write(self, message: str) -> None:
        if self._file is not None:
            try:
                self._file.write(f"[{now()}] {message}\n")
                self._file.flush()
            except OSError as exc:  # a full disk: say it once, and let the run's own error (its checkpoint's) lead
                with contextlib.suppress(OSError):
                    self._file.close()
                self._file = None
                if self.echo is not None:
                    self.echo(f"Cannot write {self.path} ({exc.strerror or exc}): messages go to the terminal only.")
        if self.echo is not None and not message.startswith("Traceback"):
            self.echo(message)
