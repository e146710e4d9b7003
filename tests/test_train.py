"""Stage 1 (probe) and stage 2 (tune) training loops on the tiny pipelines: values, resumption, LoRA round trip,
evaluation by hand, bad inputs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from safetensors.torch import load_file

from discadapt import DiscriminativeAdapter, itm_score
from discadapt.probe import FeatureProbe
from discadapt.testing import tiny_sd_pipeline, tiny_sdxl_pipeline
from discadapt.train import (
    DiscriminationAccuracy,
    ProbeConfig,
    TuneConfig,
    evaluate_adapter,
    train_probe,
    train_tune,
)
from discadapt.train import commands as train_commands
from discadapt.train import objective as objective_module
from discadapt.train.data import BatchBuilder
from discadapt.train.tune import TuneObjective
from discadapt.worlds.shapes.adapter_data import ShapeWorldItems

SMALL = {"hidden_size": 32, "num_heads": 2, "decoder_layers": 1, "num_itm_queries": 2, "num_rec_queries": 3}
COLORS = {"red": (225, 45, 45), "blue": (40, 70, 235), "green": (45, 195, 65)}


def square(color: str, x0: int = 8, side: int = 12) -> PIL.Image.Image:
    image = np.full((32, 32, 3), 40, dtype=np.uint8)
    image[8 : 8 + side, x0 : x0 + side] = COLORS[color]
    return PIL.Image.fromarray(image)


def toy_items() -> list[dict]:
    """Three hand-made items: ITM with a hard-negative caption and image each, REC on the first."""
    return [
        {
            "image": square("red"),
            "caption": "a red square",
            "neg_captions": ["a blue square", "a green square"],
            "neg_images": [square("blue")],
            "phrase": "the red square",
            "boxes": [[14 / 32, 14 / 32, 12 / 32, 12 / 32]],
            "box_spans": [[(4, 14)]],
            "category": "color",
        },
        {
            "image": square("blue", x0=16),
            "caption": "a blue square",
            "neg_captions": ["a red square"],
            "neg_images": [square("green", x0=16)],
            "category": "color",
        },
        {"image": square("green"), "caption": "a green square", "neg_captions": ["a red square"], "category": "other"},
    ]


def probe_config(**changes) -> ProbeConfig:
    return ProbeConfig(**{"steps": 4, "batch_size": 2, "lr": 1e-3, "adapter_config": SMALL, **changes})


def tune_config(**changes) -> TuneConfig:
    base = {"steps": 4, "batch_size": 2, "lr": 1e-3, "adapter_config": SMALL, "lora_rank": 4, "lora_alpha": 8}
    return TuneConfig(**{**base, **changes})


def state(module) -> dict:
    return {k: v.clone() for k, v in module.state_dict().items()}


def assert_same_state(a: dict, b: dict):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def folder_bytes(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---- stage 1 ---------------------------------------------------------------------------------------------------


def test_probe_trains_only_the_adapter(tmp_path):
    pipe = tiny_sd_pipeline()
    frozen = {name: state(getattr(pipe, name)) for name in ("unet", "vae", "text_encoder")}
    torch.manual_seed(0)
    initial = DiscriminativeAdapter.for_pipeline(pipe, ["up_blocks.0"], **SMALL)
    start = state(initial)
    result = train_probe(pipe, toy_items(), tmp_path / "run", probe_config(), adapter=initial, progress=False)
    assert result["done"] and result["step"] == 4 and "lora" not in result
    for name, before in frozen.items():
        assert_same_state(before, state(getattr(pipe, name)))
    trained = DiscriminativeAdapter.from_pretrained(result["adapter"])
    changed = [k for k, v in state(trained).items() if not torch.equal(v, start[k])]
    assert "itm_head.weight" in changed and "box_head.0.weight" in changed and "logit_scale" in changed
    assert_same_state(state(trained), state(initial))  # the saved adapter is the trained one
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log] == [1, 2, 3, 4]
    assert all(np.isfinite(e["loss"]) and e["loss_itm_text"] > 0 for e in log)
    record = json.loads((tmp_path / "run" / "train_config.json").read_text())
    assert record["objective"] == "probe" and record["config"]["lr"] == 1e-3 and record["run"]["num_processes"] == 1


@pytest.mark.parametrize("itm_text", ["pooled", "tokens"])
def test_probe_loss_decreases_on_an_overfit_batch(tmp_path, itm_text):
    pipe = tiny_sd_pipeline()
    items = toy_items()[:2]
    config = probe_config(steps=40, lr=3e-3, timesteps=(100,), random_negatives=False, checkpoint_every=100)
    config = probe_config(**{**config.to_dict(), "adapter_config": {**SMALL, "itm_text": itm_text}})
    result = train_probe(pipe, items, tmp_path / "run", config, progress=False)
    assert DiscriminativeAdapter.from_pretrained(result["adapter"]).config.itm_text == itm_text
    losses = [json.loads(line)["loss"] for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])


def _interrupt_at(monkeypatch, calls: int):
    """Make the objective raise on its `calls`-th forward (a crash mid-run, after earlier checkpoints)."""
    forward, count = objective_module.DiscriminativeLoss.forward, [0]

    def crashing(self, *args, **kwargs):
        count[0] += 1
        if count[0] == calls:
            raise KeyboardInterrupt("killed")
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(objective_module.DiscriminativeLoss, "forward", crashing)


@pytest.mark.parametrize("how", ["stop_after", "crash"])
def test_probe_resume_reaches_the_weights_of_an_uninterrupted_run(tmp_path, monkeypatch, how):
    items = ShapeWorldItems(12, seed=3)
    config = probe_config(steps=5, checkpoint_every=2, grad_accum=2)
    straight = train_probe(tiny_sd_pipeline(), items, tmp_path / "straight", config, progress=False)
    if how == "stop_after":
        first = train_probe(tiny_sd_pipeline(), items, tmp_path / "cut", config, stop_after=3, progress=False)
        assert not first["done"] and first["step"] == 3 and first["adapter"] is None
    else:
        _interrupt_at(monkeypatch, calls=8)  # in step 4 (micro-steps 7, 8): checkpoint 2 survives
        with pytest.raises(KeyboardInterrupt):
            train_probe(tiny_sd_pipeline(), items, tmp_path / "cut", config, progress=False)
        monkeypatch.undo()
        assert sorted(p.name for p in (tmp_path / "cut" / "checkpoints").iterdir()) == ["step-00000002"]
    if how == "stop_after":  # a resumed run may read its batches in a worker process: same batches
        config = probe_config(steps=5, checkpoint_every=2, grad_accum=2, num_workers=1)
    resumed = train_probe(tiny_sd_pipeline(), items, tmp_path / "cut", config, resume=True, progress=False)
    assert resumed["done"]
    a = DiscriminativeAdapter.from_pretrained(straight["adapter"])
    b = DiscriminativeAdapter.from_pretrained(resumed["adapter"])
    assert_same_state(state(a), state(b))
    logs = [(tmp_path / run / "log.jsonl").read_text().splitlines() for run in ("straight", "cut")]
    assert [json.loads(line)["step"] for line in logs[1]] == [1, 2, 3, 4, 5]  # steps run again are logged once
    assert [json.loads(line)["loss"] for line in logs[1]] == [json.loads(line)["loss"] for line in logs[0]]


def test_gradient_accumulation_matches_a_larger_batch(tmp_path, monkeypatch):
    # Every sample has one negative caption and one negative image and no boxes: the loss of a batch of 2 is the
    # mean of the two single-sample losses, so 2 micro-batches of 1 give the gradient of one batch of 2. Plain SGD
    # (instead of AdamW, which is blind to the gradient's scale) makes the weights show it.
    monkeypatch.setattr(torch.optim, "AdamW", lambda params, lr, weight_decay: torch.optim.SGD(params, lr=lr))
    items = [dict(item, neg_captions=item["neg_captions"][:1]) for item in toy_items()[:2]]
    for item in items:
        item.pop("boxes", None)
    common = dict(steps=1, lr=1.0, max_grad_norm=None, random_negatives=False, adapter_config=SMALL)
    torch.manual_seed(0)
    start = state(DiscriminativeAdapter.for_pipeline(tiny_sd_pipeline(), ["up_blocks.0"], **SMALL))
    one = train_probe(tiny_sd_pipeline(), items, tmp_path / "a", ProbeConfig(batch_size=2, **common), progress=False)
    two = ProbeConfig(batch_size=1, grad_accum=2, **common)
    acc = train_probe(tiny_sd_pipeline(), items, tmp_path / "b", two, progress=False)
    a = state(DiscriminativeAdapter.from_pretrained(one["adapter"]))
    b = state(DiscriminativeAdapter.from_pretrained(acc["adapter"]))
    step_a = torch.cat([(a[k] - start[k]).flatten() for k in a])  # lr 1: minus the gradient
    step_b = torch.cat([(b[k] - start[k]).flatten() for k in a])
    assert step_a.norm() > 1e-2 and (step_a - step_b).norm() < 1e-4 * step_a.norm()  # float32 rounding only


def test_probe_runs_on_sdxl_with_bf16_autocast(tmp_path):
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)  # one mixed-precision setting per process: start a fresh state
    try:
        pipe = tiny_sdxl_pipeline()
        config = probe_config(steps=2, mixed_precision="bf16", layers=("up_blocks.0",))
        result = train_probe(pipe, toy_items(), tmp_path / "run", config, eval_dataset=toy_items(), progress=False)
    finally:
        AcceleratorState._reset_state(True)
    assert result["done"] and np.isfinite(result["losses"]["loss"])
    assert pipe.unet.dtype == torch.bfloat16  # frozen weights in the half type
    adapter = DiscriminativeAdapter.from_pretrained(result["adapter"])
    assert adapter.dtype == torch.float32  # master weights
    assert result["eval"]["all"]["n_itm_text"] == 3


# ---- stage 2 -----------------------------------------------------------------------------------------------------


# the attention projections (the default), and with a feed-forward layer and the resnets' convolutions: diffusers
# renames only the attention keys on saving and reads a file as one format, which once dropped the attention part
@pytest.mark.parametrize("targets", [None, ("to_q", "to_k", "to_v", "to_out.0", "ff.net.2", "conv1")])
def test_tune_changes_only_lora_and_adapter_and_the_lora_reloads_exactly(tmp_path, targets):
    from safetensors import safe_open

    pipe = tiny_sd_pipeline()
    base = {name: state(getattr(pipe, name)) for name in ("unet", "vae", "text_encoder")}
    config = tune_config() if targets is None else tune_config(lora_targets=targets)
    result = train_tune(pipe, ShapeWorldItems(8, seed=1), tmp_path / "run", config, progress=False)
    assert result["done"] and Path(result["lora"], "pytorch_lora_weights.safetensors").is_file()
    with safe_open(Path(result["lora"], "pytorch_lora_weights.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert all(k.endswith((".lora.down.weight", ".lora.up.weight")) for k in keys)  # one format throughout
    if targets is not None:
        assert {k.split(".lora.")[0].split(".")[-1] for k in keys} == {"to_q", "to_k", "to_v", "0", "2", "conv1"}
    assert_same_state(base["vae"], state(pipe.vae))
    assert_same_state(base["text_encoder"], state(pipe.text_encoder))
    unet_now = state(pipe.unet)
    lora = {k for k in unet_now if "lora_" in k}
    assert lora and all(k.endswith(".weight") for k in lora)
    for key, value in unet_now.items():  # peft renames wrapped layers to <name>.base_layer.<param>
        if key not in lora:
            assert torch.equal(value, base["unet"][key.replace(".base_layer", "")]), key
    assert any(not torch.equal(unet_now[k], torch.zeros_like(unet_now[k])) for k in lora if "lora_B" in k)

    def images(p):
        generator = torch.Generator().manual_seed(0)
        out = p(["a red circle", "a blue square"], num_inference_steps=3, generator=generator, output_type="pt")
        return out.images

    tuned = images(pipe)
    plain = tiny_sd_pipeline()
    assert not torch.equal(images(plain), tuned)  # the LoRA matters
    plain.load_lora_weights(result["lora"])
    assert torch.equal(images(plain), tuned)  # lora_alpha 8 != rank 4 survives the reload (metadata)
    plain.fuse_lora(components=["unet"])
    plain.unload_lora_weights()
    assert not any("lora" in name for name, _ in plain.unet.named_modules())
    torch.testing.assert_close(images(plain), tuned, rtol=0, atol=1e-5)


def test_tune_with_gradient_checkpointing_takes_the_same_step(tmp_path):
    items = toy_items()
    pipes = [tiny_sd_pipeline(), tiny_sd_pipeline()]
    train_tune(pipes[0], items, tmp_path / "a", tune_config(steps=1), progress=False)
    train_tune(pipes[1], items, tmp_path / "b", tune_config(steps=1, gradient_checkpointing=True), progress=False)
    assert pipes[1].unet.is_gradient_checkpointing
    a, b = state(pipes[0].unet), state(pipes[1].unet)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-7)


def test_tune_denoising_contrast_equals_the_errors_computed_by_hand():
    """The contrast term of a micro-batch: each text-side row's image, noised as its denoising pair, under the
    caption and the row's negatives, through the UNet one caption at a time."""
    from discadapt.losses import denoising_contrast_loss, denoising_errors
    from discadapt.scoring import add_noise, encode_images
    from discadapt.text import encode_text

    items, pipe = toy_items(), tiny_sd_pipeline()
    config = tune_config(contrast_weight=2.0, contrast_temperature=0.1, itm_weight=0, rec_weight=0)
    adapter = DiscriminativeAdapter.for_pipeline(pipe, config.layers, **config.adapter_config)
    loss_module = objective_module.DiscriminativeLoss(pipe, adapter, config, train_unet=True)
    builder = BatchBuilder(items, pipe.tokenizer, (4, 16, 16), 32, 1000, 0, 2, 1, random_negatives=False, denoise=True)
    batch = builder.build([(0, 0), (1, 1), (2, 2)])
    with torch.no_grad():
        latents, text = encode_images(pipe, batch.images), encode_text(pipe, batch.texts)
        losses = loss_module(latents, text, batch, 1.0)
        rows = []
        for sample, row in zip(batch.text_rows.tolist(), batch.text_table.tolist()):
            d = batch.denoise_images.tolist().index(sample)
            t, noise = batch.denoise_timesteps[d : d + 1], batch.denoise_noise[d : d + 1]
            x0 = latents[sample : sample + 1]
            x_t = add_noise(pipe.scheduler.alphas_cumprod, x0, noise, t)
            errors = []
            for k in row:
                if k < 0:
                    errors.append(torch.tensor([float("inf")], dtype=torch.float64))
                    continue
                hidden = text.index(batch.pairs[k : k + 1, 1]).encoder_hidden_states
                pred = pipe.unet(x_t, t, hidden).sample
                errors.append(denoising_errors(pred, x0, noise, t, pipe.scheduler).double())
            rows.append(torch.cat(errors))
    assert len(rows) == 3 and all(len(r) == 3 for r in rows)  # k_t = 2; items 1 and 2 have one negative: a pad
    assert [bool(torch.isinf(r).any()) for r in rows] == [False, True, True]
    expected = denoising_contrast_loss(torch.stack(rows), 0.1)
    torch.testing.assert_close(losses["loss_contrast"].double(), expected, rtol=1e-4, atol=1e-6)
    total = 2.0 * losses["loss_contrast"].item() + losses["loss_denoise"].item()
    assert losses["loss"].item() == pytest.approx(total, rel=1e-5)


