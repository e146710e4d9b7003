"""Several critics as one: the weighted mean of their scores, normalised within each prompt group.

Critics' scores have different scales (a CLIP logit, minus a denoising error, a 0-10 rating), so each critic's
scores are first normalised among the images that share a prompt (a *prompt group*: the images of one prompt are
compared with each other, never across prompts), then averaged with the weights:

    rank:    r_c(i) = (rank of s_c(i) in its group - 1) / (group size - 1), ascending, ties averaged;
             0.5 for an image alone in its group
    zscore:  z_c(i) = (s_c(i) - mean of its group) / std of its group (population std); 0 where the std is 0
    score(i) = sum_c w_c x_c(i) / sum_c w_c

So an ensemble's scores rank images of one prompt; compared across prompts they mean nothing (every group's mean is
the same). Suggestions: for each image, the first critic (in order) that suggests something for it.

Example:
    >>> ensemble = EnsembleCritic([clip_critic, adapter_critic], method="rank", weights=[1, 2])
    >>> ensemble.score(images, ["a cat"] * 4 + ["a dog"] * 4)  # (8,) in [0, 1]
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from scipy.stats import rankdata

from ...scorers import Scorer
from .base import Suggestion, check_pairs

__all__ = ["METHODS", "EnsembleCritic", "group_normalise"]

METHODS = ("rank", "zscore")


def group_normalise(scores: np.ndarray, prompts: Sequence[str], method: str) -> np.ndarray:
    """`scores` (N,) normalised within each group of equal prompts, by `method` ("rank" or "zscore"); see the module
    docstring.

    Example:
        >>> group_normalise(np.array([3.0, 1.0, 2.0, 5.0]), ["a", "a", "a", "b"], "rank").tolist()
        [1.0, 0.0, 0.5, 0.5]
    """
    if method not in METHODS:
        raise ValueError(f"`method` is {method!r}; pick one of {', '.join(METHODS)}.")
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != (len(prompts),):
        raise ValueError(f"`scores` has shape {scores.shape} for {len(prompts)} prompts; pass one score per prompt.")
    out = np.zeros(len(scores), dtype=np.float64)
    groups: dict[str, list[int]] = {}
    for i, prompt in enumerate(prompts):
        groups.setdefault(prompt, []).append(i)
    for members in groups.values():
        values = scores[members]  # (n,)
        if method == "rank":
            out[members] = (rankdata(values) - 1) / (len(values) - 1) if len(values) > 1 else 0.5
        else:
            std = values.std()
            out[members] = (values - values.mean()) / std if std > 0 else 0.0
    return out


class EnsembleCritic:
    """The weighted mean of several critics' group-normalised scores (see the module docstring).

    Args:
        critics (Sequence[Scorer]): two or more critics (any `scorers.Scorer`; those with `suggest` suggest).
        method (str): "rank" or "zscore". Default "rank".
        weights (Sequence[float] | None): one non-negative weight per critic, not all 0. Default equal weights.
        name (str): default "ensemble (METHOD: NAME, NAME, ...)".
    """

    def __init__(
        self, critics: Sequence[Scorer], method: str = "rank", weights: Sequence[float] | None = None, name: str = ""
    ):
        critics = list(critics) if isinstance(critics, Sequence) else critics
        if not isinstance(critics, list) or len(critics) < 2:
            raise ValueError(f"`critics` is {critics!r}; pass a list of two or more critics.")
        bad = [c for c in critics if not isinstance(c, Scorer)]
        if bad:
            raise ValueError(f"`critics` holds a {type(bad[0]).__name__}; pass scorers.Scorer / Critic objects.")
        if method not in METHODS:
            raise ValueError(f"`method` is {method!r}; pick one of {', '.join(METHODS)}.")
        weights = [1.0] * len(critics) if weights is None else list(weights)
        ok = len(weights) == len(critics) and all(
            isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w) and w >= 0 for w in weights
        )
        if not ok or sum(weights) <= 0:
            raise ValueError(
                f"`weights` is {weights!r}; pass {len(critics)} finite weights >= 0 (one per critic), not all 0."
            )
        self.critics, self.method, self.weights = critics, method, np.asarray(weights, dtype=np.float64)
        self.name = name or f"ensemble ({method}: {', '.join(c.name for c in critics)})"

    def score(self, images_or_latents, prompts: Sequence[str]) -> torch.Tensor:
        """`(N,)` float32 weighted mean of the critics' normalised scores (rank: in [0, 1])."""
        prompts = check_pairs(images_or_latents, prompts)
        total = np.zeros(len(prompts), dtype=np.float64)
        for critic, weight in zip(self.critics, self.weights):
            scores = torch.as_tensor(critic.score(images_or_latents, prompts)).detach().double().cpu().numpy()
            if scores.shape != (len(prompts),) or not np.isfinite(scores).all():
                raise ValueError(
                    f"critic {critic.name!r} gave scores of shape {scores.shape} with non-finite values or the wrong "
                    f"count; a critic gives {len(prompts)} finite scores."
                )
            total += weight * group_normalise(scores, prompts, self.method)
        return torch.from_numpy(total / self.weights.sum()).float()

    def suggest(self, images, prompts: Sequence[str]) -> list[Suggestion | None]:
        """Per pair, the suggestion of the first critic that suggests one, else None."""
        prompts = check_pairs(images, prompts)
        out: list[Suggestion | None] = [None] * len(prompts)
        for critic in self.critics:
            todo = [i for i, s in enumerate(out) if s is None]
            if not todo or not callable(getattr(critic, "suggest", None)):
                continue
            if isinstance(images, (torch.Tensor, np.ndarray)):
                subset = images[todo]
            else:
                subset = [([images] if not isinstance(images, (list, tuple)) else images)[i] for i in todo]
            for i, suggestion in zip(todo, critic.suggest(subset, [prompts[i] for i in todo])):
                out[i] = suggestion
        return out
