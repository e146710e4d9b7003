"""Image-text scores on a diffusers pipeline.

- `itm_score`: the discriminative adapter's ITM logit. The image latent is noised to timestep t, the UNet
  runs conditioned on the prompt through an early-exit `FeatureProbe`, and the adapter reads the features.
- `denoising_score`: the DiffusionITM baseline (Krojer et al., NeurIPS 2023): minus the mean squared error of
  the UNet's prediction over several timesteps, optionally relative to the unconditional error,
      s(x, y) = - 1/|T| sum_t || f(x_t, t, y) - target_t ||^2      [ + 1/|T| sum_t || f(x_t, t, "") - target_t ||^2 ]
  with the target given by the scheduler's prediction type (epsilon: the noise; v_prediction: the velocity).

Both take the same inputs: B images (PIL, a list of PIL, or a `(B, 3, H, W)` tensor in [0, 1]) or latents
`(B, C, h, w)` with C the UNet's input channels, and B prompts; pair b is (image b, prompt b). For each
timestep one noise draw, seeded, is shared by every pair, so scores of one image with different prompts are
comparable. `x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) noise` uses the pipeline's training noise schedule.

Example:
    >>> scores = itm_score(pipe, adapter, [image, image], ["a red cube", "a blue cube"], t=400)
    >>> baseline = denoising_score(pipe, [image, image], ["a red cube", "a blue cube"])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import PIL.Image
import torch
from tqdm.auto import tqdm

from .adapter import DiscriminativeAdapter
from .boxes import Region, box_mask
from .probe import FeatureProbe
from .text import TextEmbeddings, encode_text, get_unet, unet_text_kwargs

__all__ = [
    "add_noise",
    "adapter_itm_logits",
    "default_timesteps",
    "denoising_score",
    "encode_images",
    "itm_score",
    "influence_layout",
    "layout_score",
]


def encode_images(pipe, images) -> torch.Tensor:
    """VAE latents `(B, C, h, w)` (posterior mode, scaled as the UNet expects) of PIL images or a `(B, 3, H, W)`
    tensor in [0, 1]."""
    unet = get_unet(pipe)
    pixels = pipe.image_processor.preprocess(images).to(device=pipe.vae.device, dtype=pipe.vae.dtype)
    latents = pipe.vae.encode(pixels).latent_dist.mode()
    shift = getattr(pipe.vae.config, "shift_factor", None) or 0.0
    return ((latents - shift) * pipe.vae.config.scaling_factor).to(unet.dtype)


def _rgb(images):
    """PIL images of any mode (grayscale, RGBA, palette) as RGB."""
    if isinstance(images, PIL.Image.Image):
        return images.convert("RGB")
    return [image.convert("RGB") for image in images]


def _pixels(x: torch.Tensor) -> torch.Tensor:
    """An image tensor `(B, 3, H, W)` as floats in [0, 1]: uint8 is divided by 255; floats are checked."""
    if x.dtype == torch.uint8:
        return x.float() / 255
    if not x.is_floating_point():
        raise ValueError(f"`images_or_latents` is a {x.dtype} tensor; pass floats in [0, 1] or uint8 in [0, 255].")
    if not torch.isfinite(x).all():
        raise ValueError("`images_or_latents` holds NaN or infinite pixels; pass finite images in [0, 1].")
    low, high = float(x.min()), float(x.max())
    if low < -1e-3 or high > 1 + 1e-3:
        hint = " (it looks like 0-255: divide by 255)" if high > 2 else ""
        raise ValueError(f"`images_or_latents` has pixels in [{low:.3g}, {high:.3g}]; pass images in [0, 1]{hint}.")
    return x


def _latents(pipe, images_or_latents) -> torch.Tensor:
    unet = get_unet(pipe)
    x = images_or_latents
    if isinstance(x, PIL.Image.Image) or (isinstance(x, (list, tuple)) and x and isinstance(x[0], PIL.Image.Image)):
        return encode_images(pipe, _rgb(x))
    if isinstance(x, torch.Tensor) and x.ndim == 4:
        if x.shape[1] == unet.config.in_channels and x.dtype != torch.uint8:
            if not torch.isfinite(x).all():
                raise ValueError("`images_or_latents` holds NaN or infinite latents; pass finite latents.")
            return x.to(device=unet.device, dtype=unet.dtype)
        if x.shape[1] == 3:
            return encode_images(pipe, _pixels(x))
    shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
    raise ValueError(
        f"`images_or_latents` is {shape}; pass PIL images, a (B, 3, H, W) image tensor in [0, 1], or latents "
        f"(B, {unet.config.in_channels}, h, w)."
    )


def _timesteps(pipe, t) -> torch.Tensor:
    num = pipe.scheduler.config.num_train_timesteps
    if isinstance(t, (str, bytes, float)) or isinstance(t, bool):
        raise ValueError(f"`t` is {t!r}; pass one or more integer timesteps in [0, {num - 1}], e.g. t=500.")
    try:
        ts = torch.as_tensor(t).reshape(-1)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"`t` is {t!r}; pass one or more integer timesteps in [0, {num - 1}], e.g. t=500.") from None
    if ts.numel() == 0 or (ts.is_floating_point() and not torch.equal(ts, ts.round())):
        raise ValueError(f"`t` is {t!r}; pass one or more integer timesteps in [0, {num - 1}].")
    ts = ts.long()
    if ts.min() < 0 or ts.max() >= num:
        raise ValueError(f"`t` is {t!r}, outside the scheduler's range: timesteps are 0..{num - 1}.")
    return ts


def _check_count(name: str, value, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`{name}` is {value!r}; pass an int >= 1{' or None' if allow_none else ''}.")


def default_timesteps(pipe, n: int = 10) -> torch.Tensor:
    """`n` timesteps evenly spread over the training range (centres of n equal bins)."""
    num = pipe.scheduler.config.num_train_timesteps
    return ((torch.arange(n) + 0.5) * num / n).long()


def _check_pairs(latents: torch.Tensor, prompts) -> list[str]:
    if isinstance(prompts, str):
        prompts = [prompts]
    if not isinstance(prompts, (list, tuple)) or not all(isinstance(p, str) for p in prompts):
        raise ValueError(f"`prompts` is {prompts!r}; pass a string or a list of strings, one per image.")
    prompts = list(prompts)
    if not prompts:
        raise ValueError("`prompts` is empty; pass one prompt per image.")
    if len(prompts) != latents.shape[0]:
        raise ValueError(
            f"Got {latents.shape[0]} images but {len(prompts)} prompts; pair b is (image b, prompt b), so pass "
            "as many prompts as images (repeat an image to score it against several prompts)."
        )
    return prompts


def _noise(latents: torch.Tensor, count: int, generator: torch.Generator | None, seed: int) -> torch.Tensor:
    """`count` noise draws of one latent's shape `(count, 1, C, h, w)`, drawn on the CPU for reproducibility."""
    if generator is None:
        generator = torch.Generator().manual_seed(seed)
    noise = torch.randn((count, 1, *latents.shape[1:]), generator=generator, device=generator.device)
    return noise.to(device=latents.device, dtype=latents.dtype)


