"""Hard-negative guidance: self-correction by the model's own discriminative score, with no adapter and no backward.

The denoising error scores how well a caption explains a noised image (DiffusionITM; the stage-2 contrast,
`losses.denoising_contrast`, trains the UNet on exactly that against hard-negative captions). Its gradient with
respect to the latent costs no backward: eps(z_t, t, y) = -sigma_t grad log p(z_t | y), so

    eps(z_t, t, y) - eps(z_t, t, n) = -sigma_t grad_z [log p(y | z_t) - log p(n | z_t)]

is the gradient of the model's own log odds of the prompt y over a hard negative n (one edit away: swapped
attributes, the opposite relation, another count). While open, `HardNegativeGuidance` adds it to the guided
prediction of every step in its window,

    eps = eps_u + g (eps_c - eps_u) + w (eps_c - eps_n),

which moves the sample toward images the model itself finds more likely under the prompt than under its negative.
Per corrected step it costs one more UNet pass over the conditional rows (1.5x the UNet cost of a guided step); the
negative of step k is the prompt's `k mod m`-th of its m negatives. It is a `_conditional.ConditionalEdit`: the
pipeline's own call runs unchanged, then the negatives' call, and the conditional rows become
eps_c + (w / g) (eps_c - eps_n), so the pipeline's guidance gives the sum above (without guidance g = 1). Images
whose prompt has no negatives, and steps outside the window, keep their prediction bit for bit.

Example:
    >>> from discadapt.testing import tiny_sd_pipeline
    >>> pipe = tiny_sd_pipeline()
    >>> negatives = [["a blue circle left of a red square", "a red circle right of a blue square"], []]
    >>> with HardNegativeGuidance(pipe, negatives, scale=2.0, stop=0.6):
    ...     images = pipe(["a red circle left of a blue square", "a green triangle"], num_inference_steps=2).images
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ._conditional import ConditionalEdit, with_sample

__all__ = ["HardNegativeGuidance"]


class HardNegativeGuidance(ConditionalEdit):
    """While open, each image's guided noise prediction is pushed away from its prompt's hard-negative captions.

    Args:
        pipe: a diffusers SD or SDXL pipeline (see `text.SUPPORTED_PIPELINES`), any scheduler whose `timesteps` hold
            the timesteps the UNet is called at.
        negatives (`Sequence[Sequence[str]]`): one list of negative captions per prompt of the pipeline call, in order;
            an empty list leaves that prompt's images as the pipeline draws them.
        scale (`float`, defaults to 1.0): w, the weight of (eps_c - eps_n) in the guided prediction; 0 changes nothing.
        start (`float`, defaults to 0.0), stop (`float`, defaults to 1.0): the window, as fractions of the schedule.
        num_images_per_prompt (`int`, defaults to 1): the value passed to the pipeline.

    Every UNet call while open must be one of the pipeline's denoising calls (see `ConditionalEdit`). A batch that
    does not fit `negatives` and `num_images_per_prompt`, or a timestep not in the scheduler's, raises a ValueError.
    """

    def __init__(
        self,
        pipe,
        negatives: Sequence[Sequence[str]],
        scale: float = 1.0,
        start: float = 0.0,
        stop: float = 1.0,
        num_images_per_prompt: int = 1,
    ):
        if isinstance(negatives, str) or not isinstance(negatives, Sequence) or not negatives:
            raise ValueError(
                f"`negatives` is {negatives!r}; pass one list of negative captions per prompt, e.g. "
                "[['a blue cat and a red dog'], []]."
            )
        for p, items in enumerate(negatives):
            if isinstance(items, str) or not isinstance(items, Sequence) or not all(isinstance(n, str) for n in items):
                raise ValueError(
                    f"`negatives[{p}]` is {items!r}; pass a list of captions per prompt ([] for none), e.g. "
                    "[['a blue cat and a red dog'], []]."
                )
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale < 0:
            raise ValueError(f"`scale` is {scale!r}; pass a finite number >= 0 (0 changes nothing).")
        if not (0.0 <= start <= stop <= 1.0):
            raise ValueError(f"The window is start={start}, stop={stop}; pass 0 <= start <= stop <= 1.")
        super().__init__(pipe, negatives, [n for items in negatives for n in items], num_images_per_prompt, "negatives")
        self.negatives = [list(items) for items in negatives]
        self.scale, self.start, self.stop = float(scale), float(start), float(stop)

    def step_index(self, timestep) -> int:
        """Index of `timestep` in the scheduler's `timesteps` (its first occurrence)."""
        t = torch.as_tensor(timestep).flatten()[0].item()
        timesteps = self.pipe.scheduler.timesteps
        found = (timesteps.to("cpu", torch.float64) == t).nonzero()
        if not len(found):
            raise ValueError(
                f"The UNet was called at timestep {t}, which is not in the scheduler's timesteps; "
                "HardNegativeGuidance works inside the pipeline's denoising loop only."
            )
        return int(found[0])

    def _edit(self, output, sample, args, kwargs, offset: int):
        """After the pipeline's UNet call: the negatives of this step in one more call, pushed away from."""
        k = self.step_index(args[0] if args else kwargs["timestep"])
        if self.scale == 0 or not self.start <= k / len(self.pipe.scheduler.timesteps) < self.stop:
            return output
        image, prompt = [], []
        per_prompt = self.num_images_per_prompt
        for j in range(sample.shape[0] - offset):
            items = self.negatives[j // per_prompt]
            if items:
                image.append(j)
                prompt.append(self.prompts.index(items[k % len(items)]))
        if not image:
            return output
        image, prompt = (torch.tensor(v, dtype=torch.long, device=sample.device) for v in (image, prompt))
        rows = offset + image
        eps_n = self._call_with_text(sample, args, kwargs, rows, prompt).float()
        guidance = float(self.pipe.guidance_scale) if offset else 1.0
        eps = output[0]
        eps_c = eps[rows].float()
        result = eps.clone()
        result[rows] = (eps_c + (self.scale / guidance) * (eps_c - eps_n)).to(eps.dtype)
        return with_sample(output, result)
