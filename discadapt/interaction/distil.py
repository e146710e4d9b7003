"""Distil a sampling-time correction into the UNet's weights, so that it costs nothing at inference: ArtAug's
enhancement module, fed with the sampler's steps instead of kept images.

A correction (e.g. `sampling.SelfCorrection`) moves the latent between two steps, z_{k+1} <- z_{k+1} + Delta_k. A
DDIM step is z_{k+1} = a_k z_k + b_k eps_k, so the step itself reaches the corrected latent when its noise prediction
is eps_k + Delta_k / b_k; under classifier-free guidance of weight w, eps = u + w (c - u), the conditional
prediction c + Delta_k / (w b_k) does it with the unconditional one u unchanged. So the correction becomes a target
for the UNet at every input the corrected sampler visits:

- `record_trajectories(pipe, prompts, correction)`: runs the pipeline with the correction (a diffusers step-end
  callback) and keeps, at every step, the UNet's input, its timestep, the teacher's u and c, and the correction as a
  shift of c (0 on the steps it leaves alone). `Trajectories` saves and loads them (safetensors).
- `DistilObjective`, `distil_correction(pipe, trajectories, out_dir, config)`: a LoRA on the UNet (the settings of
  `EnhanceConfig`: steps, batch size, lr, rank, targets, seed) trained so that at each recorded input its conditional
  prediction is the teacher's shifted one and its unconditional prediction the teacher's own:
  `|| c_theta - (c + shift) ||^2 + || u_theta - u ||^2` (means over elements). Fused afterwards
  (`fuse_enhancements`), the pipeline draws what the corrected one drew, at the base pipeline's cost, as far as the
  LoRA has learnt the correction; on prompts it never saw, as far as that generalises.

Only DDIM (`DDIMScheduler`, eta 0, epsilon prediction, no clipping) is supported: there b_k is exact.

Example:
    >>> settings = {"scale": 1.0, "stop": 0.6, "normalize": "unit", "every": 2}
    >>> data = record_trajectories(pipe, prompts, lambda batch: SelfCorrection(adapter, batch, **settings))
    >>> distil_correction(pipe, data, "runs/distil", EnhanceConfig(steps=1500, batch_size=64, lr=3e-4))
    >>> fuse_enhancements(fresh_pipe, ["runs/distil/lora"])  # the corrected steps, at the base pipeline's cost
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..text import get_unet, unet_text_kwargs
from ..train.engine import make_accelerator, run_training
from .enhance import EnhanceConfig, EnhanceObjective

__all__ = ["DistilObjective", "Trajectories", "ddim_noise_coefficient", "distil_correction", "record_trajectories"]

_FIELDS = ("sample", "timestep", "uncond", "cond", "shift", "prompt_ids")


@dataclasses.dataclass
class Trajectories:
    """What a corrected sampler did, one row per (image, step).

    Attributes:
        sample (torch.Tensor): `(N, C, h, w)` the UNet's input latent.
        timestep (torch.Tensor): `(N,)` its timestep.
        uncond, cond (torch.Tensor): `(N, C, h, w)` the teacher's unconditional and conditional predictions.
        shift (torch.Tensor): `(N, C, h, w)` what the correction adds to `cond` (0 where it did not correct).
        prompt_ids (torch.Tensor): `(N,)` index into `prompts`.
        prompts (list[str]): the prompts.
        guidance_scale (float): the classifier-free guidance weight the shifts assume.
    """

    sample: torch.Tensor
    timestep: torch.Tensor
    uncond: torch.Tensor
    cond: torch.Tensor
    shift: torch.Tensor
    prompt_ids: torch.Tensor
    prompts: list[str]
    guidance_scale: float

    def __len__(self) -> int:
        return len(self.timestep)

    def subset(self, index: torch.Tensor) -> Trajectories:
        """The rows `index` (a boolean mask or row indices), the prompts and guidance kept."""
        return dataclasses.replace(self, **{k: getattr(self, k)[index] for k in _FIELDS})

    def save(self, folder: str | os.PathLike) -> None:
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: getattr(self, k).contiguous() for k in _FIELDS}, folder / "trajectories.safetensors")
        meta = {"prompts": self.prompts, "guidance_scale": self.guidance_scale}
        (folder / "trajectories.json").write_text(json.dumps(meta, indent=1) + "\n")

    @classmethod
    def load(cls, folder: str | os.PathLike) -> Trajectories:
        from safetensors.torch import load_file

        folder = Path(folder)
        if not (folder / "trajectories.safetensors").is_file():
            raise FileNotFoundError(
                f"{folder} holds no trajectories.safetensors; pass a folder that Trajectories.save wrote."
            )
        tensors = load_file(folder / "trajectories.safetensors")
        meta = json.loads((folder / "trajectories.json").read_text())
        return cls(**tensors, prompts=meta["prompts"], guidance_scale=meta["guidance_scale"])


def _check_ddim(scheduler, purpose: str = "distilling a correction") -> None:
    from diffusers import DDIMScheduler

    if not isinstance(scheduler, DDIMScheduler) or scheduler.config.prediction_type != "epsilon":
        raise ValueError(
            f"The pipeline's scheduler is {type(scheduler).__name__} ({scheduler.config.get('prediction_type')}); "
            f"{purpose} needs DDIMScheduler with epsilon prediction: set pipe.scheduler = "
            "DDIMScheduler.from_config(pipe.scheduler.config)."
        )
    if scheduler.config.clip_sample or scheduler.config.thresholding:
        raise ValueError("The DDIM scheduler clips or thresholds x_0, so its step is not linear in the prediction; "
                         "pass one with clip_sample=False and thresholding=False.")  # fmt: skip


def ddim_noise_coefficient(scheduler, timestep: int) -> float:
    """b in DDIM's step z_prev = a z_t + b eps (eta 0): how the next latent moves with the noise prediction, for a
    scheduler whose timesteps are set (`set_timesteps`)."""
    _check_ddim(scheduler)
    abar = scheduler.alphas_cumprod
    prev = int(timestep) - scheduler.config.num_train_timesteps // scheduler.num_inference_steps
    abar_t = abar[int(timestep)].double()
    abar_prev = abar[prev].double() if prev >= 0 else torch.as_tensor(scheduler.final_alpha_cumprod).double()
    return float((1 - abar_prev).sqrt() - (abar_prev / abar_t).sqrt() * (1 - abar_t).sqrt())


class _Recorder:
    """A step-end callback around the correction's, with a UNet forward hook: per step, the UNet's input and
    predictions (every call of the step, in order: [uncond; cond]) and the latent's change by the correction."""

    def __init__(self, pipe, correction, guidance_scale: float):
        self.correction, self.w = correction, float(guidance_scale)
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.rows: list[dict] = []
        self.hook = get_unet(pipe).register_forward_hook(self._on_forward, with_kwargs=True)

    def _on_forward(self, module, args, kwargs, output):
        sample = kwargs["sample"] if "sample" in kwargs else args[0]
        prediction = output.sample if hasattr(output, "sample") else output[0]
        self.calls.append((sample.detach().float().cpu(), prediction.detach().float().cpu()))

    def __call__(self, pipe, step_index: int, timestep, callback_kwargs: dict) -> dict:
        before = callback_kwargs["latents"].detach().float().cpu()
        calls, self.calls = self.calls, []  # the sampler's own calls; the correction's (e.g. a layout term's) are not
        if self.correction is not None:
            callback_kwargs = self.correction(pipe, step_index, timestep, callback_kwargs)
        self.calls.clear()
        delta = callback_kwargs["latents"].detach().float().cpu() - before
        inputs = torch.cat([c[0] for c in calls])
        outputs = torch.cat([c[1] for c in calls])
        batch = before.shape[0]
        if len(outputs) != 2 * batch:
            raise ValueError(
                f"Step {step_index} ran the UNet on {len(outputs)} rows for {batch} latents; recording needs "
                "classifier-free guidance (guidance_scale > 1), one conditional and one unconditional row per latent."
            )
        b = ddim_noise_coefficient(pipe.scheduler, int(timestep))
        self.rows.append({
            "sample": inputs[batch:], "timestep": torch.full((batch,), int(timestep)),
            "uncond": outputs[:batch], "cond": outputs[batch:], "shift": delta / (self.w * b),
        })  # fmt: skip
        return callback_kwargs

    def remove(self) -> None:
        self.hook.remove()


