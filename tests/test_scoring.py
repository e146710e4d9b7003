import numpy as np
import pytest
import torch

from discadapt import DiscriminativeAdapter, denoising_score, encode_images, encode_text, itm_score
from discadapt.testing import tiny_sd_pipeline

PROMPTS = ["a red circle", "a blue square left of a green circle", "two yellow triangles"]


@pytest.fixture(scope="module")
def adapter(sd_pipe):
    torch.manual_seed(0)
    return DiscriminativeAdapter.for_pipeline(sd_pipe, layers=["mid_block", "up_blocks.0"], hidden_size=32, num_heads=4)


def _noised(pipe, x0, t, seed):
    """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, eps one draw of a single latent's shape, shared by the batch."""
    eps = torch.randn((1, *x0.shape[1:]), generator=torch.Generator().manual_seed(seed)).expand_as(x0)
    abar = pipe.scheduler.alphas_cumprod[t]
    return abar.sqrt() * x0 + (1 - abar).sqrt() * eps, eps, abar


def test_encode_text_matches_the_pipeline(sd_pipe, sdxl_pipe):
    text = encode_text(sd_pipe, PROMPTS)
    embeds, _ = sd_pipe.encode_prompt(PROMPTS, "cpu", 1, False)
    assert torch.equal(text.encoder_hidden_states, embeds)
    ids = sd_pipe.tokenizer(
        PROMPTS, padding="max_length", max_length=77, truncation=True, return_tensors="pt"
    ).input_ids
    assert torch.equal(text.pooled, sd_pipe.text_encoder(ids).pooler_output)
    assert text.mask.sum(1).tolist() == [5, 10, 6]  # start + tokens + end; 'triangles' is two tokens
    xl = encode_text(sdxl_pipe, PROMPTS)
    embeds, _, pooled, _ = sdxl_pipe.encode_prompt(PROMPTS, device="cpu", do_classifier_free_guidance=False)
    assert torch.equal(xl.encoder_hidden_states, embeds) and torch.equal(xl.pooled, pooled)


def test_itm_score_equals_hand_computation(sd_pipe, adapter, latents):
    t = 250
    scores = itm_score(sd_pipe, adapter, latents, PROMPTS, t=t, seed=3)
    # by hand: noise, full UNet forward with a plain hook, adapter, scaled max cosine
    xt, _, _ = _noised(sd_pipe, latents, t, 3)
    text = encode_text(sd_pipe, PROMPTS)
    grabbed = {}
    hooks = [
        sd_pipe.unet.mid_block.register_forward_hook(lambda m, a, o: grabbed.__setitem__("mid_block", o)),
        sd_pipe.unet.up_blocks[0].register_forward_hook(lambda m, a, o: grabbed.__setitem__("up_blocks.0", o)),
    ]
    with torch.no_grad():
        sd_pipe.unet(xt, torch.tensor([t] * 3), text.encoder_hidden_states)
        for h in hooks:
            h.remove()
        out = adapter(grabbed, torch.tensor([t] * 3))
    text_unit = torch.nn.functional.normalize(text.pooled, dim=-1)
    expected = adapter.logit_scale.exp() * torch.einsum("bqp,bp->bq", out.itm_embeds, text_unit).amax(1)
    torch.testing.assert_close(scores, expected, rtol=1e-5, atol=1e-5)
    assert scores.dtype == torch.float32 and not scores.requires_grad


