"""The world CLIP's inputs: images and texts as the model reads them, and their embeddings.

Images: `preprocess` maps uint8 `(N, S, S, 3)` to float `(N, 3, S, S)` in [-1, 1] (`x / 127.5 - 1`), everywhere.
Texts: `tokenize` pads with the eos token to the longest caption of the batch; with CLIP's causal attention and
pooling at the first eos token this gives the same embedding as padding to 77.

Example:
    >>> tokenize(["a red circle", "two red circles"]).tolist()
    [[49406, 320, 736, 7117, 49407], [49406, 1237, 736, 19411, 49407]]
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import torch
from transformers import CLIPModel

from ....tokenizer import clip_tokenizer
from ..models import CLIP_EOS, MAX_POSITIONS

__all__ = ["encode_images", "encode_texts", "preprocess", "tokenize"]


def preprocess(images) -> torch.Tensor:
    """uint8 images to the model's input: float32 `(N, 3, S, S)` in [-1, 1] (`x / 127.5 - 1`).

    Args:
        images (np.ndarray | torch.Tensor | Sequence[np.ndarray]): uint8 `(N, S, S, 3)`, e.g. `render` outputs
            stacked, or a list of `(S, S, 3)` images.

    Example:
        >>> preprocess(np.zeros((2, 32, 32, 3), np.uint8)).shape
        torch.Size([2, 3, 32, 32])
    """
    if isinstance(images, (list, tuple)):
        if not images:
            raise ValueError("`images` is empty; pass one or more uint8 (S, S, 3) images.")
        images = np.stack([np.asarray(i) for i in images])
    ok = (isinstance(images, np.ndarray) and images.dtype == np.uint8) or (
        isinstance(images, torch.Tensor) and images.dtype == torch.uint8
    )
    if not ok or images.ndim != 4 or images.shape[3] != 3:
        shape = tuple(images.shape) if hasattr(images, "shape") else type(images).__name__
        dtype = str(getattr(images, "dtype", None)).removeprefix("torch.")
        raise ValueError(
            f"`images` has shape {shape} and dtype {dtype}; pass uint8 images of shape (N, S, S, 3), e.g. "
            "np.stack([render(scene) for scene in scenes])."
        )
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(np.ascontiguousarray(images))
    return images.permute(0, 3, 1, 2).float() / 127.5 - 1  # (N, 3, S, S)


@functools.lru_cache(maxsize=1)
def _tokenizer():
    return clip_tokenizer()


@functools.lru_cache(maxsize=65536)
def _ids(text: str) -> tuple[int, ...]:
    return tuple(_tokenizer()(text, truncation=True, max_length=MAX_POSITIONS).input_ids)


def tokenize(texts: Sequence[str]) -> torch.Tensor:
    """CLIP token ids `(N, L)`: bos, tokens, eos, padded with eos (= pad) to the longest text, L <= 77.

    Example:
        >>> tokenize(["a red circle", "two red circles"]).tolist()
        [[49406, 320, 736, 7117, 49407], [49406, 1237, 736, 19411, 49407]]
    """
    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts) or not len(texts):
        raise ValueError(f"`texts` is {texts!r}; pass a non-empty list of caption strings.")
    ids = [_ids(t) for t in texts]
    longest = max(len(i) for i in ids)
    return torch.tensor([list(i) + [CLIP_EOS] * (longest - len(i)) for i in ids])  # (N, L)


def _device(model: CLIPModel) -> torch.device:
    return next(model.parameters()).device


def encode_images(model: CLIPModel, pixels: torch.Tensor) -> torch.Tensor:
    """Projected image embeddings `(N, P)` (not normalised) of preprocessed `pixels` `(N, 3, S, S)`."""
    pooled = model.vision_model(pixel_values=pixels.to(_device(model))).pooler_output  # (N, vision_hidden)
    return model.visual_projection(pooled)  # (N, P)


def encode_texts(model: CLIPModel, texts: Sequence[str]) -> torch.Tensor:
    """Projected text embeddings `(N, P)` (not normalised) of caption strings."""
    pooled = model.text_model(input_ids=tokenize(texts).to(_device(model))).pooler_output  # (N, text_hidden)
    return model.text_projection(pooled)  # (N, P)