def test_tune_on_the_denoising_contrast_alone_moves_the_lora(tmp_path):
    pipe = tiny_sd_pipeline()
    config = tune_config(steps=2, contrast_weight=1.0, denoise_weight=0, itm_weight=0, rec_weight=0.0)
    result = train_tune(pipe, toy_items(), tmp_path / "run", config, progress=False)
    logged = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert all("loss_contrast" in line and "loss_denoise" not in line for line in logged)
    assert all(line["loss"] == pytest.approx(line["loss_contrast"]) and line["loss"] > 0 for line in logged)
    lora = {k: v for k, v in state(pipe.unet).items() if "lora_B" in k}
    assert result["done"] and any(v.abs().sum() > 0 for v in lora.values())


def test_denoise_timestep_range_narrows_only_the_denoising_pairs():
    """`denoise_timestep_range` draws the denoising pairs' timesteps from [low, high) with the same generators (the
    default, the whole schedule, draws exactly what an explicit (0, T) does); the adapter's stay `timestep_range`'s;
    the CLI passes it through and the checks name it."""
    items, pipe = toy_items(), tiny_sd_pipeline()
    samples = [(g, g % len(items)) for g in range(12)]

    def build(**ranges):
        builder = BatchBuilder(items, pipe.tokenizer, (4, 16, 16), 32, 1000, 0, 2, 1, denoise=True, **ranges)
        return builder.build(samples)

    default, whole, high = build(), build(denoise_timestep_range=(0, 1000)), build(denoise_timestep_range=(750, 1000))
    assert torch.equal(default.denoise_timesteps, whole.denoise_timesteps)
    assert torch.equal(default.denoise_noise, high.denoise_noise) and torch.equal(default.timesteps, high.timesteps)
    assert bool((high.denoise_timesteps >= 750).all()) and bool((default.denoise_timesteps < 750).any())
    args = _parse(["tune", "--tiny", "--shapes", "4", "--out", "x", "--denoise-timestep-range", "500", "1000"])
    config = train_commands._config(args, "tune")
    assert config.denoise_timestep_range == (500, 1000) and config.timestep_range is None
    with pytest.raises(ValueError, match=r"`denoise_timestep_range` is \(500, 500\); pass \(low, high\)"):
        TuneConfig(denoise_timestep_range=(500, 500))
    with pytest.raises(ValueError, match=r"`denoise_timestep_range` is \(0, 2000\); its end must be <= 1000"):
        train_tune(pipe, items, "unused", tune_config(denoise_timestep_range=(0, 2000)), progress=False)


