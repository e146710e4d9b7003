"""Stage 1 of DPT, probing: how much does a frozen text-to-image UNet already understand?

The UNet, VAE and text encoder(s) stay frozen; only a `DiscriminativeAdapter` trains, reading the features of the
probed blocks (the UNet stops there: early exit) and learning image-text matching against hard and random
negatives (text side and image side, optionally in-batch) and referring-expression boxes.

`ProbeObjective` is the stage as an objective of the training engine (`engine.run_training`, which does the loop,
checkpoints and resumption); `tune.TuneObjective` extends it with the LoRA of stage 2. The item format is in
`data.py`, the losses in `objective.py`.

1. Checks, when the objective is built: the configuration against the pipeline (timesteps, resolution), a non-empty
   dataset whose first item reads, an adapter built for this pipeline.
2. Models (`setup`): VAE, text encoder(s) and UNet frozen (cast to the half type under mixed precision, as diffusers'
   training scripts do); a new adapter seeded by `config.seed` (or the one given) in float32.
3. Data (`micro_batches`): micro-batch m of process p is a pure function of (config, dataset, P, m, p) (`data.py`),
   read by a DataLoader with `num_workers` workers.
4. The end (`finish`): `adapter/` written atomically; evaluation on `eval_dataset` if given (sharded over the
   processes) in `eval.json`.

Example:
    >>> from discadapt.train import ProbeConfig, train_probe
    >>> config = ProbeConfig(steps=2000, batch_size=16, layers=("mid_block", "up_blocks.0"))
    >>> result = train_probe(pipe, dataset, "runs/probe", config, eval_dataset=test_items)
    >>> adapter = DiscriminativeAdapter.from_pretrained(result["adapter"])
"""

from __future__ import annotations

import json
import os

import torch
from torch.utils.data import DataLoader

from ..adapter import DiscriminativeAdapter
from ..io import write_atomic
from ..scoring import encode_images
from ..text import encode_text, get_unet
from .config import RESUMABLE_FIELDS, ProbeConfig, TrainConfig
from .data import BatchBuilder, MicroBatches, check_item
from .engine import LoopSettings, Objective, make_accelerator, run_training
from .evaluate import evaluate_adapter
from .objective import DiscriminativeLoss
from .runs import dataset_fingerprint, module_fingerprint

__all__ = ["ProbeObjective", "train_probe"]


def _text_encoders(pipe) -> list[torch.nn.Module]:
    return [m for m in (getattr(pipe, "text_encoder", None), getattr(pipe, "text_encoder_2", None)) if m is not None]


def _check_dataset(dataset, name: str) -> None:
    if not hasattr(dataset, "__len__") or not hasattr(dataset, "__getitem__"):
        raise ValueError(f"`{name}` is a {type(dataset).__name__}; pass a map-style dataset (len and [i]) of items.")
    if len(dataset) == 0:
        raise ValueError(
            f"`{name}` is empty (0 items); pass a dataset with at least one item (format in discadapt.train.data)."
        )
    check_item(dataset[0], 0)


def _check_pipeline(pipe, config: TrainConfig) -> tuple[int, int]:
    """The resolution and the number of training timesteps, after checking `config` against `pipe`."""
    unet = get_unet(pipe)
    if getattr(pipe.scheduler, "alphas_cumprod", None) is None:
        raise ValueError(
            f"{type(pipe.scheduler).__name__} has no `alphas_cumprod`; training needs a DDPM-family scheduler."
        )
    num_train = pipe.scheduler.config.num_train_timesteps
    if config.timesteps is not None and max(config.timesteps) >= num_train:
        raise ValueError(f"`timesteps` is {config.timesteps}; this scheduler's timesteps are 0..{num_train - 1}.")
    for name in ("timestep_range", "denoise_timestep_range"):
        lo_hi = getattr(config, name, None)
        if lo_hi is not None and lo_hi[1] > num_train:
            raise ValueError(f"`{name}` is {lo_hi}; its end must be <= {num_train}, the scheduler's timesteps.")
    factor = pipe.vae_scale_factor
    resolution = config.resolution or unet.config.sample_size * factor
    multiple = factor * 2 ** (len(unet.config.block_out_channels) - 1)
    if resolution % multiple:
        raise ValueError(
            f"`resolution` is {resolution}; this pipeline needs a multiple of {multiple} (VAE factor {factor} times "
            "the UNet's downsampling)."
        )
    return resolution, num_train


