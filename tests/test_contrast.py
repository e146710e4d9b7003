import numpy as np
import pytest
import torch

from discadapt.bench.methods import hard_negative_method, pipeline_method
from discadapt.sampling.contrast import HardNegativeGuidance
from discadapt.testing import tiny_sd_pipeline, tiny_sdxl_pipeline
from discadapt.text import encode_text, unet_text_kwargs
from discadapt.worlds.shapes import KINDS, parse, prompt_negatives

PROMPTS = ["a red circle left of a blue square", "a green triangle"]
NEGATIVES = [["a blue circle left of a red square", "a red circle right of a blue square"], []]


@pytest.fixture(scope="module")
def pipe():
    return tiny_sd_pipeline(seed=0)


def _generate(pipe, prompts=PROMPTS, steps=3, **kwargs):
    return pipe(
        prompts, num_inference_steps=steps, generator=torch.Generator().manual_seed(0), output_type="pt", **kwargs
    ).images


@pytest.mark.parametrize("make", [tiny_sd_pipeline, tiny_sdxl_pipeline], ids=["sd", "sdxl"])
@pytest.mark.parametrize("guidance", [5.0, 1.0], ids=["guided", "unguided"])
def test_prediction_is_pushed_from_the_negative(make, guidance):
    """One UNet call inside the context: the conditional rows of a prompt with negatives become
    eps_c + (w / g) (eps_c - eps_n), n the step's negative; unconditional rows and the other prompt's are untouched."""
    pipe = make(seed=0)
    pipe._guidance_scale = guidance
    pipe.scheduler.set_timesteps(4)
    k, t = 1, pipe.scheduler.timesteps[1]  # step 1: the second negative of the first prompt
    size = pipe.unet.config.sample_size
    latents = torch.randn(2, pipe.unet.config.in_channels, size, size, generator=torch.Generator().manual_seed(0))
    text, neg = encode_text(pipe, PROMPTS), encode_text(pipe, [NEGATIVES[0][k]])
    guided = guidance > 1
    if guided:  # [unconditional, conditional]
        empty = encode_text(pipe, ["", ""])
        sample = torch.cat([latents, latents])
        hidden = torch.cat([empty.encoder_hidden_states, text.encoder_hidden_states])
        extra = unet_text_kwargs(pipe, type(text)(hidden, torch.cat([empty.pooled, text.pooled]), None, text.is_sdxl),
                                 sample)  # fmt: skip
    else:
        sample, hidden, extra = latents, text.encoder_hidden_states, unet_text_kwargs(pipe, text, latents)
    with torch.no_grad():
        plain = pipe.unet(sample, t, encoder_hidden_states=hidden, **extra).sample
        eps_n = pipe.unet(latents[:1], t, encoder_hidden_states=neg.encoder_hidden_states,
                          **unet_text_kwargs(pipe, neg, latents[:1])).sample  # fmt: skip
        with HardNegativeGuidance(pipe, NEGATIVES, scale=2.0):
            edited = pipe.unet(sample, t, encoder_hidden_states=hidden, **extra).sample
    row = 2 if guided else 0  # the first prompt's conditional row
    expected = plain[row] + (2.0 / guidance) * (plain[row] - eps_n[0])
    torch.testing.assert_close(edited[row], expected, rtol=1e-4, atol=1e-5)
    others = [i for i in range(len(sample)) if i != row]
    assert torch.equal(edited[others], plain[others])
    assert "forward" not in vars(pipe.unet)


def test_images_change_only_where_asked(pipe):
    plain = _generate(pipe, guidance_scale=5.0)
    with HardNegativeGuidance(pipe, NEGATIVES, scale=2.0):
        guided = _generate(pipe, guidance_scale=5.0)
    assert torch.equal(guided[1], plain[1])  # no negatives: bit for bit
    assert (guided[0] - plain[0]).abs().max() > 1e-3
    # scale 0, an empty window, or no negatives at all leave every image bit for bit
    for settings in ({"scale": 0.0}, {"start": 0.5, "stop": 0.5}):
        with HardNegativeGuidance(pipe, NEGATIVES, **settings):
            assert torch.equal(_generate(pipe, guidance_scale=5.0), plain)
    with HardNegativeGuidance(pipe, [[], []], scale=2.0):
        assert torch.equal(_generate(pipe, guidance_scale=5.0), plain)


def test_window_and_images_per_prompt(pipe):
    """Steps outside the window are the plain ones: a window covering only the last step changes less than the
    whole schedule; with 2 images per prompt both images of the first prompt are guided."""
    plain = _generate(pipe, steps=4, guidance_scale=5.0, num_images_per_prompt=2)
    with HardNegativeGuidance(pipe, NEGATIVES, scale=2.0, num_images_per_prompt=2):
        whole = _generate(pipe, steps=4, guidance_scale=5.0, num_images_per_prompt=2)
    with HardNegativeGuidance(pipe, NEGATIVES, scale=2.0, start=0.75, num_images_per_prompt=2):
        last = _generate(pipe, steps=4, guidance_scale=5.0, num_images_per_prompt=2)
    assert torch.equal(whole[2:], plain[2:]) and torch.equal(last[2:], plain[2:])
    changed = lambda images: (images[:2] - plain[:2]).abs().flatten(1).amax(1)  # noqa: E731
    assert (changed(whole) > 1e-3).all() and (changed(last) > 0).all()
    assert (changed(last) < changed(whole)).all()