def test_caption_dropout_empties_some_denoising_captions_and_keeps_them_out_of_the_contrast(tmp_path):
    """`caption_dropout` replaces a denoising pair's caption by "" (drawn after its timestep and noise, which stay
    those of a run without it); those pairs leave the denoising contrast, which is 0 when every caption is dropped
    while the denoising loss still trains; the CLI passes it through, the run record holds it only when set, and a
    bad value is refused by name."""
    items, pipe = toy_items(), tiny_sd_pipeline()
    samples = [(g, g % len(items)) for g in range(40)]

    def build(p):
        return BatchBuilder(items, pipe.tokenizer, (4, 16, 16), 32, 1000, 0, 2, 1, denoise=True, caption_dropout=p)

    plain, dropped = build(0.0).build(samples), build(0.3).build(samples)
    assert torch.equal(plain.denoise_timesteps, dropped.denoise_timesteps)
    assert torch.equal(plain.denoise_noise, dropped.denoise_noise) and not plain.denoise_dropped.any()
    texts = [dropped.texts[i] for i in dropped.denoise_texts.tolist()]
    assert [t == "" for t in texts] == dropped.denoise_dropped.tolist() and 0 < sum(t == "" for t in texts) < 40
    kept = ~dropped.denoise_dropped
    assert [plain.texts[i] for i in plain.denoise_texts[kept].tolist()] == [t for t in texts if t]

    config = tune_config(contrast_weight=1.0, caption_dropout=0.999999, num_neg_captions=1)
    train_tune(pipe, items, tmp_path / "run", config, progress=False)
    logged = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert all(line["loss_contrast"] == 0 and line["loss_denoise"] > 0 for line in logged)
    args = _parse(["tune", "--tiny", "--shapes", "4", "--out", "x", "--caption-dropout", "0.1"])
    assert train_commands._config(args, "tune").caption_dropout == 0.1
    assert "caption_dropout" not in TuneConfig().to_dict()  # off, runs recorded before the option still resume
    assert TuneConfig.from_dict(tune_config(caption_dropout=0.1).to_dict()).caption_dropout == 0.1
    with pytest.raises(ValueError, match=r"`caption_dropout` is 1.0; pass a probability in \[0, 1\)"):
        TuneConfig(caption_dropout=1.0)


