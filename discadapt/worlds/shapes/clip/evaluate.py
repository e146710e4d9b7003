"""Evaluation of a world CLIP: multiple-choice accuracy per caption category against hard negatives (text side),
per negative kind, and against other images (image side).

Example:
    >>> evaluate_world_clip(load_clip(), n=50)["text"]  # doctest: +SKIP
    {'single': 1.0, 'two_objects': 0.98, ...}
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from transformers import CLIPModel

from ....losses import multiple_choice_accuracy
from ..captions import CATEGORIES
from ..dataset import make_dataset
from ..negatives import KINDS
from ..palette import check_choice
from ..render import render
from ..splits import SPLITS
from .config import EVAL_BATCH, _check_int
from .inputs import encode_images, encode_texts, preprocess
from .loss import valid_pairs
from .scores import clip_logits

__all__ = ["evaluate_world_clip"]


def _normalised_embeddings(model: CLIPModel, images, texts: Sequence[str], batch_size: int):
    """Unit image embeddings `(N, P)` and unit text embeddings `(T, P)`, on the CPU, in batches."""
    pixels, model = preprocess(images), model.eval()
    image = [
        F.normalize(encode_images(model, pixels[s : s + batch_size]), dim=-1) for s in range(0, len(pixels), batch_size)
    ]
    text = [
        F.normalize(encode_texts(model, texts[s : s + batch_size]), dim=-1) for s in range(0, len(texts), batch_size)
    ]
    return torch.cat(image).float().cpu(), torch.cat(text).float().cpu()


@torch.no_grad()
def evaluate_world_clip(
    model: CLIPModel,
    n: int = 200,
    split: str = "test_id",
    seed: int = 0,
    categories: Sequence[str] = CATEGORIES,
    batch_size: int = EVAL_BATCH,
) -> dict:
    """Multiple-choice accuracy of `model` on `n` examples per category of `split`.

    - text side: an example is right when its image scores its caption above every one of its hard negatives;
    - kinds: per negative kind, the fraction of (example, negative of that kind) pairs the caption wins;
    - image side: a caption is right when its own image scores above every other image of the evaluated examples
      of its category of which the caption is false, even with relaxed geometry (`loss.valid_pairs`).

    Args:
        model (CLIPModel): a world CLIP.
        n (int): examples per category, >= 1. Default 200.
        split (str): one of `splits.SPLITS`. Default "test_id".
        seed (int): dataset seed. Default 0.
        categories (Sequence[str]): categories to test. Default all of `captions.CATEGORIES`.
        batch_size (int): images per forward pass. Default 256.

    Returns:
        dict: `text` and `image` (category -> accuracy in [0, 1], plus "all", the mean over categories), `kinds`
        (negative kind -> accuracy, the kinds that occurred), `n`, `split`.

    Example:
        >>> evaluate_world_clip(load_clip(), n=50)["text"]  # doctest: +SKIP
        {'single': 1.0, 'two_objects': 0.98, ...}
    """
    _check_int("n", n, 1)
    check_choice("split", split, SPLITS)
    categories = [categories] if isinstance(categories, str) else list(categories)
    if not categories:
        raise ValueError("`categories` is empty; pass one or more of " + ", ".join(CATEGORIES) + ".")
    for category in categories:
        check_choice("category", category, CATEGORIES)
    image_size = model.config.vision_config.image_size
    text_acc, image_acc, kind_hits = {}, {}, {k: [] for k in KINDS}
    for category in categories:
        examples = make_dataset(n, split=split, seed=seed, categories=[category], image_size=image_size)
        images = np.stack([render(e.scene) for e in examples])  # (n, S, S, 3)
        choices = [[e.caption.text] + [x.caption.text for x in e.negatives] for e in examples]
        logits = clip_logits(model, images, choices, batch_size)  # (n, K)
        text_acc[category] = float(multiple_choice_accuracy(logits).float().mean())
        for e, row in zip(examples, logits):
            for k, negative in enumerate(e.negatives):
                kind_hits[negative.kind].append(bool(row[0] > row[k + 1]))
        # image side: every caption against every image
        image, text = _normalised_embeddings(model, images, [e.caption.text for e in examples], batch_size)
        sims = text @ image.T  # (n captions, n images)
        false = valid_pairs(examples).T  # (n, n): caption a false of scene b
        rivals = sims.masked_fill(~false, float("-inf")).max(dim=1).values  # (n,)
        image_acc[category] = float((sims.diagonal() > rivals).float().mean())
    text_acc["all"] = float(np.mean([text_acc[c] for c in categories]))
    image_acc["all"] = float(np.mean([image_acc[c] for c in categories]))
    kinds = {k: float(np.mean(v)) for k, v in kind_hits.items() if v}
    return {"text": text_acc, "image": image_acc, "kinds": kinds, "n": n, "split": split}