def test_itm_score_seeding_batching_and_timesteps(sd_pipe, adapter, latents):
    a = itm_score(sd_pipe, adapter, latents, PROMPTS, t=400)
    assert torch.equal(a, itm_score(sd_pipe, adapter, latents, PROMPTS, t=400))
    assert not torch.allclose(a, itm_score(sd_pipe, adapter, latents, PROMPTS, t=400, seed=1))
    torch.testing.assert_close(
        a, itm_score(sd_pipe, adapter, latents, PROMPTS, t=400, batch_size=1), rtol=1e-5, atol=1e-5
    )
    # several timesteps: the mean of single-timestep scores, timestep k noised with row k of one seeded draw
    two = itm_score(sd_pipe, adapter, latents, PROMPTS, t=[100, 700], generator=torch.Generator().manual_seed(0))
    noise = torch.randn((2, 1, 4, 16, 16), generator=torch.Generator().manual_seed(0))
    expected = sum(_score_with_noise(sd_pipe, adapter, latents, t, noise[k]) for k, t in enumerate([100, 700])) / 2
    torch.testing.assert_close(two, expected, rtol=1e-5, atol=1e-5)


def _score_with_noise(pipe, adapter, x0, t, noise):
    from discadapt import FeatureProbe

    abar = pipe.scheduler.alphas_cumprod[t]
    xt = abar.sqrt() * x0 + (1 - abar).sqrt() * noise.expand_as(x0)
    text = encode_text(pipe, PROMPTS)
    with torch.no_grad():
        feats = FeatureProbe(pipe.unet, adapter.config.layers)(xt, torch.tensor([t] * 3), text.encoder_hidden_states)
        return adapter.itm_logits(adapter(feats, torch.tensor([t] * 3)), text.pooled)


