"""Keep the autograd graph of a sampler's own UNet pass, from its input to the probed blocks.

The pipeline's denoising loop runs under `torch.no_grad()`. For self-correction's low-overhead mode, the recorder
stands in for `unet.forward` while attached: it turns gradients on for the pass, with the input latent as a fresh
leaf, and turns them off again as soon as every probed block has produced its features, so the graph covers only
the blocks up to the probed one and the rest of the pass costs what it always does. Afterwards `input`,
`timestep`, `scale` (d input / d latent, from `scheduler.scale_model_input`) and `features` describe that pass:
one partial backward from a score of the features gives its gradient w.r.t. the latent, without a second forward.

With classifier-free guidance the sampler's batch is `[unconditional, conditional]`, twice the `batch` of latents.
The recorder then runs the two halves as two UNet calls, the unconditional one without a graph, so the graph, its
memory and the backward cover only the conditional half (a batched pass would make the backward cross both).
Every tensor argument whose first dimension is the doubled batch (timesteps, text embeddings, SDXL's added
conditioning, ControlNet residuals) is split the same way.

Only passes made without gradients, as the sampler's loop makes them, are recorded: a UNet call with gradients on
(another correction term's, e.g. `scorers.LayoutScorer` after the recorded step) goes through untouched.
"""

from __future__ import annotations

import torch

from ..probe import FeatureProbe
from ._forward import override_forward, restore_forward

__all__ = ["UNetPassRecorder"]


def _half(value, n: int, part: int):
    """Half `part` (0: unconditional, 1: conditional) of every tensor in `value` whose first dimension is `n`."""
    if isinstance(value, torch.Tensor) and value.ndim and value.shape[0] == n:
        return value.chunk(2)[part]
    if isinstance(value, dict):
        return {k: _half(v, n, part) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(_half(v, n, part) for v in value)
    return value


def _concat(first, second):
    """The UNet output of a batch from those of its two halves (a tuple, or a diffusers `BaseOutput`)."""
    if isinstance(first, tuple):
        return tuple(torch.cat([a, b]) for a, b in zip(first, second))
    return type(first)(**{key: torch.cat([first[key], second[key]]) for key in first.keys()})


class UNetPassRecorder:
    """Records the UNet pass of a pipeline's loop with its graph kept up to `layers`.

    Args:
        pipe: the pipeline whose `unet` and `scheduler` are used.
        layers (`Sequence[str]`): the probed UNet blocks.
        batch (`int`, *optional*): latents per pass; a pass of `2 * batch` (classifier-free guidance) is recorded
            for its conditional half only. None records whole passes.
    """

    def __init__(self, pipe, layers, batch: int | None = None):
        self.pipe = pipe
        self.batch = batch
        self.probe = FeatureProbe(pipe.unet, layers, detach=False, early_exit=False)
        self._handles: list = []
        self._inner = None  # the UNet's forward while attached (its own, or e.g. an offloading hook's)
        self._shadowed = False  # the UNet had a `forward` instance attribute before
        self._recording = False
        self._grad_before = False
        self.input: torch.Tensor | None = None
        self.timestep = None
        self.scale: torch.Tensor | None = None

    @property
    def features(self) -> dict[str, torch.Tensor]:
        return self.probe.features

    def attach(self) -> UNetPassRecorder:
        if self._inner is not None:
            return self
        unet = self.pipe.unet
        self.probe.attach()
        self._handles = [m.register_forward_hook(self._probed) for m in self.probe._modules]  # after the probe's
        self._inner, self._shadowed = override_forward(unet, self._forward)  # the UNet's hooks still run
        return self

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        if self._inner is not None:
            restore_forward(self.pipe.unet, self._inner, self._shadowed)
            self._inner = None
        self.probe.remove()

    def _forward(self, sample, *args, **kwargs):
        if torch.is_grad_enabled():  # not the sampler's pass (its loop runs under no_grad): another term's, untouched
            return self._inner(sample, *args, **kwargs)
        n = sample.shape[0]
        if self.batch is None or n != 2 * self.batch:
            return self._record(sample, *args, **kwargs)
        sample_u, args_u, kwargs_u = _half((sample, args, kwargs), n, 0)
        sample_c, args_c, kwargs_c = _half((sample, args, kwargs), n, 1)
        with torch.no_grad():  # the unconditional half: no graph; its probed features are dropped by _record
            uncond = self._inner(sample_u, *args_u, **kwargs_u)
        return _concat(uncond, self._record(sample_c, *args_c, **kwargs_c))

    def _record(self, sample, *args, **kwargs):
        """The pass with the input as a leaf that requires grad, and gradients on until the probed blocks ran."""
        self.timestep = args[0] if args else kwargs["timestep"]
        leaf = sample.detach().requires_grad_(True)
        # d(model input)/d(latent): scale_model_input is a per-step scalar factor (1 for DDIM-type samplers)
        one = torch.ones((), device=sample.device, dtype=torch.float32)
        self.scale = self.pipe.scheduler.scale_model_input(one, self.timestep)
        self.input = leaf
        self.probe.clear()
        self._grad_before = torch.is_grad_enabled()
        self._recording = True
        torch.set_grad_enabled(True)
        try:
            return self._inner(leaf, *args, **kwargs)
        finally:
            self._recording = False
            torch.set_grad_enabled(self._grad_before)

    def _probed(self, module, args, output):
        """After a probed block: once all have run, the rest of the pass needs no graph."""
        if self._recording and len(self.probe.features) == len(self.probe.layers):
            torch.set_grad_enabled(self._grad_before)
