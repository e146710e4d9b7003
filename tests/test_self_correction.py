import math

import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler, UniPCMultistepScheduler
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback

from discadapt import DiscriminativeAdapter
from discadapt.sampling import SelfCorrection
from discadapt.testing import tiny_sd_pipeline, tiny_sdxl_pipeline

PROMPTS = ["a red circle", "a blue square above a green triangle"]
SCHEDULERS = {
    "ddim": DDIMScheduler.from_config,
    "euler": EulerDiscreteScheduler.from_config,
    "dpm++": lambda config: DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++"),
    "unipc": UniPCMultistepScheduler.from_config,
}


@pytest.fixture(scope="module")
def pipe():
    return tiny_sd_pipeline(seed=0)


@pytest.fixture(scope="module")
def adapter(pipe):
    torch.manual_seed(0)
    return DiscriminativeAdapter.for_pipeline(pipe, layers=["mid_block", "up_blocks.0"], hidden_size=32, num_heads=4)


def _generate(pipe, callback=None, steps=4, **kwargs):
    kwargs.setdefault("prompt", PROMPTS)
    return pipe(
        num_inference_steps=steps,
        generator=torch.Generator().manual_seed(0),
        output_type="pt",
        callback_on_step_end=callback,
        callback_on_step_end_tensor_inputs=["latents"],
        **kwargs,
    ).images


class Linear:
    """A `LatentScorer`: s(x, y) = <w, x> on the UNet input x, so grad_z s = w * d x / d z."""

    name = "linear"

    def __init__(self, shape, infinite=False):
        self.w = torch.randn(shape, generator=torch.Generator().manual_seed(9))
        self.infinite = infinite

    def score(self, images_or_latents, prompts):
        return self.score_latents(images_or_latents, None, None)

    def score_latents(self, model_input, t, text):
        w = self.w * (math.inf if self.infinite else 1.0)
        return (w * model_input).flatten(1).sum(1)


class Recorder(PipelineCallback):
    tensor_inputs = ["latents"]

    def __init__(self):
        super().__init__(cutoff_step_ratio=1.0)
        self.latents = []

    def callback_fn(self, pipe, step_index, timestep, callback_kwargs):
        self.latents.append(callback_kwargs["latents"].clone())
        return callback_kwargs


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
@pytest.mark.parametrize("guidance_scale", [1.0, 5.0])  # classifier-free guidance off and on
def test_scale_zero_is_bit_identical(pipe, adapter, name, guidance_scale):
    pipe.scheduler = SCHEDULERS[name](pipe.scheduler.config)

    def generate(callback=None):
        return _generate(pipe, callback, guidance_scale=guidance_scale, num_images_per_prompt=2)

    plain = generate()
    for mode in ("plain", "reuse"):
        assert torch.equal(plain, generate(SelfCorrection(adapter, PROMPTS, scale=0.0, mode=mode)))
        assert torch.equal(plain, generate(SelfCorrection(adapter, PROMPTS, scale=1.0, start=0.5, stop=0.5, mode=mode)))
        corrected = generate(SelfCorrection(adapter, PROMPTS, scale=2.0, mode=mode))
        assert corrected.shape == plain.shape and not torch.allclose(corrected, plain)


