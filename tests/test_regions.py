import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler

from discadapt import DiscriminativeAdapter
from discadapt.sampling import Region, RegionPrompts, SelfCorrection, box_mask, generate_with_regions
from discadapt.testing import tiny_sd_pipeline, tiny_sdxl_pipeline
from discadapt.text import encode_text

PROMPTS = ["a red circle left of a blue square", "a green triangle"]
REGIONS = [[Region((0, 0, 0.5, 1), "a red circle"), Region((0.5, 0.2, 1, 0.9), "a blue square")], []]
SCHEDULERS = {
    "ddim": DDIMScheduler.from_config,
    "euler": EulerDiscreteScheduler.from_config,
    "dpm++": lambda config: DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++"),
}


@pytest.fixture(scope="module")
def pipe():
    return tiny_sd_pipeline(seed=0)


@pytest.fixture(scope="module")
def xl():
    return tiny_sdxl_pipeline(seed=0)


def _generate(pipe, prompts=PROMPTS, steps=3, **kwargs):
    return pipe(
        prompts, num_inference_steps=steps, generator=torch.Generator().manual_seed(0), output_type="pt", **kwargs
    ).images


def test_region_checks_and_repr():
    assert repr(Region((0, 0, 0.5, 1), "a cat")) == "Region(box=(0.0, 0.0, 0.5, 1.0), prompt='a cat')"
    assert repr(Region((0, 0, 0.5, 1), "a cat", 0.5)).endswith("strength=0.5)")
    with pytest.raises(ValueError, match=r"`box` is \(0, 0, 1.5, 1\); pass fractions .* x1 <= 1"):
        Region((0, 0, 1.5, 1), "x")
    with pytest.raises(ValueError, match=r"`box` is \(0.5, 0, 0.5, 1\); pass fractions .* x0 < x1"):
        Region((0.5, 0, 0.5, 1), "x")
    with pytest.raises(ValueError, match="`box` is .*; pass four finite numbers"):
        Region((0, 0, 1), "x")
    with pytest.raises(ValueError, match="`prompt` is ''; pass the non-empty text"):
        Region((0, 0, 1, 1), "")
    with pytest.raises(ValueError, match=r"`strength` is 1.5; pass a number in \[0, 1\]"):
        Region((0, 0, 1, 1), "x", 1.5)


def test_mask_values_at_latent_resolution():
    # edges on pixel boundaries (x0 = 4, x1 = 12 latent pixels of 16): feather 1 gives the hard box
    hard = box_mask((0.25, 0.25, 0.75, 0.75), 16, 16)
    assert hard.shape == (16, 16) and hard.dtype == torch.float32
    assert (hard[4:12, 4:12] == 1).all() and hard.sum() == 64
    # feather 2: a ramp over 2 pixels centred on the edge: 0.25 just outside, 0.75 just inside, 1 and 0 beyond
    soft = box_mask((0.25, 0.0, 0.75, 1.0), 16, 16, feather=2)
    assert soft[:, 2:15].tolist()[7] == [0, 0.25, 0.75, 1, 1, 1, 1, 1, 1, 0.75, 0.25, 0, 0]
    assert (soft[:, :2] == 0).all() and (soft[:, 15:] == 0).all()
    assert (soft[0] == soft[15]).all()  # edges on the image border (y0 = 0, y1 = 1) are not feathered
    # feather 1 with an edge inside a pixel: the fraction of the pixel the box covers; y is the first axis
    part = box_mask((0.0, 0.265625, 1.0, 1.0), 16, 16)  # y0 = 4.25 latent pixels
    assert part[:, 0].tolist()[3:6] == [0, 0.75, 1]
    # feather 0: 1 inside, 0 outside, 1/2 on a pixel centre the edge crosses
    assert box_mask((0.0, 0.0, 0.5, 1.0), 1, 3, feather=0)[0].tolist() == [1, 0.5, 0]
    # the product of the two axes
    corner = box_mask((0.25, 0.25, 0.75, 0.75), 16, 16, feather=2)
    assert corner[4, 4] == 0.75 * 0.75 and corner[3, 4] == 0.25 * 0.75 and corner[3, 3] == 0.25 * 0.25
    assert ((corner >= 0) & (corner <= 1)).all()
    with pytest.raises(ValueError, match="`feather` is -1; pass a finite width >= 0"):
        box_mask((0, 0, 1, 1), 4, 4, feather=-1)


