"""What every evaluator shares: checking (image, prompt) pairs, images as PIL, local model folders, embeddings.

- `check_pairs(images, prompts)`: the prompts as a list of N strings, one per image.
- `to_pil(images)`: RGB PIL images from PIL images, `(N, H, W, 3)` uint8 arrays or `(N, 3, H, W)` floats in [0, 1].
- `require_folder(path, source)`: a transformers model folder (config.json and weights), or a FileNotFoundError naming
  the path and where such weights come from, raised before anything loads.
- `features(output)`: the embedding tensor of `get_image_features` / `get_text_features` in transformers 4 and 5.

Example:
    >>> import numpy as np
    >>> to_pil(np.zeros((2, 8, 8, 3), dtype=np.uint8))[0].size
    (8, 8)
    >>> check_pairs(np.zeros((1, 8, 8, 3), dtype=np.uint8), ["a red circle"])
    ['a red circle']
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import PIL.Image
import torch

from ..scorers import as_pixels

__all__ = ["check_pairs", "features", "require_folder", "to_pil"]

_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def _count(images) -> int:
    if isinstance(images, PIL.Image.Image):
        return 1
    if isinstance(images, (list, tuple, np.ndarray, torch.Tensor)):
        return len(images)
    raise ValueError(
        f"`images` is a {type(images).__name__}; pass PIL images, a (N, 3, H, W) float tensor in [0, 1] or a "
        "(N, H, W, 3) uint8 array."
    )


def check_pairs(images, prompts) -> list[str]:
    """`prompts` as a list of N strings, one per image (ValueError otherwise)."""
    n = _count(images)
    if isinstance(prompts, str) or not isinstance(prompts, Sequence) or not all(isinstance(p, str) for p in prompts):
        raise ValueError(f"`prompts` is {prompts!r}; pass a list of strings, one per image ({n}).")
    if len(prompts) != n or n == 0:
        raise ValueError(f"Got {n} images but {len(prompts)} prompts; pass one prompt per image (at least one).")
    return list(prompts)


def to_pil(images) -> list[PIL.Image.Image]:
    """RGB PIL images from PIL images, a `(N, H, W, 3)` uint8 array (or a list of `(H, W, 3)` ones), or a
    `(N, 3, H, W)` float tensor in [0, 1] (rounded to 8 bits)."""
    if isinstance(images, PIL.Image.Image):
        return [images.convert("RGB")]
    if isinstance(images, (list, tuple)) and images and all(isinstance(i, PIL.Image.Image) for i in images):
        return [i.convert("RGB") for i in images]
    if isinstance(images, (list, tuple)) and images and all(isinstance(i, np.ndarray) for i in images):
        images = np.stack(images)
    x = as_pixels(images)  # uint8 (N, H, W, 3) -> float (N, 3, H, W)
    if isinstance(x, torch.Tensor) and x.ndim == 4 and x.shape[1] == 3 and x.is_floating_point():
        if not torch.isfinite(x).all() or x.min() < -1e-3 or x.max() > 1 + 1e-3:
            raise ValueError("`images` is a float tensor with values outside [0, 1]; pass images in [0, 1].")
        array = (x.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        return [PIL.Image.fromarray(a) for a in array]  # (H, W, 3) each
    shape = tuple(x.shape) if hasattr(x, "shape") else type(x).__name__
    raise ValueError(
        f"`images` is {shape}; this critic reads pixels: pass PIL images, a (N, 3, H, W) float tensor in [0, 1] or "
        "a (N, H, W, 3) uint8 array (not latents)."
    )


def require_folder(path, source: str) -> Path:
    """`path` as a Path if it is a transformers model folder (config.json and weights), else FileNotFoundError naming
    the path and `source` (where such weights come from; "{path}" in it is filled in)."""
    folder = Path(os.fspath(path))
    if not (folder / "config.json").is_file() or not any((folder / w).is_file() for w in _WEIGHTS):
        found = sorted(p.name for p in folder.iterdir())[:10] if folder.is_dir() else "no such folder"
        raise FileNotFoundError(
            f"No model at {folder} (config.json and {' or '.join(_WEIGHTS[:1] + _WEIGHTS[2:3])} expected; found: "
            f"{found}); {source.format(path=folder)}."
        )
    return folder


def features(output) -> torch.Tensor:
    """The embedding tensor of `get_image_features` / `get_text_features`: the tensor itself (transformers 4) or
    the output object's `pooler_output` (transformers 5)."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output
