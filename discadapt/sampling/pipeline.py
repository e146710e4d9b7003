"""Self-correcting text-to-image pipelines: diffusers pipelines with the discriminative adapter as a component.

`StableDiffusionSelfCorrectionPipeline` and `StableDiffusionXLSelfCorrectionPipeline` are the diffusers pipelines with
one more component, `adapter` (a `DiscriminativeAdapter`), and two more settings, `correction` (the `SelfCorrection`
arguments: `scale`, `start`, `stop`, `schedule`, `normalize`, `max_grad_norm`, `iterations`, `mode`, `every`) and
`layout` (below). A call samples as the base pipeline does, with `SelfCorrection` between the steps, each latent
corrected towards its own prompt (the `prompt` of the call). Being pipelines, they behave as diffusers users expect:

- `from_pipe(pipe, adapter=..., correction=...)` shares `pipe`'s components without copying them (diffusers'
  `from_pipe`); `SelfCorrectingPipeline.from_pipe` picks the class for an SD or SDXL `pipe`;
- `to(device, dtype)` moves the adapter with the other components; with `enable_model_cpu_offload` the adapter
  stays on the execution device (it is small and runs between UNet calls);
- `save_pretrained` writes the adapter as a subfolder and the settings in `model_index.json`; `from_pretrained`
  reads them back;
- `layout` (the `SelfCorrection` arguments of a second term, and `positions`: False leaves one phrase's position alone;
  by default no term) adds the layout term: a plain-mode `SelfCorrection` by a `scorers.LayoutScorer` of the call's
  prompts (`layout_term(pipe, prompts, **layout)`), after the adapter's correction. It moves each phrase of a spatial
  prompt ("A left of B", "A on the left") toward its planned half, by where the phrase changes the UNet's noise
  prediction; it needs no adapter, and prompts without a relation are left as they are;
- without an adapter and a layout term, or with `correction_scale=0` and `layout_scale=0`, a call gives the base
  pipeline's images bit for bit.

Example:
    >>> pipe = StableDiffusionPipeline.from_pretrained("/models/sd-1-5")
    >>> adapter = DiscriminativeAdapter.from_pretrained("my-adapter")
    >>> sc = SelfCorrectingPipeline.from_pipe(pipe, adapter=adapter, correction={"scale": 0.5, "mode": "reuse"})
    >>> images = sc(["a red cube on a blue ball"], num_inference_steps=30).images
    >>> plain = sc(["a red cube on a blue ball"], correction_scale=0.0).images  # as pipe(...)
    >>> layout = {"scale": 1.0, "start": 0.2, "stop": 0.6, "normalize": "unit"}  # the layout term alone, no adapter
    >>> laid = SelfCorrectingPipeline.from_pipe(pipe, layout=layout)
    >>> sc.save_pretrained("sd-self-correcting")  # adapter/ beside unet/, vae/, ...
"""

from __future__ import annotations

import logging

from diffusers import AutoencoderKL, StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
from diffusers.schedulers import KarrasDiffusionSchedulers
from transformers import (
    CLIPImageProcessor,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    CLIPVisionModelWithProjection,
)

from ..adapter import DiscriminativeAdapter
from .self_correction import SelfCorrection, layout_term

__all__ = [
    "SelfCorrectingPipeline",
    "SelfCorrectionMixin",
    "StableDiffusionSelfCorrectionPipeline",
    "StableDiffusionXLSelfCorrectionPipeline",
]


