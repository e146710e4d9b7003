"""No generation path saves an image computed from NaN or infinite values while reporting success: `generate`
(API and CLI, with and without self-correction), the evaluation runner and `discadapt demo` (API and CLI). The VAE
decoder or the UNet is made to return NaN, as an overflow in float16 or a huge guidance scale would. (A
self-correction step that overflows the pipeline's dtype is skipped: tests/test_self_correction.py.)"""

from __future__ import annotations

import json
import math

import pytest
import torch
from diffusers import AutoencoderKL

from discadapt import DiscriminativeAdapter, SelfCorrectingPipeline
from discadapt.bench import pipeline_method
from discadapt.cli import main
from discadapt.sampling import generate_to_folder
from discadapt.sampling.checks import NonFiniteImageError
from discadapt.testing import tiny_sd_pipeline

PROMPTS = ["a red circle", "a blue square", "a green triangle"]
STEPS = dict(num_inference_steps=2, guidance_scale=5.0)


def _poison_decoder(monkeypatch, calls=None):
    """Make every VAE decode (or the `calls`-th ones, counted from 1) return NaN pixels."""
    decode, count = AutoencoderKL.decode, [0]

    def poisoned(self, z, *args, **kwargs):
        out = decode(self, z, *args, **kwargs)
        count[0] += 1
        if calls is None or count[0] in calls:
            sample = torch.full_like(out[0], math.nan)
            return (sample,) if isinstance(out, tuple) else type(out)(sample=sample)
        return out

    monkeypatch.setattr(AutoencoderKL, "decode", poisoned)


def _pngs(folder):
    return sorted(p.name for p in (folder / "images").glob("*.png")) if (folder / "images").is_dir() else []


def test_generate_writes_the_finite_images_and_names_the_prompt_of_the_others(tmp_path, monkeypatch):
    pipe = tiny_sd_pipeline(seed=0)
    _poison_decoder(monkeypatch, calls={2})  # the second batch: prompt 1
    with pytest.raises(NonFiniteImageError, match=r"the images of 1 prompt\(s\) hold NaN or infinite values "
                       r"\('a blue square'\) and were not saved; lower the guidance"):  # fmt: skip
        generate_to_folder(pipe, PROMPTS, tmp_path, batch_size=1, progress=False, **STEPS)
    assert _pngs(tmp_path) == ["00000-0.png", "00002-0.png"]
    assert sorted(json.loads((tmp_path / "manifest.json").read_text())["images"]) == [
        "images/00000-0.png", "images/00002-0.png"
    ]  # fmt: skip
    lines = [json.loads(line) for line in (tmp_path / "generations.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in lines] == [PROMPTS[0], PROMPTS[2]]
    monkeypatch.undo()  # the decoder works again: the rerun draws the missing prompt only
    calls = []
    counting = lambda **kwargs: calls.append(kwargs["prompt"]) or pipe(**kwargs)  # noqa: E731
    generate_to_folder(counting, PROMPTS, tmp_path, batch_size=1, progress=False, **STEPS)
    assert calls == [[PROMPTS[1]]] and len(_pngs(tmp_path)) == 3


def test_self_correction_with_a_non_finite_unet_saves_nothing(tmp_path, monkeypatch):
    pipe = tiny_sd_pipeline(seed=0)
    torch.manual_seed(0)
    adapter = DiscriminativeAdapter.for_pipeline(pipe, layers="mid_block", hidden_size=32, num_heads=4)
    sc = SelfCorrectingPipeline.from_pipe(pipe, adapter=adapter, correction={"scale": 1.0})
    forward = type(pipe.unet).forward

    def nan_unet(self, *args, **kwargs):
        out = forward(self, *args, **kwargs)
        sample = torch.full_like(out[0], math.nan)
        return (sample,) if isinstance(out, tuple) else type(out)(sample=sample)

    monkeypatch.setattr(type(pipe.unet), "forward", nan_unet)
    with pytest.warns(UserWarning, match="non-finite gradient"), pytest.raises(NonFiniteImageError, match="3 prompt"):
        generate_to_folder(sc, PROMPTS, tmp_path, progress=False, **STEPS)
    assert _pngs(tmp_path) == [] and json.loads((tmp_path / "manifest.json").read_text())["images"] == {}


def test_the_runner_and_the_demo_save_no_non_finite_image(tmp_path, monkeypatch):
    from discadapt.worlds.shapes.demo import run_demo

    pipe = tiny_sd_pipeline(seed=0)
    _poison_decoder(monkeypatch)
    method = pipeline_method(pipe, steps=2)
    with pytest.raises(NonFiniteImageError, match=r"\('a red circle'\)"):
        method(["a red circle"], [0])
    small = dict(categories=["single"], n_prompts=1, images_per_prompt=1, steps=2, progress=False)
    with pytest.raises(NonFiniteImageError, match=r"the images of 1 prompt\(s\) hold NaN"):
        run_demo(pipe, tmp_path / "demo", **small)
    saved = [p.name for p in (tmp_path / "demo").rglob("*") if p.is_file()]
    assert saved == ["manifest.json"]  # the configuration only: no batch of images was saved


@pytest.mark.parametrize("command", ["generate", "generate with self-correction", "demo"])
def test_cli_exits_non_zero_naming_the_prompt(tmp_path, monkeypatch, capsys, command):
    pipe = tiny_sd_pipeline(seed=0)
    pipe.save_pretrained(tmp_path / "pipe")
    (tmp_path / "prompts.txt").write_text("a red circle\n", encoding="utf-8")
    if command == "demo":
        argv = ["demo", "--pipeline", tmp_path / "pipe", "--prompts", tmp_path / "prompts.txt", "--no-probing"]
        argv += ["--images-per-prompt", "1", "--steps", "2", "--no-progress", "--out", tmp_path / "out"]
    else:
        argv = ["generate", "--pipeline", tmp_path / "pipe", "--prompts", tmp_path / "prompts.txt", "--steps", "2"]
        argv += ["--out", tmp_path / "out"]
    if command == "generate with self-correction":
        torch.manual_seed(0)
        DiscriminativeAdapter.for_pipeline(pipe, layers="mid_block", hidden_size=32, num_heads=4).save_pretrained(
            tmp_path / "adapter"
        )
        argv += ["--adapter", tmp_path / "adapter", "--correction-scale", "0.5"]
    _poison_decoder(monkeypatch)
    assert main([str(a) for a in argv]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith(f"discadapt {command.split()[0]}: error: ") and "('a red circle')" in lines[-1]
    assert not any("Traceback" in line for line in lines)
    files = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert not [p for p in files if p.suffix in (".png", ".npz")] and not (tmp_path / "out" / "results.json").exists()
