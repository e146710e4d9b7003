"""Bad inputs a new user or a hostile tester would try: each gives a ValueError that names the argument (or path)
and the fix, before any work, and nothing is computed from a wrong or non-finite input."""

import functools
import math
import re

import numpy as np
import PIL.Image
import pytest
import torch

from discadapt import DiscriminativeAdapter, denoising_score, itm_score
from discadapt.scorers import AdapterScorer
from discadapt.testing import tiny_sd_pipeline

PROMPTS = ["a red circle", "a blue square"]


@pytest.fixture(scope="module")
def pipe():
    return tiny_sd_pipeline(seed=0)


@pytest.fixture(scope="module")
def adapter(pipe):
    torch.manual_seed(0)
    return DiscriminativeAdapter.for_pipeline(pipe, layers="mid_block", hidden_size=32, num_heads=4)


def _images(n=2, size=64):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(0))


SHIFTED = _images() - 0.5
NAN = _images().index_fill(0, torch.tensor([1]), math.nan)
SCORING = {
    # name: (keyword arguments of itm_score / denoising_score, expected message)
    "pixels 0-255": (dict(images_or_latents=_images() * 255), r"pixels in \[.*\]; pass images in \[0, 1\] \(it looks"),
    "negative pixels": (dict(images_or_latents=SHIFTED), r"pixels in \[-0\.\d+, .*\]; pass images in \[0, 1\]\.$"),
    "NaN pixels": (dict(images_or_latents=NAN), "NaN or infinite pixels"),
    "NaN latents": (dict(images_or_latents=torch.full((2, 4, 8, 8), math.nan)), "NaN or infinite latents"),
    "int tensor": (dict(images_or_latents=(_images() * 255).int()), "is a torch.int32 tensor; pass floats in"),
    "prompts None": (dict(prompts=None), r"`prompts` is None; pass a string or a list of strings"),
    "prompts int": (dict(prompts=3), r"`prompts` is 3; pass a string or a list of strings"),
    "prompt list with int": (dict(prompts=["a red circle", 7]), r"`prompts` is \['a red circle', 7\]"),
    "t string": (dict(t="500"), r"`t` is '500'; pass one or more integer timesteps in \[0, 999\], e.g. t=500"),
    "t float": (dict(t=500.5), r"`t` is 500.5; pass one or more integer timesteps"),
    "t bool": (dict(t=True), r"`t` is True; pass one or more integer timesteps"),
    "t object": (dict(t=object()), r"`t` is <object object .*>; pass one or more integer timesteps"),
    "batch_size 0": (dict(batch_size=0), r"`batch_size` is 0; pass an int >= 1 or None"),
    "batch_size -2": (dict(batch_size=-2), r"`batch_size` is -2; pass an int >= 1 or None"),
    "batch_size 1.5": (dict(batch_size=1.5), r"`batch_size` is 1.5; pass an int >= 1 or None"),
}  # fmt: skip


@pytest.mark.parametrize("case", SCORING)
@pytest.mark.parametrize("score", ["itm", "denoising"])
def test_scoring_inputs(pipe, adapter, case, score):
    kwargs, match = SCORING[case]
    call = {"images_or_latents": _images(), "prompts": PROMPTS, **kwargs}
    with pytest.raises(ValueError, match=match):
        if score == "itm":
            itm_score(pipe, adapter, **call)
        else:
            denoising_score(pipe, **call)


@pytest.mark.parametrize("value", [0, -3, 2.0, None])
def test_num_timesteps(pipe, value):
    with pytest.raises(ValueError, match=rf"`num_timesteps` is {value!r}; pass an int >= 1"):
        denoising_score(pipe, _images(), PROMPTS, num_timesteps=value)


