"""The shapes world's evaluation suite: held-out prompts per category, judged by the world's oracle.

1. Prompts (`demo_prompts`): per category, `n_prompts` distinct captions drawn alternately from the held-out splits
   "test_id" (new scenes of the training distribution) and "test_ood" (held-out color-shape pairs and spatial
   triples); a split that runs out of distinct captions (test_ood has only 4 single-object captions) leaves its
   share to the other. Or the user's captions (`user_prompts`), each parsed with the grammar for its category
   (split "user").
2. Seeds: the runner's (`bench.Suite`): image k of a prompt is drawn with seed `image_seed(seed, prompt, k)`
   (`sampling.seeds`), the same in every method, batch and run, and in `discadapt generate`.
3. Judge (`OracleJudge`): the oracle's verdict (`oracle.check`) from the image alone: ok, the reason, and whether
   it is marginal. For evaluation only: it is exact on rendered scenes, not a training signal.

`shapes_suite(...)` assembles them into a `bench.Suite`, with the pool "multi-object" (`MULTI_OBJECT`: every
category but single objects, the mean that issue 12's targets are set on) as a column of its tables where the
prompts hold those categories and single objects too; the plug-in registers it as "shapes" (`plugin.py`), and
`discadapt demo` runs it (`demo.py`).

Example:
    >>> from discadapt.worlds.shapes.suite import demo_prompts, shapes_suite
    >>> [(p.text, p.split) for p in demo_prompts(["single"], n_prompts=2)]
    [('a yellow circle', 'test_id'), ('a yellow square', 'test_ood')]
    >>> suite = shapes_suite(["spatial"], n_prompts=4, images_per_prompt=2)
    >>> len(suite.jobs()), suite.judge.name
    (8, 'oracle')
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ...bench import Prompt, Suite
from .captions import CATEGORIES, parse
from .dataset import make_example
from .oracle import check
from .palette import check_choice
from .scenes import Scene
from .splits import SPLITS

__all__ = [
    "HELD_OUT",
    "MIN_IMAGE_SIZE",
    "MULTI_OBJECT",
    "DemoPrompt",
    "OracleJudge",
    "check_categories",
    "check_count",
    "demo_prompts",
    "shapes_suite",
    "user_prompts",
]

HELD_OUT = ("test_id", "test_ood")
MIN_IMAGE_SIZE = 32  # the oracle's smallest tested image side
MULTI_OBJECT = ("two_objects", "counting", "spatial", "referring")  # the categories of more than one object or phrase
_PATIENCE = 200  # draws without a new caption before a split counts as exhausted


@dataclass(frozen=True)
class DemoPrompt(Prompt):
    """A `bench.Prompt` of the shapes world, with a scene it is true of.

    Attributes:
        text (str), category (str: one of `captions.CATEGORIES`), split (str: "test_id", "test_ood", or "user"),
        group (None): as `bench.Prompt`.
        scene (Scene | None): a scene the caption is true of (drawn prompts), None for user prompts.
    """

    scene: Scene | None = None


def check_count(name: str, value, minimum: int = 1) -> int:
    """`value` as an int if it is one >= `minimum`, else a ValueError naming `name`."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"`{name}` is {value!r}; pass an int >= {minimum}.")
    return int(value)


def check_categories(categories) -> list[str]:
    """The categories as a list (None: all of `CATEGORIES`), each known and named once."""
    if categories is None:
        return list(CATEGORIES)
    categories = [categories] if isinstance(categories, str) else list(categories)
    if not categories:
        raise ValueError(f"`categories` is empty; pass one or more of {', '.join(CATEGORIES)}.")
    for category in categories:
        check_choice("category", category, CATEGORIES)
    if len(set(categories)) != len(categories):
        raise ValueError(f"`categories` is {categories!r}, with repeats; name each category once.")
    return categories


def _distinct(category: str, split: str, seed: int, image_size: int):
    """Examples of `split` with captions not seen before, in the order of `make_dataset`'s seeds."""
    seen, stale, i = set(), 0, 0
    while stale < _PATIENCE:
        example = make_example((seed, SPLITS.index(split), i), category, split, image_size=image_size)
        i += 1
        if example.caption.text in seen:
            stale += 1
            continue
        seen.add(example.caption.text)
        stale = 0
        yield DemoPrompt(example.caption.text, category, split, scene=example.scene)