@pytest.mark.parametrize("name", ["ddim", "euler"])
def test_latents_move_as_the_formula_says(name):
    pipe = tiny_sd_pipeline(seed=0)
    pipe.scheduler = SCHEDULERS[name](pipe.scheduler.config)
    score = Linear((1, 4, 16, 16))
    before, after = Recorder(), Recorder()
    fix = SelfCorrection(score, PROMPTS, scale=0.3, schedule="linear", iterations=2)
    _generate(pipe, MultiPipelineCallbacks([before, fix, after]), steps=5)
    n = len(pipe.scheduler.timesteps)
    for i, (z, z_new) in enumerate(zip(before.latents, after.latents)):
        k = i + 1
        if k == n:  # the final latent has no next step: left alone
            assert torch.equal(z, z_new)
            continue
        # d(model input)/dz: 1 for DDIM, 1 / sqrt(sigma_k^2 + 1) for Euler's sigma-scaled latents
        dx_dz = 1.0 if name == "ddim" else 1.0 / math.sqrt(float(pipe.scheduler.sigmas[k]) ** 2 + 1)
        eta = 0.3 * (1 - k / n)
        torch.testing.assert_close(z_new, z + 2 * eta * score.w * dx_dz, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("guidance_scale", [1.0, 5.0])
def test_reuse_mode_equals_plain_gradient_one_step_earlier(adapter, guidance_scale):
    """Reuse mode applies, at step i, the gradient of the UNet pass of step i: the plain gradient at the latent
    that entered step i, at its timestep (DDIM: the model input is the latent itself)."""
    pipe = tiny_sd_pipeline(seed=0)
    before, after = Recorder(), Recorder()
    fix = SelfCorrection(adapter, PROMPTS, scale=0.7, mode="reuse")
    _generate(pipe, MultiPipelineCallbacks([before, fix, after]), steps=5, guidance_scale=guidance_scale)
    reference = SelfCorrection(adapter, PROMPTS, scale=0.7)
    text = reference._text_for(pipe, 2)
    timesteps = pipe.scheduler.timesteps
    for i in range(len(timesteps) - 1):
        start, t = (before.latents[0], timesteps[1]) if i == 0 else (after.latents[i - 1], timesteps[i])
        expected = before.latents[i] + 0.7 * reference.gradient(pipe, start, t, text)
        torch.testing.assert_close(after.latents[i], expected, rtol=1e-4, atol=1e-5)
    assert fix.recorder is None and not pipe.unet._forward_hooks and "forward" not in vars(pipe.unet)


def test_recorder_splits_the_guided_batch():
    """With classifier-free guidance only the conditional half is recorded; the output is the batched pass's."""
    from discadapt.sampling.recorder import UNetPassRecorder

    pipe = tiny_sd_pipeline(seed=0)
    sample, text = torch.randn(4, 4, 16, 16), torch.randn(4, 77, 32)
    t = torch.tensor([500, 500, 500, 500])
    with torch.no_grad():
        want = pipe.unet(sample, t, encoder_hidden_states=text).sample
        wrapped = lambda *args, **kwargs: calls.append(len(args[0])) or own(*args, **kwargs)  # noqa: E731
        calls, own = [], pipe.unet.forward
        pipe.unet.forward = wrapped  # a forward already replaced, as accelerate's offloading hooks do
        recorder = UNetPassRecorder(pipe, ["mid_block"], batch=2).attach()
        got = pipe.unet(sample, t, encoder_hidden_states=text, return_dict=False)[0]
        recorder.remove()
    # two half-batch calls round differently from one batched call (seen here: 1.3e-6 on values of about 5e-3)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert calls == [2, 2]  # two calls of the half batch
    assert recorder.input.shape[0] == 2 and torch.equal(recorder.input, sample[2:])
    assert recorder.features["mid_block"].shape[0] == 2 and recorder.features["mid_block"].grad_fn is not None
    assert torch.equal(recorder.timestep, t[2:])
    assert pipe.unet.forward is wrapped  # restored
    del pipe.unet.forward


def test_reuse_mode_records_only_corrected_steps(pipe, adapter):
    """Callback i corrects the latent for timesteps[i + 1] (k = i + 1, fraction k / N); in reuse mode it uses the
    UNet pass of step i, which is recorded only if callback i will correct."""
    pipe.scheduler.set_timesteps(6)
    fix = SelfCorrection(adapter, PROMPTS, scale=1.0, start=0.0, stop=0.5, mode="reuse")
    assert [fix.step_size(pipe, i) > 0 for i in range(6)] == [True, True, False, False, False, False]
    recording = []
    for i in range(6):
        fix._track(pipe, i)  # after callback i: record the pass of step i + 1?
        recording.append(fix.recorder is not None)
    assert recording == [True, False, False, False, False, False]
    assert not pipe.unet._forward_hooks and not pipe.unet._forward_pre_hooks


def test_every_other_step_of_the_window(pipe, adapter):
    """`every=2` corrects the window's first step, then every second one; reuse mode records only their passes."""
    pipe.scheduler.set_timesteps(10)
    fix = SelfCorrection(adapter, PROMPTS, scale=1.0, start=0.3, stop=0.9, every=2, mode="reuse")
    corrected = [i + 1 for i in range(10) if fix.step_size(pipe, i) > 0]  # k = i + 1
    assert corrected == [3, 5, 7]
    recording = []
    for i in range(10):
        fix._track(pipe, i)
        recording.append(fix.recorder is not None)
    assert [i + 1 for i, r in enumerate(recording) if r] == [2, 4, 6]  # the passes of steps 2, 4, 6 (k - 1)
    assert not pipe.unet._forward_hooks and not pipe.unet._forward_pre_hooks
    every_step = SelfCorrection(adapter, PROMPTS, every=1, stop=0.5)
    assert [every_step.step_size(pipe, i) > 0 for i in range(5)] == [True] * 4 + [False]


def test_recorder_keeps_the_graph_only_up_to_the_probed_block():
    from discadapt.sampling.recorder import UNetPassRecorder

    pipe = tiny_sd_pipeline(seed=0)
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.scheduler.set_timesteps(4)
    t = pipe.scheduler.timesteps[0]
    pipe.scheduler.scale_model_input(torch.zeros(1), t)  # as the sampler does before its UNet call
    recorder = UNetPassRecorder(pipe, ["mid_block"]).attach()
    with torch.no_grad():
        out = pipe.unet(torch.randn(2, 4, 16, 16), t, encoder_hidden_states=torch.randn(2, 77, 32)).sample
        assert not torch.is_grad_enabled()  # restored after the pass
    recorder.remove()
    assert recorder.input.requires_grad and recorder.features["mid_block"].grad_fn is not None
    assert out.grad_fn is None  # the blocks after mid_block built no graph
    sigma = float(pipe.scheduler.sigmas[0])
    torch.testing.assert_close(float(recorder.scale), 1 / math.sqrt(sigma**2 + 1))
    assert not pipe.unet._forward_hooks and not pipe.unet.mid_block._forward_hooks


def test_window_and_schedules(pipe, adapter):
    pipe.scheduler.set_timesteps(10)
    fix = SelfCorrection(adapter, PROMPTS, scale=2.0, start=0.2, stop=0.6, schedule="cosine")
    etas = [fix.step_size(pipe, i) for i in range(10)]
    expected = [
        0,
        2 * 0.5 * (1 + math.cos(math.pi * 0.2)),
        *[2 * 0.5 * (1 + math.cos(math.pi * k / 10)) for k in (3, 4, 5)],
    ]
    assert etas[:5] == pytest.approx(expected) and etas[5:] == [0.0] * 5
    custom = SelfCorrection(adapter, PROMPTS, scale=1.0, schedule=lambda f: f * f)
    assert custom.step_size(pipe, 4) == pytest.approx(0.25)


def test_normalize_and_clip(pipe):
    pipe.scheduler.set_timesteps(4)
    text_free = Linear((1, 4, 16, 16))
    z = torch.randn(2, 4, 16, 16)
    t = pipe.scheduler.timesteps[1]
    for normalize, bound in (("unit", 1.0), ("clip", 0.5)):
        fix = SelfCorrection(text_free, PROMPTS, normalize=normalize, max_grad_norm=0.5)
        g = fix.gradient(pipe, z, t, fix._text_for(pipe, 2))
        torch.testing.assert_close(g.flatten(1).norm(dim=1), torch.full((2,), bound))
    loose = SelfCorrection(text_free, PROMPTS, normalize="clip", max_grad_norm=1e6)
    torch.testing.assert_close(loose.gradient(pipe, z, t, loose._text_for(pipe, 2)), text_free.w.expand(2, -1, -1, -1))


def test_adapter_gradient_ascends_the_itm_score(pipe, adapter):
    pipe.scheduler.set_timesteps(4)
    fix = SelfCorrection(adapter, PROMPTS, scale=1.0)
    text = fix._text_for(pipe, 2)
    t = pipe.scheduler.timesteps[1]
    z = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(3))
    g = fix.gradient(pipe, z, t, text)
    with torch.no_grad():
        s0 = fix.score(pipe, z, t.expand(2), text)
        s1 = fix.score(pipe, z + 1e-2 * g, t.expand(2), text)
    assert (s1 > s0).all()
    # first order: s(z + h g) - s(z) ~ h ||g||^2
    torch.testing.assert_close(s1 - s0, 1e-2 * g.flatten(1).pow(2).sum(1), rtol=0.05, atol=1e-6)