def lora_weights(pipe) -> list[tuple[str, torch.nn.Parameter]]:
    return [(name, p) for name, p in pipe.unet.named_parameters() if p.requires_grad]


def test_tune_saves_the_moving_average_of_the_lora_and_keeps_the_last_weights(tmp_path, monkeypatch):
    steps, decay = [], 0.8
    after_step = TuneObjective.after_step

    def recording(self, step):
        steps.append({name: p.detach().clone() for name, p in self._lora()})
        after_step(self, step)

    monkeypatch.setattr(TuneObjective, "after_step", recording)
    pipe = tiny_sd_pipeline()
    config = tune_config(steps=5, lora_ema_decay=decay)
    result = train_tune(pipe, ShapeWorldItems(8, seed=1), tmp_path / "run", config, progress=False)
    last = {name: p.detach().clone() for name, p in lora_weights(pipe)}
    assert all(torch.equal(last[name], steps[-1][name]) for name in last)  # the pipe keeps the last weights
    average = dict(steps[0])  # diffusers' warm-up: decay min(d, (1 + n) / (10 + n)) at the n-th update, 0 at the first
    for n, weights in enumerate(steps[1:], start=1):
        d = min(decay, (1 + n) / (10 + n))
        average = {name: d * average[name] + (1 - d) * weights[name] for name in average}

    def images(p):
        out = p(["a red circle"], num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="pt")
        return out.images

    with torch.no_grad():
        for name, p in lora_weights(pipe):
            p.copy_(average[name])
    saved = tiny_sd_pipeline()
    saved.load_lora_weights(result["lora"])
    torch.testing.assert_close(images(saved), images(pipe), rtol=0, atol=1e-5)  # summation order only
    assert any(not torch.allclose(average[name], last[name], atol=1e-4) for name in last)  # an average, not the last
    with pytest.raises(ValueError, match=r"`lora_ema_decay` is 1; pass a decay in \(0, 1\)"):
        TuneConfig(lora_ema_decay=1)


