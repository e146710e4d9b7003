"""Region prompts: boxes of the image with what should be drawn in them, and sampling that honours them.

Region-aware regeneration (the suggestions of `interaction.critics` place things in boxes) blends, at every
denoising step, the noise prediction of the image's prompt with those of its regions' local prompts inside soft box
masks, per latent pixel:

    eps_c(z_t) = (eps(z_t, t, P) + sum_i M_i * eps(z_t, t, P_i)) / (1 + sum_i M_i)

- z_t (C, h, w): the sampler's model input of the image at step t (after `scheduler.scale_model_input`), the same
  latent for every term;
- eps(z_t, t, P): the pipeline's own conditional prediction, from the embeddings it encoded for the image's prompt P;
- eps(z_t, t, P_i): the prediction for region i's local prompt P_i, encoded once with the pipeline's text encoders
  (`text.encode_text`); for SDXL its pooled embedding is the added `text_embeds`, the `time_ids` are the image's;
- M_i (h, w): `strength_i` x the soft mask of region i's box at latent resolution (`box_mask`), in [0, 1].

`Region` and `box_mask` live in `discadapt.boxes` (scores share them) and are re-exported here.

The unconditional prediction eps_u is left alone, so classifier-free guidance applies as usual,
eps = eps_u + w (eps_c - eps_u). Nothing of a pipeline is copied: `RegionPrompts` (a `_conditional.ConditionalEdit`)
stands in for `unet.forward` while open, lets the pipeline's own UNet call run unchanged, runs every (image, region)
pair of the batch in one more UNet call, and replaces the conditional rows of the output by the blend. An image
without regions (or whose masks are all 0) keeps its prediction bit for bit, so the pipeline's images do not change.
Works with any scheduler, SD and SDXL, with or without guidance.

Example:
    >>> Region((0.0, 0.0, 0.5, 1.0), "a red circle")  # the left half
    Region(box=(0.0, 0.0, 0.5, 1.0), prompt='a red circle')
    >>> from discadapt.testing import tiny_sd_pipeline
    >>> pipe = tiny_sd_pipeline()
    >>> regions = [[Region((0, 0, 0.5, 1), "a red circle"), Region((0.5, 0, 1, 1), "a blue square")], []]
    >>> with RegionPrompts(pipe, regions):  # one list per prompt; the second image gets the plain prediction
    ...     images = pipe(["a red circle left of a blue square", "a green triangle"], num_inference_steps=2).images
    >>> images = generate_with_regions(pipe, ["a red circle left of a blue square"], regions[:1], num_inference_steps=2)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ..boxes import Region, box_mask
from ._conditional import ConditionalEdit, with_sample

__all__ = ["Region", "RegionPrompts", "box_mask", "generate_with_regions"]


class RegionPrompts(ConditionalEdit):
    """While open, the pipeline's conditional noise predictions are blended with its images' region prompts.

    Args:
        pipe: a diffusers SD or SDXL pipeline (see `text.SUPPORTED_PIPELINES`), any scheduler.
        regions (`Sequence[Sequence[Region]]`): one list of regions per prompt of the pipeline call, in order; an
            empty list leaves that prompt's images as the pipeline draws them.
        feather (`float`, defaults to 1.0): width in latent pixels of the masks' soft edges (`box_mask`).
        num_images_per_prompt (`int`, defaults to 1): the value passed to the pipeline; the UNet batch is
            `len(regions) * num_images_per_prompt` latents per branch ([unconditional, conditional] with guidance),
            and every image of a prompt gets that prompt's regions.

    The region prompts are encoded when the context opens; the masks once per latent size. Every UNet call while open
    must be one of the pipeline's denoising calls: run callbacks that call the UNet themselves (e.g. `SelfCorrection`)
    through `outside(callback)`, or other code under `paused()`. A batch that does not fit `regions` and
    `num_images_per_prompt` raises a ValueError.

    Example:
        >>> with RegionPrompts(pipe, [[Region((0, 0, 0.5, 1), "a red circle")]], feather=1.0):
        ...     image = pipe(["a red circle left of a blue square"]).images[0]
    """

    def __init__(self, pipe, regions: Sequence[Sequence[Region]], feather: float = 1.0, num_images_per_prompt: int = 1):
        if isinstance(regions, (str, Region)) or not isinstance(regions, Sequence) or not regions:
            raise ValueError(
                f"`regions` is {regions!r}; pass one list of Region per prompt, e.g. [[Region(box, 'a cat')], []]."
            )
        for p, items in enumerate(regions):
            if isinstance(items, (str, Region)) or not isinstance(items, Sequence):
                raise ValueError(
                    f"`regions[{p}]` is {items!r}; pass one list of Region per prompt ([] for none), e.g. "
                    "[[Region(box, 'a cat')], []]."
                )
            bad = [r for r in items if not isinstance(r, Region)]
            if bad:
                raise ValueError(f"`regions[{p}]` holds {bad[0]!r}; pass sampling.regions.Region(box, prompt) items.")
        box_mask((0, 0, 1, 1), 1, 1, feather)  # checks `feather`
        prompts = [r.prompt for items in regions for r in items]
        super().__init__(pipe, regions, prompts, num_images_per_prompt, name="regions")
        self.regions = [tuple(items) for items in regions]
        self.feather = float(feather)
        self._pairs: dict = {}  # (h, w, device) -> (image index, prompt index, mask) of every active pair

    # the blend ------------------------------------------------------------------------------------------------
    def pairs(self, height: int, width: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Every (image, region) pair of a branch whose mask is not all 0, for latents of `height` x `width`:
        image index (m,), index into `prompts` (m,), and M_i (m, 1, h, w) float32, images in order."""
        key = (height, width, str(device))
        if key not in self._pairs:
            k = self.num_images_per_prompt
            image, prompt, masks = [], [], []
            for p, items in enumerate(self.regions):
                for region in items:
                    mask = region.strength * box_mask(region.box, height, width, self.feather)
                    if mask.any():
                        for j in range(p * k, (p + 1) * k):
                            image.append(j)
                            prompt.append(self.prompts.index(region.prompt))
                            masks.append(mask)
            masks = torch.stack(masks)[:, None] if masks else torch.zeros(0, 1, height, width)
            image, prompt = (torch.tensor(v, dtype=torch.long, device=device) for v in (image, prompt))
            self._pairs[key] = (image, prompt, masks.to(device))
        return self._pairs[key]

    def _edit(self, output, sample, args, kwargs, offset: int):
        """After the pipeline's UNet call (eps(P) and eps_u, exactly as without regions): the region pairs in one
        more call, blended into the conditional rows."""
        n, (h, w) = sample.shape[0], sample.shape[-2:]
        image, prompt, masks = self.pairs(h, w, sample.device)
        if not len(image):
            return output
        # the region pairs: the image's latent, timestep and added conditions, the region prompt's text
        rows = offset + image
        eps_regions = self._call_with_text(sample, args, kwargs, rows, prompt)  # (m, C, h, w)
        # eps_c = (eps(P) + sum_i M_i eps(P_i)) / (1 + sum_i M_i) on the images that have regions
        eps = output[0]  # (n, C, h, w)
        blended = eps.float().index_add(0, rows, masks * eps_regions.float())
        weight = torch.ones(n, 1, h, w, device=eps.device).index_add(0, rows, masks)
        touched = rows.unique()
        result = eps.clone()
        result[touched] = (blended[touched] / weight[touched]).to(eps.dtype)
        return with_sample(output, result)


