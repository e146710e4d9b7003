"""interaction.distil: a sampling-time correction recorded step by step, and a LoRA that learns to take the steps."""

import json

import pytest
import torch
from diffusers import EulerDiscreteScheduler

from discadapt.interaction import EnhanceConfig
from discadapt.interaction.distil import Trajectories, ddim_noise_coefficient, distil_correction, record_trajectories
from discadapt.testing import tiny_sd_pipeline
from discadapt.text import encode_text, get_unet

PROMPTS = ["a red cube", "a blue ball"]


class Nudge:
    """A step-end callback adding a fixed latent change after step `at` (a stand-in for SelfCorrection)."""

    tensor_inputs = ["latents"]

    def __init__(self, at: int = 2, size: float = 0.3):
        self.at, self.size = at, size

    def __call__(self, pipe, step_index, timestep, kwargs):
        if step_index == self.at:
            latents = kwargs["latents"]
            kwargs["latents"] = latents + self.size * torch.linspace(-1, 1, latents[0].numel()).view_as(latents[0])
        return kwargs


def _latents(pipe, callback=None, hook=None):
    handle = None if hook is None else get_unet(pipe).register_forward_hook(hook, with_kwargs=True)
    try:
        generators = [torch.Generator().manual_seed(i) for i in range(len(PROMPTS))]
        return pipe(PROMPTS, num_inference_steps=5, guidance_scale=3.0, generator=generators, output_type="latent",
                    callback_on_step_end=callback).images  # fmt: skip
    finally:
        if handle is not None:
            handle.remove()


def test_the_recorded_shift_replays_the_correction_exactly():
    pipe = tiny_sd_pipeline()
    pipe.set_progress_bar_config(disable=True)
    data = record_trajectories(pipe, PROMPTS, lambda batch: Nudge(), num_inference_steps=5, guidance_scale=3.0,
                               progress=False)  # fmt: skip
    assert len(data) == 5 * len(PROMPTS) and data.prompt_ids.tolist() == [0, 1] * 5
    moved = data.shift.flatten(1).abs().sum(1) > 0
    assert moved.tolist() == [False] * 4 + [True] * 2 + [False] * 4  # step 2 only
    corrected, uncorrected = _latents(pipe, Nudge()), _latents(pipe)
    shifts = iter(data.shift.view(5, len(PROMPTS), *data.shift.shape[1:]))

    def replay(module, args, kwargs, output):  # the uncorrected sampler, its conditional prediction shifted
        prediction = output.sample if hasattr(output, "sample") else output[0]
        prediction[len(PROMPTS) :] += next(shifts)

    replayed = _latents(pipe, hook=replay)
    assert (corrected - uncorrected).abs().max() > 0.1
    torch.testing.assert_close(replayed, corrected, atol=1e-5, rtol=1e-5)
    rows = data.subset(moved)  # the corrected rows alone, prompts and guidance kept
    assert len(rows) == 2 and torch.equal(rows.shift, data.shift[moved]) and rows.prompts == data.prompts
    assert rows.guidance_scale == data.guidance_scale and rows.prompt_ids.tolist() == [0, 1]


def test_the_corrections_own_unet_calls_are_not_recorded():
    """A correction that runs the UNet itself (a layout term) records what one that does not records."""

    class Probing(Nudge):
        def __call__(self, pipe, step_index, timestep, kwargs):
            latents = kwargs["latents"]
            get_unet(pipe)(latents[:1], timestep, torch.zeros(1, 77, 32))  # one more call, of another batch size
            return super().__call__(pipe, step_index, timestep, kwargs)

    pipe = tiny_sd_pipeline()
    pipe.set_progress_bar_config(disable=True)
    options = dict(num_inference_steps=5, guidance_scale=3.0, progress=False)
    plain = record_trajectories(pipe, PROMPTS, lambda batch: Nudge(), **options)
    probing = record_trajectories(pipe, PROMPTS, lambda batch: Probing(), **options)
    for field in ("sample", "uncond", "cond", "shift"):
        torch.testing.assert_close(getattr(probing, field), getattr(plain, field))


