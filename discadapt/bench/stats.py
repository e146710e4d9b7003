"""Confidence intervals for accuracies: a percentile bootstrap that resamples clusters (prompts), not images.

With several images per prompt the images of one prompt are not independent (a prompt the model cannot draw
fails in all its images), so resampling images would make the interval too narrow. `bootstrap_ci` resamples
groups (the `groups` label of each observation, e.g. its prompt index) with replacement and recomputes the pooled
accuracy `sum(successes) / n` of the resampled groups (`scipy.stats.bootstrap`, percentile method, groups' success
counts and sizes paired). Without `groups` every observation is its own group: the ordinary bootstrap.

`paired_difference_ci` compares two methods judged on the same images (same prompts, same seeds): the difference of
their accuracies, with the groups' success counts of both methods resampled together, so the prompt-to-prompt
spread that both share cancels and the interval is narrower than two separate intervals suggest.

Degenerate data, all successes or all failures (or a single group), gives the point interval `[p, p]`: every
resample has the same accuracy. That is what the bootstrap says, not a guarantee; report `n` beside it.

Example:
    >>> from discadapt.bench.stats import bootstrap_ci
    >>> ci = bootstrap_ci([1, 1, 0, 1, 0, 1, 1, 0], groups=[0, 0, 1, 1, 2, 2, 3, 3])
    >>> ci.estimate, ci.n, ci.n_groups
    (0.625, 8, 4)
    >>> bootstrap_ci([1, 1, 1]).low
    1.0
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

__all__ = ["Interval", "bootstrap_ci", "paired_difference_ci"]


@dataclass(frozen=True)
class Interval:
    """An accuracy with its bootstrap confidence interval.

    Attributes:
        estimate (float): the accuracy, successes / n (or a difference of two, in [-1, 1]).
        low (float), high (float): the interval's ends.
        n (int): observations (images).
        n_groups (int): groups (prompts) resampled; equals `n` without groups.
        level (float): confidence level, e.g. 0.95.
    """

    estimate: float
    low: float
    high: float
    n: int
    n_groups: int
    level: float

    def to_dict(self) -> dict:
        """JSON-ready dict of the fields."""
        return asdict(self)

    def __str__(self) -> str:
        return f"{self.estimate:.3f} [{self.low:.3f}, {self.high:.3f}]"


def _pooled(sums: np.ndarray, sizes: np.ndarray, axis: int = -1) -> np.ndarray:
    """Accuracy of resampled groups: their successes over their observations (vectorised along `axis`)."""
    return sums.sum(axis=axis) / sizes.sum(axis=axis)


def _outcomes(name: str, values, binary: bool = True) -> np.ndarray:
    """`values` as int64 0 / 1 outcomes (`binary`) or float64 finite scores, checked."""
    x = np.asarray(values)
    if not binary:
        if x.ndim != 1 or x.size == 0 or x.dtype.kind not in "biuf" or not np.isfinite(x).all():
            raise ValueError(f"`{name}` is {x.shape} {x.dtype}; pass a non-empty 1-d sequence of finite numbers.")
        return x.astype(np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"`{name}` has shape {x.shape}; pass a non-empty 1-d sequence of 0 / 1 outcomes.")
    if x.dtype.kind not in "biuf" or not np.isin(x, (0, 1)).all():
        bad = [v for v in x.tolist() if v not in (0, 1)][:3]
        raise ValueError(f"`{name}` holds {bad!r}; pass outcomes 0 / 1 (or False / True) only.")
    return x.astype(np.int64)


def _check_level(level, n_resamples) -> None:
    if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0 < level < 1:
        raise ValueError(f"`level` is {level!r}; pass a confidence level in (0, 1), e.g. 0.95.")
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, (int, np.integer)) or n_resamples < 1:
        raise ValueError(f"`n_resamples` is {n_resamples!r}; pass an int >= 1, e.g. 9999.")


def _group_index(groups, shape) -> np.ndarray:
    """Index 0..G-1 of each observation's group; each observation alone when `groups` is None."""
    if groups is None:
        return np.arange(shape[0])
    labels = np.asarray(groups)
    if labels.shape != shape:
        raise ValueError(
            f"`groups` has shape {labels.shape} and the outcomes {shape}; pass one group label per outcome."
        )
    return np.unique(labels, return_inverse=True)[1]