def test_non_finite_gradient_skips_the_step(pipe):
    pipe.scheduler.set_timesteps(4)
    fix = SelfCorrection(Linear((1, 4, 16, 16), infinite=True), PROMPTS, scale=1.0)
    z = torch.randn(2, 4, 16, 16)
    with pytest.warns(UserWarning, match="non-finite gradient at step 0; correction skipped"):
        out = fix(pipe, 0, pipe.scheduler.timesteps[0], {"latents": z.clone()})
    assert torch.equal(out["latents"], z)


def test_corrected_latent_that_overflows_its_dtype_is_skipped(pipe):
    """A finite gradient times a large step can overflow float16: the step is skipped, never a NaN image."""
    pipe.scheduler.set_timesteps(4)
    fix = SelfCorrection(Linear((1, 4, 16, 16)), PROMPTS, scale=1e6)
    z = torch.randn(2, 4, 16, 16).half()
    with pytest.warns(UserWarning, match=r"corrected latent at step 0 is not finite in torch.float16"):
        out = fix(pipe, 0, pipe.scheduler.timesteps[0], {"latents": z.clone()})
    assert torch.equal(out["latents"], z)


def test_gradient_in_float32_for_a_bfloat16_pipeline():
    pipe = tiny_sd_pipeline(seed=0).to(torch.bfloat16)
    torch.manual_seed(0)
    adapter = DiscriminativeAdapter.for_pipeline(pipe, hidden_size=32, num_heads=4).to(torch.bfloat16)
    pipe.scheduler.set_timesteps(4)
    fix = SelfCorrection(adapter, PROMPTS, scale=1.0)
    z = torch.randn(2, 4, 16, 16, dtype=torch.bfloat16)
    g = fix.gradient(pipe, z, pipe.scheduler.timesteps[1], fix._text_for(pipe, 2))
    assert g.dtype == torch.float32 and torch.isfinite(g).all() and g.abs().sum() > 0
    out = fix(pipe, 0, pipe.scheduler.timesteps[0], {"latents": z})
    assert out["latents"].dtype == torch.bfloat16


