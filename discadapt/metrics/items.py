"""Accuracies that keep every item's outcome: right or wrong, its category and its group (e.g. its prompt).

A summed count gives an accuracy but no interval over clusters: a percentile bootstrap that resamples prompts
(`bench.bootstrap_ci(correct, groups=group)`) needs the outcome of every item and the group it belongs to. These
metrics keep them as torchmetrics "cat" states (`add_state(..., dist_reduce_fx="cat")`), so several processes'
items are gathered, not summed.

- `ItemAccuracy`: per-item outcomes given as booleans.
- `MultipleChoiceAccuracy`: a positive against its hard negatives, from a `(B, 1 + k)` score table (positive in
  column 0, -inf pads): right when the positive scores strictly higher than every negative (a tie is a miss), the
  one rule `losses.multiple_choice_accuracy`.
- `JudgeAccuracy`: a judge's verdicts on generated images (`ok`, and whether the verdict was `marginal`).

Categories are names (or None); they are kept as 56-bit codes of the name so that processes agree on them without
a shared vocabulary. `compute()` reports the categories passed at construction, in that order, or every category
met, sorted (on several processes, pass `categories`: a process knows only the names it met itself).

Example:
    >>> import torch
    >>> metric = MultipleChoiceAccuracy()
    >>> metric.update(torch.tensor([[2.0, 1.0], [0.0, 0.0]]), categories=["single", "spatial"], groups=[0, 0])
    >>> metric.compute()
    {'all': 0.5, 'single': 1.0, 'spatial': 0.0}
    >>> metric.items()["correct"].tolist(), metric.items()["group"].tolist()
    ([True, False], [0, 0])
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from ..losses import multiple_choice_accuracy

__all__ = ["ItemAccuracy", "JudgeAccuracy", "MultipleChoiceAccuracy", "category_code"]

_NONE = -1  # code of "no category", and the group of an item that forms its own group


def category_code(name: str | None) -> int:
    """A stable int64 code of a category name (the same in every process and run); -1 for None."""
    if name is None:
        return _NONE
    return int.from_bytes(hashlib.blake2b(str(name).encode("utf-8"), digest_size=7).digest(), "big")


def _bools(name: str, values, n: int | None = None) -> torch.Tensor:
    x = torch.as_tensor(values).detach().cpu()
    if x.ndim != 1 or (n is not None and x.shape[0] != n):
        want = "(n,)" if n is None else f"({n},)"
        raise ValueError(f"`{name}` has shape {tuple(x.shape)}; pass {want} booleans, one per item.")
    if x.dtype != torch.bool and not torch.isin(x, torch.tensor([0, 1], dtype=x.dtype)).all():
        raise ValueError(f"`{name}` holds {x.tolist()[:4]!r}; pass booleans (or 0 / 1), one per item.")
    return x.to(torch.long)


class ItemValues(Metric):
    """Base of the metrics that keep every item: its value, category and group (see the module docstring).

    Subclasses name the value state (`_VALUE`, "correct" for accuracies, "score" for scores) and add items with
    `_add(values, categories, groups)`.
    """

    full_state_update = False
    higher_is_better = True
    _VALUE = "correct"

    def __init__(self, categories: Sequence[str] | None = None, **kwargs):
        super().__init__(**kwargs)
        if isinstance(categories, str):
            raise ValueError(f"`categories` is {categories!r}; pass a list of names, e.g. [{categories!r}].")
        self.categories = None if categories is None else tuple(categories)
        self._names = {category_code(c): c for c in self.categories or ()}
        self._met: set[str] = set()  # category names this process has met
        for name in (self._VALUE, "category", "group"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def _labels(self, categories, groups, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """`(category codes (n,), groups (n,))` as int64 tensors, checked."""
        if categories is None:
            categories = [None] * n
        if isinstance(categories, str) or len(categories) != n:
            raise ValueError(f"`categories` is {categories!r}; pass {n} category names (or None), one per item.")
        self._met.update(c for c in categories if c is not None)
        self._names.update({category_code(c): c for c in categories if c is not None})
        codes = torch.tensor([category_code(c) for c in categories], dtype=torch.long)
        if groups is None:
            return codes, torch.full((n,), _NONE, dtype=torch.long)
        group = torch.as_tensor(groups)
        if group.shape != (n,) or group.is_floating_point() or group.dtype == torch.bool or (group < 0).any():
            raise ValueError(f"`groups` is {groups!r}; pass {n} ints >= 0, one per item, or None.")
        return codes, group.to(torch.long)

    def _add(self, values: torch.Tensor, categories, groups) -> None:
        codes, group = self._labels(categories, groups, len(values))
        getattr(self, self._VALUE).append(values.to(self.device))
        self.category.append(codes.to(self.device))
        self.group.append(group.to(self.device))

    def categories_met(self) -> list[str]:
        """The category names this process's items had, sorted (not gathered: a process knows only its own)."""
        return sorted(self._met)

    def set_categories(self, categories: Sequence[str]) -> None:
        """Report `categories`, in this order, from now on (e.g. the categories every process met, gathered)."""
        if isinstance(categories, str):
            raise ValueError(f"`categories` is {categories!r}; pass a list of names, e.g. [{categories!r}].")
        self.categories = tuple(categories)
        self._names.update({category_code(c): c for c in self.categories})

    def _state(self, name: str) -> np.ndarray:
        value = getattr(self, name)
        if isinstance(value, list) and not value:
            return np.zeros(0, dtype=np.int64)
        return dim_zero_cat(value).cpu().numpy()

    def _names_of(self, codes: np.ndarray) -> np.ndarray:
        """Category names (object array, None for none) of category codes."""
        return np.array([None if c == _NONE else self._names.get(int(c), f"category {c}") for c in codes], dtype=object)

    def _reported(self, names: np.ndarray) -> list[str]:
        if self.categories is not None:
            return list(self.categories)
        return sorted({n for n in names.tolist() if n is not None})

    def items(self) -> dict[str, np.ndarray]:
        """Every item so far (gathered over processes), in the order added: `{"correct": bool (n,), "group":
        int64 (n,), "category": object (n,) names or None}`; items without a group get their own negative group."""
        with self.sync_context():  # gathers the processes' items when running distributed
            states = {name: self._state(name) for name in self._defaults}
        group = states["group"].copy()
        alone = group == _NONE
        group[alone] = -2 - np.flatnonzero(alone)  # one group each, distinct from every label >= 0
        out = {name: self._cast(value) for name, value in states.items() if name not in ("category", "group")}
        return {**out, "group": group, "category": self._names_of(states["category"])}

    @staticmethod
    def _cast(values: np.ndarray) -> np.ndarray:
        return values.astype(bool)

    @staticmethod
    def _mean(values: np.ndarray) -> float | None:
        return float(values.mean()) if values.size else None

    def compute(self) -> dict[str, float | None]:
        """`{"all": accuracy, category: accuracy, ...}`; None where no item was counted."""
        values, names = self._cast(self._state(self._VALUE)), self._names_of(self._state("category"))
        return {"all": self._mean(values), **{c: self._mean(values[names == c]) for c in self._reported(names)}}


