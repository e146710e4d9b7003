"""The interaction loop: round dataset, selection, the enhancement LoRA and its fusion, resume."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from discadapt.interaction.dataset import Candidate, RoundData, image_name, rejected_for, select
from discadapt.interaction.enhance import EnhanceConfig, fuse_enhancements, train_enhancement
from discadapt.interaction.loop import AugmentConfig, augment, split_prompts
from discadapt.losses.preference import diffusion_dpo_loss
from discadapt.scorers import FunctionScorer
from discadapt.testing import tiny_sd_pipeline

PROMPTS = ["a red circle", "a blue square", "two green triangles", "a cat", "a dog", "a red square"]


def redness(images, prompts):
    """A toy critic: mean red minus mean blue of each image."""
    pixels = torch.stack([torch.from_numpy(np.asarray(im, dtype=np.float32)) for im in images])  # (N, H, W, 3)
    return pixels[..., 0].mean(dim=(1, 2)) - pixels[..., 2].mean(dim=(1, 2))


def candidate(i, k, score, source="sample"):
    return Candidate(i, PROMPTS[i], source, k, 7, image_name(i, source, k), score)


def test_select_keeps_top_k_above_margin():
    cands = [candidate(0, k, s) for k, s in enumerate([1.0, 4.0, 2.0, 1.0])] + [candidate(1, 0, 5.0)]
    kept = select(cands, top_k=2, min_margin=0.0)
    assert [(c.prompt_index, c.k, c.margin) for c in kept] == [(0, 1, 2.0), (0, 2, 0.0), (1, 0, 0.0)]
    assert [c.k for c in select(cands, top_k=2, min_margin=1.0)] == [1]
    with pytest.raises(ValueError, match="`top_k` is 0"):
        select(cands, top_k=0)
    with pytest.raises(ValueError, match="`min_margin` is nan"):
        select(cands, min_margin=float("nan"))


def test_round_data_survives_a_torn_line_and_a_missing_image(tmp_path):
    data = RoundData(tmp_path / "round-01")
    image = Image.new("RGB", (8, 8), "red")
    data.add([candidate(0, 0, 1.0), candidate(0, 1, 2.0)], [image, image])
    with open(data.folder / "candidates.jsonl", "a") as f:
        f.write('{"prompt_index": 0, "prom')  # killed while appending
    (data.folder / candidate(0, 1, 0).file).unlink()  # an image lost
    assert [c.k for c in data.candidates()] == [0]
    data.add([candidate(0, 2, 3.0)], [image])  # appending after a torn line
    assert [c.k for c in data.candidates()] == [0, 2]
    data.write_kept(select(data.candidates()))
    assert [c.k for c in data.kept()] == [2]


def test_split_prompts_is_seeded_and_disjoint():
    train, held = split_prompts(PROMPTS + PROMPTS[:2], 0.34, seed=0)
    assert len(held) == 2 and len(train) == 4 and not set(train) & set(held)
    assert (train, held) == split_prompts(PROMPTS, 0.34, seed=0)
    with pytest.raises(ValueError, match="cannot be split"):
        split_prompts(["a"], 0.5, seed=0)


def test_config_errors():
    with pytest.raises(ValueError, match="`rounds` is 0"):
        AugmentConfig(rounds=0)
    with pytest.raises(ValueError, match="`top_k` is 9"):
        AugmentConfig(top_k=9, candidates=8)
    with pytest.raises(ValueError, match="`holdout` is 1"):
        AugmentConfig(holdout=1)
    with pytest.raises(ValueError, match="`min_gain` is inf"):
        AugmentConfig(min_gain=float("inf"))
    with pytest.raises(ValueError, match="`timestep_range`"):
        EnhanceConfig(timestep_range=(10, 5))
    with pytest.raises(ValueError, match="`lr` is 0"):
        EnhanceConfig(lr=0)


def _unet_output(pipe):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 8, 8, generator=g)
    with torch.no_grad():
        hidden = pipe.text_encoder(pipe.tokenizer(["a cat"], return_tensors="pt", padding="max_length").input_ids)[0]
        return pipe.unet(x, torch.tensor([500]), hidden).sample


def test_enhancement_trains_saves_and_fuses(tmp_path):
    pipe = tiny_sd_pipeline()
    before = _unet_output(pipe)
    images = [Image.new("RGB", (32, 32), c) for c in ("red", "blue")]
    config = EnhanceConfig(steps=3, batch_size=2, lr=1e-2, lora_rank=2, lora_alpha=2.0)
    prompts = ["a red circle", "a blue square"]
    result = train_enhancement(pipe, images, prompts, tmp_path / "run", config, progress=False)
    assert result["done"] and (tmp_path / "run" / "lora" / "pytorch_lora_weights.safetensors").is_file()
    active = _unet_output(pipe)  # the trained LoRA, still attached
    assert not torch.allclose(active, before)
    fuse_enhancements(pipe, [result["lora"]])
    assert not getattr(pipe.unet, "peft_config", None)  # plain weights again
    torch.testing.assert_close(_unet_output(pipe), active, atol=1e-5, rtol=1e-4)
    fresh = tiny_sd_pipeline()
    fuse_enhancements(fresh, [result["lora"]])
    torch.testing.assert_close(_unet_output(fresh), _unet_output(pipe))
    with pytest.raises(FileNotFoundError, match="No LoRA at"):
        fuse_enhancements(fresh, [tmp_path])
    # the finished run is found again with the same settings (their tuples were saved as JSON lists)
    again = train_enhancement(tiny_sd_pipeline(), images, prompts, tmp_path / "run", config, progress=False)
    assert again["done"] and again["step"] == 3


def test_diffusion_dpo_loss_is_log_2_at_the_reference_and_falls_when_the_preferred_image_is_denoised_better():
    from diffusers import DDPMScheduler

    g = torch.Generator().manual_seed(0)
    x_w, x_l, noise = (torch.randn(4, 4, 8, 8, generator=g) for _ in range(3))
    t, scheduler = torch.tensor([10, 200, 500, 900]), DDPMScheduler()
    pred = torch.randn(2, 4, 4, 8, 8, generator=g)
    loss, accuracy = diffusion_dpo_loss(pred[0], pred[1], pred[0], pred[1], x_w, x_l, noise, t, scheduler)
    assert loss.item() == pytest.approx(np.log(2)) and accuracy.item() == 0.0
    # the model predicts the preferred image's noise exactly, the reference does not: the margin is positive
    loss, accuracy = diffusion_dpo_loss(noise, pred[1], pred[0], pred[1], x_w, x_l, noise, t, scheduler, beta=1.0)
    assert loss.item() < np.log(2) and accuracy.item() == 1.0
    with pytest.raises(ValueError, match="`beta` is 0"):
        diffusion_dpo_loss(noise, noise, noise, noise, x_w, x_l, noise, t, scheduler, beta=0)


def test_rejected_for_pairs_each_kept_candidate_with_its_prompts_worst():
    cands = [candidate(0, k, s) for k, s in enumerate([1.0, 4.0, 0.5, 1.0])] + [candidate(1, 0, 5.0)]
    assert [(c.prompt_index, c.k) for c in rejected_for(cands, select(cands, top_k=2))] == [(0, 2), (1, 0)]


def test_dpo_enhancement_trains_from_the_reference_and_refuses_missing_pairs(tmp_path):
    pipe = tiny_sd_pipeline()
    before = _unet_output(pipe)
    kept = [Image.new("RGB", (32, 32), c) for c in ("red", "blue")]
    rejected = [Image.new("RGB", (32, 32), c) for c in ("blue", "red")]
    prompts = ["a red circle", "a blue square"]
    config = EnhanceConfig(steps=2, batch_size=2, lr=1e-2, lora_rank=2, lora_alpha=2.0, objective="dpo", dpo_beta=50.0)
    with pytest.raises(ValueError, match="pass rejected images with objective='dpo'"):
        train_enhancement(pipe, kept, prompts, tmp_path / "none", config, progress=False)
    with pytest.raises(ValueError, match="1 rejected images for 2 kept ones"):
        train_enhancement(pipe, kept, prompts, tmp_path / "one", config, rejected=rejected[:1], progress=False)
    result = train_enhancement(pipe, kept, prompts, tmp_path / "run", config, rejected=rejected, progress=False)
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert result["done"] and "accuracy" in log[-1] and np.isfinite(log[-1]["loss"])
    assert not torch.allclose(_unet_output(pipe), before)  # the LoRA moved away from the reference
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for m in pipe.unet.modules() if isinstance(m, BaseTunerLayer)]
    assert layers and not any(m.disable_adapters for m in layers)  # the reference pass switched the LoRA back on


def _config(rounds=2):
    return AugmentConfig(
        rounds=rounds,
        candidates=3,
        top_k=1,
        holdout=0.34,
        holdout_images=2,
        min_gain=-1.0,
        steps=2,
        batch_size=4,
        enhance=EnhanceConfig(steps=2, batch_size=2, lr=1e-2, lora_rank=2, lora_alpha=2.0, checkpoint_every=1),
    )


def test_augment_runs_rounds_and_resumes_to_the_same_result(tmp_path):
    critic = FunctionScorer("redness", redness)
    full = augment(tiny_sd_pipeline(), critic, PROMPTS, tmp_path / "full", _config(), progress=False)
    assert [r["round"] for r in full["rounds"]] == [1, 2] and len(full["loras"]) == 2
    assert full["rounds"][0]["kept"] == len(full["train_prompts"]) == 4
    assert 0 <= full["rounds"][0]["win_rate"] <= 1 and full["rounds"][0]["pairs"] == 2 * 2
    # an interrupted run: round 1 complete, round 2 cut after some candidates, resumed with more rounds allowed
    part = tmp_path / "part"
    augment(tiny_sd_pipeline(), critic, PROMPTS, part, _config(rounds=1), progress=False)
    lines = (tmp_path / "full" / "round-02" / "candidates.jsonl").read_text().splitlines()
    (part / "round-02" / "images").mkdir(parents=True)
    for line in lines[:3]:  # three finished candidates; the fourth line's image is missing, so it is redrawn
        name = json.loads(line)["file"]
        (part / "round-02" / name).write_bytes((tmp_path / "full" / "round-02" / name).read_bytes())
    (part / "round-02" / "candidates.jsonl").write_text("\n".join(lines[:4]) + "\n" + lines[4][:20])  # torn line
    again = augment(tiny_sd_pipeline(), critic, PROMPTS, part, _config(), progress=False)

    def same(a: dict, b: dict) -> None:  # the same record, up to float rounding of the rescored images
        assert a.keys() == b.keys()
        for key in a.keys() - {"lora"}:
            close = a[key] == pytest.approx(b[key], rel=1e-3) if isinstance(a[key], float) else a[key] == b[key]
            assert close, (key, a[key], b[key])

    for a, b in zip(full["rounds"], again["rounds"]):
        same(a, b)
    kept = lambda root: [json.loads(x) for x in (root / "round-02" / "kept.jsonl").read_text().splitlines()]  # noqa: E731
    assert len(kept(tmp_path / "full")) == len(kept(part))
    for a, b in zip(kept(tmp_path / "full"), kept(part)):
        same(a, b)


def test_regenerated_images_get_their_own_files(tmp_path):
    """Every candidate, sampled or regenerated from a suggestion, has its own file, holding the image scored."""
    from dataclasses import replace

    from discadapt.interaction.critics import ScorerCritic

    critic = ScorerCritic(FunctionScorer("redness", redness))  # suggests the layout planned from the relation
    prompts = ["a red circle to the left of a blue square", "a cat above a dog", "a red square", "a dog"]
    augment(tiny_sd_pipeline(), critic, prompts, tmp_path, replace(_config(rounds=1), regenerate=2), progress=False)
    data = RoundData(tmp_path / "round-01")
    candidates = data.candidates()
    assert {c.source for c in candidates} == {"sample", "suggestion"}
    assert len({c.file for c in candidates}) == len(candidates)
    images = [Image.open(data.folder / c.file).convert("RGB") for c in candidates]
    torch.testing.assert_close(redness(images, None), torch.tensor([c.score for c in candidates]), atol=1e-4, rtol=0)


def test_augment_refuses_another_configuration_and_bad_critics(tmp_path):
    critic = FunctionScorer("redness", redness)
    augment(tiny_sd_pipeline(), critic, PROMPTS, tmp_path, _config(rounds=1), progress=False)
    other = _config(rounds=1)
    other.candidates = 2
    with pytest.raises(ValueError, match="another critic, prompts or settings"):
        augment(tiny_sd_pipeline(), critic, PROMPTS, tmp_path, other, progress=False)
    with pytest.raises(ValueError, match="`critic` is a object"):
        augment(tiny_sd_pipeline(), object(), PROMPTS, tmp_path / "x", _config(), progress=False)
    with pytest.raises(ValueError, match="`prompts`"):
        augment(tiny_sd_pipeline(), critic, "a cat", tmp_path / "x", _config(), progress=False)


def test_a_round_below_min_gain_stops_and_is_not_fused(tmp_path):
    critic = FunctionScorer("redness", redness)
    config = _config()
    config.min_gain = 0.51  # no round can pass
    pipe = tiny_sd_pipeline()
    before = _unet_output(pipe)
    result = augment(pipe, critic, PROMPTS, tmp_path, config, progress=False)
    assert len(result["rounds"]) == 1 and not result["rounds"][0]["accepted"] and result["loras"] == []
    torch.testing.assert_close(_unet_output(pipe), before, atol=0, rtol=0)


def test_augment_command_runs_a_round_and_refuses_an_unknown_critic(tmp_path, capsys):
    from discadapt.cli import main

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    common = ["augment", "--tiny", "--prompts", str(prompts), "--out", str(tmp_path / "run"), "--no-progress"]
    assert main([*common, "--critic", "crayon"]) == 2
    assert "`--critic` is 'crayon'; pass adapter=DIR, clip=DIR, denoising" in capsys.readouterr().err
    from discadapt.adapter import DiscriminativeAdapter

    adapter = DiscriminativeAdapter.for_pipeline(tiny_sd_pipeline(), hidden_size=32, num_heads=4)
    adapter.save_pretrained(tmp_path / "adapter")
    small = ["--rounds", "1", "--candidates", "2", "--holdout", "0.34", "--holdout-images", "1", "--steps", "2"]
    lora = ["--lora-steps", "2", "--lora-batch-size", "2", "--lora-rank", "2", "--min-gain", "-1"]
    assert main([*common, "--critic", f"adapter={tmp_path / 'adapter'}", *small, *lora]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert lines[0]["round"] == 1 and lines[0]["accepted"] and len(lines[-1]["loras"]) == 1