@pytest.mark.parametrize("how", ["stop_after", "crash"])
def test_tune_resume_reaches_the_weights_of_an_uninterrupted_run(tmp_path, monkeypatch, how):
    items = ShapeWorldItems(8, seed=2)
    config = tune_config(steps=4, checkpoint_every=2, snr_gamma=5.0, lora_ema_decay=0.9)
    straight_pipe = tiny_sd_pipeline()
    straight = train_tune(straight_pipe, items, tmp_path / "straight", config, progress=False)
    if how == "stop_after":
        train_tune(tiny_sd_pipeline(), items, tmp_path / "cut", config, stop_after=2, progress=False)
    else:
        _interrupt_at(monkeypatch, calls=4)
        with pytest.raises(KeyboardInterrupt):
            train_tune(tiny_sd_pipeline(), items, tmp_path / "cut", config, progress=False)
        monkeypatch.undo()
    resumed_pipe = tiny_sd_pipeline()
    resumed = train_tune(resumed_pipe, items, tmp_path / "cut", config, resume=True, progress=False)
    assert_same_state(state(straight_pipe.unet), state(resumed_pipe.unet))
    saved = [load_file(Path(run["lora"], "pytorch_lora_weights.safetensors")) for run in (straight, resumed)]
    assert_same_state(*saved)  # the LoRA's moving average was checkpointed too
    a = DiscriminativeAdapter.from_pretrained(straight["adapter"])
    b = DiscriminativeAdapter.from_pretrained(resumed["adapter"])
    assert_same_state(state(a), state(b))