def demo_prompts(
    categories: Sequence[str] | None = None, n_prompts: int = 40, seed: int = 0, image_size: int = 32
) -> list[DemoPrompt]:
    """The held-out prompts: per category, up to `n_prompts` distinct captions, alternately from "test_id" and
    "test_ood" (step 1 of the module docstring), grouped by category.

    Args:
        categories (Sequence[str] | None): categories, in order; None means all of `CATEGORIES`. Default None.
        n_prompts (int): prompts per category, >= 1. Default 40.
        seed (int): dataset seed (`make_dataset`'s). Default 0.
        image_size (int): side of the scenes. Default 32.

    Returns:
        list[DemoPrompt]: the prompts, with their split and a scene each caption is true of.

    Example:
        >>> [(p.text, p.split) for p in demo_prompts(["single"], n_prompts=2)]
        [('a yellow circle', 'test_id'), ('a yellow square', 'test_ood')]
    """
    categories = check_categories(categories)
    n_prompts = check_count("n_prompts", n_prompts)
    prompts = []
    for category in categories:
        sources = [_distinct(category, split, seed, image_size) for split in HELD_OUT]
        taken = []
        while sources and len(taken) < n_prompts:
            source = sources.pop(0)
            found = next(source, None)
            if found is not None:
                taken.append(found)
                sources.append(source)  # alternate; an exhausted split drops out
        prompts += taken
    return prompts


def user_prompts(prompts: Sequence[str]) -> list[DemoPrompt]:
    """The user's captions as prompts of split "user", each with the category the grammar parses it as.

    Raises:
        ValueError: `prompts` is a string, empty, or holds a caption outside the shapes grammar.
    """
    if isinstance(prompts, str) or not isinstance(prompts, Sequence):
        raise ValueError(f"`prompts` is {prompts!r}; pass a list of captions, e.g. ['a red circle'].")
    if not prompts:
        raise ValueError("`prompts` is empty; pass one or more captions, e.g. ['a red circle'], or None.")
    out = []
    for text in prompts:
        try:
            category = parse(text).category
        except ValueError as err:
            raise ValueError(f"`prompts` holds {text!r}, not a caption of the shapes grammar: {err}") from None
        out.append(DemoPrompt(str(text), category, "user"))
    return out


class OracleJudge:
    """The world's oracle as a `scorers.Judge`: `oracle.check(image, caption)` per image (ok, reason, marginal).

    Example:
        >>> from discadapt.worlds.shapes import make_dataset, render
        >>> example = make_dataset(1, split="test_id")[0]
        >>> OracleJudge().judge(render(example.scene)[None], [example.caption.text])[0].ok
        True
    """

    name = "oracle"
    marginal_note = (
        "verdicts that one reading near the oracle's cut-offs (shape score, size, a one-pixel move) would flip; "
        "a difference between rows smaller than these fractions could come from the judge"
    )

    def judge(self, images, prompts: Sequence[str]) -> list:
        if isinstance(prompts, str) or len(images) != len(prompts):
            raise ValueError(f"`prompts` is {prompts!r}; pass one caption per image ({len(images)}).")
        return [check(image, text) for image, text in zip(images, prompts)]


def shapes_suite(
    categories: Sequence[str] | None = None,
    n_prompts: int = 40,
    images_per_prompt: int = 5,
    seed: int = 0,
    image_size: int = 32,
    prompts: Sequence[str] | None = None,
) -> Suite:
    """The shapes world's suite "shapes": held-out prompts (or the user's), images per prompt, seeds, the oracle.

    Args:
        categories (Sequence[str] | None): categories of the drawn prompts; None means all. Default None.
        n_prompts (int): drawn prompts per category, >= 1. Default 40.
        images_per_prompt (int): images per prompt, >= 1. Default 5.
        seed (int): seed of the prompts, the images' noise and the bootstrap, >= 0. Default 0.
        image_size (int): side of the drawn prompts' scenes (the pipeline's image size). Default 32.
        prompts (Sequence[str] | None): the user's captions instead of drawn ones (`categories` and `n_prompts`
            then unused). Default None.

    Returns:
        bench.Suite: named "shapes", judged by `OracleJudge`, refusing images smaller than 32 pixels; with the pool
        "multi-object" where its prompts hold every category of `MULTI_OBJECT` and another one.
    """
    chosen = user_prompts(prompts) if prompts is not None else demo_prompts(categories, n_prompts, seed, image_size)
    found = {p.category for p in chosen}
    pools = {"multi-object": MULTI_OBJECT} if found > set(MULTI_OBJECT) else {}
    return Suite("shapes", chosen, OracleJudge(), images_per_prompt, seed, min_image_size=MIN_IMAGE_SIZE, pools=pools)