def record_trajectories(
    pipe,
    prompts: Sequence[str],
    correction: Callable[[list[str]], object] | None,
    *,
    seeds: Sequence[int] = (0,),
    batch_size: int = 32,
    num_inference_steps: int = 25,
    guidance_scale: float = 4.0,
    progress: bool = True,
) -> Trajectories:
    """Run `pipe` on every prompt once per seed with the correction, and record its steps (module docstring).

    Args:
        pipe: a diffusers pipeline (SD / SDXL) with a DDIM scheduler.
        prompts (Sequence[str]): the prompts (training prompts: what the LoRA will learn from).
        correction (callable | None): `prompts of a batch -> step-end callback` (e.g. a `SelfCorrection` for them);
            its `tensor_inputs` are passed to the pipeline. None records the uncorrected sampler (shift 0).
        seeds (Sequence[int]): one image per prompt and seed; image j of a batch gets generator seed
            `seed * 1_000_003 + index of its prompt`.
        batch_size (int): prompts per pipeline call. Default 32.
        num_inference_steps (int), guidance_scale (float): the sampler's settings (the LoRA learns these).

    Returns:
        Trajectories: `len(prompts) * len(seeds) * num_inference_steps` rows.
    """
    prompts = list(prompts)
    if not prompts or not seeds:
        raise ValueError("`prompts` and `seeds` must not be empty.")
    if not guidance_scale > 1:
        raise ValueError(f"`guidance_scale` is {guidance_scale}; recording needs classifier-free guidance (> 1).")
    _check_ddim(pipe.scheduler)
    jobs = [(seed, i) for seed in seeds for i in range(len(prompts))]
    parts: list[dict] = []
    for start in tqdm(range(0, len(jobs), batch_size), disable=not progress, desc="corrected trajectories"):
        chunk = jobs[start : start + batch_size]
        batch = [prompts[i] for _, i in chunk]
        callback = None if correction is None else correction(batch)
        recorder = _Recorder(pipe, callback, guidance_scale)
        generators = [torch.Generator().manual_seed(seed * 1_000_003 + i) for seed, i in chunk]
        try:
            pipe(batch, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, generator=generators,
                 output_type="latent", callback_on_step_end=recorder,
                 callback_on_step_end_tensor_inputs=getattr(callback, "tensor_inputs", ["latents"]))  # fmt: skip
        finally:
            recorder.remove()
            if hasattr(callback, "remove"):
                callback.remove()
        ids = torch.tensor([i for _, i in chunk])
        for row in recorder.rows:
            parts.append({**row, "prompt_ids": ids})
    tensors = {k: torch.cat([p[k] for p in parts]) for k in _FIELDS}
    return Trajectories(**tensors, prompts=prompts, guidance_scale=float(guidance_scale))