class SelfCorrectionMixin:
    """What a self-correcting pipeline adds to its diffusers base class: the `adapter` component, the `correction`
    settings, and a `__call__` that samples with `SelfCorrection` (see the module docstring)."""

    _exclude_from_cpu_offload = ["adapter"]

    def _register_correction(
        self, adapter: DiscriminativeAdapter | None, correction: dict | None, layout: dict | None = None
    ) -> None:
        correction, layout = dict(correction or {}), dict(layout or {})
        if adapter is not None:
            if not isinstance(adapter, DiscriminativeAdapter):
                raise ValueError(f"`adapter` is a {type(adapter).__name__}; pass a DiscriminativeAdapter or None.")
            adapter.check_pipeline(self)
            SelfCorrection(adapter, [""], **correction)  # check the settings now, not at the first call
        if layout:
            layout_term(self, [""], **layout)  # check the settings now
        self.register_modules(adapter=adapter)
        self.register_to_config(correction=correction, layout=layout or None)

    def _settings(self, correction_scale, layout_scale) -> tuple[dict | None, dict | None]:
        """The settings of the call's two terms, the adapter's correction and the layout term (None: off)."""
        correction = {**self.config.correction, **({} if correction_scale is None else {"scale": correction_scale})}
        layout = self.config.get("layout")
        if layout:
            layout = {**layout, **({} if layout_scale is None else {"scale": layout_scale})}
        correction = correction if self.adapter is not None and correction.get("scale", 1.0) != 0 else None
        return correction, layout if layout and layout.get("scale", 1.0) != 0 else None

    def __call__(
        self, prompt=None, *args, correction_scale: float | None = None, layout_scale: float | None = None, **kwargs
    ):
        """The base pipeline's call, sampled with `SelfCorrection` by `self.adapter` toward `prompt`, then the layout
        term when the pipeline has one.

        Args:
            prompt (`str` or `list[str]`): the prompts, as for the base pipeline (self-correction scores each latent
                against its own prompt, so `prompt_embeds` alone cannot be corrected).
            correction_scale (`float`, *optional*): overrides the `scale` of the `correction` settings (0: off).
            layout_scale (`float`, *optional*): overrides the `scale` of the `layout` settings (0: off).
            *args, **kwargs: the base pipeline's arguments. A `callback_on_step_end` runs after the corrections.
        """
        correction, layout = self._settings(correction_scale, layout_scale)
        if correction is None and layout is None:
            return super().__call__(prompt, *args, **kwargs)
        if args:
            raise ValueError("Pass the pipeline's arguments after `prompt` by name, e.g. num_inference_steps=30.")
        if prompt is None:
            raise ValueError(
                "`prompt` is None; self-correction scores each latent against its prompt, so pass `prompt` (not only "
                "`prompt_embeds`), or correction_scale=0 (and layout_scale=0 with a layout term)."
            )
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        terms = [SelfCorrection(self.adapter, prompts, **correction)] if correction is not None else []
        if layout is not None:
            terms.append(layout_term(self, prompts, **layout))
        chain = list(terms)
        inputs = [name for name in SelfCorrection.tensor_inputs if name in self._callback_tensor_inputs]
        if kwargs.get("callback_on_step_end") is not None:
            theirs = kwargs.pop("callback_on_step_end")  # a plain function or a PipelineCallback
            if isinstance(theirs, (PipelineCallback, MultiPipelineCallbacks)):
                kwargs["callback_on_step_end_tensor_inputs"] = theirs.tensor_inputs
            inputs += [name for name in kwargs.pop("callback_on_step_end_tensor_inputs", []) if name not in inputs]
            chain.append(theirs)

        def callback(pipe, step_index, timestep, callback_kwargs):
            for step in chain:
                callback_kwargs = step(pipe, step_index, timestep, callback_kwargs)
            return callback_kwargs

        kwargs["callback_on_step_end_tensor_inputs"] = inputs
        try:
            return super().__call__(prompt=prompts, callback_on_step_end=callback, **kwargs)
        finally:
            for term in terms:
                term.remove()  # reuse and input modes' hooks, also when the run is interrupted


