"""One protocol for everything that scores (image, text) pairs: `score(images_or_latents, prompts) -> (N,)`.

A `Scorer` is what probing tables, best-of-N picks, critics and metrics call; higher means a better match of
image i with prompt i. A `LatentScorer` can also score the noisy latents of a sampler differentiably, which is what
self-correction needs (`sampling.SelfCorrection` takes one).

- `AdapterScorer(pipe, adapter, t=...)`: the discriminative adapter's ITM logit (`scoring.itm_score`); a
  `LatentScorer`.
- `DenoisingScorer(pipe, num_timesteps=10, unconditional=False)`: minus the denoising error (DiffusionITM,
  `scoring.denoising_score`).
- `FunctionScorer(name, fn)`: any function `(images, prompts) -> (N,)`, e.g. a CLIP model's scaled cosine. A world
  registers its own this way (the shapes world: its CLIP, `plugins.Registry.add_scorer`).

A `Judge` gives a verdict per image instead of a score: `judge(images, prompts) -> N Judgement`s (ok, reason,
marginal). It is what an evaluation suite counts (`bench.Suite`): a world's oracle, registered for evaluation only
(`plugins.Registry.add_judge`). `FunctionJudge(name, fn)` wraps a function `(image, prompt) -> verdict`;
`JudgeScorer(judge)` scores 1 for an accepted pair and 0 otherwise, e.g. as an upper bound in a probing table.

Images are PIL images, a `(N, 3, H, W)` float tensor in [0, 1], a `(N, H, W, 3)` uint8 array, or latents
`(N, C, h, w)` (`as_pixels` converts the array form).

Example:
    >>> scorer = AdapterScorer(pipe, adapter, t=250)
    >>> scorer.score(images, ["a red circle", "a blue square"])  # (2,) float32
    >>> fix = SelfCorrection(scorer, prompt=prompts, scale=0.5)  # any LatentScorer
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from .adapter import DiscriminativeAdapter
from .probe import FeatureProbe
from .scoring import _latents, _noise, adapter_itm_logits, add_noise, denoising_score, influence_layout, itm_score
from .text import TextEmbeddings, encode_text, get_unet

__all__ = [
    "AdapterScorer",
    "DenoisingScorer",
    "FunctionJudge",
    "FunctionScorer",
    "Judge",
    "JudgeScorer",
    "Judgement",
    "LatentScorer",
    "LayoutScorer",
    "Scorer",
    "as_pixels",
]


@runtime_checkable
class Scorer(Protocol):
    """Scores of (image i, prompt i) pairs; higher means a better match.

    Attributes:
        name (str): what the scorer is, for tables and reports.
    """

    name: str

    def score(self, images_or_latents, prompts: Sequence[str]) -> torch.Tensor:
        """`(N,)` float scores of N images (or latents) with N prompts."""
        ...


@runtime_checkable
class LatentScorer(Scorer, Protocol):
    """A `Scorer` that also scores a sampler's noisy latents, differentiably (self-correction)."""

    def score_latents(self, model_input: torch.Tensor, t: torch.Tensor, text: TextEmbeddings) -> torch.Tensor:
        """`(B,)` scores of UNet inputs `model_input` `(B, C, h, w)` at timesteps `t` `(B,)` for encoded prompts
        `text`, with the autograd graph kept when grad is enabled."""
        ...


def as_pixels(images_or_latents):
    """A `(N, H, W, 3)` uint8 array as a `(N, 3, H, W)` float tensor in [0, 1]; anything else unchanged."""
    if isinstance(images_or_latents, np.ndarray) and images_or_latents.dtype == np.uint8:
        if images_or_latents.ndim != 4 or images_or_latents.shape[-1] != 3:
            raise ValueError(
                f"`images_or_latents` is a uint8 array of shape {images_or_latents.shape}; pass (N, H, W, 3) images."
            )
        return torch.from_numpy(np.ascontiguousarray(images_or_latents)).permute(0, 3, 1, 2).float() / 255
    return images_or_latents