# ---- evaluation ----------------------------------------------------------------------------------------------------


def test_discrimination_accuracy_counts_per_category():
    metric = DiscriminationAccuracy(["a", "b"])
    metric.update("itm_text", torch.tensor([True, False, True]), ["a", "a", "c"])
    metric.update("rec", torch.tensor([False]), ["b"])
    result = metric.compute()
    assert result["all"]["itm_text"] == 2 / 3 and result["all"]["n_itm_text"] == 3
    assert result["a"]["itm_text"] == 0.5 and result["b"]["itm_text"] is None and result["b"]["rec"] == 0.0
    with pytest.raises(ValueError, match="`kind` is 'itm'"):
        metric.update("itm", torch.tensor([True]), ["a"])


def test_evaluation_equals_a_hand_count(sd_pipe):
    torch.manual_seed(0)
    adapter = DiscriminativeAdapter.for_pipeline(sd_pipe, ["mid_block", "up_blocks.0"], **SMALL)
    items, t, seed = toy_items(), 300, 5
    result = evaluate_adapter(sd_pipe, adapter, items, timesteps=[t], batch_size=2, seed=seed)
    # by hand, with the public scorer and the same noise draw (item i, timestep 0)
    right = {"itm_text": [], "itm_image": []}
    for i, item in enumerate(items):
        draw = int(np.random.SeedSequence((seed, 3, i, 0)).generate_state(1)[0])
        texts = [item["caption"], *item["neg_captions"]]
        s = itm_score(sd_pipe, adapter, [item["image"]] * len(texts), texts, t=t, seed=draw)
        right["itm_text"].append((bool(s[0] > s[1:].max()), item["category"]))
        if item.get("neg_images"):
            images = [item["image"], *item["neg_images"]]
            s = itm_score(sd_pipe, adapter, images, [item["caption"]] * len(images), t=t, seed=draw)
            right["itm_image"].append((bool(s[0] > s[1:].max()), item["category"]))
    for kind, answers in right.items():
        assert result["all"][f"n_{kind}"] == len(answers)
        assert result["all"][kind] == sum(ok for ok, _ in answers) / len(answers)
        color = [ok for ok, c in answers if c == "color"]
        assert result["color"][kind] == sum(color) / len(color)
    assert result["other"]["n_itm_image"] == 0 and result["other"]["itm_image"] is None
    chunked = evaluate_adapter(sd_pipe, adapter, items, timesteps=[t], batch_size=3, seed=seed, pair_batch_size=2)
    assert chunked == result
    # REC: the most confident query's box against the one target box, IoU >= 0.5
    from discadapt.scoring import encode_images
    from discadapt.text import encode_text

    draw = int(np.random.SeedSequence((seed, 3, 0, 0)).generate_state(1)[0])
    noise = torch.randn((4, 16, 16), generator=torch.Generator().manual_seed(draw))
    x0 = encode_images(sd_pipe, [items[0]["image"]])
    abar = sd_pipe.scheduler.alphas_cumprod[t]
    text = encode_text(sd_pipe, [items[0]["phrase"]])
    with torch.no_grad():
        feats = FeatureProbe(sd_pipe.unet, adapter.config.layers)(
            abar.sqrt() * x0 + (1 - abar).sqrt() * noise, torch.tensor([t]), text.encoder_hidden_states
        )
        out = adapter(feats, torch.tensor([t]), text_tokens=text.encoder_hidden_states)
    q = out.rec_logits[0].softmax(-1)[:, 0].argmax()
    cx, cy, w, h = out.boxes[0, q].tolist()
    tx, ty, tw, th = items[0]["boxes"][0]
    iw = max(0.0, min(cx + w / 2, tx + tw / 2) - max(cx - w / 2, tx - tw / 2))
    ih = max(0.0, min(cy + h / 2, ty + th / 2) - max(cy - h / 2, ty - th / 2))
    iou = iw * ih / (w * h + tw * th - iw * ih)
    assert result["all"]["n_rec"] == 1 and result["all"]["rec"] == float(iou >= 0.5)


# ---- the batch -------------------------------------------------------------------------------------------------------


