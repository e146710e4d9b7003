"""An evaluation suite: the prompts to draw, how many images each, their seeds, and what scores the images.

- `Prompt(text, category, split, group)`: a prompt, the category and split it is reported under, and the group it
  is resampled with by the bootstrap (None: the prompt alone; images of one prompt are always resampled together).
- `Suite(name, prompts, judge, images_per_prompt, seed, metrics=..., pools=...)`: image k of prompt p is drawn with seed
  `image_seed(seed, p.text, k)` (`sampling.seeds`, the seeds of `discadapt generate` too), by every method. The
  judge (a `scorers.Judge`, or None) gives each image a verdict, counted as accuracy; the metrics (`scorers.Scorer`s,
  e.g. the evaluators of `discadapt.evaluators`) give each image a score, reported as means. A pool (a named set of
  categories, e.g. the shapes world's "multi-object") is one more column of the tables: its categories' images
  together.

A world supplies its suites (the shapes world: `worlds/shapes/suite.py`, its held-out prompts and its oracle as the
judge) and registers them (`plugins.Registry.add_suite`); `bench.run_suite` runs methods on one.

Example:
    >>> from discadapt.bench import Prompt, Suite
    >>> from discadapt.scorers import FunctionJudge, Judgement
    >>> judge = FunctionJudge("dark", lambda image, prompt: Judgement(bool(image.mean() < 128)))
    >>> suite = Suite("toy", [Prompt("a red circle", "single"), Prompt("two blue squares", "counting")], judge, 2)
    >>> suite.jobs()
    [(0, 0), (0, 1), (1, 0), (1, 1)]
    >>> len(set(suite.seeds()))
    4
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..sampling.seeds import image_seed
from ..scorers import Judge, Scorer

__all__ = ["Prompt", "Suite"]


@dataclass(frozen=True)
class Prompt:
    """One prompt of a suite.

    Attributes:
        text (str): the prompt.
        category (str): what it tests, a column of the tables. Default "all".
        split (str): where it comes from (e.g. a held-out split), a row of the per-split table. Default "all".
        group (str | None): prompts of one group are resampled together by the bootstrap; None: alone. Default None.
    """

    text: str
    category: str = "all"
    split: str = "all"
    group: str | None = None


def _count(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"`{name}` is {value!r}; pass an int >= {minimum}.")
    return int(value)


@dataclass(frozen=True)
class Suite:
    """Prompts, images per prompt, seeds and a judge (see the module docstring).

    Args:
        name (str): the suite's name (reports, the run manifest).
        prompts (Sequence[Prompt]): the prompts, >= 1, in report order.
        judge (Judge | None): gives each image its verdict (`scorers.Judge`); None: no verdicts, only `metrics`.
        images_per_prompt (int): images drawn per prompt, >= 1. Default 1.
        seed (int): seed of the images' noise (and of the bootstrap), >= 0. Default 0.
        min_image_size (int): the smallest image side the judge reads, >= 1; a method returning smaller images is
            refused. Default 1.
        metrics (Sequence[Scorer]): scorers of every (image, prompt) pair (`name`, `score(images, prompts) -> (N,)`,
            optionally `model`), with distinct names. Default none.
        pools (Mapping[str, Sequence[str]]): named sets of the prompts' categories, each reported as one more column
            beside "all" (the images of its categories together, with their paired differences), e.g.
            `{"multi-object": ["two_objects", "counting"]}`. Default none.

    Raises:
        ValueError: no prompts, something other than `Prompt`s, a judge without `judge(images, prompts)`, neither a
            judge nor metrics, a metric that is no `Scorer` or repeats a name, counts below their minimum, or a
            pool named like a category (or "all") or naming a category the prompts do not have.
    """

    name: str
    prompts: Sequence[Prompt]
    judge: Judge | None
    images_per_prompt: int = 1
    seed: int = 0
    min_image_size: int = 1
    metrics: Sequence[Scorer] = ()
    pools: Mapping[str, Sequence[str]] = field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "prompts", tuple(self.prompts))
        if not self.prompts:
            raise ValueError("`prompts` is empty; pass one or more bench.Prompt objects.")
        for p in self.prompts:
            if not isinstance(p, Prompt):
                raise ValueError(f"`prompts` holds {p!r}; pass bench.Prompt objects, e.g. Prompt('a red circle').")
        self._check_scoring()
        self._check_pools()
        object.__setattr__(self, "images_per_prompt", _count("images_per_prompt", self.images_per_prompt, 1))
        object.__setattr__(self, "seed", _count("seed", self.seed, 0))
        object.__setattr__(self, "min_image_size", _count("min_image_size", self.min_image_size, 1))

    def _check_scoring(self) -> None:
        object.__setattr__(self, "metrics", tuple(self.metrics))
        for m in self.metrics:
            if not isinstance(m, Scorer):
                raise ValueError(
                    f"`metrics` holds a {type(m).__name__}; pass scorers.Scorer objects (name, score(images, prompts)),"
                    " e.g. evaluators.CLIPScorer.from_pretrained(path)."
                )
        names = [m.name for m in self.metrics]
        if len(set(names)) != len(names):
            raise ValueError(f"`metrics` are named {names}; give each metric its own name.")
        if self.judge is None and not self.metrics:
            raise ValueError("The suite has no `judge` and no `metrics`; pass a scorers.Judge or one or more metrics.")
        if self.judge is not None and not isinstance(self.judge, Judge):
            raise ValueError(
                f"`judge` is a {type(self.judge).__name__}; pass a scorers.Judge (name, judge(images, prompts)), "
                "e.g. scorers.FunctionJudge(name, fn), or None."
            )

    def _check_pools(self) -> None:
        object.__setattr__(self, "pools", {name: tuple(members) for name, members in dict(self.pools).items()})
        categories = self.categories
        for name, members in self.pools.items():
            if name in (*categories, "all"):
                raise ValueError(f"`pools` names {name!r}, a column already; give the pool another name.")
            unknown = [c for c in members if c not in categories]
            if not members or unknown:
                raise ValueError(
                    f"`pools[{name!r}]` is {list(members)}; pass one or more of the prompts' categories {categories}."
                )

    @property
    def categories(self) -> list[str]:
        """The prompts' categories, in order of first appearance."""
        return list(dict.fromkeys(p.category for p in self.prompts))

    @property
    def splits(self) -> list[str]:
        """The prompts' splits, in order of first appearance."""
        return list(dict.fromkeys(p.split for p in self.prompts))

    def jobs(self) -> list[tuple[int, int]]:
        """`(prompt index, image index)` of every image, prompt by prompt."""
        return [(i, k) for i in range(len(self.prompts)) for k in range(self.images_per_prompt)]

    def seeds(self) -> list[int]:
        """The seed of every image, in the order of `jobs()`."""
        return [image_seed(self.seed, self.prompts[i].text, k) for i, k in self.jobs()]

    def groups(self) -> np.ndarray:
        """`(n_images,)` int bootstrap group of every image: the first prompt of its group (its own prompt)."""
        first, of_prompt = {}, []
        for i, p in enumerate(self.prompts):
            of_prompt.append(i if p.group is None else first.setdefault(p.group, i))
        return np.array([of_prompt[i] for i, _ in self.jobs()], dtype=np.int64)

    def config(self) -> dict:
        """JSON-ready identity of the suite (the run manifest compares it): name, judge, prompts, counts, seed, and
        the metrics' names and models (where there are any)."""
        metrics = {"metrics": [[m.name, str(getattr(m, "model", m.name))] for m in self.metrics]}
        return {
            "suite": self.name,
            "judge": None if self.judge is None else self.judge.name,
            "images_per_prompt": self.images_per_prompt,
            "seed": self.seed,
            "min_image_size": self.min_image_size,
            "prompts": [[p.text, p.category, p.split, p.group] for p in self.prompts],
            **(metrics if self.metrics else {}),
            **({"pools": {name: list(members) for name, members in self.pools.items()}} if self.pools else {}),
        }
