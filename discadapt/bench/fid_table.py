"""FID of each method's images against a folder of real images: a table computed after the images are drawn.

`fid_table(make_fid, reference)` returns a function `images -> Table` for `run_suite(image_tables=...)`: for each
method, a fresh `metrics.FID` (`make_fid()`) gets the reference images as real and the method's images as generated,
in batches; the table lists FID (lower is better) with the image counts. `reference_images(folder, size)` reads a
folder's PNG / JPEG / WebP files, sorted by name, as RGB resized to `size` x `size`.

FID over a few hundred images is biased upwards and noisy: compare methods on the same images and reference set,
and use thousands of images for a number comparable with published ones.

Example:
    >>> from discadapt.metrics import FID
    >>> table = fid_table(lambda: FID("/models/pt_inception-2015-12-05-6726825d.pth"), reference_images("coco", 512))
    >>> run_suite(suite, methods, "out", image_tables=[table])  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch

from .report import Table

__all__ = ["IMAGE_SUFFIXES", "fid_table", "reference_images"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
_BATCH = 50


def reference_images(folder: str | os.PathLike, size: int) -> np.ndarray:
    """`(N, size, size, 3)` uint8: the images of `folder` (sorted by name), RGB, resized with bicubic filtering.

    Raises:
        ValueError: `folder` is not a folder, or holds fewer than 2 images.
    """
    from PIL import Image

    path = Path(folder)
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if path.is_dir() else []
    if len(files) < 2:
        raise ValueError(
            f"`--fid-reference` {str(path)!r} holds {len(files)} images ({', '.join(IMAGE_SUFFIXES)}); pass a folder "
            "of 2 or more real images (thousands for a stable FID)."
        )
    out = []
    for file in files:
        with Image.open(file) as image:
            out.append(np.asarray(image.convert("RGB").resize((size, size), Image.BICUBIC)))
    return np.stack(out)


def _update(fid, images: np.ndarray, real: bool) -> None:
    for start in range(0, len(images), _BATCH):
        batch = torch.from_numpy(images[start : start + _BATCH]).permute(0, 3, 1, 2).float() / 255  # (B, 3, S, S)
        fid.update(batch, real=real)


def fid_table(make_fid: Callable[[], object], reference: np.ndarray) -> Callable[[Mapping[str, np.ndarray]], Table]:
    """A function `images -> Table` of each method's FID against `reference` (see the module docstring).

    Args:
        make_fid (Callable[[], FID]): a fresh `metrics.FID` (or any torchmetrics FID taking float images in [0, 1]).
        reference (np.ndarray): `(M, S, S, 3)` uint8 real images, M >= 2.
    """

    def table(images: Mapping[str, np.ndarray]) -> Table:
        rows, model = [], ""
        for name, found in images.items():
            fid = make_fid()
            model = getattr(fid, "model", type(fid).__name__)
            _update(fid, reference, real=True)
            _update(fid, found, real=False)
            rows.append([name, float(fid.compute()), len(found), len(reference)])
        return Table("FID against the reference images (lower is better)", ["method", "FID", "images", "reference"],
                     rows, note=f"features: {model}; few images bias FID upwards: compare rows of one run")  # fmt: skip

    return table
