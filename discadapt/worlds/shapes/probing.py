"""How well image-text scorers tell a held-out caption from its hard negatives, on the world's rendered scenes:
the probing rows of `discadapt demo`.

For each example of a held-out split, the rendered scene is scored against its caption and each of its hard
negatives (swapped attributes or relation, wrong count, color, shape or size; `negatives.py`); the example counts
as right when the caption scores strictly above every negative (text-side multiple choice, as DPT's ITM
evaluation; chance is 1 / (1 + number of negatives), 20-50% here; `metrics.MultipleChoiceAccuracy`). Any
`scorers.Scorer` plugs in: the world CLIP (`clip_scorer`), the diffusion model's own denoising error
(`scorers.DenoisingScorer`, DiffusionITM), the discriminative adapter (`scorers.AdapterScorer`), the oracle
(`scorers.JudgeScorer(suite.OracleJudge())`, always right on rendered scenes).

`adapter_table` adds what only the adapter does: image-side ITM (the scene edited to make a hard negative true, as
the second image) and REC at IoU >= 0.5 on held-out referring expressions (`discadapt.train.evaluate_adapter`).

Example:
    >>> from discadapt.scorers import DenoisingScorer
    >>> from discadapt.worlds.shapes import load_pipeline
    >>> from discadapt.worlds.shapes.probing import hard_negative_table
    >>> table = hard_negative_table({"denoising": DenoisingScorer(load_pipeline())}, n=20)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial

import numpy as np
import torch

from ...bench import Interval, Table, bootstrap_ci
from ...metrics import MultipleChoiceAccuracy
from ...scorers import FunctionScorer, Scorer
from .captions import CATEGORIES
from .dataset import make_dataset
from .palette import check_choice
from .render import render

__all__ = ["adapter_item_results", "adapter_table", "clip_scorer", "hard_negative_accuracy", "hard_negative_table"]

SPLITS = ("test_id", "test_ood")


def clip_scorer(model, name: str = "world CLIP") -> FunctionScorer:
    """The world CLIP's scaled cosine (`clip.clip_scores`) as a `scorers.Scorer` of uint8 `(N, S, S, 3)` images."""
    from .clip import clip_scores

    return FunctionScorer(name, partial(clip_scores, model))


def _check_scorer(scorer) -> Scorer:
    if not isinstance(scorer, Scorer):
        raise ValueError(
            f"`scorer` is a {type(scorer).__name__}; pass a scorers.Scorer (name, score(images, prompts)), e.g. "
            "scorers.FunctionScorer(name, fn) for a function."
        )
    return scorer


def _score_table(scorer: Scorer, examples) -> torch.Tensor:
    """`(n, 1 + k)` scores of each example's rendered scene with its caption (column 0) and its hard negatives,
    -inf where an example has fewer than the most (at least one column of negatives)."""
    images, texts, owner = [], [], []
    for i, e in enumerate(examples):
        candidates = [e.caption.text] + [neg.caption.text for neg in e.negatives]
        image = render(e.scene)
        images += [image] * len(candidates)
        texts += candidates
        owner += [i] * len(candidates)
    scores = scorer.score(np.stack(images), texts).float().cpu()  # (pairs,)
    owner = torch.tensor(owner)
    table = torch.full((len(examples), max(2, int(torch.bincount(owner).max()))), float("-inf"))
    for i in range(len(examples)):
        mine = scores[owner == i]  # caption first, then its negatives
        table[i, : len(mine)] = mine
    return table


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
        scorer (Scorer): a `scorers.Scorer`, `score(images (N, S, S, 3) uint8, texts) -> (N,)`.
        n (int): examples per category and split, >= 1. Default 100.
        splits (Sequence[str]): held-out splits. Default ("test_id", "test_ood").
        categories (Sequence[str]): caption categories. Default all.
        seed (int): dataset seed. Default 0.
        image_size (int): scene side in pixels (the pipeline's image size). Default 32.

    Returns:
        dict[str, Interval]: category -> accuracy with its 95% bootstrap interval over examples.
    """
    scorer = _check_scorer(scorer)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"`n` is {n!r}; pass an int >= 1.")
    categories = [categories] if isinstance(categories, str) else list(categories)
    for category in categories:
        check_choice("category", category, CATEGORIES)
    metric = MultipleChoiceAccuracy(categories)
    for category in categories:
        for split in splits:
            examples = make_dataset(n, split=split, seed=seed, categories=[category], image_size=image_size)
            metric.update(_score_table(scorer, examples), categories=[category] * len(examples))
    items = metric.items()
    return {c: bootstrap_ci(items["correct"][items["category"] == c], seed=seed) for c in categories}


def hard_negative_table(scorers: Mapping[str, Scorer], **options) -> Table:
    """A `bench.Table` of `hard_negative_accuracy` for each scorer (rows) and category (columns).

    Args:
        scorers (Mapping[str, Scorer]): row name -> `scorers.Scorer`.
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
def adapter_item_results(
    pipe, adapter, n: int = 250, t: int = 250, splits: Sequence[str] = SPLITS, seed: int = 0
) -> dict[str, list[bool]]:
    """Per kind of `ADAPTER_KINDS`, one right/wrong per item of `evaluate_adapter` on `n` items of each split (pooled).

    Args:
        pipe: the pipeline whose UNet the adapter reads; adapter (`DiscriminativeAdapter`): the adapter.
        n (int): items per split (a fifth are referring expressions with a box). Default 250.
        t (int): timestep of the noised image the adapter reads. Default 250.
        splits (Sequence[str]): splits, pooled; "train" with the training run's seed gives items it trained on.
            Default ("test_id", "test_ood").
        seed (int): dataset and noise seed. Default 0.
    """
    from ...train.evaluate import evaluate_adapter
    from .adapter_data import ShapeWorldItems

    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"`n` is {n!r}; pass an int >= 1.")
    right = {kind: [] for kind in ADAPTER_KINDS}
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    for split in splits:
        items = ShapeWorldItems(n, split=split, seed=seed, image_size=size)
        found = evaluate_adapter(pipe, adapter, items, timesteps=[t], batch_size=25, seed=seed)["all"]
        for kind in ADAPTER_KINDS:
            total = found[f"n_{kind}"]
            hits = round(found[kind] * total) if total else 0
            right[kind] += [True] * hits + [False] * (total - hits)
    return right


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
    rows = []
    for name, (pipe, adapter) in adapters.items():
        right = adapter_item_results(pipe, adapter, n=n, t=t, splits=splits, seed=seed)
        rows.append([name, *[str(bootstrap_ci(right[kind], seed=seed)) if right[kind] else None for kind in right]])
    return Table(
        f"discriminative adapter on held-out items at t={t} [95% CI]",
        ["adapter", *ADAPTER_KINDS.values()],
        rows,
        note=f"{n} items per split ({', '.join(splits)}), all categories; ITM right when the true pair outscores every "
        "hard negative (text side: chance about 0.28; image side: 0.5); REC right when the most confident box has "
        "IoU >= 0.5 with the referent",
    )
