"""The training loop shared by stage 1 (`probe.py`) and stage 2 (`tune.py`), under accelerate.

`run(stage, pipe, dataset, out_dir, config, ...)`:

1. Checks: the configuration against the pipeline (timesteps, resolution), a non-empty dataset whose first item
   reads, and `out_dir` (`checkpoint.check_run_dir`: an existing run is resumed only with `resume=True` and the
   same configuration, pipeline, data and number of processes). Nothing is written or changed before this.
2. Models: VAE, text encoder(s) and UNet frozen (cast to the half type under mixed precision, as diffusers'
   training scripts do); a new adapter seeded by `config.seed` (or the one given); in stage 2 a peft LoRA on the
   UNet (float32). `Objective` (both, as one module) and AdamW go through `accelerator.prepare`.
3. Resume: the newest checkpoint's trainable tensors and optimizer state are loaded, and the loop continues at its
   step. The data of step s are a pure function of s (`data.py`: seeded stream, per-sample generators), the
   learning rate is a function of s, and the global RNG (dropout) is re-seeded from (seed, step, micro-step,
   process) before each micro-step, so a resumed run ends with the weights of an uninterrupted one.
4. Each optimizer step: `grad_accum` micro-batches (gradients synchronised on the last only), clipping, AdamW;
   a progress bar with loss and samples per second; `log.jsonl`; a checkpoint every `checkpoint_every` steps,
   at `stop_after` and at the end (main process, atomically).
5. At the end: `adapter/` (and `lora/` in stage 2) written atomically; evaluation on `eval_dataset` if given,
   sharded over the processes, in `eval.json`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator, DistributedDataParallelKwargs
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..adapter import DiscriminativeAdapter
from ..scoring import encode_images
from ..text import encode_text, get_unet
from .checkpoint import (
    FORMAT,
    check_run_dir,
    clean_temporary,
    load_checkpoint,
    module_fingerprint,
    save_checkpoint,
    write_atomic,
)
from .config import ProbeConfig, TrainConfig, TuneConfig
from .data import BatchBuilder, MicroBatches, check_item
from .evaluate import evaluate_adapter
from .objective import Objective

__all__ = ["run", "make_accelerator", "dataset_fingerprint", "replace_dir"]

_STAGES = {"probe": ProbeConfig, "tune": TuneConfig}


def dataset_fingerprint(dataset) -> dict:
    """What identifies a dataset in a run record: its type, length and, when it has one, its `fingerprint`."""
    return {
        "type": type(dataset).__name__,
        "length": len(dataset),
        "fingerprint": getattr(dataset, "fingerprint", None),
    }


def replace_dir(tmp: Path, final: Path) -> None:
    """Move the finished folder `tmp` to `final`, replacing an older `final` (which is never half-written)."""
    old = final.with_name(f".{final.name}.old-{os.getpid()}")
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def make_accelerator(mixed_precision: str = "no") -> Accelerator:
    """The `Accelerator` the loop builds by default: `mixed_precision`, and DDP told that a batch may leave some
    adapter heads unused (a batch without boxes)."""
    return Accelerator(
        mixed_precision=mixed_precision,
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )


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
    if config.timestep_range is not None and config.timestep_range[1] > num_train:
        raise ValueError(
            f"`timestep_range` is {config.timestep_range}; its end must be <= {num_train}, the scheduler's timesteps."
        )
    factor = pipe.vae_scale_factor
    resolution = config.resolution or unet.config.sample_size * factor
    multiple = factor * 2 ** (len(unet.config.block_out_channels) - 1)
    if resolution % multiple:
        raise ValueError(
            f"`resolution` is {resolution}; this pipeline needs a multiple of {multiple} (VAE factor {factor} times "
            "the UNet's downsampling)."
        )
    return resolution, num_train


def _step_seed(seed: int, step: int, micro: int, rank: int) -> int:
    return int(np.random.SeedSequence((seed, 4, step, micro, rank)).generate_state(1)[0])


def run(
    stage: str,
    pipe,
    dataset,
    out_dir: str | os.PathLike,
    config: TrainConfig,
    *,
    adapter: DiscriminativeAdapter | None = None,
    eval_dataset=None,
    eval_timesteps=None,
    resume: bool = False,
    stop_after: int | None = None,
    progress: bool = True,
    accelerator: Accelerator | None = None,
    prepare_unet=None,
) -> dict:
    """Train (or resume) one stage; see `train_probe` and `train_tune` for the arguments and the result."""
    if stage not in _STAGES:
        raise ValueError(f"`stage` is {stage!r}; pass 'probe' or 'tune'.")
    if not isinstance(config, _STAGES[stage]):
        raise ValueError(f"`config` is a {type(config).__name__}; stage {stage!r} takes a {_STAGES[stage].__name__}.")
    if stop_after is not None and (not isinstance(stop_after, int) or isinstance(stop_after, bool) or stop_after < 1):
        raise ValueError(f"`stop_after` is {stop_after!r}; pass an int >= 1 (a step to stop at), or None.")
    _check_dataset(dataset, "dataset")
    if eval_dataset is not None:
        _check_dataset(eval_dataset, "eval_dataset")
    resolution, num_train = _check_pipeline(pipe, config)
    unet = get_unet(pipe)
    if adapter is not None:
        if not isinstance(adapter, DiscriminativeAdapter):
            raise ValueError(f"`adapter` is a {type(adapter).__name__}; pass a DiscriminativeAdapter or None.")
        adapter.check_pipeline(pipe)
    if accelerator is None:
        accelerator = make_accelerator(config.mixed_precision)
    out_dir = Path(out_dir)
    record = {
        "stage": stage,
        "config": config.to_dict(),
        "run": {
            "unet": module_fingerprint(unet),
            "text_encoders": [module_fingerprint(m) for m in _text_encoders(pipe)],
            "vae": module_fingerprint(pipe.vae),
            "adapter": None if adapter is None else module_fingerprint(adapter),
            "dataset": dataset_fingerprint(dataset),
            "num_processes": accelerator.num_processes,
        },
    }
    checkpoint = check_run_dir(out_dir, record, resume)  # raises before anything is written

    # models --------------------------------------------------------------------------------------------------
    device = accelerator.device
    weight_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.mixed_precision, torch.float32)
    pipe.to(device)
    for module in (pipe.vae, unet, *_text_encoders(pipe)):
        module.requires_grad_(False).eval()
    torch.manual_seed(config.seed)
    if adapter is None:
        adapter = DiscriminativeAdapter.for_pipeline(pipe, config.layers, **config.adapter_config)
    adapter = adapter.to(device)
    if adapter.dtype != torch.float32:
        adapter.float()
    adapter.requires_grad_(True).train()
    if prepare_unet is not None:  # stage 2: add the LoRA (seeded), before the frozen weights are cast
        prepare_unet(unet)
    for module in (pipe.vae, unet, *_text_encoders(pipe)):
        if module.dtype != weight_dtype:
            module.to(weight_dtype)
    for param in unet.parameters():
        if param.requires_grad:
            param.data = param.data.float()  # float32 master weights of the LoRA
    if config.gradient_checkpointing and stage == "tune":
        unet.enable_gradient_checkpointing()
    objective = Objective(pipe, adapter, config, train_unet=stage == "tune")
    groups = [{"params": list(adapter.parameters()), "base_lr": config.lr}]
    lora = [p for p in unet.parameters() if p.requires_grad]
    if lora:
        groups.append({"params": lora, "base_lr": getattr(config, "lora_lr", None) or config.lr})
    optimizer = torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)
    model, optimizer = accelerator.prepare(objective, optimizer)
    trainable = {name: p for name, p in objective.named_parameters() if p.requires_grad}

    start = 0
    if checkpoint is not None:
        start, tensors, optimizer_state = load_checkpoint(checkpoint, device)
        if set(tensors) != set(trainable):
            raise ValueError(
                f"checkpoint {str(checkpoint)!r} holds other parameters than this run trains (e.g. "
                f"{sorted(set(tensors) ^ set(trainable))[:3]}); it belongs to another configuration."
            )
        with torch.no_grad():
            for name, param in trainable.items():
                param.copy_(tensors[name])
        optimizer.load_state_dict(optimizer_state)
    if accelerator.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        clean_temporary(out_dir)
        write_atomic(out_dir / "train_config.json", json.dumps({"format": FORMAT, "version": 1, **record}, indent=1))
        log_path = out_dir / "log.jsonl"
        if log_path.is_file():  # drop the lines of steps after the checkpoint: they are run again
            lines = log_path.read_text(encoding="utf-8").splitlines()
            kept = [line for line in lines if line.strip() and json.loads(line).get("step", 0) <= start]
            write_atomic(log_path, "".join(line + "\n" for line in kept))
    accelerator.wait_for_everyone()

    # loop ----------------------------------------------------------------------------------------------------
    end = config.steps if stop_after is None else min(stop_after, config.steps)
    factor = pipe.vae_scale_factor
    builder = BatchBuilder(
        dataset,
        pipe.tokenizer,
        (unet.config.in_channels, resolution // factor, resolution // factor),
        resolution,
        num_train,
        config.seed,
        config.num_neg_captions,
        config.num_neg_images,
        random_negatives=config.random_negatives,
        in_batch_negatives=config.in_batch_negatives,
        timesteps=config.timesteps,
        timestep_range=config.timestep_range,
        denoise=stage == "tune" and config.denoise_weight > 0,
    )
    micro = MicroBatches(
        builder,
        config.batch_size,
        accelerator.num_processes,
        accelerator.process_index,
        first=start * config.grad_accum,
        count=max(end - start, 0) * config.grad_accum,
    )
    loader = iter(DataLoader(micro, batch_size=None, shuffle=False, num_workers=config.num_workers))
    main = accelerator.is_main_process
    bar = tqdm(total=config.steps, initial=start, disable=not (progress and main), desc=f"discadapt {stage}")
    log = open(out_dir / "log.jsonl", "a", encoding="utf-8") if main else contextlib.nullcontext()
    samples_per_step = config.batch_size * config.grad_accum * accelerator.num_processes
    seconds, losses, step = [], {}, start
    with log:
        for step in range(start, end):
            began = time.perf_counter()
            for group in optimizer.param_groups:
                group["lr"] = group["base_lr"] * config.lr_factor(step)
            sums: dict[str, float] = {}
            for m in range(config.grad_accum):
                batch = next(loader).to(device)
                torch.manual_seed(_step_seed(config.seed, step, m, accelerator.process_index))  # dropout
                with torch.no_grad():
                    latents = encode_images(pipe, batch.images)  # (N_img, C, h, w)
                    text = encode_text(pipe, batch.texts)
                num_boxes = torch.tensor(float(sum(len(b) for b in batch.rec_boxes)), device=device)
                if accelerator.num_processes > 1:
                    num_boxes = accelerator.reduce(num_boxes, reduction="mean")
                sync = m == config.grad_accum - 1
                with contextlib.nullcontext() if sync else accelerator.no_sync(model):
                    losses = model(latents, text, batch, max(float(num_boxes), 1.0))
                    accelerator.backward(losses["loss"] / config.grad_accum)
                for key, value in losses.items():
                    sums[key] = sums.get(key, 0.0) + float(value.detach()) / config.grad_accum
            if config.max_grad_norm is not None:
                accelerator.clip_grad_norm_(
                    [p for g in optimizer.param_groups for p in g["params"]], config.max_grad_norm
                )
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            seconds.append(time.perf_counter() - began)
            done = step + 1
            losses = sums
            if main:
                bar.update(1)
                bar.set_postfix(loss=f"{sums['loss']:.4f}", samples_per_s=f"{samples_per_step / seconds[-1]:.1f}")
                if done % config.log_every == 0 or done == end:
                    entry = {"step": done, **sums, "lr": optimizer.param_groups[0]["lr"], "seconds": seconds[-1]}
                    log.write(json.dumps(entry) + "\n")
                    log.flush()
            if done % config.checkpoint_every == 0 or done == end:
                if main:
                    state = {name: p for name, p in trainable.items()}
                    save_checkpoint(out_dir, done, state, optimizer.state_dict(), config.keep_checkpoints)
                accelerator.wait_for_everyone()
            step = done
    bar.close()

    result = {
        "stage": stage,
        "step": step,
        "done": step >= config.steps,
        "out_dir": str(out_dir),
        "losses": losses,
        "seconds_per_step": float(np.mean(seconds)) if seconds else None,
        "samples_per_second": samples_per_step / float(np.mean(seconds)) if seconds else None,
        "adapter": None,
        "lora": None,
        "eval": None,
    }
    if not result["done"]:
        return result
    adapter_out = accelerator.unwrap_model(model).adapter
    if main:
        tmp = out_dir / f".adapter.tmp-{os.getpid()}"
        adapter_out.save_pretrained(tmp)
        replace_dir(tmp, out_dir / "adapter")
        if stage == "tune":
            from .tune import save_lora

            tmp = out_dir / f".lora.tmp-{os.getpid()}"
            save_lora(pipe, tmp)
            replace_dir(tmp, out_dir / "lora")
    result["adapter"] = str(out_dir / "adapter")
    result["lora"] = str(out_dir / "lora") if stage == "tune" else None
    accelerator.wait_for_everyone()
    if eval_dataset is not None:
        with accelerator.autocast():
            result["eval"] = evaluate_adapter(
                pipe,
                adapter_out,
                eval_dataset,
                timesteps=eval_timesteps,
                batch_size=config.batch_size,
                seed=config.seed,
                resolution=resolution,
                pair_batch_size=config.pair_batch_size,
                accelerator=accelerator,
            )
        if main:
            write_atomic(out_dir / "eval.json", json.dumps(result["eval"], indent=1))
    return result
