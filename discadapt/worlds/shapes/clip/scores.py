"""Image-text scores of the world CLIP: pairwise (`clip_scores`) and multiple choice (`clip_logits`), both the
logit scale times the cosine similarity of the projected embeddings, as `CLIPModel.forward`'s `logits_per_image`.

Example:
    >>> from discadapt.worlds.shapes import make_dataset, render
    >>> model = make_world_clip(WorldClipSizes.tiny(), seed=0)
    >>> example = make_dataset(1, split="test_id", image_size=32)[0]
    >>> choices = [example.caption.text] + [n.caption.text for n in example.negatives]
    >>> clip_logits(model, render(example.scene)[None], [choices]).shape
    torch.Size([1, 2])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from transformers import CLIPModel

from .config import EVAL_BATCH, _check_int
from .inputs import encode_images, encode_texts, preprocess
from .model import logit_scale

__all__ = ["clip_logits", "clip_scores"]


@torch.no_grad()
def clip_scores(model: CLIPModel, images, texts: Sequence[str], batch_size: int = EVAL_BATCH) -> torch.Tensor:
    """Pairwise scores: logit scale times the cosine similarity of `images[i]` and `texts[i]`.

    Args:
        model (CLIPModel): a world CLIP (`make_world_clip`, `load_world_clip`).
        images: uint8 `(N, S, S, 3)` (see `preprocess`).
        texts (Sequence[str]): N captions.
        batch_size (int): images per forward pass. Default 256.

    Returns:
        torch.Tensor: float `(N,)` on the CPU.

    Example:
        >>> clip_scores(model, np.stack([render(e.scene) for e in examples]), [e.caption.text for e in examples])
        ... # doctest: +SKIP
    """
    pixels = preprocess(images)  # (N, 3, S, S)
    if isinstance(texts, str) or len(texts) != len(pixels):
        raise ValueError(f"`texts` is {texts!r}; pass a list of one caption string per image ({len(pixels)}).")
    texts = list(texts)
    _check_int("batch_size", batch_size, 1)
    model = model.eval()
    scale, out = logit_scale(model), []
    for start in range(0, len(pixels), batch_size):
        image = F.normalize(encode_images(model, pixels[start : start + batch_size]), dim=-1)  # (n, P)
        text = F.normalize(encode_texts(model, texts[start : start + batch_size]), dim=-1)  # (n, P)
        out.append(scale * (image * text).sum(-1))
    return torch.cat(out).float().cpu()


@torch.no_grad()
def clip_logits(
    model: CLIPModel, images, texts_per_image: Sequence[Sequence[str]], batch_size: int = EVAL_BATCH
) -> torch.Tensor:
    """Multiple choice: the score of each image against each of its own candidate captions.

    Args:
        model (CLIPModel): a world CLIP.
        images: uint8 `(N, S, S, 3)` (see `preprocess`).
        texts_per_image (Sequence[Sequence[str]]): N lists of candidate captions (lengths may differ).
        batch_size (int): images per forward pass. Default 256.

    Returns:
        torch.Tensor: float `(N, K)` on the CPU, K the longest list; entry (i, k) is `clip_scores` of image i and
        its caption k, and -inf where image i has fewer than k + 1 candidates.

    Example:
        >>> logits = clip_logits(model, images, [[e.caption.text] + [n.caption.text for n in e.negatives]
        ...                                      for e in examples])  # doctest: +SKIP
        >>> correct = logits[:, 0] > logits[:, 1:].max(dim=1).values  # doctest: +SKIP
    """
    pixels = preprocess(images)  # (N, 3, S, S)
    if isinstance(texts_per_image, str) or len(texts_per_image) != len(pixels):
        raise ValueError(
            f"`texts_per_image` has {len(texts_per_image)} entries for {len(pixels)} images; pass one list of "
            "candidate captions per image."
        )
    for i, choices in enumerate(texts_per_image):
        if isinstance(choices, str) or not len(choices):
            raise ValueError(f"`texts_per_image[{i}]` is {choices!r}; pass a non-empty list of caption strings.")
    _check_int("batch_size", batch_size, 1)
    model = model.eval()
    scale = logit_scale(model)
    width = max(len(c) for c in texts_per_image)
    logits = torch.full((len(pixels), width), float("-inf"))
    for start in range(0, len(pixels), batch_size):
        chunk = texts_per_image[start : start + batch_size]
        image = F.normalize(encode_images(model, pixels[start : start + batch_size]), dim=-1)  # (n, P)
        flat = [t for choices in chunk for t in choices]
        owner = torch.tensor([i for i, choices in enumerate(chunk) for _ in choices])  # (m,)
        column = torch.tensor([k for choices in chunk for k in range(len(choices))])  # (m,)
        text = F.normalize(encode_texts(model, flat), dim=-1)  # (m, P)
        values = scale * (image[owner.to(image.device)] * text).sum(-1)  # (m,)
        logits[start + owner, column] = values.float().cpu()
    return logits
