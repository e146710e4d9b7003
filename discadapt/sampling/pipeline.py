"""`SelfCorrectingPipeline`: a diffusers pipeline that samples with self-correction, called like the pipeline.

Example:
    >>> pipe = StableDiffusionPipeline.from_pretrained("/models/sd-1-5")
    >>> adapter = DiscriminativeAdapter.from_pretrained("my-adapter")
    >>> sc = SelfCorrectingPipeline.from_pipe(pipe, adapter, scale=0.5, mode="reuse")
    >>> images = sc(["a red cube on a blue ball"], num_inference_steps=30).images
    >>> plain = sc(["a red cube on a blue ball"], correction_scale=0.0).images  # same as pipe(...)
"""

from __future__ import annotations

from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback

from ..adapter import DiscriminativeAdapter
from .self_correction import SelfCorrection

__all__ = ["SelfCorrectingPipeline"]


class SelfCorrectingPipeline:
    """Wraps `pipe` so that every call samples with `SelfCorrection` by `adapter`.

    Args:
        pipe: a diffusers pipeline whose callback exposes `latents` (StableDiffusionPipeline, ...XLPipeline).
        adapter (`DiscriminativeAdapter`): built for `pipe`.
        **correction: defaults for `SelfCorrection` (`scale`, `start`, `stop`, `schedule`, `normalize`,
            `max_grad_norm`, `iterations`, `mode`); a call may override `scale` with `correction_scale`.
    """

    def __init__(self, pipe, adapter: DiscriminativeAdapter, **correction):
        adapter.check_pipeline(pipe)
        SelfCorrection(adapter, [""], **correction)  # check the settings now, not at the first call
        self.pipe, self.adapter, self.correction = pipe, adapter, correction

    @classmethod
    def from_pipe(cls, pipe, adapter: DiscriminativeAdapter, **correction) -> SelfCorrectingPipeline:
        return cls(pipe, adapter, **correction)

    def __getattr__(self, name):  # everything else is the pipeline's (device, components, ...)
        return getattr(self.pipe, name)

    def __call__(self, prompt, *, correction_scale: float | None = None, **kwargs):
        """Call the pipeline with `prompt` and `kwargs`, corrected; `correction_scale` overrides `scale`.

        A `callback_on_step_end` of the caller runs after the correction.
        """
        settings = dict(self.correction)
        if correction_scale is not None:
            settings["scale"] = correction_scale
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        fix = callback = SelfCorrection(self.adapter, prompts, **settings)
        inputs = list(fix.tensor_inputs)
        if kwargs.get("callback_on_step_end") is not None:
            theirs = kwargs.pop("callback_on_step_end")
            if isinstance(theirs, (PipelineCallback, MultiPipelineCallbacks)):
                kwargs["callback_on_step_end_tensor_inputs"] = theirs.tensor_inputs
            inputs += [name for name in kwargs.pop("callback_on_step_end_tensor_inputs", []) if name not in inputs]

            def callback(pipe, step_index, timestep, callback_kwargs):  # a plain function or a PipelineCallback
                return theirs(pipe, step_index, timestep, fix(pipe, step_index, timestep, callback_kwargs))

        kwargs["callback_on_step_end_tensor_inputs"] = inputs
        try:
            return self.pipe(prompt=prompts, callback_on_step_end=callback, **kwargs)
        finally:
            fix.remove()  # reuse mode's hooks, also when the run is interrupted