class AdapterScorer:
    """The discriminative adapter's ITM logit of a pipeline (a `LatentScorer`).

    Args:
        pipe: the diffusers pipeline the adapter reads.
        adapter (`DiscriminativeAdapter`): built for `pipe`.
        t (`int` or sequence, *optional*): timestep(s) at which images are noised and scored; default the middle.
        batch_size (`int`, *optional*): pairs per UNet call; all at once by default.
        name (`str`, defaults to "adapter ITM").
    """

    def __init__(self, pipe, adapter: DiscriminativeAdapter, t=None, batch_size: int | None = None, name: str = ""):
        if not isinstance(adapter, DiscriminativeAdapter):
            raise ValueError(f"`adapter` is a {type(adapter).__name__}; pass a DiscriminativeAdapter.")
        adapter.check_pipeline(pipe)
        self.pipe, self.adapter, self.t, self.batch_size = pipe, adapter, t, batch_size
        self.name = name or "adapter ITM"

    def score(self, images_or_latents, prompts: Sequence[str]) -> torch.Tensor:
        pixels = as_pixels(images_or_latents)
        return itm_score(self.pipe, self.adapter, pixels, list(prompts), t=self.t, batch_size=self.batch_size)

    def score_latents(self, model_input: torch.Tensor, t: torch.Tensor, text: TextEmbeddings) -> torch.Tensor:
        probe = FeatureProbe(get_unet(self.pipe), self.adapter.config.layers, detach=False, early_exit=True)
        return adapter_itm_logits(self.pipe, self.adapter, probe, model_input, t, text)


class DenoisingScorer:
    """Minus the pipeline's denoising error over timesteps (DiffusionITM), optionally relative to the empty prompt.

    Args:
        pipe: a diffusers pipeline.
        num_timesteps (`int`, defaults to 10): evenly spread timesteps.
        unconditional (`bool`, defaults to False): subtract the unconditional error (DiffusionITM's relative score).
        batch_size (`int`, *optional*): pairs per UNet call.
        name (`str`, defaults to "denoising error" or "relative denoising error").
    """

    def __init__(self, pipe, num_timesteps: int = 10, unconditional: bool = False, batch_size=None, name: str = ""):
        self.pipe, self.num_timesteps, self.unconditional, self.batch_size = (
            pipe,
            num_timesteps,
            unconditional,
            batch_size,
        )
        self.name = name or ("relative denoising error" if unconditional else "denoising error")

    def score(self, images_or_latents, prompts: Sequence[str]) -> torch.Tensor:
        return denoising_score(
            self.pipe,
            as_pixels(images_or_latents),
            list(prompts),
            num_timesteps=self.num_timesteps,
            unconditional=self.unconditional,
            batch_size=self.batch_size,
        )


