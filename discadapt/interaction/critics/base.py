"""What every critic shares: the `Critic` protocol, the `Suggestion` it makes, input checks, and critics that only
score (`LayoutCritic`, `ScorerCritic`, `critic_from_name`).

A critic is a `scorers.Scorer` (`name`, `score(images, prompts) -> (N,)`, higher is better) that can also
`suggest(images, prompts) -> list[Suggestion | None]`: for image i, a refined global prompt and regions (a box and
a local prompt each) from which to regenerate it, or None where it has nothing to suggest. A critic that cannot see
where things are (CLIP, the denoising error, an aesthetic head) suggests the layout planned from the prompt's
relation words (`layout.plan_layout`), unchecked, and nothing for prompts without one; `layout=False` turns that off.

Example:
    >>> from discadapt.scorers import FunctionScorer
    >>> critic = ScorerCritic(FunctionScorer("brightness", lambda images, prompts: images.mean(dim=(1, 2, 3))))
    >>> critic.suggest(torch.zeros(2, 3, 8, 8), ["a cat above a dog", "a cat"])[1] is None
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from ...evaluators.inputs import check_pairs, to_pil
from ...sampling.regions import Region
from ...scorers import Scorer
from .layout import plan_layout

__all__ = [
    "Critic",
    "LayoutCritic",
    "ScorerCritic",
    "Suggestion",
    "check_pairs",
    "critic_from_name",
    "to_pil",
]


@dataclass(frozen=True)
class Suggestion:
    """How to regenerate an image: a global prompt and regions.

    Attributes:
        prompt (str): the refined global prompt (the original prompt when the critic does not refine it).
        regions (tuple[Region, ...]): boxes (x0, y0, x1, y1), fractions of the image, each with its local prompt
            (`sampling.regions.Region`). Default none.
        reason (str): why, in words (for the manifest and reports). Default "".

    Example:
        >>> s = Suggestion("a cat left of a dog", [Region((0, 0, 0.5, 1), "a cat")], reason="the cat is right")
        >>> Suggestion.from_dict(s.to_dict()) == s
        True
    """

    prompt: str
    regions: tuple[Region, ...] = ()
    reason: str = ""

    def __post_init__(self):
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise ValueError(f"`prompt` is {self.prompt!r}; pass the non-empty global prompt to regenerate from.")
        if isinstance(self.regions, (str, Region)) or not isinstance(self.regions, Sequence):
            raise ValueError(f"`regions` is {self.regions!r}; pass a list of sampling.regions.Region.")
        bad = [r for r in self.regions if not isinstance(r, Region)]
        if bad:
            raise ValueError(f"`regions` holds {bad[0]!r}; pass sampling.regions.Region(box, prompt) items.")
        if not isinstance(self.reason, str):
            raise ValueError(f"`reason` is {self.reason!r}; pass a string.")
        object.__setattr__(self, "regions", tuple(self.regions))

    def to_dict(self) -> dict:
        """A JSON-serialisable dict: {"prompt", "regions": [{"box": [x0, y0, x1, y1], "prompt"}], "reason"}."""
        regions = [{"box": list(r.box), "prompt": r.prompt} for r in self.regions]
        return {"prompt": self.prompt, "regions": regions, "reason": self.reason}

    @classmethod
    def from_dict(cls, data: dict) -> Suggestion:
        """The suggestion `to_dict` wrote."""
        if not isinstance(data, dict) or "prompt" not in data:
            raise ValueError(f"`data` is {data!r}; pass a dict with 'prompt' (and 'regions', 'reason').")
        regions = data.get("regions", [])
        if not isinstance(regions, list) or not all(
            isinstance(r, dict) and {"box", "prompt"} <= set(r) for r in regions
        ):
            raise ValueError(
                f"`data['regions']` is {regions!r}; pass a list of {{'box': [x0, y0, x1, y1], 'prompt': str}}."
            )
        return cls(data["prompt"], [Region(tuple(r["box"]), r["prompt"]) for r in regions], data.get("reason", ""))


@runtime_checkable
class Critic(Scorer, Protocol):
    """A `scorers.Scorer` that also suggests how to regenerate images (see the module docstring).

    Attributes:
        name (str): what the critic is, for tables and manifests.
    """

    def suggest(self, images, prompts: Sequence[str]) -> list[Suggestion | None]:
        """One suggestion, or None, per (image, prompt) pair."""
        ...


class LayoutCritic:
    """Base of critics that score but cannot locate: `suggest` gives the layout planned from each prompt's relation
    words (`layout.plan_layout`), unchecked, or None where the prompt has none or `layout` is False.

    Subclasses set `name` and `layout` and define `score`.
    """

    name: str = "critic"
    layout: bool = True

    def suggest(self, images, prompts: Sequence[str]) -> list[Suggestion | None]:
        """Per pair, the prompt's planned layout as a `Suggestion` (the prompt unchanged), or None."""
        prompts = check_pairs(images, prompts)
        out: list[Suggestion | None] = []
        for prompt in prompts:
            regions = plan_layout(prompt) if self.layout else []
            reason = f"{self.name} cannot locate objects: layout planned from the prompt's relation words"
            out.append(Suggestion(prompt, regions, reason) if regions else None)
        return out


class ScorerCritic(LayoutCritic):
    """Any `scorers.Scorer` as a `Critic` that suggests planned layouts (`LayoutCritic`).

    Args:
        scorer (Scorer): e.g. `scorers.FunctionScorer`, a world's registered scorer.
        layout (bool): suggest layouts planned from the prompts. Default True.
        name (str): defaults to the scorer's.
    """

    def __init__(self, scorer: Scorer, layout: bool = True, name: str = ""):
        if not isinstance(scorer, Scorer):
            raise ValueError(
                f"`scorer` is a {type(scorer).__name__}; pass a scorers.Scorer (name, score(images, prompts))."
            )
        self.scorer, self.layout, self.name = scorer, bool(layout), name or scorer.name

    def score(self, images_or_latents, prompts: Sequence[str]) -> torch.Tensor:
        """`(N,)` scores of the wrapped scorer."""
        return self.scorer.score(images_or_latents, check_pairs(images_or_latents, prompts))


def critic_from_name(name: str, **options) -> Critic:
    """The scorer a plug-in registered as `name` (`plugins.Registry.add_scorer`, e.g. the shapes world's
    "world CLIP"), built with `options`, as a `Critic` (a `ScorerCritic` unless it already suggests).

    Example:
        >>> critic = critic_from_name("world CLIP")  # the bundled shapes-world CLIP
    """
    from ...plugins import registry

    scorers = registry().scorers
    if name not in scorers:
        raise ValueError(
            f"`name` is {name!r}, which no plug-in registered; registered scorers: {sorted(scorers)}. Build the core "
            "critics directly (AdapterCritic, DenoisingCritic, CLIPCritic, VLMCritic, ...)."
        )
    scorer = scorers[name](**options)
    return scorer if isinstance(scorer, Critic) else ScorerCritic(scorer, name=name)
