"""Training the shapes world's own `StableDiffusionPipeline` from scratch, reproducibly from a seed, and judging
it with the oracle.

`train_world(out_dir, ...)`:

1. Data: every step draws a fresh batch of "train" examples (`make_example`), seeded by `(seed, phase, step, i)`,
   so a resumed run sees exactly the batches of an uninterrupted one. Categories are drawn with
   `category_weights` (default weighted towards single objects, the lever ENVIRONMENT.md points to).
2. VAE (`vae_steps` steps): MSE + `l1_weight` * L1 on reconstructions of posterior samples, + `kl_weight` * KL
   (KL summed over latent dimensions, averaged over the batch).
3. Latent scale: the std of the VAE posterior means of `scale_examples` seeded scenes; `1 / std` is stored as the
   VAE config's `scaling_factor`, so that `latents * scaling_factor` has unit std, as diffusers expects.
4. Text encoder + UNet (`unet_steps` steps), jointly: epsilon prediction on the scaled posterior means, DDPM
   noise at uniform timesteps, captions replaced by "" with probability `caption_dropout` (for classifier-free
   guidance), AdamW with linear warmup, gradient clipping, EMA of the UNet weights (`diffusers.EMAModel`).
5. Checkpoints every `checkpoint_every` steps, at a stop (`stop_after`) and at the end: models, optimizers,
   EMA, step, scale and RNG state, written to a temporary folder then renamed (`os.replace`) to
   `checkpoints/step-NNNNNNN`, so a killed run never leaves a half-written checkpoint. Calling `train_world` again
   on the same `out_dir` resumes from the newest checkpoint and ends with the same weights as an uninterrupted run
   (all randomness is drawn from per-step generators); a different configuration raises a ValueError naming the
   fields and writes nothing.
6. The end: `out_dir/pipeline`, a `StableDiffusionPipeline` (EMA UNet weights, DDIM scheduler, the CLIP
   tokenizer, safetensors) that `StableDiffusionPipeline.from_pretrained(path, local_files_only=True)` loads.

`evaluate_world(pipe, ...)` generates images for held-out ("test_id") prompts and returns the oracle's accuracy
per caption category; `reconstruction_accuracy(vae, ...)` the fraction of scenes whose VAE reconstruction the
oracle reads back as the scene's objects.

Example:
    >>> from discadapt.worlds.shapes.models import ModelSizes
    >>> from discadapt.worlds.shapes.train import train_world
    >>> result = train_world("/tmp/w", vae_steps=2, unet_steps=2, batch_size=2, sizes=ModelSizes.tiny(),
    ...                      progress=False)  # doctest: +SKIP
    >>> result["pipeline"]  # doctest: +SKIP
    '/tmp/w/pipeline'
"""

from __future__ import annotations

import copy
import json
import os
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, StableDiffusionPipeline
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from ...tokenizer import clip_tokenizer
from . import runs
from .captions import CATEGORIES
from .dataset import check_category_weights, draw_categories, make_dataset, make_example
from .models import (
    ModelSizes,
    make_text_encoder,
    make_unet,
    make_vae,
    noise_scheduler,
    sampling_scheduler,
)
from .oracle import check, detect
from .render import render

__all__ = [
    "WorldTrainConfig",
    "evaluate_world",
    "export_pipeline",
    "initial_models",
    "load_checkpoint",
    "load_run",
    "pipeline_from_state",
    "reconstruction_accuracy",
    "train_world",
]

# ---- Defaults, in one place. Measured on 2 CPU cores (ENVIRONMENT.md and this module's first runs). ----
VAE_STEPS = 1500  # ~900 steps of MSE + 0.5 L1 gave 97% oracle recall at 64 px; 32 px is easier per step
UNET_STEPS = 12000  # the bundled pipeline's: single-object oracle accuracy 0.91 (0.35 at 2,500 steps)
BATCH_SIZE = 64  # UNet batch: as in the 64-px attempt (loss still falling, stable at lr 8e-4)
VAE_BATCH_SIZE = 32
LR = 8e-4  # AdamW for text encoder + UNet; worked at batch 64 in the 64-px attempt
VAE_LR = 1e-3
WEIGHT_DECAY = 1e-2
WARMUP_STEPS = 100  # linear LR warmup of both phases: a fresh transformer + Adam at 8e-4 can spike otherwise
GRAD_CLIP = 1.0
L1_WEIGHT = 0.5  # MSE alone returned squares round (84.5% vs 97% with + 0.5 L1)
KL_WEIGHT = 1e-8  # 1e-6 left posterior noise larger than the latent spread; we train on posterior means anyway
CAPTION_DROPOUT = 0.1  # share of empty captions, for classifier-free guidance
EMA_DECAY = 0.998  # ~500-step horizon: short runs; diffusers' EMAModel warms the decay up from 0
SCALE_EXAMPLES = 512  # scenes whose latent std sets `scaling_factor`
CHECKPOINT_EVERY = 500
KEEP_CHECKPOINTS = 2
# Weighted towards single objects: the 64-px attempt drew single objects badly; learn to draw first.
CATEGORY_WEIGHTS = {"single": 0.4, "two_objects": 0.2, "counting": 0.15, "spatial": 0.15, "referring": 0.1}