def _schedule(pipe) -> tuple[torch.Tensor, str]:
    """The pipeline's training noise schedule `abar_t` (T,) and its prediction type."""
    abar = getattr(pipe.scheduler, "alphas_cumprod", None)
    if abar is None:
        raise ValueError(
            f"{type(pipe.scheduler).__name__} has no `alphas_cumprod`; scoring needs a DDPM-family scheduler."
        )
    return abar, pipe.scheduler.config.prediction_type


def add_noise(abar: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) noise, for one timestep per sample: the training forward process
    from `abar = scheduler.alphas_cumprod`, whatever the sampler (Euler's `add_noise`, for one, scales by sigma)."""
    a = abar.to(x0.device)[t].to(x0.dtype)[:, None, None, None]
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


def _prepare(pipe, images_or_latents, prompts, num_timesteps: int, generator, seed, batch_size):
    """Checked inputs shared by the scorers: latents (B, C, h, w), B prompts, noise (T, 1, C, h, w)."""
    _check_count("batch_size", batch_size, allow_none=True)
    latents = _latents(pipe, images_or_latents)
    prompts = _check_pairs(latents, prompts)
    return latents, prompts, _noise(latents, num_timesteps, generator, seed)


def _noised(pipe, latents, ts, noise, batch_size, progress, desc):
    """For each batch of pairs (a slice of the B pairs) and each timestep k, yield
    `(part, x_0, t, noise, x_t)` with `t` of shape (b,) and x_t noised with draw k."""
    abar = _schedule(pipe)[0]
    size = batch_size or len(latents)
    for start in tqdm(range(0, len(latents), size), disable=not progress, desc=desc):
        part = slice(start, start + size)
        x0 = latents[part]
        for k, step in enumerate(ts):
            step_b = step.to(x0.device).expand(x0.shape[0])
            eps = noise[k].expand_as(x0)
            yield part, x0, step_b, eps, add_noise(abar, x0, eps, step_b)


def _target(abar: torch.Tensor, prediction_type: str, x0, eps, t) -> torch.Tensor:
    """What the UNet predicts for x_t: the noise (epsilon), the velocity (v_prediction) or x_0 (sample)."""
    if prediction_type == "epsilon":
        return eps
    if prediction_type == "v_prediction":  # v = sqrt(abar) eps - sqrt(1 - abar) x_0
        return add_noise(abar, eps, -x0, t)
    return x0


def adapter_itm_logits(pipe, adapter: DiscriminativeAdapter, probe: FeatureProbe, model_input, t, text: TextEmbeddings):
    """The adapter's ITM logits `(B,)` for UNet inputs `model_input` (B, C, h, w) at timesteps `t` (B,), the UNet
    conditioned on `text` (B prompts) and run through `probe` (which reads `adapter.config.layers`)."""
    feats = probe(model_input, t, text.encoder_hidden_states, **unet_text_kwargs(pipe, text, model_input))
    out = adapter(feats, t, text_tokens=text.encoder_hidden_states)
    return adapter.itm_logits(out, adapter.text_target(text))


def itm_score(
    pipe,
    adapter: DiscriminativeAdapter,
    images_or_latents,
    prompts: str | Sequence[str],
    *,
    t: int | Sequence[int] | torch.Tensor | None = None,
    seed: int = 0,
    generator: torch.Generator | None = None,
    grad: bool = False,
    batch_size: int | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Adapter ITM scores of (image, prompt) pairs, averaged over the timesteps `t`.

    Args:
        pipe: a diffusers pipeline with a `UNet2DConditionModel` (SD 1.x/2.x, SDXL).
        adapter (`DiscriminativeAdapter`): built for this pipeline (`DiscriminativeAdapter.for_pipeline`).
        images_or_latents: B images (PIL or `(B, 3, H, W)` in [0, 1]) or latents `(B, C, h, w)`.
        prompts (`str` or `Sequence[str]`): B prompts.
        t (`int` or sequence, *optional*): timestep(s) in [0, num_train_timesteps); defaults to the middle one.
        seed (`int`, defaults to 0): seed of the noise when no `generator` is given.
        generator (`torch.Generator`, *optional*): CPU generator for the noise.
        grad (`bool`, defaults to False): keep the autograd graph, so the scores are differentiable w.r.t.
            latents that require grad.
        batch_size (`int`, *optional*): pairs per UNet call; all at once by default.
        progress (`bool`, defaults to False): show a progress bar.

    Returns:
        `torch.Tensor` of shape `(B,)`, float32: `exp(logit_scale) * max_q cos(query_q, pooled prompt)`.
    """
    unet = get_unet(pipe)
    _check_adapter(adapter, pipe)
    ts = _timesteps(pipe, pipe.scheduler.config.num_train_timesteps // 2 if t is None else t)
    latents, prompts, noise = _prepare(pipe, images_or_latents, prompts, len(ts), generator, seed, batch_size)
    with torch.no_grad():
        text = encode_text(pipe, prompts)
    probe = FeatureProbe(unet, adapter.config.layers, detach=not grad, early_exit=True)
    totals: dict[int, torch.Tensor] = {}  # first pair of a batch -> sum over timesteps of its scores
    with torch.set_grad_enabled(grad), probe:
        for part, _, step, _, xt in _noised(pipe, latents, ts, noise, batch_size, progress, "ITM scores"):
            logits = adapter_itm_logits(pipe, adapter, probe, xt, step, text.index(part))
            totals[part.start] = totals.get(part.start, 0) + logits
    return torch.cat(list(totals.values())) / len(ts)


def denoising_score(
    pipe,
    images_or_latents,
    prompts: str | Sequence[str],
    *,
    t: int | Sequence[int] | torch.Tensor | None = None,
    num_timesteps: int = 10,
    unconditional: bool = False,
    seed: int = 0,
    generator: torch.Generator | None = None,
    grad: bool = False,
    batch_size: int | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """DiffusionITM score of (image, prompt) pairs: minus the mean denoising error over timesteps.

    Args:
        pipe, images_or_latents, prompts, seed, generator, grad, batch_size, progress: as in `itm_score`.
        t (`int` or sequence, *optional*): timesteps; defaults to `num_timesteps` evenly spread ones.
        num_timesteps (`int`, defaults to 10): how many timesteps when `t` is not given.
        unconditional (`bool`, defaults to False): subtract the unconditional (empty prompt) error, as
            DiffusionITM's relative score, which removes how easy the image is to denoise at all.

    Returns:
        `torch.Tensor` of shape `(B,)`, float32; higher means a better match.
    """
    unet = get_unet(pipe)
    if t is None:
        _check_count("num_timesteps", num_timesteps)
    ts = default_timesteps(pipe, num_timesteps) if t is None else _timesteps(pipe, t)
    latents, prompts, noise = _prepare(pipe, images_or_latents, prompts, len(ts), generator, seed, batch_size)
    abar, prediction_type = _schedule(pipe)
    with torch.no_grad():
        texts = [encode_text(pipe, prompts)]
        if unconditional:
            texts.append(encode_text(pipe, [""] * len(prompts)))
    totals: dict[int, torch.Tensor] = {}  # first pair of a batch -> sum over timesteps of its score
    with torch.set_grad_enabled(grad):
        for part, x0, step, eps, xt in _noised(pipe, latents, ts, noise, batch_size, progress, "denoising scores"):
            target = _target(abar, prediction_type, x0, eps, step)
            for sign, text in zip((-1.0, 1.0), texts):  # - conditional error [+ unconditional error]
                sub = text.index(part)
                pred = unet(xt, step, sub.encoder_hidden_states, **unet_text_kwargs(pipe, sub, xt)).sample
                error = (pred.float() - target.float()).pow(2).mean(dim=(1, 2, 3))
                totals[part.start] = totals.get(part.start, 0) + sign * error
    return torch.cat(list(totals.values())) / len(ts)


def layout_score(
    pipe,
    images_or_latents,
    layouts: Sequence[Sequence],
    *,
    num_timesteps: int = 10,
    feather: float = 1.0,
    seed: int = 0,
    generator: torch.Generator | None = None,
    grad: bool = False,
    batch_size: int | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """How well each image puts its layout's phrases in their boxes, by the pipeline's own denoising: per latent
    pixel, how much a phrase lowers the denoising error against the empty prompt, inside its box against outside,

        g_i = || f(x_t, t, "") - target_t ||^2 - || f(x_t, t, p_i) - target_t ||^2        (per pixel, mean over t)
        s   = sum_i [ mean over box i of g_i  -  mean outside box i of g_i ]

    (box means weighted by the soft mask `boxes.box_mask`). For the two halves of "A left of B" this is
    the same as "A explains the left half better than B does, and B the right half", so the swapped image scores
    the negative. It locates what the relative denoising error of the whole prompt averages away.

    Args:
        pipe, images_or_latents, seed, generator, grad, batch_size, progress: as in `denoising_score`.
        layouts (Sequence[Sequence[Region]]): per image, its `boxes.Region`s (box and phrase), e.g.
            `interaction.critics.layout.plan_layout(prompt)`; an image with none scores 0.
        num_timesteps (int): evenly spread timesteps. Default 10.
        feather (float): the masks' edge ramp in latent pixels (`boxes.box_mask`). Default 1.0.

    Returns:
        `torch.Tensor` of shape `(B,)`, float32 (float64 for a float64 pipeline); higher means the phrases sit in
        their boxes.
    """
    unet = get_unet(pipe)
    _check_count("num_timesteps", num_timesteps)
    _check_count("batch_size", batch_size, allow_none=True)
    latents = _latents(pipe, images_or_latents)
    if isinstance(layouts, str) or not isinstance(layouts, Sequence) or len(layouts) != len(latents):
        raise ValueError(f"`layouts` must be a list of {len(latents)} lists of Region (one per image).")
    rows = [(b, r) for b, regions in enumerate(layouts) for r in regions]  # (image, region)
    if any(not isinstance(r, Region) for _, r in rows):
        raise ValueError("`layouts` holds something other than a Region; pass boxes.Region(box, prompt) items.")
    if not rows:
        return torch.zeros(len(latents))
    placed = sorted({b for b, _ in rows})  # images with a layout: one empty-prompt row each
    index = torch.tensor([b for b, _ in rows] + placed)
    ts = default_timesteps(pipe, num_timesteps)
    noise = _noise(latents, len(ts), generator, seed)  # drawn for all images, so a score does not depend on the batch
    abar, prediction_type = _schedule(pipe)
    with torch.no_grad():
        text = encode_text(pipe, [r.prompt for _, r in rows] + [""] * len(placed))
    totals: dict[int, torch.Tensor] = {}  # first row of a batch -> sum over timesteps of its error maps
    with torch.set_grad_enabled(grad):
        for part, x0, step, eps, xt in _noised(pipe, latents[index], ts, noise, batch_size, progress, "layout scores"):
            sub = text.index(part)
            pred = unet(xt, step, sub.encoder_hidden_states, **unet_text_kwargs(pipe, sub, xt)).sample
            wide = torch.promote_types(pred.dtype, torch.float32)  # float16 up to float32; float64 stays
            error = (pred.to(wide) - _target(abar, prediction_type, x0, eps, step).to(wide)).pow(2).mean(dim=1)
            totals[part.start] = totals.get(part.start, 0) + error
    errors = torch.cat(list(totals.values())) / len(ts)  # (rows + placed, h, w)
    empty = dict(zip(placed, errors[len(rows) :]))
    terms: list[list[torch.Tensor]] = [[] for _ in range(len(latents))]
    for k, (b, region) in enumerate(rows):
        gain = empty[b] - errors[k]
        inside = box_mask(region.box, *gain.shape, feather=feather).to(gain.device)
        outside = 1 - inside
        terms[b].append((gain * inside).sum() / inside.sum().clamp_min(1e-8))
        terms[b].append(-(gain * outside).sum() / outside.sum().clamp_min(1e-8))
    zero = errors.new_zeros(())
    return torch.stack([sum(t, zero) for t in terms]).cpu()  # summed in order, as the terms were added


def influence_layout(
    pipe,
    model_input: torch.Tensor,
    t: torch.Tensor,
    layouts: Sequence[Sequence],
    feather: float = 1.0,
    encode: Callable[[list[str]], TextEmbeddings] | None = None,
):
    """How much of each phrase's influence on the noise prediction lies in its box, for noisy UNet inputs: what a
    sampler can read of its layout mid-way, since it needs no clean image (unlike `layout_score`). Per latent pixel,

        d_i = || f(z_t, t, p_i) - f(z_t, t, "") ||^2        (mean over channels)
        s   = sum_i  sum(d_i * M_i) / sum(d_i)               (M_i: the soft mask of box i, `boxes.box_mask`)

    so s rises as each phrase's influence moves into its box (for the halves of "A left of B": A's to the left,
    B's to the right). Differentiable when grad is enabled (self-correction's layout term, `scorers.LayoutScorer`).

    Args:
        pipe: a diffusers pipeline with a `UNet2DConditionModel`.
        model_input (`torch.Tensor` of shape `(B, C, h, w)`): UNet inputs (after `scheduler.scale_model_input`).
        t (`torch.Tensor` of shape `(B,)`): their timesteps.
        layouts (Sequence[Sequence[Region]]): per input, its `boxes.Region`s (e.g. `plan_layout(prompt)`); an input
            with none scores 0 and costs nothing.
        feather (float): the masks' edge ramp in latent pixels. Default 1.0.
        encode (callable, *optional*): `texts -> TextEmbeddings` of the regions' prompts, then one "" per input with
            a layout; default `encode_text(pipe, texts)` without gradients (a scorer called at every step passes a
            cached one: `scorers.LayoutScorer`).

    Returns:
        `torch.Tensor` of shape `(B,)`, float32 (float64 for a float64 pipeline), in [0, number of regions].
    """
    unet = get_unet(pipe)
    if isinstance(layouts, str) or not isinstance(layouts, Sequence) or len(layouts) != len(model_input):
        raise ValueError(f"`layouts` must be a list of {len(model_input)} lists of Region (one per input).")
    rows = [(b, r) for b, regions in enumerate(layouts) for r in regions]  # (input, region)
    if any(not isinstance(r, Region) for _, r in rows):
        raise ValueError("`layouts` holds something other than a Region; pass boxes.Region(box, prompt) items.")
    wide = torch.promote_types(model_input.dtype, torch.float32)
    if not rows:
        return model_input.to(wide).sum(dim=(1, 2, 3)) * 0  # no layout: 0, with a (zero) gradient
    placed = sorted({b for b, _ in rows})  # inputs with a layout: one empty-prompt row each
    index = torch.tensor([b for b, _ in rows] + placed, device=model_input.device)
    texts = [r.prompt for _, r in rows] + [""] * len(placed)
    if encode is None:
        with torch.no_grad():
            text = encode_text(pipe, texts)
    else:
        text = encode(texts)
    x = model_input[index]
    pred = unet(x, t[index], text.encoder_hidden_states, **unet_text_kwargs(pipe, text, x)).sample.to(wide)
    empty = dict(zip(placed, pred[len(rows) :]))
    scores = [model_input.new_zeros((), dtype=wide)] * len(model_input)
    for k, (b, region) in enumerate(rows):
        influence = (pred[k] - empty[b]).pow(2).mean(dim=0)  # (h, w)
        mask = box_mask(region.box, *influence.shape, feather=feather).to(influence)
        scores[b] = scores[b] + (influence * mask).sum() / influence.sum().clamp_min(1e-12)
    return torch.stack(scores)


def _check_adapter(adapter: DiscriminativeAdapter, pipe) -> None:
    """The adapter's type and finite weights, and `adapter.check_pipeline(pipe)` once per (adapter, UNet) pair."""
    if not isinstance(adapter, DiscriminativeAdapter):
        raise ValueError(
            f"`adapter` is a {type(adapter).__name__}; pass a DiscriminativeAdapter (DiscriminativeAdapter."
            "for_pipeline(pipe) or .from_pretrained(folder))."
        )
    bad = next((name for name, p in adapter.named_parameters() if not torch.isfinite(p).all()), None)
    if bad is not None:
        raise ValueError(f"The adapter's weight {bad!r} holds NaN or infinite values; load or train it again.")
    key = id(get_unet(pipe))
    if getattr(adapter, "_checked_unet", None) != key:
        adapter.check_pipeline(pipe)
        adapter._checked_unet = key