def test_bad_inputs(pipe):
    with pytest.raises(ValueError, match="`negatives` is 'a cat'; pass one list of negative captions per prompt"):
        HardNegativeGuidance(pipe, "a cat")
    with pytest.raises(ValueError, match=r"`negatives\[1\]` is 'a dog'; pass a list of captions per prompt"):
        HardNegativeGuidance(pipe, [["a cat"], "a dog"])
    with pytest.raises(ValueError, match=r"`negatives` is \[\]; pass one list"):
        HardNegativeGuidance(pipe, [])
    with pytest.raises(ValueError, match="`scale` is -1.0; pass a finite number >= 0"):
        HardNegativeGuidance(pipe, NEGATIVES, scale=-1.0)
    with pytest.raises(ValueError, match="The window is start=0.8, stop=0.2"):
        HardNegativeGuidance(pipe, NEGATIVES, start=0.8, stop=0.2)
    with pytest.raises(ValueError, match="`num_images_per_prompt` is 0"):
        HardNegativeGuidance(pipe, NEGATIVES, num_images_per_prompt=0)
    with pytest.raises(ValueError, match=r"called with 6 latents, but `negatives` has 2 lists .* = 2 images per"):
        with HardNegativeGuidance(pipe, NEGATIVES):
            _generate(pipe, prompts=PROMPTS + ["a cat"], guidance_scale=5.0)
    pipe.scheduler.set_timesteps(3)
    pipe._guidance_scale = 1.0  # as a call without guidance leaves it: the 2 latents are the 2 prompts'
    sample = torch.zeros(2, 4, 16, 16)
    hidden = encode_text(pipe, PROMPTS).encoder_hidden_states
    with pytest.raises(ValueError, match="timestep 7, which is not in the scheduler's timesteps"):
        with HardNegativeGuidance(pipe, NEGATIVES):
            pipe.unet(sample, 7, encoder_hidden_states=hidden)
    with pytest.raises(ValueError, match="`scale` is nan"):  # the method checks its settings when built
        hard_negative_method(pipe, lambda p: [], scale=float("nan"))
    assert "forward" not in vars(pipe.unet)


def test_method_matches_the_context(pipe):
    negatives = dict(zip(PROMPTS, NEGATIVES))
    method = hard_negative_method(pipe, negatives.get, steps=2, guidance=5.0, scale=2.0)
    images = method(PROMPTS, [0, 1])
    assert images.shape == (2, 32, 32, 3) and images.dtype == np.uint8
    base = pipeline_method(pipe, steps=2, guidance=5.0)(PROMPTS, [0, 1])
    assert (images[1] == base[1]).all() and (images[0] != base[0]).any()
    assert (hard_negative_method(pipe, negatives.get, steps=2, guidance=5.0, scale=0.0)(PROMPTS, [0, 1]) == base).all()


@pytest.mark.parametrize(
    "prompt", ["a red circle", "a red circle and a blue square", "three green triangles",
               "a red circle above a blue square", "the large red circle"],
)  # fmt: skip
def test_prompt_negatives(prompt):
    caption = parse(prompt)
    found = prompt_negatives(prompt)
    assert found and all(n.kind in KINDS for n in found)
    assert len({n.kind for n in found}) == len(found) and all(n.caption != caption for n in found)
    assert prompt_negatives(caption) == found  # a Caption or its text; the same seed, the same negatives
    by_kind = {n.kind: n.caption for n in found}
    if caption.category == "spatial":
        assert by_kind["swap_relation"].relation == "below"
    if caption.category == "counting":
        assert by_kind["wrong_count"].count in (2, 4)
    if "wrong_color" in by_kind and len(caption.phrases) == 2:  # the other phrase's color first: both now share it
        assert len({p.color for p in by_kind["wrong_color"].phrases}) == 1
        assert {p.color for p in by_kind["wrong_color"].phrases} < {p.color for p in caption.phrases}


def test_prompt_negatives_kinds():
    drop = prompt_negatives("a red circle above a blue square", kinds=["drop_phrase", "swap_relation"])
    assert [(n.kind, n.caption.text) for n in drop] == [
        ("drop_phrase", "a red circle"), ("drop_phrase", "a blue square"),
        ("swap_relation", "a red circle below a blue square"),
    ]  # fmt: skip
    # kinds that do not apply to the category give nothing
    assert [n.kind for n in prompt_negatives("three red circles", kinds=["drop_phrase", "wrong_count"])] == [
        "wrong_count"
    ]
    assert prompt_negatives("a red circle", kinds=["swap_relation"]) == []
    with pytest.raises(ValueError, match="`kinds` is \\['wrong_colour'\\]; pass names of"):
        prompt_negatives("a red circle", kinds=["wrong_colour"])
    with pytest.raises(ValueError, match="`kinds` is 'drop_phrase'; pass names of"):
        prompt_negatives("a red circle", kinds="drop_phrase")
