"""The state of a world pipeline run: its models (from their seeds), the EMA of the UNet, the latent scale, and how
they are stored in a checkpoint of the engine's run folder (`discadapt.train.runs`).

In a checkpoint, the trained parameters are named `vae.<name>`, `text_encoder.<name>`, `unet.<name>`; the objective's
own state holds the EMA weights as `ema.<UNet parameter name>` and, in `meta`, the latent `scaling_factor` (None
until the UNet phase starts) and the EMA's counters.

Example:
    >>> state = WorldState(WorldTrainConfig(sizes=ModelSizes.tiny()))
    >>> state.load(RunDir("runs/world").load_checkpoint())  # doctest: +SKIP
    >>> state.pipeline()  # doctest: +SKIP
"""

from __future__ import annotations

import copy

import torch
from diffusers import StableDiffusionPipeline
from diffusers.training_utils import EMAModel

from ....train.runs import Checkpoint
from ..models import assemble_pipeline, initial_models
from .config import WorldTrainConfig

__all__ = ["WorldState"]

_EMA = "ema."


class WorldState:
    """Models, EMA and latent scale of one run, freshly initialised from `config.seed`.

    Args:
        config (WorldTrainConfig): the run's configuration.
        device (str | torch.device): where the models live. Default "cpu".

    Attributes:
        modules (torch.nn.ModuleDict): `vae`, `text_encoder`, `unet` (what the engine trains and checkpoints).
        ema (diffusers.training_utils.EMAModel): EMA of the UNet's parameters.
        scaling_factor (float | None): the VAE latent scale, measured when the UNet phase starts.
        step (int): optimizer steps done (VAE steps first, then UNet steps).
    """

    def __init__(self, config: WorldTrainConfig, device: str | torch.device = "cpu"):
        self.config = config
        vae, text_encoder, unet = initial_models(config.sizes, config.seed)
        self.modules = torch.nn.ModuleDict({"vae": vae, "text_encoder": text_encoder, "unet": unet}).to(device)
        self.ema = EMAModel(self.unet.parameters(), decay=config.ema_decay)
        self.scaling_factor: float | None = None
        self.step = 0

    @property
    def vae(self):
        return self.modules["vae"]

    @property
    def text_encoder(self):
        return self.modules["text_encoder"]

    @property
    def unet(self):
        return self.modules["unet"]

    def set_scale(self, scaling_factor: float | None) -> None:
        """Record the latent scale, also in the VAE's config (`latents * scaling_factor` has unit std)."""
        self.scaling_factor = scaling_factor
        if scaling_factor is not None:
            self.vae.register_to_config(scaling_factor=scaling_factor)

    def extra(self) -> tuple[dict[str, torch.Tensor], dict]:
        """The EMA weights by UNet parameter name, and the JSON state (scale, EMA counters)."""
        ema = self.ema.state_dict()
        names = [name for name, _ in self.unet.named_parameters()]
        tensors = {_EMA + name: t for name, t in zip(names, ema.pop("shadow_params"))}
        return tensors, {"scaling_factor": self.scaling_factor, "ema": ema}

    def load_extra(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        """Inverse of `extra`."""
        names = [name for name, _ in self.unet.named_parameters()]
        device = next(self.unet.parameters()).device
        self.ema.load_state_dict({**meta["ema"], "shadow_params": [tensors[_EMA + n].to(device) for n in names]})
        self.set_scale(meta["scaling_factor"])

    def load(self, checkpoint: Checkpoint) -> WorldState:
        """Take the models, EMA, scale and step of an engine checkpoint of this run; returns self."""
        self.modules.load_state_dict(checkpoint.trainable)
        self.load_extra(checkpoint.state, checkpoint.meta)
        self.step = checkpoint.step
        return self

    def pipeline(self) -> StableDiffusionPipeline:
        """The run's pipeline (copies of the models): EMA UNet weights, the VAE with its `scaling_factor`, DDIM, the
        CLIP tokenizer.

        Raises:
            ValueError: the run is still in the VAE phase.
        """
        if self.scaling_factor is None:
            raise ValueError(f"the run is at step {self.step}, still in the VAE phase: it has no UNet yet.")
        unet = copy.deepcopy(self.unet)
        self.ema.copy_to(unet.parameters())
        vae, text_encoder = copy.deepcopy(self.vae), copy.deepcopy(self.text_encoder)
        return assemble_pipeline(vae, text_encoder, unet, self.scaling_factor)
