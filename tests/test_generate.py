import contextlib
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from discadapt import DiscriminativeAdapter, SelfCorrectingPipeline
from discadapt.bench import pipeline_method
from discadapt.cli import main
from discadapt.sampling import (
    StableDiffusionSelfCorrectionPipeline,
    StableDiffusionXLSelfCorrectionPipeline,
    generate_to_folder,
)
from discadapt.sampling.seeds import image_seed
from discadapt.testing import tiny_sd_pipeline, tiny_sdxl_pipeline

PROMPTS = ["a red circle", "a blue square", "two green triangles"]
STEPS = dict(num_inference_steps=3, guidance_scale=5.0)


@pytest.fixture(scope="module")
def pipe():
    return tiny_sd_pipeline(seed=0)


@pytest.fixture(scope="module")
def adapter(pipe):
    torch.manual_seed(0)
    return DiscriminativeAdapter.for_pipeline(pipe, layers="mid_block", hidden_size=32, num_heads=4)


def _images(folder):
    return {p.name: np.asarray(Image.open(p)) for p in sorted((folder / "images").glob("*.png"))}


def test_self_correcting_pipeline(pipe, adapter, tmp_path):
    def run(p, **kwargs):
        return p(PROMPTS[:2], generator=torch.Generator().manual_seed(0), output_type="pt", **STEPS, **kwargs).images

    sc = SelfCorrectingPipeline.from_pipe(pipe, adapter=adapter, correction={"scale": 2.0, "mode": "reuse"})
    assert type(sc) is StableDiffusionSelfCorrectionPipeline and sc.unet is pipe.unet  # shared, as diffusers' from_pipe
    assert sc.components["adapter"] is adapter
    plain, corrected = run(pipe), run(sc)
    assert torch.equal(run(sc, correction_scale=0.0), plain) and not torch.allclose(corrected, plain)
    assert not pipe.unet._forward_hooks and not pipe.unet._forward_pre_hooks  # reuse mode cleaned up
    seen = []
    theirs = lambda p, i, t, kw: seen.append(kw["latents"].clone()) or kw  # noqa: E731
    assert torch.equal(run(sc, callback_on_step_end=theirs, callback_on_step_end_tensor_inputs=["latents"]), corrected)
    assert len(seen) == 3

    # the adapter is a component: it moves with the pipeline, and the moved pipeline still corrects
    moved = sc.to(torch.float64)
    assert moved is sc and sc.adapter.dtype == torch.float64 == sc.unet.dtype
    assert not torch.allclose(run(sc), run(sc, correction_scale=0.0))
    sc.to(torch.float32)

    # saved and loaded with the adapter and the settings
    sc.save_pretrained(tmp_path / "sc")
    back = StableDiffusionSelfCorrectionPipeline.from_pretrained(tmp_path / "sc")
    assert back.config.correction == {"scale": 2.0, "mode": "reuse"} and torch.equal(run(back), corrected)

    without = SelfCorrectingPipeline.from_pipe(pipe)  # no adapter: the base pipeline's images
    assert without.adapter is None and torch.equal(run(without), plain)
    with pytest.raises(ValueError, match="`scale` is -1.0"):
        SelfCorrectingPipeline.from_pipe(pipe, adapter=adapter, correction={"scale": -1.0})
    with pytest.raises(ValueError, match="`prompt` is None; self-correction scores each latent against its prompt"):
        sc(prompt_embeds=torch.zeros(1, 77, 32), num_inference_steps=1)
    with pytest.raises(
        ValueError, match="`pipe` is a str; self-correcting pipelines exist for StableDiffusionPipeline"
    ):
        SelfCorrectingPipeline.from_pipe("sd")