class StableDiffusionSelfCorrectionPipeline(SelfCorrectionMixin, StableDiffusionPipeline):
    """`StableDiffusionPipeline` sampling with self-correction; components and settings in the module docstring."""

    _optional_components = [*StableDiffusionPipeline._optional_components, "adapter"]

    def __init__(  # the base class's signature (diffusers reads components from it), then ours
        self,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        unet: UNet2DConditionModel,
        scheduler: KarrasDiffusionSchedulers,
        safety_checker: StableDiffusionSafetyChecker,
        feature_extractor: CLIPImageProcessor,
        image_encoder: CLIPVisionModelWithProjection = None,
        requires_safety_checker: bool = True,
        adapter: DiscriminativeAdapter | None = None,
        correction: dict | None = None,
        layout: dict | None = None,
    ):
        super().__init__(
            vae, text_encoder, tokenizer, unet, scheduler, safety_checker, feature_extractor, image_encoder,
            requires_safety_checker,
        )  # fmt: skip
        self._register_correction(adapter, correction, layout)


class StableDiffusionXLSelfCorrectionPipeline(SelfCorrectionMixin, StableDiffusionXLPipeline):
    """`StableDiffusionXLPipeline` sampling with self-correction; components and settings in the module docstring."""

    _optional_components = [*StableDiffusionXLPipeline._optional_components, "adapter"]

    def __init__(  # the base class's signature (diffusers reads components from it), then ours
        self,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        text_encoder_2: CLIPTextModelWithProjection,
        tokenizer: CLIPTokenizer,
        tokenizer_2: CLIPTokenizer,
        unet: UNet2DConditionModel,
        scheduler: KarrasDiffusionSchedulers,
        image_encoder: CLIPVisionModelWithProjection = None,
        feature_extractor: CLIPImageProcessor = None,
        force_zeros_for_empty_prompt: bool = True,
        add_watermarker: bool | None = None,
        adapter: DiscriminativeAdapter | None = None,
        correction: dict | None = None,
        layout: dict | None = None,
    ):
        super().__init__(
            vae, text_encoder, text_encoder_2, tokenizer, tokenizer_2, unet, scheduler, image_encoder,
            feature_extractor, force_zeros_for_empty_prompt, add_watermarker,
        )  # fmt: skip
        self._register_correction(adapter, correction, layout)


class SelfCorrectingPipeline:
    """The self-correcting pipeline class for a given pipeline, like diffusers' `AutoPipelineForText2Image`.

    Example:
        >>> sc = SelfCorrectingPipeline.from_pipe(pipe, adapter=adapter, correction={"scale": 0.5})
        >>> type(sc).__name__  # for a StableDiffusionPipeline
        'StableDiffusionSelfCorrectionPipeline'
    """

    _CLASSES = (
        (StableDiffusionXLPipeline, StableDiffusionXLSelfCorrectionPipeline),
        (StableDiffusionPipeline, StableDiffusionSelfCorrectionPipeline),
    )

    def __init__(self):
        raise TypeError("Use SelfCorrectingPipeline.from_pipe(pipe, adapter=..., correction=...).")

    @classmethod
    def from_pipe(cls, pipe, **kwargs):
        """A self-correcting pipeline sharing `pipe`'s components (diffusers' `from_pipe`), in `pipe`'s dtype and with
        its progress-bar settings; `kwargs` are `adapter`, `correction`, `dtype` and any component to replace."""
        for base, corrected in cls._CLASSES:
            if isinstance(pipe, base):
                kwargs.setdefault("dtype", pipe.dtype)  # diffusers' default, float32, would cast shared weights
                quiet = logging.getLogger("diffusers.models.modeling_utils")  # its `to(dtype)` warns of [] modules
                level = quiet.level
                quiet.setLevel(logging.ERROR)
                try:
                    new = corrected.from_pipe(pipe, **kwargs)
                finally:
                    quiet.setLevel(level)
                new.set_progress_bar_config(**getattr(pipe, "_progress_bar_config", {}))
                return new
        raise ValueError(
            f"`pipe` is a {type(pipe).__name__}; self-correcting pipelines exist for StableDiffusionPipeline and "
            "StableDiffusionXLPipeline. With another pipeline, pass a SelfCorrection callback to its call."
        )
