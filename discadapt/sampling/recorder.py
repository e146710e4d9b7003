"""Keep the autograd graph of a sampler's own UNet pass, from its input to the probed blocks.

The pipeline's denoising loop runs under `torch.no_grad()`. For self-correction's low-overhead mode, hooks on
the UNet turn gradients on for its pass, with the input latent as a fresh leaf, and turn them off again as soon
as every probed block has produced its features, so the graph covers only the blocks up to the probed one and
the rest of the pass costs what it always does. Afterwards `input`, `timestep`, `scale` (d input / d latent, from
`scheduler.scale_model_input`) and `features` describe that pass: one partial backward from a score of the
features gives its gradient w.r.t. the latent, without a second forward.
"""

from __future__ import annotations

import torch

from ..probe import FeatureProbe

__all__ = ["UNetPassRecorder"]


class UNetPassRecorder:
    """Records the UNet pass of a pipeline's loop with its graph kept up to `layers`.

    Args:
        pipe: the pipeline whose `unet` and `scheduler` are used.
        layers (`Sequence[str]`): the probed UNet blocks.
    """

    def __init__(self, pipe, layers):
        self.pipe = pipe
        self.probe = FeatureProbe(pipe.unet, layers, detach=False, early_exit=False)
        self._handles: list = []
        self._grad_before = False
        self.input: torch.Tensor | None = None
        self.timestep = None
        self.scale: torch.Tensor | None = None

    @property
    def features(self) -> dict[str, torch.Tensor]:
        return self.probe.features

    def attach(self) -> UNetPassRecorder:
        if self._handles:
            return self
        unet = self.pipe.unet
        self.probe.attach()
        self._handles = [
            unet.register_forward_pre_hook(self._start, with_kwargs=True),
            unet.register_forward_hook(self._end, always_call=True),
            *(m.register_forward_hook(self._probed) for m in self.probe._modules),  # after the probe's own hooks
        ]
        return self

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.probe.remove()

    def _start(self, unet, args, kwargs):
        """Before the pass: the input becomes a leaf that requires grad, and gradients are turned on."""
        sample = args[0] if args else kwargs["sample"]
        self.timestep = args[1] if len(args) > 1 else kwargs["timestep"]
        leaf = sample.detach().requires_grad_(True)
        # d(model input)/d(latent): scale_model_input is a per-step scalar factor (1 for DDIM-type samplers)
        one = torch.ones((), device=sample.device, dtype=torch.float32)
        self.scale = self.pipe.scheduler.scale_model_input(one, self.timestep)
        self.input = leaf
        self.probe.clear()
        self._grad_before = torch.is_grad_enabled()
        torch.set_grad_enabled(True)
        return ((leaf, *args[1:]), kwargs) if args else (args, {**kwargs, "sample": leaf})

    def _probed(self, module, args, output):
        """After a probed block: once all have run, the rest of the pass needs no graph."""
        if len(self.probe.features) == len(self.probe.layers):
            torch.set_grad_enabled(self._grad_before)

    def _end(self, unet, args, output):
        torch.set_grad_enabled(self._grad_before)