def test_self_correcting_pipeline_with_a_layout_term(pipe, adapter, tmp_path):
    """`layout` adds the layout term (plain `SelfCorrection` by a `LayoutScorer`) after the adapter's correction: a
    prompt without a relation keeps its image, a spatial one moves; it needs no adapter; `layout_scale=0` turns it
    off; it is saved with the pipeline."""
    from diffusers.callbacks import MultiPipelineCallbacks

    from discadapt.sampling import SelfCorrection
    from discadapt.scorers import LayoutScorer

    prompts = ["a red circle", "a blue square to the left of a green triangle"]

    def run(p, **kwargs):
        return p(prompts, generator=torch.Generator().manual_seed(0), output_type="pt", **STEPS, **kwargs).images

    layout = {"scale": 2.0, "start": 0.0, "stop": 1.0, "normalize": "unit"}
    laid = SelfCorrectingPipeline.from_pipe(pipe, layout=layout)
    plain, moved = run(pipe), run(laid)
    assert torch.equal(moved[0], plain[0]) and not torch.allclose(moved[1], plain[1])
    assert torch.equal(run(laid, layout_scale=0.0), plain)
    both = SelfCorrectingPipeline.from_pipe(
        pipe, adapter=adapter, correction={"scale": 2.0, "mode": "reuse"}, layout=layout
    )
    terms = [SelfCorrection(adapter, prompts, scale=2.0, mode="reuse")]
    terms.append(SelfCorrection(LayoutScorer(pipe, prompts), prompts, **layout))
    by_hand = MultiPipelineCallbacks(terms)  # the same two terms as callbacks of the base pipeline, in that order
    torch.testing.assert_close(
        run(both), run(pipe, callback_on_step_end=by_hand, callback_on_step_end_tensor_inputs=["latents"])
    )
    assert not pipe.unet._forward_hooks and "forward" not in vars(pipe.unet)
    laid.save_pretrained(tmp_path / "laid")
    back = StableDiffusionSelfCorrectionPipeline.from_pretrained(tmp_path / "laid")
    assert back.config.layout == layout and torch.equal(run(back), moved)
    with pytest.raises(ValueError, match="mode='reuse' reads the sampler's one UNet pass"):
        SelfCorrectingPipeline.from_pipe(pipe, layout={"mode": "reuse"})
    # `layout_term` builds the term from the setting: `positions` goes to the scorer, the rest to SelfCorrection
    from discadapt.sampling import layout_term

    pairs = layout_term(pipe, ["a cat on the left", prompts[1]], positions=False, scale=0.5, stop=0.6)
    assert pairs.scorer.layouts[0] == [] and len(pairs.scorer.layouts[1]) == 2
    assert pairs.config.scale == 0.5 and pairs.config.stop == 0.6 and pairs.config.mode == "plain"


def test_self_correcting_sdxl_pipeline():
    xl = tiny_sdxl_pipeline(seed=0)
    torch.manual_seed(0)
    adapter = DiscriminativeAdapter.for_pipeline(xl, layers="mid_block", hidden_size=32, num_heads=4)
    sc = SelfCorrectingPipeline.from_pipe(xl, adapter=adapter, correction={"scale": 2.0})
    assert type(sc) is StableDiffusionXLSelfCorrectionPipeline

    def run(p, **kwargs):
        return p(PROMPTS[:2], generator=torch.Generator().manual_seed(0), output_type="pt", **STEPS, **kwargs).images

    assert torch.equal(run(sc, correction_scale=0.0), run(xl)) and not torch.allclose(run(sc), run(xl))