def test_adapter_that_is_not_one_or_is_broken(pipe, adapter):
    with pytest.raises(ValueError, match=r"`adapter` is a object; pass a DiscriminativeAdapter"):
        itm_score(pipe, object(), _images(), PROMPTS)
    broken = DiscriminativeAdapter.for_pipeline(pipe, layers="mid_block", hidden_size=32, num_heads=4)
    with torch.no_grad():
        broken.itm_head.weight[0, 0] = math.nan
    with pytest.raises(ValueError, match=r"The adapter's weight 'itm_head.weight' holds NaN or infinite values"):
        itm_score(pipe, broken, _images(), PROMPTS)


def test_odd_image_formats_are_converted(pipe, adapter):
    """uint8 tensors are pixels in 0-255; grayscale, RGBA and palette PIL images are converted to RGB."""
    pixels = _images()
    as_uint8 = (pixels * 255).round().to(torch.uint8)
    torch.testing.assert_close(
        itm_score(pipe, adapter, as_uint8, PROMPTS), itm_score(pipe, adapter, as_uint8.float() / 255, PROMPTS)
    )
    rgb = [PIL.Image.fromarray(a) for a in as_uint8.permute(0, 2, 3, 1).numpy()]
    for mode in ("L", "RGBA", "P"):
        converted = [image.convert(mode) for image in rgb]
        want = itm_score(pipe, adapter, [image.convert("RGB") for image in converted], PROMPTS)
        torch.testing.assert_close(itm_score(pipe, adapter, converted, PROMPTS), want)
    scorer = AdapterScorer(pipe, adapter)  # uint8 (N, H, W, 3) arrays, as the shapes world draws them
    array = np.ascontiguousarray(as_uint8.permute(0, 2, 3, 1).numpy())
    torch.testing.assert_close(scorer.score(array, PROMPTS), itm_score(pipe, adapter, as_uint8, PROMPTS))


def test_long_prompts_warn(pipe, adapter):
    long = " ".join(["red"] * 100)
    with pytest.warns(UserWarning, match=r"1 prompt\(s\) exceed the text encoder's 77 tokens and are truncated"):
        itm_score(pipe, adapter, _images(), [long, "a blue square"])


# ---- the rest of the API: generation, loading, data, configuration ---------------------------------------------