class ItemAccuracy(ItemValues):
    """Accuracy over items, keeping each item's outcome, category and group (see the module docstring).

    Args:
        categories (Sequence[str] | None): the categories `compute` reports, in order; None: every category met,
            sorted by name. Default None.
        **kwargs: torchmetrics `Metric` options (e.g. `process_group`).

    `update(correct, categories=None, groups=None)`: `correct` `(n,)` booleans; `categories` n names (or None);
    `groups` n ints >= 0 (items of a group are resampled together by the bootstrap), None: each item alone.

    Example:
        >>> metric = ItemAccuracy(["a"])
        >>> metric.update(torch.tensor([True, False, True]), categories=["a", "a", "b"])
        >>> metric.compute()
        {'all': 0.6666666666666666, 'a': 0.5}
    """

    def update(self, correct, categories: Sequence[str | None] | None = None, groups=None) -> None:
        """Add `(n,)` outcomes with their categories and groups (see the class docstring)."""
        self._add(_bools("correct", correct), categories, groups)


class MultipleChoiceAccuracy(ItemAccuracy):
    """A positive against its hard negatives (see the module docstring): one item per row of a score table.

    `update(scores, categories=None, groups=None)`: `scores` `(B, 1 + k)` floats, the positive in column 0, k >= 1
    negatives, -inf where a row has fewer.

    Example:
        >>> metric = MultipleChoiceAccuracy()
        >>> metric.update(torch.tensor([[1.0, 0.5, float("-inf")], [1.0, 1.0, 0.0]]))
        >>> metric.compute()["all"]
        0.5
    """

    def update(self, scores: torch.Tensor, categories: Sequence[str | None] | None = None, groups=None) -> None:
        """Add one item per row of `scores` (see the class docstring)."""
        self._add(multiple_choice_accuracy(scores).cpu().to(torch.long), categories, groups)


class JudgeAccuracy(ItemAccuracy):
    """A judge's verdicts on generated images: accuracy, and the fraction of verdicts the judge marks marginal
    (one reading near its cut-offs would flip them; e.g. the shapes world's oracle).

    `update(verdicts, categories=None, groups=None)`: verdicts with attributes `ok` and `marginal` (bools), e.g.
    `scorers.Judgement`.

    Example:
        >>> from discadapt.scorers import Judgement
        >>> metric = JudgeAccuracy()
        >>> metric.update([Judgement(True), Judgement(False, "found 0 red circles", marginal=True)], ["a", "a"])
        >>> metric.compute(), metric.marginal_fraction()
        ({'all': 0.5, 'a': 0.5}, {'a': 0.5, 'all': 0.5})
    """

    def __init__(self, categories: Sequence[str] | None = None, **kwargs):
        super().__init__(categories, **kwargs)
        self.add_state("marginal", default=[], dist_reduce_fx="cat")

    def update(self, verdicts: Sequence, categories: Sequence[str | None] | None = None, groups=None) -> None:
        """Add one item per verdict (see the class docstring)."""
        verdicts = list(verdicts)
        for v in verdicts[:1]:
            if not hasattr(v, "ok") or not hasattr(v, "marginal"):
                raise ValueError(f"`verdicts` holds {v!r}; pass verdicts with `ok` and `marginal`, e.g. Judgement.")
        self._add(_bools("ok", [bool(v.ok) for v in verdicts]), categories, groups)
        self.marginal.append(_bools("marginal", [bool(v.marginal) for v in verdicts]).to(self.device))

    def marginal_fraction(self) -> dict[str, float | None]:
        """`{category: fraction of marginal verdicts, ..., "all": fraction}` (gathered over processes); None where
        nothing was judged."""
        found = self.items()
        flags, names = found["marginal"], found["category"]
        return {**{c: self._mean(flags[names == c]) for c in self._reported(names)}, "all": self._mean(flags)}