def test_generate_to_folder_is_batch_independent_and_resumable(pipe, tmp_path):
    calls = []

    def counting(**kwargs):
        calls.append(kwargs["prompt"])
        return pipe(**kwargs)

    one = generate_to_folder(
        counting, PROMPTS, tmp_path / "a", images_per_prompt=2, batch_size=1, progress=False, **STEPS
    )
    generate_to_folder(pipe, PROMPTS, tmp_path / "b", images_per_prompt=2, batch_size=3, progress=False, **STEPS)
    a, b = _images(tmp_path / "a"), _images(tmp_path / "b")
    assert sorted(a) == [f"{i:05d}-{k}.png" for i in range(3) for k in range(2)]
    # batch rounding moves a pixel by at most one grey level (as documented), on some CPUs not at all
    assert all(np.abs(a[name].astype(int) - b[name].astype(int)).max() <= 1 for name in a)
    lines = [json.loads(line) for line in (tmp_path / "a" / "generations.jsonl").read_text().splitlines()]
    assert lines == one and lines[3] == {
        "file": "images/00001-1.png",
        "prompt": "a blue square",
        "prompt_index": 1,
        "image": 1,
        "seed": image_seed(0, "a blue square", 1),
    }
    # interrupted run: one image missing; only its prompt is generated again, identically
    (tmp_path / "a" / "images" / "00001-1.png").unlink()
    calls.clear()
    with pytest.warns(UserWarning, match=r"00001-1.png' is missing; drawing it again"):
        generate_to_folder(
            counting, PROMPTS, tmp_path / "a", images_per_prompt=2, batch_size=1, progress=False, **STEPS
        )
    assert calls == [["a blue square"]]
    assert np.array_equal(_images(tmp_path / "a")["00001-1.png"], a["00001-1.png"])
    with pytest.raises(ValueError, match="`prompts` is empty"):
        generate_to_folder(pipe, [], tmp_path / "c")


def test_generate_draws_the_images_of_the_runner(pipe, tmp_path):
    """One seed function: `discadapt generate`'s images are the evaluation runner's (`bench.pipeline_method`, hence
    `discadapt demo`'s) for the same prompt, seed and settings, wherever the prompt stands in the list."""
    generate_to_folder(pipe, PROMPTS, tmp_path, images_per_prompt=2, batch_size=2, seed=7, progress=False, **STEPS)
    runner = pipeline_method(pipe, steps=3, guidance=5.0)
    seeds = [image_seed(7, p, k) for p in PROMPTS for k in range(2)]
    want = runner([p for p in PROMPTS for _ in range(2)], seeds)
    got = _images(tmp_path)
    for j, image in enumerate(want):
        assert np.abs(got[f"{j // 2:05d}-{j % 2}.png"].astype(int) - image.astype(int)).max() <= 1  # batch rounding
    alone = generate_to_folder(pipe, PROMPTS[2:], tmp_path / "alone", seed=7, progress=False, **STEPS)
    assert alone[0]["seed"] == seeds[4]  # the same prompt, first in another list: the same seed
    assert np.abs(_images(tmp_path / "alone")["00000-0.png"].astype(int) - want[4].astype(int)).max() <= 1