def test_batch_tables_share_pairs_and_mark_phrase_tokens(sd_pipe):
    items = toy_items()
    builder = BatchBuilder(items, sd_pipe.tokenizer, (4, 16, 16), 32, 1000, 0, 2, 1, random_negatives=True)
    batch = builder.build([(0, 0), (1, 2)])  # items 0 and 2
    assert batch.texts[:3] == ["a red square", "a blue square", "a green square"]
    assert "the red square" in batch.texts and batch.images.shape == (
        4,
        3,
        32,
        32,
    )  # 2 positives, 1 hard + 1 random negative
    pairs = [tuple(p) for p in batch.pairs.tolist()]
    assert batch.text_table[0].tolist() == [0, 1, 2]  # positive, then the two hard negatives, same image
    assert [pairs[k][:2] for k in batch.text_table[0].tolist()] == [(0, 0), (0, 1), (0, 2)]
    assert pairs[batch.image_table[0, 1]] == (2, 0, 0)  # the negative image with the caption, sample 0's noise
    # item 2 has one hard caption (k_t = 2: one random fill) and no hard image (k_i = 1: one random image)
    assert batch.text_rows.tolist() == [0, 1] and batch.image_rows.tolist() == [0, 1]
    assert (batch.text_table[1] >= 0).sum() == 3 and (batch.image_table[1] >= 0).sum() == 2
    tokens = batch.rec_tokens[0]  # "the red square": 'red square' is tokens 2-3 after the start token
    assert tokens.shape == (1, 77) and tokens[0].nonzero().flatten().tolist() == [2, 3]
    again = builder.build([(0, 0), (1, 2)])
    assert torch.equal(again.noise, batch.noise) and torch.equal(again.timesteps, batch.timesteps)


# ---- bad input ---------------------------------------------------------------------------------------------------