def test_the_ddim_coefficient_is_the_steps_slope_and_other_schedulers_are_refused():
    pipe = tiny_sd_pipeline()
    scheduler = pipe.scheduler
    scheduler.set_timesteps(5)
    t = scheduler.timesteps[1]
    x, eps = torch.randn(1, 4, 4, 4), torch.randn(1, 4, 4, 4)
    a = scheduler.step(eps, t, x).prev_sample
    b = scheduler.step(eps + 1.0, t, x).prev_sample
    torch.testing.assert_close(b - a, torch.full_like(a, ddim_noise_coefficient(scheduler, int(t))))
    euler = EulerDiscreteScheduler.from_config(scheduler.config)
    with pytest.raises(ValueError, match="needs DDIMScheduler with epsilon prediction"):
        ddim_noise_coefficient(euler, int(t))


def test_recording_needs_classifier_free_guidance():
    with pytest.raises(ValueError, match="recording needs classifier-free guidance"):
        record_trajectories(tiny_sd_pipeline(), PROMPTS, None, guidance_scale=1.0, progress=False)


@torch.no_grad()
def _error(pipe, data, lora=True):
    """Mean squared error of the UNet's conditional prediction to the shifted target, over every recorded row."""
    unet = get_unet(pipe)
    text = encode_text(pipe, data.prompts).index(data.prompt_ids)
    if not lora:
        unet.disable_adapters()
    try:
        prediction = unet(data.sample, data.timestep, text.encoder_hidden_states).sample
    finally:
        unet.enable_adapters()
    return (prediction - data.cond - data.shift).pow(2).mean().item()


def test_the_lora_learns_the_shift_and_trajectories_round_trip(tmp_path):
    pipe = tiny_sd_pipeline()
    pipe.set_progress_bar_config(disable=True)
    data = record_trajectories(pipe, PROMPTS, lambda batch: Nudge(size=3.0), num_inference_steps=5,
                               guidance_scale=3.0, progress=False)  # fmt: skip
    data.save(tmp_path / "data")
    loaded = Trajectories.load(tmp_path / "data")
    assert loaded.prompts == PROMPTS and loaded.guidance_scale == 3.0
    assert all(torch.equal(getattr(loaded, k), getattr(data, k)) for k in ("sample", "shift", "prompt_ids"))
    config = EnhanceConfig(steps=80, batch_size=10, lr=1e-2, lora_rank=4, lora_alpha=4.0, checkpoint_every=80)
    result = distil_correction(pipe, loaded, tmp_path / "run", config, progress=False)
    assert result["done"] and (tmp_path / "run" / "lora" / "pytorch_lora_weights.safetensors").is_file()
    assert "cond" in json.loads((tmp_path / "run" / "log.jsonl").read_text().splitlines()[-1])
    # the UNet carries the trained LoRA (unfused)
    assert _error(pipe, loaded) < 0.6 * _error(pipe, loaded, lora=False)
    with pytest.raises(FileNotFoundError, match="holds no trajectories.safetensors"):
        Trajectories.load(tmp_path)


def test_an_sdxl_pipeline_with_ddim_records_and_distils(tmp_path):
    from diffusers import DDIMScheduler

    from discadapt.testing import tiny_sdxl_pipeline

    pipe = tiny_sdxl_pipeline()
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, clip_sample=False, prediction_type="epsilon")
    data = record_trajectories(pipe, PROMPTS, lambda batch: Nudge(at=1), num_inference_steps=3, guidance_scale=3.0,
                               progress=False)  # fmt: skip
    assert len(data) == 3 * len(PROMPTS) and (data.shift[2:4] != 0).all() and (data.shift[:2] == 0).all()
    config = EnhanceConfig(steps=2, batch_size=2, lora_rank=2, lora_alpha=2.0)
    assert distil_correction(pipe, data, tmp_path / "run", config, progress=False)["done"]


def test_another_scheduler_is_refused_before_any_step():
    pipe = tiny_sd_pipeline()
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    with pytest.raises(ValueError, match="distilling a correction needs DDIMScheduler"):
        record_trajectories(pipe, PROMPTS, None, progress=False)


def test_empty_inputs_are_refused():
    pipe = tiny_sd_pipeline()
    with pytest.raises(ValueError, match="`prompts` and `seeds` must not be empty"):
        record_trajectories(pipe, [], None, progress=False)
    empty = Trajectories(*(torch.zeros(0) for _ in range(6)), prompts=[], guidance_scale=3.0)
    with pytest.raises(ValueError, match="`trajectories` is empty; record some with record_trajectories"):
        distil_correction(pipe, empty, "unused", EnhanceConfig(steps=1))