def test_sdxl_with_guidance():
    pipe = tiny_sdxl_pipeline(seed=0)
    adapter = DiscriminativeAdapter.for_pipeline(pipe, layers="mid_block", hidden_size=32, num_heads=4)
    plain = _generate(pipe, guidance_scale=5.0)
    assert torch.equal(plain, _generate(pipe, SelfCorrection(adapter, PROMPTS, scale=0.0), guidance_scale=5.0))
    corrected = _generate(pipe, SelfCorrection(adapter, PROMPTS, scale=2.0), guidance_scale=5.0)
    assert not torch.allclose(plain, corrected)


def test_bad_inputs(pipe, adapter):
    for scale in (-1.0, float("nan"), float("inf"), "0.5", None, True):
        with pytest.raises(ValueError, match="`scale` is .*; pass a finite number >= 0"):
            SelfCorrection(adapter, PROMPTS, scale=scale)
    with pytest.raises(ValueError, match="start=0.8, stop=0.2; pass 0 <= start <= stop <= 1"):
        SelfCorrection(adapter, PROMPTS, start=0.8, stop=0.2)
    with pytest.raises(ValueError, match="`schedule` is 'exp'"):
        SelfCorrection(adapter, PROMPTS, schedule="exp")
    with pytest.raises(ValueError, match="`normalize` is 'l1'"):
        SelfCorrection(adapter, PROMPTS, normalize="l1")
    with pytest.raises(ValueError, match="`iterations` is 0"):
        SelfCorrection(adapter, PROMPTS, iterations=0)
    for every in (0, 1.5, True):
        with pytest.raises(ValueError, match="`every` is .*; pass an integer >= 1"):
            SelfCorrection(adapter, PROMPTS, every=every)
    with pytest.raises(ValueError, match="`mode` is 'fast'"):
        SelfCorrection(adapter, PROMPTS, mode="fast")
    with pytest.raises(ValueError, match="mode='reuse' .* needs a DiscriminativeAdapter and iterations=1"):
        SelfCorrection(adapter, PROMPTS, mode="reuse", iterations=2)
    with pytest.raises(ValueError, match="got Linear, iterations=1"):
        SelfCorrection(Linear((1, 4, 16, 16)), PROMPTS, mode="reuse")
    with pytest.raises(ValueError, match=r"`scorer` is a function; pass a DiscriminativeAdapter or a scorers.Latent"):
        SelfCorrection(lambda x, t, text: x.sum(), PROMPTS)
    with pytest.raises(ValueError, match="`prompt` is empty"):
        SelfCorrection(adapter, [])
    with pytest.raises(ValueError, match="batch has 3 latents, not a multiple of the 2 prompts"):
        _generate(pipe, SelfCorrection(adapter, PROMPTS), prompt=PROMPTS + ["x"])