class LayoutScorer:
    """Where each phrase of a prompt's spatial layout acts on the noise prediction (`scoring.influence_layout`): the
    layout term of self-correction, needing no adapter (a `LatentScorer`).

    The layout of a prompt is planned from its words (`plan_layout`, by default
    `interaction.critics.layout.plan_layout`: "A left of B" puts A on the left half and B on the right); a prompt
    without one scores 0 and costs nothing. Latents are scored against the `prompts` the scorer was made for, as
    `sampling.SelfCorrection` orders them (`num_images_per_prompt` consecutive latents per prompt); images (or their
    VAE latents), against the prompts given, noised once at `t`.

    Args:
        pipe: the diffusers pipeline whose UNet is read.
        prompts (`Sequence[str]`, *optional*): the prompts of the latents to score (a self-correction run's).
        t (`int`, defaults to 500): timestep at which images are noised by `score`.
        plan (callable, *optional*): `prompt -> list[boxes.Region]`.
        positions (`bool`, defaults to True): also score one phrase's position ("A on the left"); False scores
            pairwise relations only (layouts of two or more regions).
        feather (`float`, defaults to 1.0): the box masks' edge ramp in latent pixels.
        name (`str`, defaults to "layout influence").

    Example:
        >>> term = SelfCorrection(LayoutScorer(pipe, prompts), prompts, scale=1.0, normalize="unit", stop=0.6)
    """

    def __init__(
        self, pipe, prompts=(), t: int = 500, plan=None, positions: bool = True, feather: float = 1.0, name: str = ""
    ):
        if plan is None:
            from .interaction.critics.layout import plan_layout as plan  # the critics import this module
        num = pipe.scheduler.config.num_train_timesteps
        if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < num:
            raise ValueError(f"`t` is {t!r}; pass an integer timestep in [0, {num - 1}].")
        self.pipe, self.t, self.planner, self.positions, self.feather = pipe, t, plan, positions, feather
        self.prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        self.layouts = [self.plan(p) for p in self.prompts]
        self.name = name or "layout influence"
        self._encoded: tuple[tuple[str, ...], TextEmbeddings] | None = None  # the last phrases encoded

    def _encode(self, texts: list[str]) -> TextEmbeddings:
        """The phrases' encodings, kept while the same phrases are asked for: a self-correction run asks for the same
        ones at every corrected step."""
        if self._encoded is None or self._encoded[0] != tuple(texts):
            with torch.no_grad():
                self._encoded = (tuple(texts), encode_text(self.pipe, texts))
        return self._encoded[1]

    def plan(self, prompt: str) -> list:
        """The regions of `prompt` that are scored."""
        regions = self.planner(prompt)
        return regions if self.positions or len(regions) > 1 else []

    def score(self, images_or_latents, prompts: Sequence[str]) -> torch.Tensor:
        with torch.no_grad():
            x0 = _latents(self.pipe, as_pixels(images_or_latents))  # images encoded; latents as they are
            noise = _noise(x0, 1, None, seed=0)[0]  # one draw for all
            t = torch.full((len(x0),), self.t, device=x0.device)
            xt = add_noise(self.pipe.scheduler.alphas_cumprod, x0, noise.expand_as(x0), t)
            return influence_layout(self.pipe, xt, t, [self.plan(p) for p in prompts], self.feather).float().cpu()

    def score_latents(self, model_input: torch.Tensor, t: torch.Tensor, text: TextEmbeddings) -> torch.Tensor:
        if not self.prompts or len(model_input) % len(self.prompts):
            raise ValueError(
                f"LayoutScorer was made for {len(self.prompts)} prompts but scores {len(model_input)} latents; pass "
                "it the run's prompts, e.g. LayoutScorer(pipe, prompts)."
            )
        per = len(model_input) // len(self.prompts)
        layouts = [self.layouts[b // per] for b in range(len(model_input))]
        return influence_layout(self.pipe, model_input, t, layouts, self.feather, encode=self._encode)


class FunctionScorer:
    """A `Scorer` from a function `(images_or_latents, prompts) -> (N,)`.

    Args:
        name (`str`): what it is.
        fn (`Callable`): the scoring function.
    """

    def __init__(self, name: str, fn: Callable[[object, list[str]], torch.Tensor]):
        if not callable(fn):
            raise ValueError(f"`fn` is a {type(fn).__name__}; pass a function (images, prompts) -> (N,) scores.")
        self.name, self.fn = name, fn

    def score(self, images_or_latents, prompts: Sequence[str]) -> torch.Tensor:
        return torch.as_tensor(self.fn(images_or_latents, list(prompts)))


@dataclass(frozen=True)
class Judgement:
    """A judge's verdict on one image and its prompt.

    Attributes:
        ok (bool): the image shows what the prompt says.
        reason (str): why not (or what was found). Default "".
        marginal (bool): one reading near the judge's cut-offs would flip the verdict. Default False.
    """

    ok: bool
    reason: str = ""
    marginal: bool = False


@runtime_checkable
class Judge(Protocol):
    """Verdicts on (image i, prompt i) pairs.

    Attributes:
        name (str): what the judge is, for reports.
    """

    name: str

    def judge(self, images, prompts: Sequence[str]) -> list:
        """N verdicts (with `ok`, `reason`, `marginal`, e.g. `Judgement`) of `(N, H, W, 3)` uint8 images."""
        ...


class FunctionJudge:
    """A `Judge` from a function `(image (H, W, 3) uint8, prompt) -> verdict` with `ok`, `reason` and `marginal`.

    Args:
        name (`str`): what it is.
        fn (`Callable`): the verdict of one image.

    Example:
        >>> judge = FunctionJudge("dark", lambda image, prompt: Judgement(bool(image.mean() < 128)))
        >>> [v.ok for v in judge.judge(np.zeros((2, 8, 8, 3), np.uint8), ["a", "b"])]
        [True, True]
    """

    def __init__(self, name: str, fn: Callable[[np.ndarray, str], object]):
        if not callable(fn):
            raise ValueError(f"`fn` is a {type(fn).__name__}; pass a function (image, prompt) -> verdict.")
        self.name, self.fn = name, fn

    def judge(self, images, prompts: Sequence[str]) -> list:
        if isinstance(prompts, str) or len(images) != len(prompts):
            raise ValueError(f"`prompts` is {prompts!r}; pass one prompt per image ({len(images)}).")
        return [self.fn(image, prompt) for image, prompt in zip(images, prompts)]


class JudgeScorer:
    """A `Judge` as a `Scorer`: 1.0 where the judge accepts the pair, else 0.0 (for evaluation only: no gradient).

    Args:
        judge (`Judge`): e.g. a world's oracle.
        name (`str`, defaults to the judge's name).
    """

    def __init__(self, judge: Judge, name: str = ""):
        if not isinstance(judge, Judge):
            raise ValueError(f"`judge` is a {type(judge).__name__}; pass a Judge (name, judge(images, prompts)).")
        self.judge, self.name = judge, name or judge.name

    def score(self, images_or_latents, prompts: Sequence[str]) -> torch.Tensor:
        return torch.tensor([float(v.ok) for v in self.judge.judge(images_or_latents, list(prompts))])
