"""interaction.reward: a LoRA trained by a reward's gradient through the sampler; the world CLIP's reward."""

import doctest
import json

import pytest
import torch
from diffusers import EulerDiscreteScheduler

from discadapt.interaction import EnhanceConfig
from discadapt.interaction.reward import RewardObjective, train_reward
from discadapt.testing import tiny_sd_pipeline
from discadapt.text import encode_text, get_unet

PROMPTS = ["a red cube", "a blue ball"]


def brightness(images, prompts):
    """A differentiable stand-in reward: the images' mean value."""
    return images.mean(dim=(1, 2, 3))


class _Accelerator:
    device = torch.device("cpu")
    process_index = 0


def _objective(pipe, **sampling):
    objective = RewardObjective(pipe, PROMPTS, brightness, EnhanceConfig(steps=1, batch_size=2), **sampling)
    objective.text = encode_text(pipe, objective.unique)
    return objective


def test_the_written_out_sampler_is_the_pipelines_own():
    pipe = tiny_sd_pipeline()
    pipe.set_progress_bar_config(disable=True)
    objective = _objective(pipe, num_inference_steps=4, guidance_scale=3.0, grad_steps=4)
    idx, noise = next(objective.micro_batches(0, 1, _Accelerator()))
    with torch.no_grad():
        ours = objective.sample(get_unet(pipe), idx, noise, "cpu")
        theirs = pipe([PROMPTS[i] for i in idx.tolist()], latents=noise, num_inference_steps=4, guidance_scale=3.0,
                      output_type="pt").images  # fmt: skip
    torch.testing.assert_close((ours / 2 + 0.5).clamp(0, 1), theirs, atol=1e-5, rtol=1e-5)
    assert any(p.requires_grad for p in get_unet(pipe).parameters()) and not ours.requires_grad  # the caller's no_grad


def test_the_gradient_flows_through_the_last_grad_steps_only():
    pipe = tiny_sd_pipeline()
    unet = get_unet(pipe).requires_grad_(False)
    calls = []
    unet.register_forward_hook(lambda module, args, output: calls.append(torch.is_grad_enabled()))
    unet.conv_in.weight.requires_grad_(True)
    objective = _objective(pipe, num_inference_steps=5, grad_steps=2)
    idx, noise = next(objective.micro_batches(0, 1, _Accelerator()))
    seen = []
    on_step = lambda i, t, z2, text, pred: seen.append((i, z2.shape[0], pred.requires_grad))  # noqa: E731
    objective.sample(unet, idx, noise, "cpu", on_step=on_step).sum().backward()
    assert calls == [False, False, False, True, True] and unet.conv_in.weight.grad.abs().sum() > 0
    assert seen == [(i, 4, i >= 3) for i in range(5)]  # every step's [uncond; cond] call, a graph on the last two


def test_the_lora_raises_the_reward_and_the_run_resumes(tmp_path):
    pipe = tiny_sd_pipeline()
    config = EnhanceConfig(steps=12, batch_size=2, lr=5e-2, lora_rank=4, lora_alpha=4.0, checkpoint_every=6)
    kwargs = {"num_inference_steps": 3, "grad_steps": 3, "progress": False}
    first = train_reward(pipe, PROMPTS, brightness, tmp_path / "run", config, stop_after=6, **kwargs)
    assert not first["done"]
    result = train_reward(tiny_sd_pipeline(), PROMPTS, brightness, tmp_path / "run", config, **kwargs)
    assert result["done"] and (tmp_path / "run" / "lora" / "pytorch_lora_weights.safetensors").is_file()
    rewards = [json.loads(line)["reward"] for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert len(rewards) == 12 and sum(rewards[-3:]) > sum(rewards[:3])


def test_bad_settings_are_refused():
    pipe = tiny_sd_pipeline()
    with pytest.raises(ValueError, match=r"`grad_steps` is 6; pass 1 to num_inference_steps \(5\)"):
        RewardObjective(pipe, PROMPTS, brightness, EnhanceConfig(), num_inference_steps=5, grad_steps=6)
    with pytest.raises(ValueError, match="`guidance_scale` is 1.0; pass a value > 1"):
        RewardObjective(pipe, PROMPTS, brightness, EnhanceConfig(), guidance_scale=1.0)
    with pytest.raises(ValueError, match="`prompts` is"):
        RewardObjective(pipe, [], brightness, EnhanceConfig())
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    with pytest.raises(ValueError, match="reward tuning needs DDIMScheduler"):
        RewardObjective(pipe, PROMPTS, brightness, EnhanceConfig())


def test_the_world_clip_reward_prefers_the_true_caption_and_is_differentiable():
    from discadapt.worlds.shapes import make_dataset, render
    from discadapt.worlds.shapes.bundle import load_clip
    from discadapt.worlds.shapes.clip import preprocess
    from discadapt.worlds.shapes.clip import reward as reward_module
    from discadapt.worlds.shapes.clip.reward import HardNegativeReward

    reward = HardNegativeReward(load_clip())
    assert reward.choices("a red circle and a blue square")[-2:] == ["a red circle", "a blue square"]
    examples = make_dataset(30, split="train", image_size=32, seed=3, categories=["two_objects"])
    images = preprocess([render(e.scene) for e in examples]).requires_grad_(True)
    true = reward(images, [e.caption.text for e in examples])
    false = reward(images.detach(), [e.negatives[0].caption.text for e in examples])
    assert true.shape == (len(examples),) and len(examples) >= 5
    assert (true > false).float().mean() > 0.7 and (true <= 0).all()
    true.sum().backward()
    assert images.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="2 images for 1 prompts"):
        reward(images[:2], ["a red circle"])
    assert doctest.testmod(reward_module).failed == 0
