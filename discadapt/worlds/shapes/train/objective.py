"""Training the shapes world's own `StableDiffusionPipeline` from scratch, reproducibly from a seed, as an objective
of the training engine (`discadapt.train.engine`).

`train_world(out_dir, ...)`, `vae_steps` VAE steps then `unet_steps` UNet steps, one step counter:

1. Data (`data.py`): every step a fresh batch of "train" examples, a pure function of (seed, phase, step);
   categories drawn with `category_weights` (default weighted towards single objects).
2. VAE phase: MSE + `l1_weight` * L1 on reconstructions of posterior samples, + `kl_weight` * KL (summed over
   latent dimensions, averaged over the batch).
3. Latent scale, when the UNet phase starts: the std of the VAE posterior means of `scale_examples` seeded scenes;
   `1 / std` is stored as the VAE config's `scaling_factor`, so that `latents * scaling_factor` has unit std, as
   diffusers expects.
4. UNet phase, text encoder + UNet jointly: epsilon prediction on the scaled posterior means, DDPM noise at uniform
   timesteps, captions replaced by "" with probability `caption_dropout` (for classifier-free guidance), EMA of the
   UNet weights (`diffusers.EMAModel`) after each step.
5. One AdamW with a group per phase (the VAE's; text encoder + UNet's, the token embedding without weight decay so
   that rows of unused tokens keep their seeded values): each group's schedule (linear warmup, then constant) starts
   with its phase, and a group without gradients does not move. Gradient clipping at `GRAD_CLIP`.
6. The engine's run folder (`discadapt.train.runs`): checkpoints every `checkpoint_every` steps, at a stop
   (`stop_after`) and at the end. Calling `train_world` again on the same `out_dir` resumes from the newest checkpoint
   and ends with the same weights as an uninterrupted run; another configuration raises a ValueError naming the
   fields and writes nothing.
7. The end: `out_dir/pipeline`, a `StableDiffusionPipeline` (EMA UNet weights, DDIM scheduler, the CLIP tokenizer,
   safetensors) that `StableDiffusionPipeline.from_pretrained(path, local_files_only=True)` loads.

Example:
    >>> from discadapt.worlds.shapes.models import ModelSizes
    >>> result = train_world("/tmp/w", vae_steps=2, unet_steps=2, batch_size=2, sizes=ModelSizes.tiny(),
    ...                      progress=False)  # doctest: +SKIP
    >>> result["pipeline"]  # doctest: +SKIP
    '/tmp/w/pipeline'
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import fields

import torch
import torch.nn.functional as F

from ....tokenizer import clip_tokenizer
from ....train.engine import LoopSettings, Objective, make_accelerator, run_training
from ....train.runs import RunDir
from ..models import ModelSizes, noise_scheduler
from .config import (
    BATCH_SIZE,
    GRAD_CLIP,
    KEEP_CHECKPOINTS,
    LR,
    RESUMABLE_FIELDS,
    UNET_STEPS,
    VAE_BATCH_SIZE,
    VAE_LR,
    VAE_STEPS,
    WorldTrainConfig,
)
from .data import step_generator, world_batch
from .export import save_pipeline
from .state import WorldState

__all__ = ["WorldPipelineObjective", "train_world"]


def _tokenize(tokenizer, captions: Sequence[str], device) -> torch.Tensor:
    return tokenizer(
        list(captions),
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids.to(device)  # (n, 77)


class WorldPipelineObjective(Objective):
    """The world pipeline as an engine objective (see the module docstring); one process.

    Args:
        config (WorldTrainConfig): what to train.
    """

    name = "world_pipeline"
    resumable = RESUMABLE_FIELDS
    outputs = ("pipeline",)

    def __init__(self, config: WorldTrainConfig):
        self.config = config
        self.settings = LoopSettings(
            steps=config.total_steps,
            seed=config.seed,
            max_grad_norm=GRAD_CLIP,
            weight_decay=config.weight_decay,
            lr_warmup_steps=config.warmup_steps,
            checkpoint_every=config.checkpoint_every,
            keep_checkpoints=KEEP_CHECKPOINTS,
            steps_name="vae_steps + unet_steps",
        )
        self.world: WorldState | None = None

    def record(self) -> dict:
        return {"config": self.config.to_dict(), "run": {}}

    def setup(self, accelerator) -> torch.nn.ModuleDict:
        self.device = accelerator.device
        self.world = WorldState(self.config, self.device)
        self.tokenizer, self.scheduler = clip_tokenizer(), noise_scheduler()
        return self.world.modules

    def param_groups(self, modules: torch.nn.ModuleDict) -> list[dict]:
        c = self.config
        embedding = modules["text_encoder"].get_input_embeddings().weight
        decayed = [p for p in modules["text_encoder"].parameters() if p is not embedding]
        decayed += list(modules["unet"].parameters())
        unet_phase = {"lr": c.lr, "schedule_start": c.vae_steps}
        return [
            {"params": list(modules["vae"].parameters()), "lr": c.vae_lr, "schedule_steps": c.vae_steps},
            {"params": decayed, **unet_phase},
            {"params": [embedding], "weight_decay": 0.0, **unet_phase},  # unused token rows keep their values
        ]

    def phase(self, step: int) -> str:
        return "vae" if step < self.config.vae_steps else "unet"

    def micro_batches(self, first: int, count: int, accelerator):
        for step in range(first, first + count):
            phase = self.phase(step)
            local = step if phase == "vae" else step - self.config.vae_steps
            n = self.config.vae_batch_size if phase == "vae" else self.config.batch_size
            images, captions = world_batch(self.config, phase, local, n)
            yield phase, images, captions, step_generator(self.config, phase, local)

    def before_step(self, step: int) -> None:
        if self.phase(step) == "unet" and self.world.scaling_factor is None:
            self.world.set_scale(self._measure_scale())

    @torch.no_grad()
    def _measure_scale(self) -> float:
        c, vae = self.config, self.world.vae.eval()
        means = []
        for start in range(0, c.scale_examples, 64):
            images, _ = world_batch(c, "scale", start, min(64, c.scale_examples - start))
            means.append(vae.encode(images.to(self.device)).latent_dist.mean)
        return float(1.0 / torch.cat(means).float().std())

    def loss(self, modules, batch, step: int, accelerator) -> dict[str, torch.Tensor]:
        phase, images, captions, g = batch
        images = images.to(self.device)
        return {"loss": self._vae_loss(images, g) if phase == "vae" else self._unet_loss(images, captions, g)}

    def _vae_loss(self, images: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        c, vae = self.config, self.world.vae.train()
        posterior = vae.encode(images).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=g).to(self.device)
        recon = vae.decode(z).sample  # (n, 3, S, S)
        return F.mse_loss(recon, images) + c.l1_weight * F.l1_loss(recon, images) + c.kl_weight * posterior.kl().mean()

    def _unet_loss(self, images: torch.Tensor, captions: list[str], g: torch.Generator) -> torch.Tensor:
        world = self.world
        drop = torch.rand(len(captions), generator=g) < self.config.caption_dropout
        captions = ["" if d else t for d, t in zip(drop.tolist(), captions)]
        with torch.no_grad():
            latents = world.vae.eval().encode(images).latent_dist.mean * world.scaling_factor
        noise = torch.randn(latents.shape, generator=g).to(self.device)  # (n, C, s, s)
        t = torch.randint(0, self.scheduler.config.num_train_timesteps, (len(captions),), generator=g).to(self.device)
        noisy = self.scheduler.add_noise(latents, noise, t)
        world.text_encoder.train()
        world.unet.train()
        hidden = world.text_encoder(_tokenize(self.tokenizer, captions, self.device))[0]  # (n, 77, D)
        return F.mse_loss(world.unet(noisy, t, encoder_hidden_states=hidden).sample, noise)

    def after_step(self, step: int) -> None:
        if self.phase(step) == "unet":
            self.world.ema.step(self.world.unet.parameters())

    def checkpoint_state(self) -> tuple[dict[str, torch.Tensor], dict]:
        return self.world.extra()

    def load_checkpoint_state(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        self.world.load_extra(tensors, meta)

    def finish(self, run: RunDir, step: int, accelerator) -> dict:
        self.world.step = step
        if accelerator.is_main_process and run.output_step("pipeline") != step:
            save_pipeline(self.world, run.path / "pipeline")
        return {"pipeline": str(run.path / "pipeline")}


def train_world(
    out_dir: str | os.PathLike,
    *,
    seed: int = 0,
    vae_steps: int = VAE_STEPS,
    unet_steps: int = UNET_STEPS,
    batch_size: int = BATCH_SIZE,
    vae_batch_size: int = VAE_BATCH_SIZE,
    lr: float = LR,
    vae_lr: float = VAE_LR,
    sizes: ModelSizes | None = None,
    device: str = "cpu",
    progress: bool = True,
    stop_after: int | None = None,
    **options,
) -> dict:
    """Train (or resume training) the shapes world's pipeline in `out_dir` (see the module docstring).

    Args:
        out_dir (str | PathLike): run folder: `train_config.json`, `log.jsonl`, `checkpoints/`, `pipeline/`.
        seed, vae_steps, unet_steps, batch_size, vae_batch_size, lr, vae_lr, sizes: `WorldTrainConfig` fields
            (sizes None means `ModelSizes()`).
        device (str): "cpu", or the accelerator's device (e.g. "cuda"). Default "cpu".
        progress (bool): show a tqdm bar. Default True.
        stop_after (int | None): stop (with a checkpoint) once this many global steps (VAE + UNet) are done, to
            run in slices; None trains to the end. Default None.
        **options: other `WorldTrainConfig` fields (warmup_steps, l1_weight, kl_weight, caption_dropout,
            ema_decay, checkpoint_every, scale_examples, category_weights, weight_decay).

    Returns:
        dict: `step` (global steps done), `done`, `pipeline` (path of the saved pipeline, or None), `vae_loss` and
        `unet_loss` (last value of this call), `vae_steps_per_s` and `unet_steps_per_s` (this call).

    Raises:
        ValueError: a bad argument, or `out_dir` holding a run with a different configuration (naming the fields).
    """
    unknown = sorted(set(options) - {f.name for f in fields(WorldTrainConfig)})
    if unknown:
        raise ValueError(f"unknown options {unknown}; pass fields of WorldTrainConfig.")
    config = WorldTrainConfig(
        seed=seed,
        vae_steps=vae_steps,
        unet_steps=unet_steps,
        batch_size=batch_size,
        vae_batch_size=vae_batch_size,
        lr=lr,
        vae_lr=vae_lr,
        sizes=ModelSizes() if sizes is None else sizes,
        **options,
    )
    accelerator = make_accelerator(cpu=torch.device(device).type == "cpu")
    result = run_training(
        WorldPipelineObjective(config), out_dir, resume=True, stop_after=stop_after, progress=progress,
        accelerator=accelerator,
    )  # fmt: skip
    summary = {"step": result["step"], "done": result["done"], "pipeline": result["pipeline"]}
    for phase in ("vae", "unet"):
        done = result["phases"].get(phase)
        summary[f"{phase}_loss"] = done["losses"]["loss"] if done else None
        summary[f"{phase}_steps_per_s"] = done["steps"] / done["seconds"] if done else None
    return summary