_PHASE_SEEDS = {"vae": 101, "scale": 102, "unet": 103}  # separate data streams per phase


@dataclass(frozen=True)
class WorldTrainConfig:
    """Everything that determines the trained weights (a resumed run must match it field for field).

    Args:
        seed (int): seed of initialisation, data and noise. Default 0.
        vae_steps (int): VAE optimisation steps, >= 1. Default `VAE_STEPS`.
        unet_steps (int): text encoder + UNet steps, >= 1. Default `UNET_STEPS`.
        batch_size (int): UNet batch. Default `BATCH_SIZE`.
        vae_batch_size (int): VAE batch. Default `VAE_BATCH_SIZE`.
        lr (float): AdamW learning rate of text encoder + UNet. Default `LR`.
        vae_lr (float): AdamW learning rate of the VAE. Default `VAE_LR`.
        weight_decay (float): AdamW weight decay. Default `WEIGHT_DECAY`.
        warmup_steps (int): linear warmup of each phase. Default `WARMUP_STEPS`.
        l1_weight (float), kl_weight (float): VAE loss weights. Defaults `L1_WEIGHT`, `KL_WEIGHT`.
        caption_dropout (float): probability of an empty caption, in [0, 1). Default `CAPTION_DROPOUT`.
        ema_decay (float): EMA decay of the UNet weights, in [0, 1). Default `EMA_DECAY`.
        checkpoint_every (int): steps between checkpoints. Default `CHECKPOINT_EVERY`.
        scale_examples (int): scenes whose latent std sets the VAE `scaling_factor`. Default `SCALE_EXAMPLES`.
        category_weights (dict[str, float]): training mix of caption categories. Default `CATEGORY_WEIGHTS`.
        sizes (ModelSizes): model sizes (and image size). Default `ModelSizes()`.
    """

    seed: int = 0
    vae_steps: int = VAE_STEPS
    unet_steps: int = UNET_STEPS
    batch_size: int = BATCH_SIZE
    vae_batch_size: int = VAE_BATCH_SIZE
    lr: float = LR
    vae_lr: float = VAE_LR
    weight_decay: float = WEIGHT_DECAY
    warmup_steps: int = WARMUP_STEPS
    l1_weight: float = L1_WEIGHT
    kl_weight: float = KL_WEIGHT
    caption_dropout: float = CAPTION_DROPOUT
    ema_decay: float = EMA_DECAY
    checkpoint_every: int = CHECKPOINT_EVERY
    scale_examples: int = SCALE_EXAMPLES
    category_weights: dict = field(default_factory=lambda: dict(CATEGORY_WEIGHTS))
    sizes: ModelSizes = field(default_factory=ModelSizes)

    def __post_init__(self):
        for name in ("vae_steps", "unet_steps", "batch_size", "vae_batch_size", "checkpoint_every", "scale_examples"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` is {value!r}; pass an int >= 1.")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"`seed` is {self.seed!r}; pass an int >= 0.")
        if not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise ValueError(f"`warmup_steps` is {self.warmup_steps!r}; pass an int >= 0.")
        for name in ("lr", "vae_lr"):
            if not getattr(self, name) > 0:
                raise ValueError(f"`{name}` is {getattr(self, name)!r}; pass a float > 0.")
        for name in ("weight_decay", "l1_weight", "kl_weight"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"`{name}` is {getattr(self, name)!r}; pass a float >= 0.")
        for name in ("caption_dropout", "ema_decay"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"`{name}` is {getattr(self, name)!r}; pass a float in [0, 1).")
        check_category_weights(self.category_weights)
        if not isinstance(self.sizes, ModelSizes):
            raise ValueError(f"`sizes` is {self.sizes!r}; pass a ModelSizes.")

    @property
    def total_steps(self) -> int:
        return self.vae_steps + self.unet_steps

    def to_dict(self) -> dict:
        """JSON-ready dict (the sizes flattened as `sizes.<field>`)."""
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "sizes"}
        d.update({f"sizes.{k}": v for k, v in self.sizes.to_dict().items()})
        return json.loads(json.dumps(d))

    @classmethod
    def from_dict(cls, data: dict) -> WorldTrainConfig:
        """Inverse of `to_dict`."""
        sizes = {k.split(".", 1)[1]: v for k, v in data.items() if k.startswith("sizes.")}
        rest = {k: v for k, v in data.items() if not k.startswith("sizes.")}
        return cls(**rest, sizes=ModelSizes(**sizes))


# ---- Data -------------------------------------------------------------------------------------------------------


def _batch(config: WorldTrainConfig, phase: str, step: int, n: int):
    """The `n` examples of `phase` at `step`: images (n, 3, S, S) in [-1, 1] and caption texts."""
    rng = np.random.default_rng((config.seed, _PHASE_SEEDS[phase], step))
    cats = draw_categories(rng, config.category_weights, n)
    size = config.sizes.image_size
    examples = [
        make_example((config.seed, _PHASE_SEEDS[phase], step, i), c, "train", image_size=size)
        for i, c in enumerate(cats)
    ]
    images = np.stack([render(e.scene) for e in examples])  # (n, S, S, 3) uint8
    images = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1  # (n, 3, S, S)
    return images, [e.caption.text for e in examples]


def _generator(config: WorldTrainConfig, phase: str, step: int) -> torch.Generator:
    seed = int(np.random.SeedSequence((config.seed, _PHASE_SEEDS[phase], step, 7)).generate_state(1)[0])
    return torch.Generator().manual_seed(seed)


def _to_uint8(images: torch.Tensor) -> np.ndarray:
    """(n, 3, S, S) in [-1, 1] -> (n, S, S, 3) uint8."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()


# ---- State ------------------------------------------------------------------------------------------------------


def initial_models(config: WorldTrainConfig):
    """The freshly initialised (VAE, text encoder, UNet) of a run: seeds `seed`, `seed + 1`, `seed + 2`."""
    s = config.sizes
    return make_vae(s, config.seed), make_text_encoder(s, config.seed + 1), make_unet(s, config.seed + 2)


class _State:
    """Models, optimizers, EMA and counters of one run."""

    def __init__(self, config: WorldTrainConfig, device: str):
        c = config
        self.config, self.device = c, device
        self.vae, self.text_encoder, self.unet = (m.to(device) for m in initial_models(c))
        self.vae_opt = torch.optim.AdamW(self.vae.parameters(), lr=c.vae_lr, weight_decay=c.weight_decay)
        # No weight decay on the token embedding: rows of tokens the world never uses then keep their seeded
        # initial values exactly (zero gradient, zero Adam update), so a bundle needs to store only the used rows.
        embedding = self.text_encoder.get_input_embeddings().weight
        decayed = [p for p in self.text_encoder.parameters() if p is not embedding] + list(self.unet.parameters())
        self.opt = torch.optim.AdamW(
            [{"params": decayed}, {"params": [embedding], "weight_decay": 0.0}], lr=c.lr, weight_decay=c.weight_decay
        )
        self.ema = EMAModel(self.unet.parameters(), decay=c.ema_decay)
        self.step = 0  # global: VAE steps first, then UNet steps
        self.scaling_factor: float | None = None

    def state_dict(self) -> dict:
        return {
            "step": self.step,
            "scaling_factor": self.scaling_factor,
            "vae": self.vae.state_dict(),
            "text_encoder": self.text_encoder.state_dict(),
            "unet": self.unet.state_dict(),
            "vae_opt": self.vae_opt.state_dict(),
            "opt": self.opt.state_dict(),
            "ema": self.ema.state_dict(),
            "torch_rng": torch.get_rng_state(),
        }

    def load_state_dict(self, state: dict):
        self.step, self.scaling_factor = state["step"], state["scaling_factor"]
        self.vae.load_state_dict(state["vae"])
        self.text_encoder.load_state_dict(state["text_encoder"])
        self.unet.load_state_dict(state["unet"])
        self.vae_opt.load_state_dict(state["vae_opt"])
        self.opt.load_state_dict(state["opt"])
        self.ema.load_state_dict(state["ema"])
        torch.set_rng_state(state["torch_rng"])
        if self.scaling_factor is not None:
            self.vae.register_to_config(scaling_factor=self.scaling_factor)


def load_checkpoint(out_dir: str | os.PathLike) -> dict:
    """The newest checkpoint of `out_dir` (the dict `train_world` saves: step, models, optimizers, EMA, ...).

    Raises:
        FileNotFoundError: `out_dir` has no checkpoint.
    """
    return runs.load_newest(out_dir, "train_world")


# Fields a resumed run may change: they do not alter the weights of the steps already done (the learning rate
# is constant after warmup, so a longer `unet_steps` extends a run rather than changing it).
RESUMABLE_FIELDS = ("checkpoint_every", "unet_steps")


# ---- Steps ------------------------------------------------------------------------------------------------------


def _warmup(step: int, warmup: int) -> float:
    return min(1.0, (step + 1) / warmup) if warmup else 1.0


def _vae_step(state: _State, step: int) -> float:
    c, vae = state.config, state.vae
    images, _ = _batch(c, "vae", step, c.vae_batch_size)
    images = images.to(state.device)
    g = _generator(c, "vae", step)
    vae.train()
    posterior = vae.encode(images).latent_dist
    z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=g).to(state.device)
    recon = vae.decode(z).sample  # (n, 3, S, S)
    loss = F.mse_loss(recon, images) + c.l1_weight * F.l1_loss(recon, images) + c.kl_weight * posterior.kl().mean()
    for group in state.vae_opt.param_groups:
        group["lr"] = c.vae_lr * _warmup(step, c.warmup_steps)
    state.vae_opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(vae.parameters(), GRAD_CLIP)
    state.vae_opt.step()
    return float(loss.detach())


@torch.no_grad()
def _measure_scale(state: _State) -> float:
    c, vae = state.config, state.vae.eval()
    means = []
    for start in range(0, c.scale_examples, 64):
        images, _ = _batch(c, "scale", start, min(64, c.scale_examples - start))
        means.append(vae.encode(images.to(state.device)).latent_dist.mean)
    return float(1.0 / torch.cat(means).float().std())


def _tokenize(tokenizer, captions: Sequence[str], device) -> torch.Tensor:
    return tokenizer(
        list(captions),
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids.to(device)  # (n, 77)


def _unet_step(state: _State, step: int, tokenizer, scheduler) -> float:
    c = state.config
    images, captions = _batch(c, "unet", step, c.batch_size)
    g = _generator(c, "unet", step)
    drop = torch.rand(len(captions), generator=g) < c.caption_dropout
    captions = ["" if d else t for d, t in zip(drop.tolist(), captions)]
    with torch.no_grad():
        latents = state.vae.eval().encode(images.to(state.device)).latent_dist.mean * state.scaling_factor
    noise = torch.randn(latents.shape, generator=g).to(state.device)  # (n, C, s, s)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (len(captions),), generator=g).to(state.device)
    noisy = scheduler.add_noise(latents, noise, t)
    state.text_encoder.train()
    state.unet.train()
    hidden = state.text_encoder(_tokenize(tokenizer, captions, state.device))[0]  # (n, 77, D)
    loss = F.mse_loss(state.unet(noisy, t, encoder_hidden_states=hidden).sample, noise)
    for group in state.opt.param_groups:
        group["lr"] = c.lr * _warmup(step, c.warmup_steps)
    state.opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for g_ in state.opt.param_groups for p in g_["params"]], GRAD_CLIP)
    state.opt.step()
    state.ema.step(state.unet.parameters())
    return float(loss.detach())


def pipeline_from_state(state: _State) -> StableDiffusionPipeline:
    """The run's pipeline: EMA UNet weights, the VAE with its measured `scaling_factor`, DDIM, CLIP tokenizer."""
    unet = copy.deepcopy(state.unet).eval()
    state.ema.copy_to(unet.parameters())
    vae = copy.deepcopy(state.vae).eval()
    vae.register_to_config(scaling_factor=state.scaling_factor)
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=copy.deepcopy(state.text_encoder).eval(),
        tokenizer=clip_tokenizer(),
        unet=unet,
        scheduler=sampling_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_run(out_dir: str | os.PathLike, device: str = "cpu") -> _State:
    """The state (config, models, step, scale) of the newest checkpoint of the run in `out_dir`.

    Raises:
        FileNotFoundError: `out_dir` has no checkpoint.
        ValueError: the newest checkpoint is still in the VAE phase (no latent scale, no UNet yet).
    """
    out_dir = Path(out_dir)
    saved = load_checkpoint(out_dir)
    config = WorldTrainConfig.from_dict(json.loads((out_dir / "train_config.json").read_text()))
    state = _State(config, device)
    state.load_state_dict(saved)
    if state.scaling_factor is None:
        raise ValueError(f"the newest checkpoint of {out_dir} (step {state.step}) is still in the VAE phase.")
    return state


def export_pipeline(out_dir: str | os.PathLike, dest: str | os.PathLike, device: str = "cpu") -> Path:
    """Save the pipeline of the newest checkpoint of a (possibly unfinished) run in `out_dir` to `dest` (raises as
    `load_run`)."""
    _save_pipeline(load_run(out_dir, device), Path(dest))
    return Path(dest)


def _save_pipeline(state: _State, path: Path):
    """Write the pipeline of `state` to `path` atomically, marked with its step."""
    runs.save_output(
        path,
        lambda folder: pipeline_from_state(state).save_pretrained(folder, safe_serialization=True),
        {"step": state.step, "unet_steps": state.step - state.config.vae_steps},
    )


# ---- Entry points -----------------------------------------------------------------------------------------------


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
        device (str): torch device. Default "cpu".
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
    if stop_after is not None and (isinstance(stop_after, bool) or not isinstance(stop_after, int) or stop_after < 1):
        raise ValueError(f"`stop_after` is {stop_after!r}; pass an int >= 1 or None.")
    out_dir = Path(out_dir)
    runs.check_same_config(out_dir, config.to_dict(), RESUMABLE_FIELDS)  # before writing anything
    state = _State(config, device)
    found = runs.checkpoints(out_dir)
    if found:
        state.load_state_dict(torch.load(found[-1] / "state.pt", map_location=device, weights_only=True))
    if state.step > config.total_steps:
        raise ValueError(
            f"`unet_steps` is {config.unet_steps}, but {out_dir} already holds {state.step - config.vae_steps} UNet "
            "steps; pass at least that many, or a new `out_dir`."
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    runs.trim_log(out_dir / "log.jsonl", state.step)
    runs.write_config(out_dir, config.to_dict())
    end = config.total_steps if stop_after is None else min(stop_after, config.total_steps)
    tokenizer, scheduler = clip_tokenizer(), noise_scheduler()
    result = {"vae_loss": None, "unet_loss": None, "vae_steps_per_s": None, "unet_steps_per_s": None}
    timing = {"vae": [0, 0.0], "unet": [0, 0.0]}
    bar = tqdm(total=end, initial=min(state.step, end), disable=not progress, desc="train_world")
    with open(out_dir / "log.jsonl", "a") as log:
        while state.step < end:
            start = time.perf_counter()
            if state.step < config.vae_steps:
                phase, loss = "vae", _vae_step(state, state.step)
            else:
                if state.scaling_factor is None:
                    state.scaling_factor = _measure_scale(state)
                    state.vae.register_to_config(scaling_factor=state.scaling_factor)
                phase, loss = "unet", _unet_step(state, state.step - config.vae_steps, tokenizer, scheduler)
            elapsed = time.perf_counter() - start
            timing[phase][0] += 1
            timing[phase][1] += elapsed
            result[f"{phase}_loss"] = loss
            state.step += 1
            log.write(json.dumps({"step": state.step, "phase": phase, "loss": loss, "seconds": elapsed}) + "\n")
            log.flush()
            bar.update(1)
            bar.set_postfix(phase=phase, loss=f"{loss:.4f}")
            if state.step % config.checkpoint_every == 0 or state.step == end:
                runs.save_checkpoint(out_dir, state.step, state.state_dict(), config.to_dict(), KEEP_CHECKPOINTS)
    bar.close()
    for phase, (n, seconds) in timing.items():
        result[f"{phase}_steps_per_s"] = n / seconds if n else None
    done = state.step >= config.total_steps
    pipeline = None
    if done:
        if state.scaling_factor is None:  # cannot happen: unet_steps >= 1 measures it
            raise RuntimeError("finished without a latent scale")
        pipeline = out_dir / "pipeline"
        if runs.output_step(pipeline) != state.step:
            _save_pipeline(state, pipeline)
    return {"step": state.step, "done": done, "pipeline": None if pipeline is None else str(pipeline), **result}


def _object_kinds(objects) -> Counter:
    return Counter((o.color, o.shape, o.size) for o in objects)


@torch.no_grad()
def reconstruction_accuracy(vae: AutoencoderKL, n: int = 256, seed: int = 0, image_size: int = 32) -> dict:
    """How well `vae` keeps scenes: the oracle's detections on reconstructions of "test_id" scenes (all
    categories) against the scenes' objects.

    Args:
        vae (AutoencoderKL): the VAE (reconstructs from posterior means).
        n (int): scenes, >= 1. Default 256.
        seed (int): dataset seed. Default 0.
        image_size (int): image side. Default 32.

    Returns:
        dict: `kinds` (fraction whose detected (color, shape, size) multiset equals the scene's), `exact` (detected
        objects, boxes included, equal the scene's) and `caption` (fraction whose caption the oracle accepts).
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"`n` is {n!r}; pass an int >= 1.")
    examples = make_dataset(n, split="test_id", seed=seed, image_size=image_size)
    vae = vae.eval()
    device = next(vae.parameters()).device
    kinds = exact = caption = 0
    for start in range(0, n, 64):
        batch = examples[start : start + 64]
        images = np.stack([render(e.scene) for e in batch])
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float().to(device) / 127.5 - 1
        recon = _to_uint8(vae.decode(vae.encode(x).latent_dist.mean).sample)
        for e, image in zip(batch, recon):
            found = detect(image)
            kinds += _object_kinds(found) == _object_kinds(e.scene.objects)
            exact += set(found) == set(e.scene.objects)
            caption += check(image, e.caption).ok
    return {"kinds": kinds / n, "exact": exact / n, "caption": caption / n}


@torch.no_grad()
def evaluate_world(
    pipe: StableDiffusionPipeline,
    n_prompts: int = 100,
    seed: int = 0,
    steps: int = 25,
    guidance: float = 4.0,
    categories: Sequence[str] = CATEGORIES,
    batch_size: int = 50,
) -> dict[str, float]:
    """Oracle accuracy of images generated for "test_id" captions, per caption category.

    Args:
        pipe (StableDiffusionPipeline): e.g. `StableDiffusionPipeline.from_pretrained(out_dir / "pipeline")`.
        n_prompts (int): prompts per category, >= 1. Default 100.
        seed (int): seed of prompts and sampling noise. Default 0.
        steps (int): sampler steps. Default 25.
        guidance (float): classifier-free guidance scale (> 1 uses the empty-caption branch). Default 4.0.
        categories (Sequence[str]): categories to test. Default all.
        batch_size (int): images per pipeline call. Default 50.

    Returns:
        dict[str, float]: category -> fraction of images whose caption the oracle accepts.

    Example:
        >>> evaluate_world(pipe, n_prompts=10, steps=5)  # doctest: +SKIP
        {'single': 0.3, 'two_objects': 0.0, ...}
    """
    for name, value in (("n_prompts", n_prompts), ("steps", steps), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"`{name}` is {value!r}; pass an int >= 1.")
    categories = [categories] if isinstance(categories, str) else list(categories)
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    scores = {}
    for k, category in enumerate(categories):
        examples = make_dataset(n_prompts, split="test_id", seed=seed, categories=[category], image_size=size)
        prompts = [e.caption.text for e in examples]
        ok = 0
        for start in range(0, n_prompts, batch_size):
            chunk = prompts[start : start + batch_size]
            g = torch.Generator().manual_seed(seed * 1_000_003 + k * 10_007 + start)
            images = pipe(
                chunk,
                height=size,
                width=size,
                num_inference_steps=steps,
                guidance_scale=guidance,
                generator=g,
                output_type="np",
            ).images  # (n, S, S, 3) float in [0, 1]
            images = (np.clip(images, 0, 1) * 255).round().astype(np.uint8)
            ok += sum(check(image, prompt).ok for image, prompt in zip(images, chunk))
        scores[category] = ok / n_prompts
    return scores


def _main(argv=None):
    import argparse

    parser = argparse.ArgumentParser(description="Train the shapes world's pipeline (resumes in OUT_DIR).")
    parser.add_argument("out_dir")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vae-steps", type=int, default=VAE_STEPS)
    parser.add_argument("--unet-steps", type=int, default=UNET_STEPS)
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    parser.add_argument("--stop-after", type=int, default=None)
    parser.add_argument("--tiny", action="store_true", help="tiny models (for a smoke run)")
    args = parser.parse_args(argv)
    result = train_world(
        args.out_dir,
        seed=args.seed,
        vae_steps=args.vae_steps,
        unet_steps=args.unet_steps,
        batch_size=args.batch_size,
        sizes=ModelSizes.tiny() if args.tiny else None,
        stop_after=args.stop_after,
    )
    print(json.dumps(result))


if __name__ == "__main__":
    _main()
