"""benchmarks/reward_tuning.py (issue 12): the world CLIP's reward fused into the weights through the sampler; its
training prompts stay out of the prompts that choose, and its LoRA is kept at each mark."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import reward_tuning  # noqa: E402
from augment_shapes import train_prompts  # noqa: E402

from discadapt.interaction import EnhanceConfig  # noqa: E402
from discadapt.testing import tiny_sd_pipeline  # noqa: E402
from discadapt.train.engine import run_training  # noqa: E402


def test_the_reward_prompts_leave_the_choosing_prompts_out_but_counting():
    evaluated = train_prompts(reward_tuning.EVALUATED)
    prompts = reward_tuning.reward_prompts(20)
    overlap = {evaluated[p] for p in prompts if p in evaluated}
    assert overlap == {"counting"} and 3 * 15 + 43 <= len(prompts) <= 3 * 20 + 43  # the split's 43 counting prompts
    assert not any(evaluated.get(p) == "counting" for p in reward_tuning.reward_prompts(20, ["spatial"]))


def test_the_lora_is_kept_at_each_mark(tmp_path):
    pipe = tiny_sd_pipeline()
    brightness = lambda images, prompts: images.mean(dim=(1, 2, 3))  # noqa: E731
    config = EnhanceConfig(steps=3, batch_size=2)
    objective = reward_tuning.MarkedReward(pipe, ["a red cube", "a blue ball"], brightness, config,
                                           num_inference_steps=2, grad_steps=1)  # fmt: skip
    objective.marks, objective.out = (1, 3), tmp_path
    assert run_training(objective, tmp_path / "run", progress=False)["done"]
    assert all((tmp_path / f"lora-{m}" / "pytorch_lora_weights.safetensors").is_file() for m in (1, 3))
    assert not (tmp_path / "lora-2").exists()


def test_anchored_prompts_get_no_reward_and_are_held_to_the_model(tmp_path):
    pipe = tiny_sd_pipeline()
    seen = []

    def reward(images, prompts):
        seen.append(list(prompts))
        return images.mean(dim=(1, 2, 3))

    config = EnhanceConfig(steps=4, batch_size=2, lr=5e-2, lora_rank=4, lora_alpha=4.0)
    objective = reward_tuning.AnchoredReward(pipe, ["a red cube"], ["two blue balls"], reward, config,
                                             num_inference_steps=2, grad_steps=2)  # fmt: skip
    objective.anchor_batch, objective.anchor_weight = 1, 10.0
    assert run_training(objective, tmp_path / "run", progress=False)["done"]
    assert seen == [["a red cube"] * 2] * 4  # the anchor's sample is not rewarded
    logs = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert logs[0]["drift"] < 1e-10 < logs[-1]["drift"]  # the LoRA starts as the model, then moves the anchor too