class ProbeObjective(Objective):
    """Stage 1 as an engine objective (see the module docstring); `tune.TuneObjective` extends it.

    Args:
        pipe: a diffusers pipeline built on a `UNet2DConditionModel` (SD 1.x/2.x, SDXL).
        dataset: map-style dataset of training items (format in `discadapt.train.data`).
        config (`ProbeConfig`): settings.
        adapter (`DiscriminativeAdapter`, *optional*): start from this adapter instead of a new one.
        eval_dataset (*optional*): items to evaluate at the end, or a dict of named item sets (e.g. per split).
        eval_timesteps (`Sequence[int]`, *optional*): timesteps of the evaluation; defaults to T // 2.

    Raises:
        ValueError: a config of another stage, an empty or unreadable dataset, a config that does not fit the
            pipeline, or an adapter built for another pipeline.
    """

    name = "probe"
    outputs = ("adapter", "eval")
    config_class = ProbeConfig
    train_unet = False  # stage 1: the UNet runs without gradients

    def __init__(self, pipe, dataset, config: TrainConfig, *, adapter=None, eval_dataset=None, eval_timesteps=None):
        if not isinstance(config, self.config_class):
            raise ValueError(
                f"`config` is a {type(config).__name__}; the {self.name!r} objective takes a "
                f"{self.config_class.__name__}."
            )
        _check_dataset(dataset, "dataset")
        evals = eval_dataset if isinstance(eval_dataset, dict) else {"eval_dataset": eval_dataset}
        for name, items in evals.items():
            if items is not None:
                _check_dataset(items, name)
        self.resolution, self.num_train = _check_pipeline(pipe, config)
        if adapter is not None:
            if not isinstance(adapter, DiscriminativeAdapter):
                raise ValueError(f"`adapter` is a {type(adapter).__name__}; pass a DiscriminativeAdapter or None.")
            adapter.check_pipeline(pipe)
        self.pipe, self.dataset, self.config, self.adapter = pipe, dataset, config, adapter
        self.eval_dataset, self.eval_timesteps = eval_dataset, eval_timesteps
        self.settings = LoopSettings(
            steps=config.steps,
            seed=config.seed,
            grad_accum=config.grad_accum,
            max_grad_norm=config.max_grad_norm,
            weight_decay=config.weight_decay,
            lr_warmup_steps=config.lr_warmup_steps,
            lr_schedule=config.lr_schedule,
            checkpoint_every=config.checkpoint_every,
            keep_checkpoints=config.keep_checkpoints,
            log_every=config.log_every,
            samples_per_step=config.batch_size,
        )
        # more steps extend a run only under the constant schedule (the others' rate depends on the total)
        self.resumable = tuple(f for f in RESUMABLE_FIELDS if f != "steps" or config.lr_schedule == "constant")
        self.module: DiscriminativeLoss | None = None

    def record(self) -> dict:
        pipe = self.pipe
        return {
            "config": self.config.to_dict(),
            "run": {
                "unet": module_fingerprint(get_unet(pipe)),
                "text_encoders": [module_fingerprint(m) for m in _text_encoders(pipe)],
                "vae": module_fingerprint(pipe.vae),
                "adapter": None if self.adapter is None else module_fingerprint(self.adapter),
                "dataset": dataset_fingerprint(self.dataset),
            },
        }

    # ---- models ----------------------------------------------------------------------------------------------------
    def prepare_unet(self, unet) -> None:
        """Change the UNet before its frozen weights are cast (stage 2 adds the LoRA here)."""

    def setup(self, accelerator) -> DiscriminativeLoss:
        config, pipe, unet = self.config, self.pipe, get_unet(self.pipe)
        weight_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.mixed_precision, torch.float32)
        pipe.to(accelerator.device)
        frozen = (pipe.vae, unet, *_text_encoders(pipe))
        for module in frozen:
            module.requires_grad_(False).eval()
        torch.manual_seed(config.seed)
        adapter = self.adapter
        if adapter is None:
            adapter = DiscriminativeAdapter.for_pipeline(pipe, config.layers, **config.adapter_config)
        adapter = adapter.to(accelerator.device)
        if adapter.dtype != torch.float32:
            adapter.float()
        adapter.requires_grad_(True).train()
        self.prepare_unet(unet)
        for module in frozen:
            if module.dtype != weight_dtype:
                module.to(weight_dtype)
        for param in unet.parameters():
            if param.requires_grad:
                param.data = param.data.float()  # float32 master weights of the LoRA
        self.module = DiscriminativeLoss(pipe, adapter, config, train_unet=self.train_unet)
        return self.module

    def param_groups(self, module: DiscriminativeLoss) -> list[dict]:
        return [{"params": list(module.adapter.parameters()), "lr": self.config.lr}]

    # ---- data and loss ---------------------------------------------------------------------------------------------
    def micro_batches(self, first: int, count: int, accelerator) -> DataLoader:
        config, unet, factor = self.config, get_unet(self.pipe), self.pipe.vae_scale_factor
        builder = BatchBuilder(
            self.dataset,
            self.pipe.tokenizer,
            (unet.config.in_channels, self.resolution // factor, self.resolution // factor),
            self.resolution,
            self.num_train,
            config.seed,
            config.num_neg_captions,
            config.num_neg_images,
            random_negatives=config.random_negatives,
            in_batch_negatives=config.in_batch_negatives,
            timesteps=config.timesteps,
            timestep_range=config.timestep_range,
            denoise_timestep_range=getattr(config, "denoise_timestep_range", None),
            caption_dropout=getattr(config, "caption_dropout", 0.0),
            denoise=self.train_unet and config.denoising_pass,
        )
        micro = MicroBatches(
            builder, config.batch_size, accelerator.num_processes, accelerator.process_index, first, count
        )
        return DataLoader(micro, batch_size=None, shuffle=False, num_workers=config.num_workers)

    def loss(self, model, batch, step: int, accelerator) -> dict[str, torch.Tensor]:
        device = accelerator.device
        batch = batch.to(device)
        with torch.no_grad():
            latents = encode_images(self.pipe, batch.images)  # (N_img, C, h, w)
            text = encode_text(self.pipe, batch.texts)
        num_boxes = torch.tensor(float(sum(len(b) for b in batch.rec_boxes)), device=device)
        if accelerator.num_processes > 1:
            num_boxes = accelerator.reduce(num_boxes, reduction="mean")
        return model(latents, text, batch, max(float(num_boxes), 1.0))

    # ---- the end ---------------------------------------------------------------------------------------------------
    def save_outputs(self, run, step: int) -> dict:
        """Write `adapter/` (main process only; the caller waits for the others); return its path."""
        path = run.write_output("adapter", self.module.adapter.save_pretrained, {"step": step})
        return {"adapter": str(path)}

    def finish(self, run, step: int, accelerator) -> dict:
        outputs = {name: str(run.path / name) for name in self.outputs if name != "eval"}
        if accelerator.is_main_process:
            outputs = self.save_outputs(run, step)
        accelerator.wait_for_everyone()
        outputs["eval"] = None
        if self.eval_dataset is not None:
            named = isinstance(self.eval_dataset, dict)
            sets = self.eval_dataset if named else {None: self.eval_dataset}
            results = {name: self._evaluate(items, accelerator) for name, items in sets.items()}
            outputs["eval"] = results if named else results[None]
            if accelerator.is_main_process:
                write_atomic(run.path / "eval.json", json.dumps(outputs["eval"], indent=1))
        return outputs

    def _evaluate(self, items, accelerator) -> dict:
        config = self.config
        with accelerator.autocast():
            return evaluate_adapter(
                self.pipe,
                self.module.adapter,
                items,
                timesteps=self.eval_timesteps,
                batch_size=config.batch_size,
                seed=config.seed,
                resolution=self.resolution,
                pair_batch_size=config.pair_batch_size,
                accelerator=accelerator,
            )


def train_probe(
    pipe,
    dataset,
    out_dir: str | os.PathLike,
    config: ProbeConfig | None = None,
    *,
    adapter: DiscriminativeAdapter | None = None,
    eval_dataset=None,
    eval_timesteps=None,
    resume: bool = False,
    stop_after: int | None = None,
    progress: bool = True,
    accelerator=None,
) -> dict:
    """Train a discriminative adapter on a frozen pipeline (stage 1), or resume that training.

    Args:
        pipe: a diffusers pipeline built on a `UNet2DConditionModel` (SD 1.x/2.x, SDXL). Its modules are frozen,
            moved to the accelerator's device and, under mixed precision, cast to the half type.
        dataset: map-style dataset of training items (format in `discadapt.train.data`).
        out_dir (`str` or `os.PathLike`): run folder (layout in `discadapt.train.runs`).
        config (`ProbeConfig`, *optional*): settings; defaults to `ProbeConfig()`.
        adapter (`DiscriminativeAdapter`, *optional*): start from this adapter instead of a new one.
        eval_dataset (*optional*): items to evaluate at the end (`evaluate_adapter`), written to `eval.json`; or a
            dict of named item sets, each evaluated.
        eval_timesteps (`Sequence[int]`, *optional*): timesteps of the evaluation; defaults to T // 2.
        resume (`bool`, defaults to False): continue the run in `out_dir` from its newest checkpoint (an existing
            run is never overwritten without it).
        stop_after (`int`, *optional*): stop after this optimizer step (with a checkpoint), to run in slices.
        progress (`bool`, defaults to True): show a progress bar.
        accelerator (`accelerate.Accelerator`, *optional*): one built by the caller; by default one is built with
            `config.mixed_precision`.

    Returns:
        `dict`: `objective` ("probe"), `step`, `done`, `losses` (of the last step), `seconds_per_step` and
        `samples_per_second` (this call), `adapter` (path of the saved adapter when done), `eval` (the evaluation,
        when done and given; per name for a dict).
    """
    config = ProbeConfig() if config is None else config
    objective = ProbeObjective(
        pipe, dataset, config, adapter=adapter, eval_dataset=eval_dataset, eval_timesteps=eval_timesteps
    )
    if accelerator is None:
        accelerator = make_accelerator(config.mixed_precision)
    return run_training(
        objective, out_dir, resume=resume, stop_after=stop_after, progress=progress, accelerator=accelerator
    )