@pytest.fixture(scope="module")
def folders(pipe, adapter, tmp_path_factory):
    """Saved folders to break: a pipeline, a pickled-only pipeline, an adapter, a LoRA, a pickled-only LoRA, images."""
    root = tmp_path_factory.mktemp("folders")
    pipe.save_pretrained(root / "pipe")
    pipe.save_pretrained(root / "pickled", safe_serialization=False)
    adapter.save_pretrained(root / "adapter")
    (root / "empty").mkdir()
    (root / "lora-pickled").mkdir()
    (root / "lora-pickled" / "pytorch_lora_weights.bin").write_bytes(b"pickle")
    (root / "file.txt").write_text("not a folder", encoding="utf-8")
    images = root / "images"
    images.mkdir()
    for k, color in enumerate(("red", "blue")):
        PIL.Image.new("RGB", (64, 64), color).save(images / f"{k}.png")
    good = (images / "0.png").read_bytes()
    (images / "truncated.png").write_bytes(good[: len(good) // 2])
    (images / "garbage.png").write_bytes(b"not an image at all")
    return root


def _adapter_config(folders, tmp, change):
    """A copy of the saved adapter whose config.json is changed by `change(config)`."""
    import json
    import shutil

    target = tmp / "adapter"
    shutil.copytree(folders / "adapter", target)
    config = json.loads((target / "config.json").read_text())
    text = change(config)  # changes `config` in place, or returns the file's new text
    (target / "config.json").write_text(text if isinstance(text, str) else json.dumps(config))
    return target


def _captioned(tmp, lines: str | bytes, images=("0.png",), folders=None):
    import shutil

    for name in images:
        shutil.copy(folders / "images" / name, tmp / name)
    path = tmp / "captions.txt"
    path.write_bytes(lines if isinstance(lines, bytes) else lines.encode("utf-8"))
    return tmp


def _coco(tmp, file_name, folders):
    import json

    (tmp / "img").mkdir(exist_ok=True)
    PIL.Image.new("RGB", (8, 8)).save(tmp / "img" / "a.png")
    data = {"images": [{"id": 1, "file_name": file_name}], "annotations": [{"id": 5, "image_id": 1, "caption": "x"}]}
    (tmp / "coco.json").write_text(json.dumps(data))
    return tmp / "coco.json", tmp / "img"


def _generate(pipe, tmp, **kwargs):
    from discadapt.sampling import generate_to_folder

    args = {"num_inference_steps": 2, "progress": False, **kwargs}
    prompts = args.pop("prompts", PROMPTS)
    return generate_to_folder(pipe, prompts, args.pop("out", tmp / "out"), **args)


def _load_pipeline(folders, tmp, name):
    from discadapt.loading import load_pipeline

    return load_pipeline(folders / name if isinstance(name, str) else name(folders, tmp))


def _load_lora(pipe, folders, tmp, path):
    from discadapt.loading import load_lora

    return load_lora(tiny_sd_pipeline(seed=0), path(folders, tmp))


def _without_unet(folders, tmp):
    import shutil

    shutil.copytree(folders / "pipe", tmp / "p")
    shutil.rmtree(tmp / "p" / "unet")
    return tmp / "p"


def _self_correction(pipe, adapter, given, drawn, images_per_prompt=1):
    from discadapt.sampling import SelfCorrection

    fix = SelfCorrection(adapter, prompt=given, scale=0.5)
    pipe(
        drawn,
        num_inference_steps=2,
        num_images_per_prompt=images_per_prompt,
        callback_on_step_end=fix,
        callback_on_step_end_tensor_inputs=fix.tensor_inputs,
        output_type="latent",
    )


def _probe_config(**kwargs):
    from discadapt.train import ProbeConfig

    return ProbeConfig(**kwargs)


def _latent_cache(pipe, folders, tmp):
    from discadapt.train import LatentCache

    images = [PIL.Image.open(folders / "images" / f"{k}.png").convert("RGB") for k in range(2)]
    LatentCache.build(pipe, images, tmp / "cache", batch_size=2, shard_size=1)
    shard = tmp / "cache" / "latents-00001.safetensors"
    shard.write_bytes(shard.read_bytes()[:-16])
    return LatentCache(tmp / "cache")


API = {
    # name: (call(pipe, adapter, folders, tmp), expected message); each a ValueError
    "generate guidance inf": (
        lambda p, a, f, t: _generate(p, t, guidance_scale=math.inf),
        r"`guidance_scale` is inf; pass a finite number >= 0 \(classifier-free guidance scale",
    ),
    "generate guidance NaN": (
        lambda p, a, f, t: _generate(p, t, guidance_scale=math.nan),
        r"`guidance_scale` is nan; pass a finite number",
    ),
    "generate guidance negative": (
        lambda p, a, f, t: _generate(p, t, guidance_scale=-3),
        r"`guidance_scale` is -3; pass a finite number >= 0",
    ),
    "generate steps 0": (
        lambda p, a, f, t: _generate(p, t, num_inference_steps=0),
        r"`num_inference_steps` is 0; pass an int >= 1",
    ),
    "generate steps -1": (
        lambda p, a, f, t: _generate(p, t, num_inference_steps=-1),
        r"`num_inference_steps` is -1; pass an int >= 1",
    ),
    "generate images_per_prompt 0": (
        lambda p, a, f, t: _generate(p, t, images_per_prompt=0),
        r"`images_per_prompt` is 0; pass an int >= 1",
    ),
    "generate batch_size 0": (lambda p, a, f, t: _generate(p, t, batch_size=0), r"`batch_size` is 0; pass an int"),
    "generate prompts None": (lambda p, a, f, t: _generate(p, t, prompts=None), r"`prompts` is None; pass a list"),
    "generate out a file": (
        lambda p, a, f, t: _generate(p, t, out=f / "file.txt"),
        r"`out` is '.*file.txt', which is a file; pass a",
    ),
    "pipeline_method steps 0": (
        lambda p, a, f, t: __import__("discadapt.bench", fromlist=["x"]).pipeline_method(p, steps=0),
        r"`steps` is 0; pass an int >= 1",
    ),
    "pipeline_method guidance NaN": (
        lambda p, a, f, t: __import__("discadapt.bench", fromlist=["x"]).pipeline_method(p, guidance=math.nan),
        r"`guidance` is nan; pass a finite number >= 0",
    ),
    "adapter folder missing": (
        lambda p, a, f, t: DiscriminativeAdapter.from_pretrained(t / "nowhere"),
        r"no adapter at '.*nowhere': no such folder; pass the folder save_pretrained wrote",
    ),
    "adapter path a file": (
        lambda p, a, f, t: DiscriminativeAdapter.from_pretrained(f / "file.txt"),
        r"no adapter at '.*file.txt': it is a file; pass the folder",
    ),
    "adapter config lacks a key": (
        lambda p, a, f, t: DiscriminativeAdapter.from_pretrained(_adapter_config(f, t, lambda c: c.pop("text_dim"))),
        r"config.json lacks 'text_dim' \(required: layers, in_channels, text_dim, token_dim\); save the adapter again",
    ),
    "adapter config wrong type": (
        lambda p, a, f, t: DiscriminativeAdapter.from_pretrained(
            _adapter_config(f, t, lambda c: c.update(hidden_size="32"))
        ),
        r"config.json has 'hidden_size': '32'; it must be an int. Fix the file, or save the adapter again",
    ),
    "adapter config layers a string": (
        lambda p, a, f, t: DiscriminativeAdapter.from_pretrained(
            _adapter_config(f, t, lambda c: c.update(layers="mid_block"))
        ),
        r"config.json has 'layers': 'mid_block'; it must be a list of str",
    ),
    "adapter config not JSON": (
        lambda p, a, f, t: DiscriminativeAdapter.from_pretrained(_adapter_config(f, t, lambda c: '{"layers": [')),
        r"config.json cannot be read \(.*\); save the adapter again",
    ),
    "self-correction one prompt, pipeline three": (
        lambda p, a, f, t: _self_correction(p, a, "a red circle", ["a red circle", "a blue square", "a green cube"]),
        r"given 1 prompt\(s\), but the pipeline's 3 latents come from 3 different prompt\(s\) .* pass SelfCorrection "
        "the same `prompt` list",
    ),
    "self-correction prompts in another order": (
        lambda p, a, f, t: _self_correction(p, a, ["x", "y", "x"], ["a", "a", "b"]),
        r"given 3 prompt\(s\), but the pipeline's 3 latents come from 2 different prompt\(s\)",
    ),
    "pipeline folder empty": (
        lambda p, a, f, t: _load_pipeline(f, t, "empty"),
        r"`--pipeline` '.*empty' has no model_index.json \(it holds nothing\); pass a diffusers pipeline folder",
    ),
    "pipeline folder missing": (
        lambda p, a, f, t: _load_pipeline(f, t, "nowhere"),
        r"`--pipeline` is '.*nowhere', which is not an existing folder; pass a diffusers pipeline folder",
    ),
    "pipeline pickled weights only": (
        lambda p, a, f, t: _load_pipeline(f, t, "pickled"),
        r"`--pipeline` '.*pickled/(text_encoder|unet|vae)' holds only pickled weights \(.*\.bin\); discadapt loads "
        "safetensors only",
    ),
    "pipeline lacks a component folder": (
        lambda p, a, f, t: _load_pipeline(f, t, _without_unet),
        r"lacks the folder unet/ that its model_index.json lists; copy the whole pipeline folder",
    ),
    "lora missing": (
        lambda p, a, f, t: _load_lora(p, f, t, lambda f, t: t / "nowhere"),
        r"`--lora` is '.*nowhere', which does not exist; pass the folder `save_lora_weights` wrote",
    ),
    "lora pickled only": (
        lambda p, a, f, t: _load_lora(p, f, t, lambda f, t: f / "lora-pickled"),
        r"`--lora` '.*lora-pickled' holds only pickled weights \(pytorch_lora_weights.bin\); discadapt loads LoRA",
    ),
    "lora a .bin file": (
        lambda p, a, f, t: _load_lora(p, f, t, lambda f, t: f / "lora-pickled" / "pytorch_lora_weights.bin"),
        r"`--lora` is '.*pytorch_lora_weights.bin', not a .safetensors file; discadapt loads LoRA weights from",
    ),
    "lora folder without weights": (
        lambda p, a, f, t: _load_lora(p, f, t, lambda f, t: f / "empty"),
        r"`--lora` '.*empty' holds no .safetensors file; pass the folder `save_lora_weights` wrote",
    ),
    "captions not UTF-8": (
        lambda p, a, f, t: __import__("discadapt.data", fromlist=["x"]).CaptionedFolder(
            _captioned(t, "0.png\tun caf\xe9\n".encode("latin-1"), folders=f)
        ),
        r"`captions` '.*captions.txt' is not UTF-8 text \(.*\); save the captions file as UTF-8",
    ),
    "empty caption": (
        lambda p, a, f, t: __import__("discadapt.data", fromlist=["x"]).CaptionedFolder(
            _captioned(t, "0.png\ta red square\n1.png\t  \n", images=("0.png", "1.png"), folders=f)
        ),
        r"gives 1 image\(s\) an empty caption \(e.g. '1.png'\); write a caption for each, or remove their lines",
    ),
    "truncated image in a training set": (
        lambda p, a, f, t: __import__("discadapt.data", fromlist=["x"]).CaptionedFolder(
            _captioned(t, "truncated.png\ta red square\n", images=("truncated.png",), folders=f)
        )[0],
        r"image '.*truncated.png' cannot be read \(OSError: image file is truncated.*\); replace the file, or remove",
    ),
    "garbage image in a training set": (
        lambda p, a, f, t: __import__("discadapt.data", fromlist=["x"]).CaptionedFolder(
            _captioned(t, "garbage.png\ta red square\n", images=("garbage.png",), folders=f)
        )[0],
        r"image '.*garbage.png' cannot be read \(UnidentifiedImageError: .*\); replace the file",
    ),
    "COCO file_name escaping the root": (
        lambda p, a, f, t: __import__("discadapt.data", fromlist=["x"]).CocoCaptions(*_coco(t, "../secret.png", f)),
        r"`annotations` lists the image '../secret.png', which escapes the image root '.*img'; image names must be "
        "relative",
    ),
    "COCO absolute file_name": (
        lambda p, a, f, t: __import__("discadapt.data", fromlist=["x"]).CocoCaptions(*_coco(t, "/etc/passwd", f)),
        r"lists the image '/etc/passwd', which escapes the image root",
    ),
    "COCO file_name escaping through a subfolder": (
        lambda p, a, f, t: __import__("discadapt.data", fromlist=["x"]).CocoCaptions(*_coco(t, "x/../../a.png", f)),
        r"lists the image 'x/../../a.png', which escapes the image root",
    ),
    "truncated latent-cache shard": (
        lambda p, a, f, t: _latent_cache(p, f, t),
        r"shard '.*latents-00001.safetensors' of the latent cache is damaged \(.*\); run `LatentCache.build` again",
    ),
    "adapter_config unknown key": (
        lambda p, a, f, t: _probe_config(adapter_config={"hidden": 32}),
        r"`adapter_config` has unknown key\(s\) 'hidden'; the adapter's arguments are hidden_size, num_heads",
    ),
}


@pytest.mark.parametrize("case", API)
def test_api_inputs(pipe, adapter, folders, tmp_path, case):
    call, match = API[case]
    with pytest.raises(ValueError, match=match):
        call(pipe, adapter, folders, tmp_path)


def test_self_correction_accepts_the_pipeline_prompts(pipe, adapter):
    """The prompt check refuses only mismatches: one prompt with several images, repeats and CFG pass."""
    _self_correction(pipe, adapter, "a red circle", "a red circle", images_per_prompt=3)
    _self_correction(pipe, adapter, ["a", "b", "a"], ["a", "b", "a"])


def test_damaged_latent_cache_shard_is_encoded_again(pipe, folders, tmp_path):
    from discadapt.train import LatentCache

    images = [PIL.Image.open(folders / "images" / f"{k}.png").convert("RGB") for k in range(2)]
    first = LatentCache.build(pipe, images, tmp_path, batch_size=1, shard_size=1)
    want = [first[k].clone() for k in range(2)]
    shard = tmp_path / "latents-00001.safetensors"
    shard.write_bytes(shard.read_bytes()[:-16])
    with pytest.warns(UserWarning, match=r"shard '.*latents-00001.safetensors' is damaged \(.*\); encoding it again"):
        again = LatentCache.build(pipe, images, tmp_path, batch_size=1, shard_size=1)
    assert all(torch.equal(again[k], want[k]) for k in range(2))


# ---- the command line: one clean error line, a non-zero exit code, before any work -------------------------------


def _cli(argv, capsys) -> tuple[int, list[str]]:
    """Exit code and stderr lines of `discadapt argv` (usage errors exit through SystemExit)."""
    from discadapt.cli import main

    try:
        code = main([str(a) for a in argv])
    except SystemExit as stop:
        code = stop.code
    return code, capsys.readouterr().err.strip().splitlines()


@pytest.fixture
def files(folders, tmp_path):
    """Prompt files, a captions folder with an empty caption and a COCO file escaping its root, per test."""
    (tmp_path / "prompts.txt").write_text("a red circle\n", encoding="utf-8")
    (tmp_path / "latin1.txt").write_bytes("un caf\xe9\n".encode("latin-1"))
    (tmp_path / "captioned").mkdir()
    _captioned(tmp_path / "captioned", "0.png\t\n", folders=folders)
    coco, img = _coco(tmp_path, "../0.png", folders)
    return {"tmp": tmp_path, "prompts": tmp_path / "prompts.txt", "coco": coco, "img": img}


GEN = ["generate", "--tiny", "--steps", "2"]
CLI = {
    # name: (arguments (strings; {tmp}, {prompts}, {folders}, {coco}, {img} filled in), exit code, message)
    "demo --out a file": (
        ["demo", "--quick", "--out", "{folders}/file.txt"], 2,
        r"discadapt demo: error: `--out` is '.*file.txt', which is a file; pass a folder \(it is created\)\.$",
    ),
    "generate --out a file": (
        [*GEN, "--prompts", "{prompts}", "--out", "{folders}/file.txt"], 2, r"`--out` is '.*file.txt', which is a file",
    ),
    "generate --out below a file": (
        [*GEN, "--prompts", "{prompts}", "--out", "{folders}/file.txt/out"], 2,
        r"`--out` is '.*file.txt/out', but '.*file.txt' is a file; pass a path under a folder",
    ),
    "world train --out a file": (
        ["world", "train", "--tiny", "--out", "{folders}/file.txt"], 2,
        r"discadapt world train: error: `--out` is '.*file.txt', which is a file",
    ),
    "world bundle --dest a file": (
        ["world", "bundle", "--probe", "{tmp}", "--dest", "{folders}/file.txt"], 2,
        r"discadapt world bundle: error: `--dest` is '.*file.txt', which is a file",
    ),
    "world bundle --augment not a loop": (
        ["world", "bundle", "--augment", "{tmp}", "--dest", "{tmp}/w"], 2,
        r"discadapt world bundle: error: .*augment.json is missing: pass the folder of an interaction loop run\.$",
    ),
    "world bundle --rounds 0": (
        ["world", "bundle", "--augment", "{tmp}", "--rounds", "0"], 2,
        r"discadapt world bundle: error: argument --rounds: 0 is below 1",
    ),
    "generate --device gpu": (
        [*GEN, "--prompts", "{prompts}", "--out", "{tmp}/o", "--device", "gpu"], 2,
        r"`--device` is 'gpu', not a torch device; pass e.g. cpu, cuda or cuda:1\.$",
    ),
    "generate --device cuda without CUDA": (
        [*GEN, "--prompts", "{prompts}", "--out", "{tmp}/o", "--device", "cuda"], 2,
        r"`--device` is 'cuda', but torch finds no CUDA device on this machine; pass --device cpu\.$",
    ),
    "demo --device cuda without CUDA": (
        ["demo", "--quick", "--out", "{tmp}/o", "--device", "cuda"], 2, r"discadapt demo: error: `--device` is 'cuda'",
    ),
    "world train --threads -1": (
        ["world", "train", "--tiny", "--out", "{tmp}/o", "--threads", "-1"], 2,
        r"discadapt world train: error: argument --threads: -1 is below 0; pass an int >= 0; see `discadapt world",
    ),
    "inspect --size -8": (
        ["inspect", "--tiny", "--size", "-8"], 2,
        r"discadapt inspect: error: argument --size: -8 is below 1; pass an int >= 1; see `discadapt inspect --help`",
    ),
    "inspect --size x": (["inspect", "--tiny", "--size", "x"], 2, r"argument --size: 'x' is not an integer"),
    "inspect --pipeline an empty folder": (
        ["inspect", "--pipeline", "{folders}/empty"], 2,
        r"discadapt inspect: error: `--pipeline` '.*empty' has no model_index.json \(it holds nothing\)",
    ),
    "generate --pipeline pickled weights": (
        ["generate", "--pipeline", "{folders}/pickled", "--prompts", "{prompts}", "--out", "{tmp}/o"], 2,
        r"holds only pickled weights \(.*\); discadapt loads safetensors only, as unpickling a file can run code",
    ),
    "generate --lora missing": (
        [*GEN, "--prompts", "{prompts}", "--out", "{tmp}/o", "--lora", "{tmp}/nowhere"], 2,
        r"discadapt generate: error: `--lora` is '.*nowhere', which does not exist",
    ),
    "generate --adapter missing": (
        [*GEN, "--prompts", "{prompts}", "--out", "{tmp}/o", "--adapter", "{tmp}/nowhere", "--correction-scale", "1"],
        2, r"no adapter at '.*nowhere': no such folder",
    ),
    "generate --guidance inf": (
        [*GEN, "--prompts", "{prompts}", "--out", "{tmp}/o", "--guidance", "inf"], 2,
        r"argument --guidance: inf is not a finite number >= 0",
    ),
    "generate --guidance nan": (
        [*GEN, "--prompts", "{prompts}", "--out", "{tmp}/o", "--guidance", "nan"], 2,
        r"argument --guidance: nan is not a finite number >= 0",
    ),
    "generate --guidance -1": (
        [*GEN, "--prompts", "{prompts}", "--out", "{tmp}/o", "--guidance", "-1"], 2,
        r"argument --guidance: -1 is not a finite number >= 0",
    ),
    "generate --steps -1": (
        [*GEN, "--prompts", "{prompts}", "--out", "{tmp}/o", "--steps", "-1"], 2, r"argument --steps: -1 is below 1",
    ),
    "generate --seed -1": (
        [*GEN, "--prompts", "{prompts}", "--out", "{tmp}/o", "--seed", "-1"], 2, r"argument --seed: -1 is below 0",
    ),
    "generate --correction-scale x": (
        [*GEN, "--prompts", "{prompts}", "--out", "{tmp}/o", "--correction-scale", "x"], 2,
        r"argument --correction-scale: 'x' is not a number",
    ),
    "generate --correction-stop 2": (
        [*GEN, "--prompts", "{prompts}", "--out", "{tmp}/o", "--adapter", "{folders}/adapter", "--correction-scale",
         "1", "--correction-stop", "2"], 2, r"--correction-stop 2.0; pass 0 <= start <= stop <= 1\.$",
    ),
    "generate --correction-every 0": (
        [*GEN, "--prompts", "{prompts}", "--out", "{tmp}/o", "--correction-every", "0"], 2,
        r"argument --correction-every: 0 is below 1",
    ),
    "generate --prompts not UTF-8": (
        [*GEN, "--prompts", "{tmp}/latin1.txt", "--out", "{tmp}/o"], 2,
        r"`path` '.*latin1.txt' is not UTF-8 text \(.*\); save the prompt file as UTF-8",
    ),
    "probe --adapter-config unknown key": (
        ["probe", "--tiny", "--out", "{tmp}/run", "--adapter-config", '{"hiden_size": 8}'], 2,
        r"discadapt probe: error: `adapter_config` has unknown key\(s\) 'hiden_size'; the adapter's arguments are",
    ),
    "probe --adapter-config not JSON": (
        ["probe", "--tiny", "--out", "{tmp}/run", "--adapter-config", "{hidden_size: 8}"], 2,
        r"`--adapter-config` is '\{hidden_size: 8\}', not valid JSON \(.*\); pass a JSON object",
    ),
    "probe --folder with an empty caption": (
        ["probe", "--tiny", "--out", "{tmp}/run", "--folder", "{tmp}/captioned"], 2,
        r"discadapt probe: error: `captions` '.*captions.txt' gives 1 image\(s\) an empty caption \(e.g. '0.png'\)",
    ),
    "tune --captions escaping the image root": (
        ["tune", "--tiny", "--out", "{tmp}/run", "--captions", "{coco}", "--images", "{img}"], 2,
        r"discadapt tune: error: `annotations` lists the image '../0.png', which escapes the image root",
    ),
    "generate into a folder of other settings": (
        [*GEN, "--prompts", "{prompts}", "--out", "{tmp}/o", "--seed", "3"], 2,
        r"`out` '.*o' holds images generated with other settings \(seed: 0 there, 3 now\); pass another `out` folder",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", CLI)
def test_cli_inputs(folders, files, capsys, monkeypatch, case):
    import time

    argv, code, match = CLI[case]
    fill = {"{folders}": str(folders), **{f"{{{k}}}": str(v) for k, v in files.items()}}
    argv = [functools.reduce(lambda a, kv: a.replace(*kv), fill.items(), a) for a in argv]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same on a machine with a GPU
    if case == "generate into a folder of other settings":
        assert _cli([*argv[:-2], "--seed", "0"], capsys)[0] == 0
    started = time.perf_counter()
    found, lines = _cli(argv, capsys)
    assert found == code and len(lines) == 1, lines  # one clean line, no traceback
    assert lines[0].startswith(f"discadapt {argv[0]}") and re.search(match, lines[0]), lines[0]
    assert time.perf_counter() - started < 20  # refused before the work (the demo runs for minutes)
    assert not (files["tmp"] / "o" / "images").exists() or case == "generate into a folder of other settings"


def test_cli_unexpected_errors_are_one_line_and_debug_shows_the_traceback(folders, files, capsys, monkeypatch):
    from discadapt import probe

    def broken(*args, **kwargs):
        raise RuntimeError("something deep\nbroke")

    monkeypatch.setattr(probe.FeatureProbe, "describe", broken)
    code, lines = _cli(["inspect", "--tiny"], capsys)
    assert code == 1 and lines == [
        "discadapt inspect: error: RuntimeError: something deep broke (rerun with `discadapt --debug ...` to see where)"
    ]
    with pytest.raises(RuntimeError, match="something deep"):
        _cli(["--debug", "inspect", "--tiny"], capsys)