def _lora(pipe, folder):
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    unet = tiny_sd_pipeline(seed=0).unet
    unet.add_adapter(LoraConfig(r=4, lora_alpha=8, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    torch.manual_seed(1)
    for name, param in unet.named_parameters():
        if "lora_B" in name:
            param.data.normal_(0, 0.5)
    StableDiffusionPipeline.save_lora_weights(
        folder,
        unet_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(unet)),
        unet_lora_adapter_metadata=unet.peft_config["default"].to_dict(),
    )


def test_cli_generate(pipe, adapter, tmp_path, capsys):
    pipe.save_pretrained(tmp_path / "pipe")
    adapter.save_pretrained(tmp_path / "adapter")
    _lora(pipe, tmp_path / "lora")
    (tmp_path / "prompts.txt").write_text("a red circle  \n\na blue square\n", encoding="utf-8")
    common = [
        "generate",
        "--pipeline",
        str(tmp_path / "pipe"),
        "--prompts",
        str(tmp_path / "prompts.txt"),
        "--steps",
        "3",
    ]
    assert main([*common, "--out", str(tmp_path / "plain")]) == 0
    assert "2 images for 2 prompts" in capsys.readouterr().out
    off = ["--adapter", str(tmp_path / "adapter"), "--correction-scale", "0"]
    assert main([*common, *off, "--out", str(tmp_path / "off")]) == 0
    on = ["--adapter", str(tmp_path / "adapter"), "--correction-scale", "2", "--correction-mode", "reuse",
          "--correction-every", "2"]  # fmt: skip
    assert main([*common, *on, "--out", str(tmp_path / "on")]) == 0
    assert main([*common, "--lora", str(tmp_path / "lora"), "--out", str(tmp_path / "lora_out")]) == 0
    laid = ["--layout-scale", "2", "--layout-start", "0", "--layout-stop", "1"]
    assert main([*common, *laid, "--out", str(tmp_path / "laid")]) == 0  # the layout term alone: no adapter
    manifest = json.loads((tmp_path / "laid" / "manifest.json").read_text())
    assert manifest["settings"]["layout"] == {"scale": 2.0, "start": 0.0, "stop": 1.0, "normalize": "unit",
                                              "positions": True}  # fmt: skip
    # these prompts have no relation: the term leaves their images as they are
    assert all(np.array_equal(_images(tmp_path / "plain")[k], v) for k, v in _images(tmp_path / "laid").items())
    plain, off_images = _images(tmp_path / "plain"), _images(tmp_path / "off")
    assert list(plain) == ["00000-0.png", "00001-0.png"]
    assert all(np.array_equal(plain[k], off_images[k]) for k in plain)
    assert not all(np.array_equal(plain[k], v) for k, v in _images(tmp_path / "on").items())
    assert not all(np.array_equal(plain[k], v) for k, v in _images(tmp_path / "lora_out").items())


def test_cli_generate_errors(tmp_path, capsys):
    (tmp_path / "prompts.txt").write_text("a red circle\n", encoding="utf-8")
    base = ["generate", "--tiny", "--out", str(tmp_path / "out")]
    assert main([*base, "--prompts", str(tmp_path / "prompts.txt"), "--correction-scale", "1"]) == 2
    assert "needs both --adapter DIR and --correction-scale X" in capsys.readouterr().err
    assert (
        main([*base, "--prompts", str(tmp_path / "prompts.txt"), "--layout-scale", "1", "--layout-start", "0.7"]) == 2
    )
    assert "--layout-start 0.7, --layout-stop 0.6" in capsys.readouterr().err
    assert main([*base, "--prompts", str(tmp_path / "missing.txt")]) == 2
    assert "missing.txt" in capsys.readouterr().err


# ---- resume: a manifest of settings and finished images, verified files, refusals --------------------------------


def _bytes(folder):
    return {p.name: p.read_bytes() for p in sorted((folder / "images").glob("*.png"))}


def test_generate_resume_refuses_other_settings_and_prompts_and_never_relabels(pipe, tmp_path):
    out = tmp_path / "out"
    records = generate_to_folder(pipe, PROMPTS[:2], out, progress=False, **STEPS)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["settings"]["pipe_kwargs"] == STEPS and set(manifest["images"]) == {r["file"] for r in records}
    before, jsonl = _bytes(out), (out / "generations.jsonl").read_text()
    refusals = {
        "steps": (
            dict(PROMPTS=PROMPTS[:2], num_inference_steps=4),
            r"other settings \(pipe_kwargs.num_inference_steps: 3 there, 4 now\)",
        ),
        "seed": (dict(PROMPTS=PROMPTS[:2], seed=1), r"other settings \(seed: 0 there, 1 now\); pass another `out`"),
        "images": (dict(PROMPTS=PROMPTS[:2], images_per_prompt=2), r"images_per_prompt: 1 there, 2 now"),
        "caller": (dict(PROMPTS=PROMPTS[:2], settings={"lora": "x"}), r"lora: None there, 'x' now"),
        "prompts": (
            dict(PROMPTS=[PROMPTS[0], "a green circle"]),
            r"holds images/00001-0.png of prompt 'a blue square', but prompt 'a green circle' now stands at its",
        ),
    }  # fmt: skip
    for name, (change, match) in refusals.items():
        kwargs = {**STEPS, **change}
        prompts = kwargs.pop("PROMPTS")
        with pytest.raises(ValueError, match=match):
            generate_to_folder(pipe, prompts, out, progress=False, **kwargs)
        assert _bytes(out) == before and (out / "generations.jsonl").read_text() == jsonl, name
    # adding a prompt at the end continues the folder, drawing only the new prompt
    calls = []
    counting = lambda **kwargs: calls.append(kwargs["prompt"]) or pipe(**kwargs)  # noqa: E731
    more = generate_to_folder(counting, PROMPTS, out, progress=False, **STEPS)
    assert calls == [[PROMPTS[2]]] and len(more) == 3 and {k: _bytes(out)[k] for k in before} == before
    # a folder written without a manifest (an older discadapt) is refused, not relabelled
    (out / "manifest.json").unlink()
    with pytest.raises(ValueError, match=r"holds images but no manifest.json .*; pass another `out` folder"):
        generate_to_folder(pipe, PROMPTS, out, progress=False, **STEPS)
    (out / "manifest.json").write_text("{", encoding="utf-8")
    with pytest.raises(ValueError, match=r"manifest.json' cannot be read \(JSONDecodeError"):
        generate_to_folder(pipe, PROMPTS, out, progress=False, **STEPS)


@pytest.mark.parametrize("damage", ["zero bytes", "truncated", "not in the manifest"])
def test_generate_redraws_damaged_images(pipe, tmp_path, damage):
    out = tmp_path / "out"
    generate_to_folder(pipe, PROMPTS[:2], out, progress=False, **STEPS)
    before = _bytes(out)
    path = out / "images" / "00001-0.png"
    if damage == "zero bytes":
        path.write_bytes(b"")
        warning = r"00001-0.png' has 0 bytes and another sha256 than manifest.json records; drawing it again"
    elif damage == "truncated":
        path.write_bytes(before["00001-0.png"][:-40])
        warning = r"00001-0.png' has \d+ bytes and another sha256"
    else:  # killed after the image was written, before the manifest was: the file is not trusted
        manifest = json.loads((out / "manifest.json").read_text())
        del manifest["images"]["images/00001-0.png"]
        (out / "manifest.json").write_text(json.dumps(manifest))
        path.write_bytes(b"garbage")
        warning = None
    calls = []
    counting = lambda **kwargs: calls.append(kwargs["prompt"]) or pipe(**kwargs)  # noqa: E731
    with pytest.warns(UserWarning, match=warning) if warning else contextlib.nullcontext():
        generate_to_folder(counting, PROMPTS[:2], out, progress=False, **STEPS)
    assert calls == [[PROMPTS[1]]] and _bytes(out) == before


def test_generate_checks_sampler_settings_before_any_work(pipe, tmp_path):
    for kwargs, match in [
        (dict(guidance_scale=math.inf), r"`guidance_scale` is inf; pass a finite number >= 0"),
        (dict(guidance_scale=math.nan), r"`guidance_scale` is nan; pass a finite number >= 0"),
        (dict(guidance_scale=-1.0), r"`guidance_scale` is -1.0; pass a finite number >= 0 .*values <= 1 turn"),
        (dict(num_inference_steps=0), r"`num_inference_steps` is 0; pass an int >= 1"),
        (dict(num_inference_steps=-1), r"`num_inference_steps` is -1; pass an int >= 1"),
        (dict(output_type="pil"), r"`output_type` is set by `generate_to_folder`"),
    ]:
        with pytest.raises(ValueError, match=match):
            generate_to_folder(pipe, PROMPTS, tmp_path / "out", progress=False, **kwargs)
    assert not (tmp_path / "out").exists()