def test_pipeline_or_adapter_that_does_not_fit(pipe, adapter):
    class NoLatentsPipeline:
        _callback_tensor_inputs = ["prompt_embeds"]
        unet = pipe.unet

    pipe.scheduler.set_timesteps(4)
    fix = SelfCorrection(adapter, PROMPTS)
    with pytest.raises(ValueError, match="NoLatentsPipeline does not give `latents` to callback_on_step_end"):
        fix(NoLatentsPipeline(), 0, 0, {"latents": torch.zeros(2, 4, 16, 16)})
    other = DiscriminativeAdapter(
        layers=["mid_block"], in_channels=[32], text_dim=32, token_dim=32, hidden_size=32, num_heads=4
    )
    with pytest.raises(ValueError, match=r"expects features with channels \[32\] .* gives \[64\]"):
        _generate(pipe, SelfCorrection(other, PROMPTS))


def test_settings_are_the_callbacks_config(adapter):
    fix = SelfCorrection(adapter, PROMPTS, scale=0.5, stop=0.6, normalize="unit", mode="reuse")
    config = {k: v for k, v in fix.config.items() if not k.startswith("_")}
    assert config == dict(
        scale=0.5, start=0.0, stop=0.6, schedule="constant", normalize="unit", max_grad_norm=1.0, iterations=1,
        mode="reuse", every=1, cutoff_step_ratio=1.0, cutoff_step_index=None,
    )  # fmt: skip


