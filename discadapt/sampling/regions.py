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
eps = eps_u + w (eps_c - eps_u). Nothing of a pipeline is copied: `RegionPrompts` stands in for `unet.forward` while
open (as `recorder.UNetPassRecorder` does, restoring whatever `forward` it found), lets the pipeline's own UNet call
run unchanged, runs every (image, region) pair of the batch in one more UNet call, and replaces the conditional rows
of the output by the blend. An image without regions (or whose masks are all 0) keeps its prediction bit for bit, so
the pipeline's images do not change. Works with any scheduler, SD and SDXL, with or without guidance.

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

import contextlib
from collections.abc import Callable, Sequence

import torch

from ..boxes import Region, box_mask
from ..text import encode_text, get_unet
from ._forward import override_forward, restore_forward

__all__ = ["Region", "RegionPrompts", "box_mask", "generate_with_regions"]


def _rows(value, n: int, index: torch.Tensor):
    """Rows `index` of every tensor in `value` whose first dimension is the UNet batch `n` (timesteps, SDXL's
    added conditioning, ControlNet residuals, ...); other values as they are."""
    if isinstance(value, torch.Tensor) and value.ndim and value.shape[0] == n:
        return value[index.to(value.device)]
    if isinstance(value, dict):
        return {k: _rows(v, n, index) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(_rows(v, n, index) for v in value)
    return value


def _with_sample(output, sample: torch.Tensor):
    """The UNet output `output` (a tuple, or a diffusers `BaseOutput`) with its prediction replaced by `sample`."""
    if isinstance(output, tuple):
        return (sample, *output[1:])
    return type(output)(**{**dict(output.items()), "sample": sample})


class RegionPrompts:
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
        get_unet(pipe)
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
        k = num_images_per_prompt
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"`num_images_per_prompt` is {k!r}; pass the int >= 1 given to the pipeline.")
        self.pipe = pipe
        self.regions = [tuple(items) for items in regions]
        self.feather = float(feather)
        self.num_images_per_prompt = k
        self.prompts = list(dict.fromkeys(r.prompt for items in self.regions for r in items))  # unique local prompts
        self.text = None  # `TextEmbeddings` of `prompts`, while open
        self._pairs: dict = {}  # (h, w, device) -> (image index, prompt index, mask) of every active pair
        self._inner = None  # the UNet's forward while attached (its own, or another wrapper's)
        self._shadowed = False  # the UNet had a `forward` instance attribute before
        self._paused = 0

    # attaching ------------------------------------------------------------------------------------------------
    def attach(self) -> RegionPrompts:
        """Encode the region prompts and stand in for `unet.forward` (idempotent)."""
        if self._inner is not None:
            return self
        if self.prompts and self.text is None:
            with torch.no_grad():
                self.text = encode_text(self.pipe, self.prompts)
        unet = self.pipe.unet
        self._inner, self._shadowed = override_forward(unet, self._forward)  # the UNet's hooks still run
        return self

    def remove(self) -> None:
        """Put back the `forward` found by `attach`."""
        if self._inner is not None:
            restore_forward(self.pipe.unet, self._inner, self._shadowed)
            self._inner = None

    def __enter__(self) -> RegionPrompts:
        return self.attach()

    def __exit__(self, *exc) -> None:
        self.remove()

    @contextlib.contextmanager
    def paused(self):
        """UNet calls inside pass through unchanged (e.g. a scorer's own forward between steps)."""
        self._paused += 1
        try:
            yield self
        finally:
            self._paused -= 1

    def outside(self, callback: Callable) -> Callable:
        """`callback` (a `callback_on_step_end`) run with the blending paused, so the UNet calls it makes (e.g.
        `SelfCorrection`'s plain-mode gradient) are not blended. `SelfCorrection(mode="reuse")` reads the sampler's
        own UNet pass, which the blending changes, and is refused."""
        if getattr(callback, "mode", None) == "reuse":
            raise ValueError(
                "SelfCorrection(mode='reuse') reads the sampler's own UNet pass, which region prompts change; "
                "use mode='plain' with regions."
            )

        def run(pipe, step_index, timestep, callback_kwargs):
            with self.paused():
                return callback(pipe, step_index, timestep, callback_kwargs)

        run.tensor_inputs = list(getattr(callback, "tensor_inputs", ["latents"]))
        return run

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

    def _conditional_offset(self, n: int) -> int:
        """Where the conditional rows start in a UNet batch of `n` latents (0 without guidance)."""
        branch = len(self.regions) * self.num_images_per_prompt
        try:
            guided = bool(self.pipe.do_classifier_free_guidance)
        except AttributeError:  # not set before the pipeline's first call: read it from the batch
            guided = n == 2 * branch
        if n != (2 if guided else 1) * branch:
            raise ValueError(
                f"The UNet was called with {n} latents, but `regions` has {len(self.regions)} lists x "
                f"num_images_per_prompt={self.num_images_per_prompt} = {branch} images"
                f"{' per branch (guidance on)' if guided else ''}; pass one region list per prompt and the pipeline's "
                "num_images_per_prompt, and run callbacks that call the UNet through `RegionPrompts.outside`."
            )
        return n - branch

    def _forward(self, sample, *args, **kwargs):
        """The pipeline's UNet call, then the region pairs in one more call, blended into the conditional rows."""
        output = self._inner(sample, *args, **kwargs)  # 1. eps(P) and eps_u, exactly as without regions
        if self._paused:
            return output
        n, (h, w) = sample.shape[0], sample.shape[-2:]
        offset = self._conditional_offset(n)
        image, prompt, masks = self.pairs(h, w, sample.device)
        if not len(image):
            return output
        # 2. the region pairs: the image's latent, timestep and added conditions, the region prompt's text
        rows = offset + image
        r_sample, r_args, r_kwargs = _rows((sample, args, kwargs), n, rows)
        hidden = self.text.encoder_hidden_states[prompt.to(self.text.encoder_hidden_states.device)]
        hidden = hidden.to(sample.device)
        if len(r_args) >= 2:  # encoder_hidden_states given positionally
            r_args = (r_args[0], hidden, *r_args[2:])
        else:
            r_kwargs["encoder_hidden_states"] = hidden
        if self.text.is_sdxl:
            pooled = self.text.pooled[prompt.to(self.text.pooled.device)].to(sample.device)
            r_kwargs["added_cond_kwargs"] = {**r_kwargs["added_cond_kwargs"], "text_embeds": pooled}
        eps_regions = self._inner(r_sample, *r_args, **{**r_kwargs, "return_dict": False})[0]  # (m, C, h, w)
        # 3. eps_c = (eps(P) + sum_i M_i eps(P_i)) / (1 + sum_i M_i) on the images that have regions
        eps = output[0]  # (n, C, h, w)
        blended = eps.float().index_add(0, rows, masks * eps_regions.float())
        weight = torch.ones(n, 1, h, w, device=eps.device).index_add(0, rows, masks)
        touched = rows.unique()
        result = eps.clone()
        result[touched] = (blended[touched] / weight[touched]).to(eps.dtype)
        return _with_sample(output, result)


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
