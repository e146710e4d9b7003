"""How well image-text scorers tell a held-out caption from its hard negatives, on the world's rendered scenes:
the probing rows of `discadapt demo`.

For each example of a held-out split, the rendered scene is scored against its caption and each of its hard
negatives (swapped attributes or relation, wrong count, color, shape or size; `negatives.py`); the example counts
as right when the caption scores strictly above every negative (text-side multiple choice, as DPT's ITM
evaluation; chance is 1 / (1 + number of negatives), 20-50% here). Any scorer `(images, texts) -> (N,)` scores of
pairs plugs in: the world CLIP (`clip_scorer`), the diffusion model's own denoising error (`denoising_scorer`,
DiffusionITM), and the discriminative adapter (`adapter_scorer`).

`adapter_table` adds what only the adapter does: image-side ITM (the scene edited to make a hard negative true, as
the second image) and REC at IoU >= 0.5 on held-out referring expressions (`discadapt.train.evaluate_adapter`).

Example:
    >>> from discadapt.worlds.shapes import load_pipeline
    >>> from discadapt.worlds.shapes.probing import denoising_scorer, hard_negative_table
    >>> table = hard_negative_table({"denoising": denoising_scorer(load_pipeline())}, n=20)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch

from ...bench import Interval, Table, bootstrap_ci
from .captions import CATEGORIES
from .dataset import make_dataset
from .palette import check_choice
from .render import render

__all__ = [
    "Scorer",
    "adapter_scorer",
    "adapter_table",
    "clip_scorer",
    "denoising_scorer",
    "hard_negative_accuracy",
    "hard_negative_table",
]

Scorer = Callable[[np.ndarray, list[str]], torch.Tensor]
"""`(images (N, S, S, 3) uint8, N texts) -> (N,)` scores of the pairs (image i, text i); higher means a better match."""

SPLITS = ("test_id", "test_ood")


def _pixels(images: np.ndarray) -> torch.Tensor:
    """(N, S, S, 3) uint8 -> (N, 3, S, S) float in [0, 1], as `discadapt.scoring` takes images."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255


def clip_scorer(model) -> Scorer:
    """The world CLIP's scaled cosine (`clip.clip_scores`)."""
    from .clip import clip_scores

    return lambda images, texts: clip_scores(model, images, texts)


def denoising_scorer(pipe, num_timesteps: int = 10, batch_size: int = 256) -> Scorer:
    """Minus the pipeline's noise-prediction error (`discadapt.denoising_score`, `num_timesteps` timesteps)."""
    from ...scoring import denoising_score

    def score(images, texts):
        return denoising_score(pipe, _pixels(images), texts, num_timesteps=num_timesteps, batch_size=batch_size)

    return score


def adapter_scorer(pipe, adapter, t: int | Sequence[int] | None = None, batch_size: int = 256) -> Scorer:
    """The discriminative adapter's ITM logit (`discadapt.itm_score`, at timestep(s) `t`)."""
    from ...scoring import itm_score

    def score(images, texts):
        return itm_score(pipe, adapter, _pixels(images), texts, t=t, batch_size=batch_size)

    return score