def _parse(argv):
    import argparse

    parser = argparse.ArgumentParser()
    train_commands.add_commands(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_missing_images_and_boxes_outside_are_refused_through_the_cli(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    square("red").save(images / "a.png")
    captions = tmp_path / "captions.json"
    captions.write_text(
        json.dumps(
            {
                "images": [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "missing.png"}],
                "annotations": [{"id": 1, "image_id": 1, "caption": "x"}, {"id": 2, "image_id": 2, "caption": "y"}],
            }
        )
    )
    args = _parse(
        ["probe", "--tiny", "--captions", str(captions), "--images", str(images), "--out", str(tmp_path / "o")]
    )
    with pytest.raises(ValueError, match=r"1 image file\(s\) listed in `annotations` do not exist.*missing\.png"):
        args.func(args)
    refs = tmp_path / "refs.json"
    refs.write_text(json.dumps([{"image": "a.png", "phrase": "a", "bbox": [20, 8, 16, 12], "width": 32, "height": 32}]))
    args = _parse(["probe", "--tiny", "--refs", str(refs), "--ref-images", str(images), "--out", str(tmp_path / "o")])
    with pytest.raises(ValueError, match=r"bbox \[20, 8, 16, 12\].*extending beyond its 32x32"):
        args.func(args)
    assert not (tmp_path / "o").exists()


def test_bad_items_are_refused_by_the_training_entry_point(tmp_path):
    pipe = tiny_sd_pipeline()
    out = tmp_path / "run"
    bad_box = dict(toy_items()[0], boxes=[[0.9, 0.5, 0.4, 0.2]])
    with pytest.raises(ValueError, match=r"dataset item 0 `boxes` has box \[0.9, 0.5, 0.4, 0.2\].*outside the image"):
        train_probe(pipe, [bad_box], out, probe_config(), progress=False)
    with pytest.raises(ValueError, match=r"`dataset` is empty \(0 items\)"):
        train_probe(pipe, [], out, probe_config(), progress=False)
    with pytest.raises(ValueError, match="dataset item 0 has neither a `caption`"):
        train_probe(pipe, [{"image": square("red")}], out, probe_config(), progress=False)
    late = toy_items() + [dict(toy_items()[1], boxes=[[0.5, 0.5, 0.0, 0.1]])]
    with pytest.raises(
        ValueError, match=r"dataset item 3 `boxes` is \[\[0.5, 0.5, 0.0, 0.1\]\]; every box needs w > 0"
    ):
        train_probe(pipe, late, out, probe_config(batch_size=4, steps=1), progress=False)
    with pytest.raises(ValueError, match=r"`timesteps` is \(5000,\); this scheduler's timesteps are 0..999"):
        train_probe(pipe, toy_items(), out, probe_config(timesteps=(5000,)), progress=False)
    assert not (out / "checkpoints").exists()


def test_config_checks_name_the_argument_and_the_fix():
    with pytest.raises(ValueError, match=r"`lora_rank` is 0; pass an int >= 1"):
        TuneConfig(lora_rank=0)
    with pytest.raises(ValueError, match=r"`contrast_weight` is -1; pass a finite number >= 0"):
        TuneConfig(contrast_weight=-1)
    with pytest.raises(ValueError, match=r"`contrast_temperature` is 0; pass a number > 0"):
        TuneConfig(contrast_temperature=0)
    with pytest.raises(ValueError, match=r"`contrast_weight` is > 0 but `num_neg_captions` is 0"):
        TuneConfig(contrast_weight=1.0, num_neg_captions=0)
    args = _parse(["tune", "--tiny", "--shapes", "4", "--out", "x", "--lora-rank", "0"])
    with pytest.raises(ValueError, match=r"`lora_rank` is 0"):
        args.func(args)
    with pytest.raises(ValueError, match="`timesteps` .* and `timestep_range` .* are both set"):
        ProbeConfig(timesteps=(10,), timestep_range=(0, 100))
    with pytest.raises(ValueError, match="Every ITM table is off"):
        ProbeConfig(num_neg_captions=0, num_neg_images=0)
    with pytest.raises(ValueError, match="`adapter_config` sets 'text_dim'"):
        ProbeConfig(adapter_config={"text_dim": 3})
    config = TuneConfig(steps=10, lr_warmup_steps=2, lr_schedule="cosine")
    assert [round(config.lr_factor(s), 3) for s in (0, 1, 2, 6, 10)] == [0.5, 1.0, 1.0, 0.5, 0.0]
    assert TuneConfig.from_dict(config.to_dict()) == config


def test_resume_refuses_another_configuration_and_writes_nothing(tmp_path):
    out = tmp_path / "run"
    items = toy_items()
    train_probe(tiny_sd_pipeline(), items, out, probe_config(steps=2, checkpoint_every=1), progress=False)
    before = folder_bytes(out)
    with pytest.raises(ValueError, match=r"already holds a training run at step 2; pass resume=True"):
        train_probe(tiny_sd_pipeline(), items, out, probe_config(steps=3), progress=False)
    with pytest.raises(ValueError, match=r"another configuration \(config.lr: saved 0.001, now 0.002\)"):
        train_probe(tiny_sd_pipeline(), items, out, probe_config(steps=3, lr=2e-3), resume=True, progress=False)
    with pytest.raises(ValueError, match=r"run.dataset.length: saved 3, now 2"):
        train_probe(tiny_sd_pipeline(), items[:2], out, probe_config(steps=3), resume=True, progress=False)
    with pytest.raises(ValueError, match=r"objective: saved 'probe', now 'tune'"):
        train_tune(tiny_sd_pipeline(), items, out, tune_config(steps=3), resume=True, progress=False)
    assert folder_bytes(out) == before
    # the same settings with more steps (constant schedule) extend the run
    longer = train_probe(tiny_sd_pipeline(), items, out, probe_config(steps=3), resume=True, progress=False)
    assert longer["step"] == 3 and longer["done"]


# ---- several processes ---------------------------------------------------------------------------------------------


def test_two_process_cpu_run(tmp_path):
    out = tmp_path / "run"
    command = [
        str(Path(sys.executable).with_name("accelerate")),
        "launch",
        "--multi_gpu",  # with ACCELERATE_USE_CPU=1: torchrun's 2 processes on the CPU, gloo
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "-m",
        "discadapt.train.commands",
        "probe",
        "--tiny",
        "--shapes",
        "16",
        "--eval-shapes",
        "6",
        "--out",
        str(out),
        "--steps",
        "2",
        "--batch-size",
        "2",
        "--no-progress",
        "--adapter-config",
        json.dumps(SMALL),
    ]
    # accelerate 1.15's `--cpu` launcher starts several processes only through mpirun; torchrun does it alone.
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", ACCELERATE_USE_CPU="1")
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads((out / "train_config.json").read_text())
    assert record["run"]["num_processes"] == 2
    assert DiscriminativeAdapter.from_pretrained(out / "adapter").config.hidden_size == 32
    evaluation = json.loads((out / "eval.json").read_text())
    assert evaluation["test_id"]["all"]["n_itm_text"] == 6  # both processes' shares, summed
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000002"]


@pytest.mark.parametrize("outcome", ["returns", "raises"])
def test_command_ends_its_process_group(tmp_path, outcome):
    # what keeps a launched process from aborting on its way out (gloo's threads torn down at the interpreter's exit)
    import argparse

    import torch.distributed as dist

    from discadapt.arguments import run_command

    def func(args):
        assert dist.is_initialized()
        if outcome == "raises":
            raise ValueError("bad")
        return 0

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        assert run_command(argparse.Namespace(func=func), "probe") == (0 if outcome == "returns" else 2)
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