def generate_with_regions(
    pipe,
    prompt: str | Sequence[str] | None,
    regions: Sequence[Sequence[Region]],
    *,
    feather: float = 1.0,
    self_correction: Callable | None = None,
    **pipe_kwargs,
):
    """Call `pipe` with region prompts (`RegionPrompts`), optionally with self-correction.

    Args:
        pipe: a diffusers SD or SDXL pipeline.
        prompt (`str` or `Sequence[str]`): the pipeline's prompts (None when `prompt_embeds` are given).
        regions (`Sequence[Sequence[Region]]`): one list of regions per prompt ([] for none).
        feather (`float`, defaults to 1.0): soft-edge width of the masks, latent pixels.
        self_correction (`SelfCorrection`, *optional*): a plain-mode `SelfCorrection` callback, run between steps
            with the blending paused; it takes the place of `callback_on_step_end`.
        **pipe_kwargs: the pipeline's other arguments (`num_inference_steps`, `guidance_scale`, `generator`,
            `num_images_per_prompt`, ...).

    Returns:
        The pipeline's output (e.g. `.images`).

    Example:
        >>> out = generate_with_regions(pipe, ["a cat left of a dog"], [[Region((0, 0, 0.5, 1), "a cat")]])
    """
    if prompt is None and pipe_kwargs.get("prompt_embeds") is None:
        raise ValueError("`prompt` is None; pass the prompts (or `prompt_embeds`) given to the pipeline.")
    count = len(pipe_kwargs["prompt_embeds"]) if prompt is None else 1 if isinstance(prompt, str) else len(prompt)
    if isinstance(regions, Sequence) and not isinstance(regions, str) and len(regions) != count:
        raise ValueError(
            f"`regions` has {len(regions)} lists for {count} prompts; pass one list of Region per prompt ([] for none)."
        )
    if self_correction is not None and pipe_kwargs.get("callback_on_step_end") is not None:
        raise ValueError(
            "Both `self_correction` and `callback_on_step_end` were given; pass the callback as `self_correction` or "
            "combine them yourself with `RegionPrompts.outside`."
        )
    k = pipe_kwargs.get("num_images_per_prompt") or 1
    with RegionPrompts(pipe, regions, feather=feather, num_images_per_prompt=k) as blend:
        if self_correction is not None:
            callback = blend.outside(self_correction)
            pipe_kwargs.update(callback_on_step_end=callback, callback_on_step_end_tensor_inputs=callback.tensor_inputs)
        return pipe(prompt, **pipe_kwargs)