@pytest.mark.parametrize("name", ["ddim", "euler"])
@pytest.mark.parametrize("guidance_scale", [1.0, 5.0])
def test_input_mode_corrects_the_conditional_unet_input_not_the_latent(name, guidance_scale):
    """Input mode (DPT's released form): the latent the sampler steps is never edited; the next UNet call sees
    `scale_model_input(z) + eta * g` in its conditional half (g = grad of the score w.r.t. the UNet input: w for a
    linear score) and the unconditional half unchanged."""
    pipe = tiny_sd_pipeline(seed=0)
    pipe.scheduler = SCHEDULERS[name](pipe.scheduler.config)
    score = Linear((1, 4, 16, 16))
    before, after, seen = Recorder(), Recorder(), []
    spy = pipe.unet.register_forward_hook(lambda m, args, kwargs, out: seen.append(args[0].clone()), with_kwargs=True)
    fix = SelfCorrection(score, PROMPTS, scale=0.3, schedule="linear", mode="input")
    try:
        _generate(pipe, MultiPipelineCallbacks([before, fix, after]), steps=5, guidance_scale=guidance_scale)
    finally:
        spy.remove()
    n, batch = len(pipe.scheduler.timesteps), len(PROMPTS)
    assert all(torch.equal(z, z_new) for z, z_new in zip(before.latents, after.latents))  # latents never edited
    assert len(seen) == n and not pipe.unet._forward_pre_hooks  # the one-shot hooks are gone
    for k in range(1, n):
        x = seen[k]
        expected = pipe.scheduler.scale_model_input(after.latents[k - 1], pipe.scheduler.timesteps[k])
        if name == "euler":  # sigma-scaled: the scaling of step k
            expected = after.latents[k - 1] / math.sqrt(float(pipe.scheduler.sigmas[k]) ** 2 + 1)
        eta = 0.3 * (1 - k / n)
        torch.testing.assert_close(x[-batch:], expected + eta * score.w, rtol=1e-5, atol=1e-5)
        if guidance_scale > 1:
            torch.testing.assert_close(x[:batch], expected, rtol=1e-6, atol=1e-6)


def test_input_mode_with_scale_zero_is_bit_identical_and_needs_one_iteration(pipe, adapter):
    base = _generate(pipe, guidance_scale=5.0)
    fix = SelfCorrection(adapter, PROMPTS, scale=0.0, mode="input")
    assert torch.equal(_generate(pipe, fix, guidance_scale=5.0), base)
    moved = _generate(pipe, SelfCorrection(adapter, PROMPTS, scale=5.0, mode="input"), guidance_scale=5.0)
    assert not torch.equal(moved, base) and torch.isfinite(moved).all()
    with pytest.raises(ValueError, match="mode='input' corrects the next UNet input once: pass iterations=1"):
        SelfCorrection(adapter, PROMPTS, mode="input", iterations=2)
    with pytest.raises(ValueError, match="`mode` is 'guide'; pass one of 'plain', 'reuse', 'input'"):
        SelfCorrection(adapter, PROMPTS, mode="guide")


def test_layout_term_after_reuse_mode(adapter):
    """A layout term (`scorers.LayoutScorer`, plain mode) chained after a reuse-mode correction: its UNet calls run
    with gradients on, so the reuse recorder lets them through unrecorded, and the reuse correction is what it is
    alone; a prompt without a relation keeps its image bit for bit, a spatial prompt's image moves."""
    from discadapt.scorers import LayoutScorer

    pipe = tiny_sd_pipeline(seed=0)
    prompts = ["a red circle", "a blue square above a green triangle"]

    def run(layout_scale):
        reuse = SelfCorrection(adapter, prompts, scale=0.7, mode="reuse")
        layout = SelfCorrection(LayoutScorer(pipe, prompts), prompts, scale=layout_scale, normalize="unit")
        after = Recorder()
        images = _generate(pipe, MultiPipelineCallbacks([reuse, layout, after]), steps=5, prompt=prompts,
                           guidance_scale=5.0)  # fmt: skip
        assert reuse.recorder is None and not pipe.unet._forward_hooks and "forward" not in vars(pipe.unet)
        return images, after.latents

    alone, _ = run(0.0)
    with_term, _ = run(2.0)
    # no relation: untouched (had the recorder recorded the term's pass, image 0's reuse gradient would have come
    # from the term's rows, or the term's gradient would have been cut at the recorder's detached leaf)
    assert torch.equal(with_term[0], alone[0])
    assert not torch.allclose(with_term[1], alone[1], atol=1e-3)  # "above": moved