class DistilObjective(EnhanceObjective):
    """The correction's trajectories as an engine objective: a LoRA trained to take the corrected steps itself
    (module docstring). Uses `config`'s steps, batch_size, lr, lora_*, warmup_steps, checkpoint_every, seed and
    mixed_precision; its timestep_range, snr_gamma and objective do not apply (the data fix the timesteps).

    Args:
        pipe: a diffusers pipeline; its UNet gets the LoRA in place (left active and unfused afterwards).
        trajectories (Trajectories): what to learn (`record_trajectories`).
        config (EnhanceConfig): settings.
    """

    name = "distil"

    def __init__(self, pipe, trajectories: Trajectories, config: EnhanceConfig):
        if not len(trajectories):
            raise ValueError("`trajectories` is empty; record some with record_trajectories.")
        self.pipe, self.config, self.data = pipe, config, trajectories
        self.unique = ["", *trajectories.prompts]  # row 0: the unconditional prompt (encoded by `setup`)
        self.settings = config.loop_settings()

    def record(self) -> dict:
        digest = hashlib.sha256()
        for k in _FIELDS:
            digest.update(getattr(self.data, k).numpy().tobytes())
        digest.update("\n".join(self.data.prompts).encode("utf-8"))
        return {"config": dataclasses.asdict(self.config), "run": {"rows": len(self.data), "data": digest.hexdigest()}}

    def micro_batches(self, first: int, count: int, accelerator):
        for m in range(first, first + count):
            yield torch.randint(len(self.data), (self.config.batch_size,), generator=self.generator(m, accelerator))

    def loss(self, model, batch, step: int, accelerator) -> dict[str, torch.Tensor]:
        idx, device, dtype = batch, accelerator.device, get_unet(self.pipe).dtype
        d = self.data
        x = d.sample[idx].to(device)
        t = d.timestep[idx].to(device)
        ids = d.prompt_ids[idx].to(self.text.encoder_hidden_states.device) + 1
        text = self.text.index(torch.cat([torch.zeros_like(ids), ids]))
        x2 = torch.cat([x, x]).to(dtype)
        pred = model(x2, torch.cat([t, t]), text.encoder_hidden_states, **unet_text_kwargs(self.pipe, text, x2)).sample
        uncond, cond = pred.float().chunk(2)
        target = (d.cond[idx] + d.shift[idx]).to(device)
        loss_cond = (cond - target).pow(2).mean()
        loss_uncond = (uncond - d.uncond[idx].to(device)).pow(2).mean()
        return {"loss": loss_cond + loss_uncond, "cond": loss_cond.detach(), "uncond": loss_uncond.detach()}


def distil_correction(
    pipe,
    trajectories: Trajectories,
    out_dir: str | os.PathLike,
    config: EnhanceConfig | None = None,
    *,
    resume: bool = True,
    progress: bool = True,
    accelerator=None,
) -> dict:
    """Train (or resume) a LoRA that takes the recorded corrected steps itself; see the module docstring.

    Returns:
        dict: the engine's result, with `lora` (a folder in diffusers' format, for `fuse_enhancements`) when done.
    """
    config = EnhanceConfig() if config is None else config
    objective = DistilObjective(pipe, trajectories, config)
    accelerator = make_accelerator(config.mixed_precision) if accelerator is None else accelerator
    return run_training(objective, out_dir, resume=resume, progress=progress, accelerator=accelerator)