def _percentile_bootstrap(data: tuple, statistic, level: float, n_resamples: int, seed: int) -> tuple[float, float]:
    """Ends of the percentile interval of `statistic` over groups resampled together (rows of `data` paired)."""
    result = stats.bootstrap(
        data,
        statistic,
        n_resamples=int(n_resamples),
        paired=True,
        vectorized=True,
        confidence_level=level,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    return tuple(float(v) for v in result.confidence_interval)


def bootstrap_ci(
    successes: Sequence[bool | int] | np.ndarray,
    level: float = 0.95,
    n_resamples: int = 9999,
    seed: int = 0,
    groups: Sequence | np.ndarray | None = None,
    binary: bool = True,
) -> Interval:
    """Percentile bootstrap confidence interval of an accuracy (or a mean score), resampling `groups` when given.

    Args:
        successes (Sequence[bool | int] | np.ndarray): `(n,)` outcomes, each 0 / 1 or False / True, n >= 1.
        level (float): confidence level in (0, 1). Default 0.95.
        n_resamples (int): bootstrap resamples, >= 1. Default 9999 (scipy's default).
        seed (int): seed of the resampling; same inputs and seed, same interval. Default 0.
        groups (Sequence | np.ndarray | None): `(n,)` hashable labels (e.g. prompt indices); observations with the
            same label are resampled together. None: each observation alone. Default None.
        binary (bool): the values are 0 / 1 outcomes; False: any finite scores (e.g. CLIP scores), whose mean is
            estimated the same way. Default True.

    Returns:
        Interval: estimate (successes / n), low, high, n, n_groups, level.

    Raises:
        ValueError: empty `successes`, values other than 0 / 1, `groups` of another length, `level` outside (0, 1),
            or `n_resamples` < 1.

    Example:
        >>> bootstrap_ci([1, 0] * 5)  # 5 of 10: the 2.5th and 97.5th percentiles of Binomial(10, 0.5) / 10
        Interval(estimate=0.5, low=0.2, high=0.8, n=10, n_groups=10, level=0.95)
    """
    x = _outcomes("successes", successes, binary)
    _check_level(level, n_resamples)
    inverse = _group_index(groups, x.shape)
    sums = np.bincount(inverse, weights=x).astype(x.dtype)  # (G,) successes (or summed scores) per group
    sizes = np.bincount(inverse).astype(np.int64)  # (G,) observations per group
    estimate = float(x.sum() / x.size)
    point = Interval(estimate, estimate, estimate, int(x.size), int(sizes.size), float(level))
    if sizes.size < 2 or x.min() == x.max():  # every resample has the same accuracy
        return point
    low, high = _percentile_bootstrap((sums, sizes), _pooled, level, n_resamples, seed)
    return Interval(estimate, low, high, int(x.size), int(sizes.size), float(level))


def _difference(sums_a: np.ndarray, sums_b: np.ndarray, sizes: np.ndarray, axis: int = -1) -> np.ndarray:
    return (sums_a.sum(axis=axis) - sums_b.sum(axis=axis)) / sizes.sum(axis=axis)


def paired_difference_ci(
    a: Sequence[bool | int] | np.ndarray,
    b: Sequence[bool | int] | np.ndarray,
    level: float = 0.95,
    n_resamples: int = 9999,
    seed: int = 0,
    groups: Sequence | np.ndarray | None = None,
    binary: bool = True,
) -> Interval:
    """Percentile bootstrap confidence interval of accuracy(a) - accuracy(b), outcomes of the same observations
    (or of mean(a) - mean(b), scores of the same observations, with `binary=False`).

    Args:
        a, b (Sequence[bool | int] | np.ndarray): `(n,)` outcomes 0 / 1 of two methods; `a[i]` and `b[i]` judge the
            same prompt and seed.
        level, n_resamples, seed, groups, binary: as in `bootstrap_ci`; a resampled group brings both methods'
            outcomes.

    Returns:
        Interval: estimate (mean(a) - mean(b), in [-1, 1]), low, high, n, n_groups, level.

    Example:
        >>> paired_difference_ci([1, 1, 0, 1], [0, 1, 0, 1], groups=[0, 0, 1, 1]).estimate
        0.25
    """
    x, y = _outcomes("a", a, binary), _outcomes("b", b, binary)
    if x.shape != y.shape:
        raise ValueError(f"`a` has {x.size} outcomes and `b` {y.size}; pass outcomes of the same observations.")
    _check_level(level, n_resamples)
    inverse = _group_index(groups, x.shape)
    sums_a, sums_b = (np.bincount(inverse, weights=v).astype(x.dtype) for v in (x, y))
    sizes = np.bincount(inverse).astype(np.int64)
    estimate = float((x.sum() - y.sum()) / x.size)
    diff = sums_a - sums_b
    if sizes.size < 2 or (diff * sizes.sum() == (x.sum() - y.sum()) * sizes).all():  # every resample: the same
        return Interval(estimate, estimate, estimate, int(x.size), int(sizes.size), float(level))
    low, high = _percentile_bootstrap((sums_a, sums_b, sizes), _difference, level, n_resamples, seed)
    return Interval(estimate, low, high, int(x.size), int(sizes.size), float(level))