@pytest.mark.parametrize("name", ["ddim", "euler"])
@pytest.mark.parametrize("guidance_scale", [1.0, 5.0])  # classifier-free guidance off and on
def test_zero_masks_give_the_pipeline_bit_for_bit(pipe, name, guidance_scale):
    pipe.scheduler = SCHEDULERS[name](pipe.scheduler.config)
    kwargs = dict(guidance_scale=guidance_scale, num_images_per_prompt=2)
    plain = _generate(pipe, **kwargs)
    off = [[Region((0, 0, 1, 1), "a blue square", strength=0)], []]
    for regions in ([[], []], off):
        with RegionPrompts(pipe, regions, num_images_per_prompt=2):
            assert torch.equal(_generate(pipe, **kwargs), plain)
    # only the first prompt has regions: the second prompt's images stay the pipeline's, bit for bit
    with RegionPrompts(pipe, REGIONS, num_images_per_prompt=2):
        mixed = _generate(pipe, **kwargs)
    assert torch.equal(mixed[2:], plain[2:]) and (mixed[:2] - plain[:2]).abs().amax() > 1e-3


@pytest.mark.parametrize("kind", ["sd", "sdxl"])
def test_full_mask_averages_the_two_predictions(pipe, xl, kind):
    pipe = {"sd": pipe, "sdxl": xl}[kind]
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    calls = []
    hook = pipe.unet.register_forward_hook(
        lambda m, args, kwargs, out: calls.append((args, kwargs, out[0].clone())), with_kwargs=True
    )
    try:
        with RegionPrompts(pipe, [[Region((0, 0, 1, 1), "a blue square")]], feather=0):
            _generate(pipe, ["a red circle"], steps=2, guidance_scale=5.0)
    finally:
        hook.remove()
    assert len(calls) == 2  # the blending runs inside the pipeline's one UNet call per step
    region = encode_text(pipe, ["a blue square"])
    for (sample, t), kwargs, blended in calls:
        # references after the context has closed: the pipeline's batched call, and the region prompt alone
        global_eps = pipe.unet(sample, t, **kwargs)[0]
        added = kwargs.get("added_cond_kwargs")
        if kind == "sdxl":  # the region's pooled text, the image's time_ids
            added = {"text_embeds": region.pooled, "time_ids": added["time_ids"][1:]}
        region_eps = pipe.unet(sample[1:], t, encoder_hidden_states=region.encoder_hidden_states,
                               added_cond_kwargs=added, return_dict=False)[0]  # fmt: skip
        assert torch.equal(blended[:1], global_eps[:1])  # the unconditional half is untouched
        torch.testing.assert_close(blended[1:], (global_eps[1:] + region_eps) / 2, rtol=0, atol=1e-6)
        assert (region_eps - global_eps[1:]).abs().amax() > 1e-3  # the two predictions differ


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_schedulers_and_images_per_prompt(pipe, name):
    pipe.scheduler = SCHEDULERS[name](pipe.scheduler.config)
    plain = _generate(pipe, guidance_scale=5.0, num_images_per_prompt=2)
    out = generate_with_regions(
        pipe, PROMPTS, REGIONS, num_inference_steps=3, guidance_scale=5.0, num_images_per_prompt=2,
        generator=torch.Generator().manual_seed(0), output_type="pt",
    ).images  # fmt: skip
    assert out.shape == plain.shape and torch.isfinite(out).all()
    assert torch.equal(out[2:], plain[2:])
    assert ((out[:2] - plain[:2]).flatten(1).abs().amax(1) > 1e-3).all()  # both images of the first prompt
    assert "forward" not in vars(pipe.unet)


@pytest.mark.parametrize("guidance_scale", [1.0, 5.0])
def test_sdxl_with_regions(xl, guidance_scale):
    xl.scheduler = EulerDiscreteScheduler.from_config(xl.scheduler.config)
    plain = _generate(xl, steps=2, guidance_scale=guidance_scale)
    out = generate_with_regions(
        xl, PROMPTS, REGIONS, feather=2.0, num_inference_steps=2, guidance_scale=guidance_scale,
        generator=torch.Generator().manual_seed(0), output_type="pt",
    ).images  # fmt: skip
    assert torch.isfinite(out).all() and torch.equal(out[1], plain[1]) and (out[0] - plain[0]).abs().amax() > 1e-3


def test_composes_with_self_correction(pipe):
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    torch.manual_seed(0)
    adapter = DiscriminativeAdapter.for_pipeline(pipe, layers=["mid_block"], hidden_size=32, num_heads=4)
    regions = [REGIONS[0][:1], []]  # one (image, region) pair per step
    kwargs = dict(num_inference_steps=3, guidance_scale=1.0, output_type="pt")

    def generate(scale=None):
        fix = None if scale is None else SelfCorrection(adapter, prompt=PROMPTS, scale=scale)
        return generate_with_regions(
            pipe, PROMPTS, regions, self_correction=fix, generator=torch.Generator().manual_seed(0), **kwargs
        ).images

    sizes = []
    inner = pipe.unet.forward
    pipe.unet.forward = lambda sample, *a, **k: sizes.append(sample.shape[0]) or inner(sample, *a, **k)
    try:
        corrected = generate(0.5)
    finally:
        del pipe.unet.forward
    # per step the pipeline's call (2 latents) and the region pair's (1); between steps 0-1 and 1-2 the correction's
    # own forward (2 latents; before the first, its check that the adapter fits the UNet, a dry run of 1) is not
    # blended, so no region call follows it
    assert sizes == [2, 1] + [1, 2] + [2, 1] + [2] + [2, 1]
    regions_only = generate()
    assert torch.equal(generate(0.0), regions_only)
    assert torch.isfinite(corrected).all() and (corrected - regions_only).abs().amax() > 1e-4
    reuse = SelfCorrection(adapter, prompt=PROMPTS, scale=0.5, mode="reuse")
    with pytest.raises(
        ValueError, match=r"SelfCorrection\(mode='reuse'\) reads the sampler's own UNet pass.*use mode='plain'"
    ):
        generate_with_regions(pipe, PROMPTS, regions, self_correction=reuse, num_inference_steps=2)
    assert "forward" not in vars(pipe.unet)


