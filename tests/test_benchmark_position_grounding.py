"""benchmarks/position_grounding.py and benchmarks/text_encoder_lora.py (issue 12, the measured reason of the tuned
row): a position embedding in front of the cross-attention blocks, the linear read of the words, the text encoder
tuned with the UNet."""

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import position_grounding  # noqa: E402
import text_encoder_lora  # noqa: E402

from discadapt.testing import tiny_sd_pipeline  # noqa: E402
from discadapt.train import TuneConfig  # noqa: E402
from discadapt.train.engine import run_training  # noqa: E402
from discadapt.worlds.shapes.adapter_data import ShapeWorldItems  # noqa: E402


def test_position_embeddings_start_as_the_model_and_then_place_by_position():
    pipe = tiny_sd_pipeline()
    unet = pipe.unet
    x, t = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0)), torch.tensor([900, 900])
    text = torch.randn(2, 77, unet.config.cross_attention_dim, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = unet(x, t, text).sample
        embeddings = position_grounding.add_position_embeddings(unet)
        assert len(embeddings) == sum(type(m).__name__ == "Transformer2DModel" for m in unet.modules())
        assert torch.equal(unet(x, t, text).sample, before)  # zero-initialised: the same model
        assert all(p.requires_grad for p in embeddings.parameters())
        embed = next(iter(embeddings.values()))
        embed.proj.weight.normal_()
        flat = torch.zeros(1, embed.proj.out_features, 4, 4)
        placed = embed(flat)
        assert not torch.allclose(placed[..., :2], placed[..., 2:])  # left and right halves differ
        assert embed(torch.zeros(1, embed.proj.out_features, 2, 2)).shape[-2:] == (2, 2)  # any resolution
        assert not torch.equal(unet(x, t, text).sample, before)


def test_halves_and_the_linear_read_of_the_words(capsys):
    assert [position_grounding.half_of(b) for b in ([0.25, 0.5, 0.5, 1.0], [0.75, 0.5, 0.5, 1.0])] == [0, 1]
    assert [position_grounding.half_of(b) for b in ([0.5, 0.25, 1.0, 0.5], [0.5, 0.75, 1.0, 0.5])] == [2, 3]
    x = torch.cat([torch.randn(40, 3) + 4 * torch.eye(4, 3)[k] for k in range(4)])  # four separable clusters
    y = torch.arange(4).repeat_interleave(40)
    assert position_grounding.probe_accuracy((x, y), (x, y)) > 0.9
    assert position_grounding.main(["--words", "8"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines[1:]] == ["first", "second", "end"]
    assert all(0 <= float(line.split()[-1]) <= 1 for line in lines[1:])


def test_grounding_run_reports_each_phrase_before_and_after(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["--out", str(out), "--position", "--phrase", "second", "--steps", "2", "--n", "4", "--t", "900"]
    assert position_grounding.main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["before"]) == set(summary["after"]) == {"first", "second"}
    record = json.loads((out / "train_config.json").read_text())
    assert "planned-second" in json.dumps(record)  # the second phrase's half only
    assert "after second" in capsys.readouterr().out


def test_text_encoder_lora_trains_the_text_encoder(tmp_path):
    pipe = tiny_sd_pipeline()
    unet_before = {n: p.clone() for n, p in pipe.unet.named_parameters()}
    config = TuneConfig(steps=2, batch_size=2, lora_rank=2, lora_alpha=2, lora_lr=1e-2, itm_weight=0, rec_weight=0,
                        num_neg_captions=0, num_neg_images=0, random_negatives=False)  # fmt: skip
    objective = text_encoder_lora.TextEncoderTune(pipe, ShapeWorldItems(8, negative_images=False), config)
    objective.text_only = True
    run_training(objective, tmp_path / "run", progress=False)
    lora = {n: p for n, p in pipe.text_encoder.named_parameters() if "lora_B" in n}
    assert lora and all(p.abs().sum() > 0 for p in lora.values())  # B starts at zero: it learnt
    unet_lora = [p for n, p in pipe.unet.named_parameters() if "lora_B" in n]
    assert unet_lora and all(p.abs().sum() == 0 for p in unet_lora)  # text only: the UNet's update stays zero
    assert all(torch.equal(p, unet_before[n]) for n, p in pipe.unet.named_parameters() if n in unet_before)
