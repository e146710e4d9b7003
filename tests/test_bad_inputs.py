"""Bad inputs a new user or a hostile tester would try: each gives a ValueError that names the argument (or path)
and the fix, before any work, and nothing is computed from a wrong or non-finite input."""

import math

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