def test_bad_inputs(pipe):
    with pytest.raises(ValueError, match="`regions` has 1 lists for 2 prompts; pass one list of Region per prompt"):
        generate_with_regions(pipe, PROMPTS, REGIONS[:1], num_inference_steps=2)
    # the context cannot see the prompts: a batch that does not fit the regions fails at the first UNet call
    with pytest.raises(ValueError, match=r"called with 4 latents, but `regions` has 3 lists .* = 3 images per branch"):
        with RegionPrompts(pipe, [[], [], []]):
            _generate(pipe, steps=2, guidance_scale=5.0)
    with pytest.raises(ValueError, match=r"called with 4 latents, .* num_images_per_prompt=1 = 2 images"):
        with RegionPrompts(pipe, REGIONS):
            _generate(pipe, steps=2, guidance_scale=1.0, num_images_per_prompt=2)
    with pytest.raises(ValueError, match=r"`regions` is Region\(box.*; pass one list of Region per prompt"):
        RegionPrompts(pipe, REGIONS[0][0])
    with pytest.raises(ValueError, match=r"`regions\[0\]` is Region.*; pass one list of Region per prompt"):
        RegionPrompts(pipe, REGIONS[0])
    with pytest.raises(ValueError, match=r"`regions\[1\]` holds \(0, 0, 1, 1\); pass sampling.regions.Region"):
        RegionPrompts(pipe, [[], [(0, 0, 1, 1)]])
    with pytest.raises(ValueError, match="`regions` is \\[\\]; pass one list of Region per prompt"):
        RegionPrompts(pipe, [])
    with pytest.raises(ValueError, match="`feather` is nan; pass a finite width >= 0"):
        RegionPrompts(pipe, REGIONS, feather=float("nan"))
    with pytest.raises(ValueError, match="`num_images_per_prompt` is 0; pass the int >= 1"):
        RegionPrompts(pipe, REGIONS, num_images_per_prompt=0)
    with pytest.raises(ValueError, match="`pipe` is a object with no `unet`"):
        RegionPrompts(object(), REGIONS)
    adapter = DiscriminativeAdapter.for_pipeline(pipe, layers=["mid_block"], hidden_size=32, num_heads=4)
    fix = SelfCorrection(adapter, prompt=PROMPTS)
    with pytest.raises(ValueError, match="Both `self_correction` and `callback_on_step_end` were given"):
        generate_with_regions(pipe, PROMPTS, REGIONS, self_correction=fix, callback_on_step_end=fix)
    with pytest.raises(ValueError, match="`prompt` is None; pass the prompts"):
        generate_with_regions(pipe, None, REGIONS)
    assert "forward" not in vars(pipe.unet)


def test_forward_is_restored(pipe):
    unet = pipe.unet
    own = type(unet).forward
    with RegionPrompts(pipe, REGIONS) as blend:
        assert unet.forward == blend._forward
    assert "forward" not in vars(unet) and unet.forward.__func__ is own
    with pytest.raises(RuntimeError, match="boom"):
        with RegionPrompts(pipe, REGIONS):
            raise RuntimeError("boom")
    assert "forward" not in vars(unet)
    with pytest.raises(ValueError, match="called with"):  # an error inside the pipeline's loop
        with RegionPrompts(pipe, [[]]):
            _generate(pipe, steps=2)
    assert "forward" not in vars(unet)
    # a `forward` set on the instance before (e.g. an offloading hook's) is the one put back
    wrapped = unet.forward
    unet.forward = wrapped
    try:
        with RegionPrompts(pipe, REGIONS):
            assert vars(unet)["forward"] != wrapped
        assert vars(unet)["forward"] is wrapped
    finally:
        del unet.forward
    # `paused` passes calls through unchanged
    sample = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    hidden = encode_text(pipe, PROMPTS).encoder_hidden_states
    expected = unet(sample, 10, encoder_hidden_states=hidden).sample
    with RegionPrompts(pipe, REGIONS) as blend, blend.paused():
        assert torch.equal(unet(sample, 10, encoder_hidden_states=hidden).sample, expected)