@torch.no_grad()
def hard_negative_accuracy(
    scorer: Scorer,
    n: int = 100,
    splits: Sequence[str] = SPLITS,
    categories: Sequence[str] = CATEGORIES,
    seed: int = 0,
    image_size: int = 32,
) -> dict[str, Interval]:
    """Per category, the fraction of held-out examples whose caption outscores all its hard negatives.

    Args:
        scorer (Scorer): `(images, texts) -> (N,)` pair scores.
        n (int): examples per category and split, >= 1. Default 100.
        splits (Sequence[str]): held-out splits. Default ("test_id", "test_ood").
        categories (Sequence[str]): caption categories. Default all.
        seed (int): dataset seed. Default 0.
        image_size (int): scene side in pixels (the pipeline's image size). Default 32.

    Returns:
        dict[str, Interval]: category -> accuracy with its 95% bootstrap interval over examples.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"`n` is {n!r}; pass an int >= 1.")
    categories = [categories] if isinstance(categories, str) else list(categories)
    for category in categories:
        check_choice("category", category, CATEGORIES)
    result = {}
    for category in categories:
        right = []
        for split in splits:
            examples = make_dataset(n, split=split, seed=seed, categories=[category], image_size=image_size)
            images, texts, owner = [], [], []
            for i, e in enumerate(examples):
                candidates = [e.caption.text] + [neg.caption.text for neg in e.negatives]
                image = render(e.scene)
                images += [image] * len(candidates)
                texts += candidates
                owner += [i] * len(candidates)
            scores = scorer(np.stack(images), texts).float().cpu()  # (pairs,)
            owner = torch.tensor(owner)
            for i in range(len(examples)):
                mine = scores[owner == i]  # caption first, then its negatives
                right.append(bool(mine[0] > mine[1:].max()) if len(mine) > 1 else True)
        result[category] = bootstrap_ci(right, seed=seed)
    return result


def hard_negative_table(scorers: Mapping[str, Scorer], **options) -> Table:
    """A `bench.Table` of `hard_negative_accuracy` for each scorer (rows) and category (columns).

    Args:
        scorers (Mapping[str, Scorer]): row name -> scorer.
        **options: arguments of `hard_negative_accuracy` (n, splits, categories, seed, image_size).
    """
    categories = list(options.get("categories", CATEGORIES))
    rows = []
    for name, scorer in scorers.items():
        acc = hard_negative_accuracy(scorer, **options)
        rows.append([name, *[str(acc[c]) for c in categories]])
    n, splits = options.get("n", 100), options.get("splits", SPLITS)
    return Table(
        "image-text matching against hard negatives, rendered held-out scenes [95% CI]",
        ["scorer", *categories],
        rows,
        note=f"{n} examples per category and split ({', '.join(splits)}); right when the caption outscores every "
        "hard negative; chance 20-50%",
    )


ADAPTER_KINDS = {"itm_text": "ITM text side", "itm_image": "ITM image side", "rec": "REC (IoU >= 0.5)"}


@torch.no_grad()
def adapter_table(
    adapters: Mapping[str, tuple], n: int = 250, t: int = 250, splits: Sequence[str] = SPLITS, seed: int = 0
) -> Table:
    """A `bench.Table` of each adapter's `evaluate_adapter` accuracies (rows) over held-out items of all categories.

    Args:
        adapters (Mapping[str, tuple]): row name -> `(pipe, adapter)`, the pipeline whose UNet the adapter reads.
        n (int): items per split (a fifth are referring expressions with a box). Default 250.
        t (int): timestep of the noised image the adapter reads. Default 250.
        splits (Sequence[str]): held-out splits, pooled. Default ("test_id", "test_ood").
        seed (int): dataset and noise seed. Default 0.
    """
    from ...train.evaluate import evaluate_adapter
    from .adapter_data import ShapeWorldItems

    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"`n` is {n!r}; pass an int >= 1.")
    rows = []
    for name, (pipe, adapter) in adapters.items():
        right = {kind: [] for kind in ADAPTER_KINDS}
        size = pipe.unet.config.sample_size * pipe.vae_scale_factor
        for split in splits:
            items = ShapeWorldItems(n, split=split, seed=seed, image_size=size)
            found = evaluate_adapter(pipe, adapter, items, timesteps=[t], batch_size=25, seed=seed)["all"]
            for kind in ADAPTER_KINDS:
                total = found[f"n_{kind}"]
                hits = round(found[kind] * total) if total else 0
                right[kind] += [True] * hits + [False] * (total - hits)
        rows.append([name, *[str(bootstrap_ci(right[kind], seed=seed)) if right[kind] else None for kind in right]])
    return Table(
        f"discriminative adapter on held-out items at t={t} [95% CI]",
        ["adapter", *ADAPTER_KINDS.values()],
        rows,
        note=f"{n} items per split ({', '.join(splits)}), all categories; ITM right when the true pair outscores every "
        "hard negative (text side: chance about 0.28; image side: 0.5); REC right when the most confident box has "
        "IoU >= 0.5 with the referent",
    )