def test_itm_score_gradient_matches_finite_differences_float64():
    pipe = tiny_sd_pipeline(seed=0).to(torch.float64)
    torch.manual_seed(0)
    adapter = DiscriminativeAdapter.for_pipeline(pipe, layers=["mid_block"], hidden_size=32, num_heads=4).double()
    x = torch.randn(2, 4, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    prompts = PROMPTS[:2]

    def f(z):
        return itm_score(pipe, adapter, z, prompts, t=300, grad=True).sum()

    z = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(f(z), z)
    assert grad.abs().max() > 0
    direction = torch.randn(x.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    h = 1e-5
    with torch.no_grad():
        numeric = (f(x + h * direction) - f(x - h * direction)) / (2 * h)
    torch.testing.assert_close((grad * direction).sum(), numeric, rtol=1e-6, atol=1e-9)
    # one coordinate too
    e = torch.zeros_like(x)
    e[1, 2, 3, 4] = 1
    with torch.no_grad():
        numeric = (f(x + h * e) - f(x - h * e)) / (2 * h)
    torch.testing.assert_close(grad[1, 2, 3, 4], numeric, rtol=1e-5, atol=1e-9)


def test_images_are_encoded_with_the_vae(sd_pipe, adapter):
    images = sd_pipe(
        PROMPTS[:2], num_inference_steps=2, output_type="pil", generator=torch.Generator().manual_seed(0)
    ).images
    latents = encode_images(sd_pipe, images)
    with torch.no_grad():
        pixels = sd_pipe.image_processor.preprocess(images)
        expected = sd_pipe.vae.encode(pixels).latent_dist.mode() * sd_pipe.vae.config.scaling_factor
    assert latents.shape == (2, 4, 16, 16)
    torch.testing.assert_close(latents, expected)
    as_tensor = torch.stack([torch.from_numpy(np.array(im)).permute(2, 0, 1).float() / 255 for im in images])
    from_pil = itm_score(sd_pipe, adapter, images, PROMPTS[:2])
    torch.testing.assert_close(itm_score(sd_pipe, adapter, as_tensor, PROMPTS[:2]), from_pil)
    torch.testing.assert_close(itm_score(sd_pipe, adapter, latents, PROMPTS[:2]), from_pil)


def test_sdxl_scores(sdxl_pipe, latents):
    adapter = DiscriminativeAdapter.for_pipeline(sdxl_pipe, layers="up_blocks.0", hidden_size=32, num_heads=4)
    s = itm_score(sdxl_pipe, adapter, latents, PROMPTS, t=[200, 600])
    d = denoising_score(sdxl_pipe, latents, PROMPTS, num_timesteps=3)
    assert s.shape == d.shape == (3,) and s.isfinite().all() and d.isfinite().all()


def test_denoising_score_equals_formula(sd_pipe, latents):
    ts = [50, 550]
    scores = denoising_score(sd_pipe, latents, PROMPTS, t=ts, seed=4, unconditional=True)
    noise = torch.randn((2, 1, 4, 16, 16), generator=torch.Generator().manual_seed(4))
    cond, uncond = encode_text(sd_pipe, PROMPTS), encode_text(sd_pipe, [""] * 3)
    expected = torch.zeros(3, dtype=torch.float64)
    with torch.no_grad():
        for k, t in enumerate(ts):
            abar = sd_pipe.scheduler.alphas_cumprod[t]
            eps = noise[k].expand_as(latents)
            xt = abar.sqrt() * latents + (1 - abar).sqrt() * eps
            for text, sign in ((cond, -1), (uncond, 1)):
                pred = sd_pipe.unet(xt, torch.tensor([t] * 3), text.encoder_hidden_states).sample
                expected += sign * (pred - eps).double().pow(2).mean(dim=(1, 2, 3)) / len(ts)
    torch.testing.assert_close(scores.double(), expected, rtol=1e-4, atol=1e-6)
    assert torch.equal(
        denoising_score(sd_pipe, latents, PROMPTS, num_timesteps=2),
        denoising_score(sd_pipe, latents, PROMPTS, t=[250, 750]),
    )  # default: bin centres


def test_denoising_score_v_prediction(latents):
    pipe = tiny_sd_pipeline(seed=0)
    pipe.scheduler.register_to_config(prediction_type="v_prediction")
    t = 600
    score = denoising_score(pipe, latents, PROMPTS, t=t, seed=2)
    noise = torch.randn((1, 1, 4, 16, 16), generator=torch.Generator().manual_seed(2))[0].expand_as(latents)
    abar = pipe.scheduler.alphas_cumprod[t]
    xt = abar.sqrt() * latents + (1 - abar).sqrt() * noise
    v = abar.sqrt() * noise - (1 - abar).sqrt() * latents
    with torch.no_grad():
        pred = pipe.unet(xt, torch.tensor([t] * 3), encode_text(pipe, PROMPTS).encoder_hidden_states).sample
    torch.testing.assert_close(score, -(pred - v).pow(2).mean(dim=(1, 2, 3)), rtol=1e-5, atol=1e-7)


def test_bad_inputs(sd_pipe, adapter, latents):
    with pytest.raises(ValueError, match="Got 3 images but 2 prompts"):
        itm_score(sd_pipe, adapter, latents, PROMPTS[:2])
    with pytest.raises(ValueError, match="Got 3 images but 2 prompts"):
        denoising_score(sd_pipe, latents, PROMPTS[:2])
    with pytest.raises(ValueError, match="`prompts` is empty"):
        itm_score(sd_pipe, adapter, latents[:0], [])
    for bad_t in (1000, -1, [10, 1000]):
        with pytest.raises(ValueError, match=r"outside the scheduler's range: timesteps are 0..999"):
            itm_score(sd_pipe, adapter, latents, PROMPTS, t=bad_t)
    with pytest.raises(ValueError, match="integer timesteps"):
        denoising_score(sd_pipe, latents, PROMPTS, t=0.5)
    with pytest.raises(ValueError, match=r"`images_or_latents` is \(3, 5, 16, 16\)"):
        itm_score(sd_pipe, adapter, torch.zeros(3, 5, 16, 16), PROMPTS)


def test_pipeline_without_unet(adapter, latents):
    class FluxLikePipeline:
        transformer = object()

    with pytest.raises(
        ValueError, match="FluxLikePipeline with no `unet`; discadapt supports .*StableDiffusionXLPipeline"
    ):
        itm_score(FluxLikePipeline(), adapter, latents, PROMPTS)
    with pytest.raises(ValueError, match="FluxLikePipeline with no `unet`"):
        DiscriminativeAdapter.for_pipeline(FluxLikePipeline())


def test_adapter_for_another_unet(sdxl_pipe, adapter, latents):
    with pytest.raises(ValueError, match=r"text widths|expects features with channels"):
        itm_score(sdxl_pipe, adapter, latents, PROMPTS)


def test_layout_score_against_its_identities(sd_pipe, latents):
    from discadapt.sampling.regions import Region
    from discadapt.scoring import layout_score

    left, right = (0.0, 0.0, 0.5, 1.0), (0.5, 0.0, 1.0, 1.0)
    layout = [Region(left, "a red circle"), Region(right, "a blue square")]
    swapped = [Region(left, "a blue square"), Region(right, "a red circle")]
    scores = layout_score(sd_pipe, latents[[0, 0, 1]], [layout, swapped, []], num_timesteps=3)
    assert scores[2] == 0  # no layout: no preference
    torch.testing.assert_close(scores[1], -scores[0], rtol=0, atol=1e-6)  # one image, the swapped layout: the negative
    assert scores[0] != 0
    # per image, the score does not depend on the batch (one noise draw per timestep for all images)
    alone = layout_score(sd_pipe, latents[:1], [layout], num_timesteps=3)
    batched = layout_score(sd_pipe, latents[:2], [layout, swapped], num_timesteps=3, batch_size=1)
    torch.testing.assert_close(alone[0], batched[0], rtol=1e-5, atol=1e-6)
    # a box over the whole image: inside mean of (empty error - phrase error) = the relative denoising score
    whole = [[Region((0, 0, 1, 1), p)] for p in ("a red circle", "a cat", "a dog")]
    relative = denoising_score(
        sd_pipe, latents, ["a red circle", "a cat", "a dog"], num_timesteps=3, unconditional=True
    )
    torch.testing.assert_close(layout_score(sd_pipe, latents, whole, num_timesteps=3), relative, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="`layouts` must be a list of 3 lists"):
        layout_score(sd_pipe, latents, [layout])
    with pytest.raises(ValueError, match="other than a Region"):
        layout_score(sd_pipe, latents, [[(left, "a cat")], [], []])
    with pytest.raises(ValueError, match="`num_timesteps` is 0"):
        layout_score(sd_pipe, latents, [layout, [], []], num_timesteps=0)


def test_layout_score_gradient_matches_finite_differences_float64():
    from discadapt.boxes import Region
    from discadapt.scoring import layout_score

    pipe = tiny_sd_pipeline(seed=0).to(torch.float64)
    x = torch.randn(2, 4, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    layouts = [[Region((0, 0, 0.5, 1), "a red circle"), Region((0.5, 0, 1, 1), "a blue square")], []]

    def f(z):
        return layout_score(pipe, z, layouts, num_timesteps=2, grad=True).sum()

    z = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(f(z), z)
    assert grad[0].abs().max() > 0 and grad[1].abs().max() == 0  # no layout, no gradient
    direction = torch.randn(x.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    h = 1e-5
    with torch.no_grad():
        numeric = (f(x + h * direction) - f(x - h * direction)) / (2 * h)
    torch.testing.assert_close((grad * direction).sum(), numeric, rtol=1e-6, atol=1e-9)
    assert not layout_score(pipe, x, layouts, num_timesteps=2).requires_grad  # no graph by default


def test_influence_layout_shares_and_gradient_float64():
    """Each region scores the share of its phrase's influence (|eps(p) - eps("")|^2) inside its box: a box over the
    whole latent scores 1, a phrase's two halves sum to 1 (so a layout and its swap sum to 2), an input without a
    layout scores 0 with a zero gradient, and the gradient is the score's (finite differences, float64)."""
    from discadapt.boxes import Region
    from discadapt.scoring import influence_layout

    pipe = tiny_sd_pipeline(seed=0).to(torch.float64)
    x = torch.randn(3, 4, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    t = torch.tensor([700, 700, 300])
    left, right = (0.0, 0.0, 0.5, 1.0), (0.5, 0.0, 1.0, 1.0)
    layout = [Region(left, "a red circle"), Region(right, "a blue square")]
    swapped = [Region(right, "a red circle"), Region(left, "a blue square")]
    scores = influence_layout(pipe, x, t, [layout, [], [Region((0, 0, 1, 1), "a cat")]])
    both = influence_layout(pipe, x[[0, 0]], t[[0, 0]], [layout, swapped])
    torch.testing.assert_close(both.sum(), torch.tensor(2.0, dtype=torch.float64))
    torch.testing.assert_close(both[0], scores[0])  # a score does not depend on the rest of the batch
    assert scores[1] == 0 and 0 < scores[0] < 2
    torch.testing.assert_close(scores[2], torch.tensor(1.0, dtype=torch.float64))

    def f(z):
        return influence_layout(pipe, z, t, [layout, [], []]).sum()

    z = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(f(z), z)
    assert grad[0].abs().max() > 0 and grad[1:].abs().max() == 0
    direction = torch.randn(x.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    h = 1e-6
    with torch.no_grad():
        numeric = (f(x + h * direction) - f(x - h * direction)) / (2 * h)
    torch.testing.assert_close((grad * direction).sum(), numeric, rtol=1e-5, atol=1e-9)
    (none,) = torch.autograd.grad(influence_layout(pipe, z, t, [[], [], []]).sum(), z)
    assert none.abs().max() == 0
    with pytest.raises(ValueError, match="`layouts` must be a list of 3 lists"):
        influence_layout(pipe, x, t, [layout])
    with pytest.raises(ValueError, match="other than a Region"):
        influence_layout(pipe, x, t, [[(left, "a cat")], [], []])


def test_layout_scorer_plans_from_prompts(sd_pipe, monkeypatch):
    """`LayoutScorer` scores latents against the prompts it was made for (repeated per image, as self-correction
    orders them) and images against the prompts given (noised once at `t`); prompts without a relation score 0."""
    from discadapt import scorers as scorers_module
    from discadapt.interaction.critics.layout import plan_layout
    from discadapt.scorers import LatentScorer, LayoutScorer
    from discadapt.scoring import influence_layout

    prompts = ["a red circle to the left of a blue square", "a cat"]
    scorer = LayoutScorer(sd_pipe, prompts)
    assert isinstance(scorer, LatentScorer) and scorer.name == "layout influence"
    x, t = torch.randn(4, 4, 16, 16, generator=torch.Generator().manual_seed(1)), torch.full((4,), 600)
    layouts = [plan_layout(prompts[0])] * 2 + [[]] * 2
    expected = influence_layout(sd_pipe, x, t, layouts)
    calls = []
    encode = scorers_module.encode_text
    monkeypatch.setattr(scorers_module, "encode_text", lambda *a: calls.append(1) or encode(*a))
    for _ in range(3):  # the phrases are encoded once, then kept
        torch.testing.assert_close(scorer.score_latents(x, t, None), expected)
    assert len(calls) == 1
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    scores = scorer.score(images, prompts)
    assert scores.shape == (2,) and scores[0] > 0 and scores[1] == 0
    torch.testing.assert_close(scorer.score(encode_images(sd_pipe, images), prompts), scores)  # latents score alike
    # positions=False: one phrase's position ("A on the left") is left alone, pairwise relations are scored
    pairs = LayoutScorer(sd_pipe, ["a cat on the left", prompts[0]], positions=False)
    assert pairs.layouts == [[], plan_layout(prompts[0])] and LayoutScorer(sd_pipe, ["a cat on the left"]).layouts[0]
    with pytest.raises(ValueError, match="made for 2 prompts but scores 3 latents"):
        scorer.score_latents(x[:3], t[:3], None)
    with pytest.raises(ValueError, match="`t` is 1000"):
        LayoutScorer(sd_pipe, prompts, t=1000)
