"""The losses of one micro-batch of DPT's stages 1 and 2: ITM + REC (+ denoising in stage 2), as one `nn.Module`.

`DiscriminativeLoss` holds the UNet and the adapter, so that accelerate wraps one module (DistributedDataParallel
sees the adapter's and, in stage 2, the LoRA's parameters; the frozen ones need no gradient); the stage objectives
(`probe.ProbeObjective`, `tune.TuneObjective`) hand it to the engine. For a `Batch` of pairs:

1. each pair (image i, text j, sample b) is noised with sample b's timestep and noise,
   x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps (the pipeline's training schedule, as `discadapt.scoring`);
2. the UNet, conditioned on text j, runs through an early-exit `FeatureProbe` up to the last probed block
   (without gradients in stage 1), and the adapter reads the features: ITM logits s(x_i, y_j) in float32 and
   the REC heads;
3. losses: the ITM contrastive losses (`discadapt.losses.itm`) over the text-side, image-side and in-batch
   tables, `RECLoss` on the REC pairs (boxes normalised by the number of boxes over all processes), and in
   stage 2 `denoising_loss` of a full UNet pass on each positive (image, caption) at its own uniform timestep, and
   optionally `denoising_contrast_loss`: the same noised image denoised under the caption's hard-negative captions
   (those of its text-side row), whose errors must exceed the caption's; and optionally
   `attention_grounding_loss` on the cross-attention maps of that positive pass (`CrossAttentionMaps`), for the
   pairs whose item gives boxes with their words (its REC targets, when the REC phrase is the caption):

    L = itm_weight * L_itm + rec_weight * L_rec
        [+ denoise_weight * L_denoise + contrast_weight * L_contrast + grounding_weight * L_grounding]
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from ..adapter import AdapterOutput, DiscriminativeAdapter
from ..cross_attention import CrossAttentionMaps
from ..losses import (
    RECLoss,
    attention_grounding_loss,
    denoising_contrast_loss,
    denoising_errors,
    denoising_loss,
    in_batch_loss,
    multiple_choice_loss,
)
from ..probe import FeatureProbe
from ..scoring import add_noise
from ..text import TextEmbeddings, get_unet, unet_text_kwargs
from .config import TrainConfig, TuneConfig
from .data import Batch

__all__ = ["DiscriminativeLoss", "gather_table", "pair_outputs"]


def pair_outputs(
    pipe,
    adapter: DiscriminativeAdapter,
    probe: FeatureProbe,
    latents: torch.Tensor,
    text: TextEmbeddings,
    pairs: torch.Tensor,
    timesteps: torch.Tensor,
    noise: torch.Tensor,
    chunk: int | None = None,
    unet_grad: bool = False,
) -> tuple[torch.Tensor, AdapterOutput]:
    """Adapter outputs for (image, text, sample) pairs.

    Args:
        pipe: the pipeline (for its scheduler's `alphas_cumprod` and SDXL's added conditioning).
        adapter (`DiscriminativeAdapter`), probe (`FeatureProbe` over `adapter.config.layers`).
        latents (`torch.Tensor` of shape `(N_img, C, h, w)`): clean latents.
        text (`TextEmbeddings`): N_txt encoded texts.
        pairs (`torch.Tensor` of shape `(P, 3)`, long): (image, text, sample) indices.
        timesteps (`torch.Tensor` of shape `(B,)`), noise (`(B, C, h, w)`): per sample.
        chunk (`int`, *optional*): pairs per UNet call.
        unet_grad (`bool`): keep the UNet's graph (stage 2); else the UNet runs under `torch.no_grad`.

    Returns:
        `(logits, output)`: ITM logits `(P,)` float32 and the `AdapterOutput` of the P pairs.
    """
    abar = pipe.scheduler.alphas_cumprod
    logits, outputs = [], []
    size = chunk or max(len(pairs), 1)
    for start in range(0, len(pairs), size):
        image, txt, sample = pairs[start : start + size].unbind(1)  # (p,) each
        t = timesteps[sample]
        x_t = add_noise(abar, latents[image], noise[sample].to(latents.dtype), t)  # (p, C, h, w)
        sub = text.index(txt)
        with torch.set_grad_enabled(unet_grad and torch.is_grad_enabled()):
            feats = probe(x_t, t, sub.encoder_hidden_states, **unet_text_kwargs(pipe, sub, x_t))
        out = adapter(feats, t, text_tokens=sub.encoder_hidden_states)
        logits.append(adapter.itm_logits(out, adapter.text_target(sub)))  # (p,) float32
        outputs.append(out)
    if not outputs:
        raise ValueError("the batch has no (image, text) pair to score; check that its items have captions or boxes.")
    merged = AdapterOutput(
        **{
            key: torch.cat([getattr(o, key) for o in outputs])
            for key in ("itm_embeds", "boxes", "rec_logits", "rec_embeds", "token_embeds")
        }
    )
    return torch.cat(logits), merged


def gather_table(logits: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Scores of a table of pair indices `(rows, 1 + k)`, with -inf where the index is -1 (padding)."""
    scores = logits[table.clamp(min=0)]  # (rows, 1 + k)
    return scores.masked_fill(table < 0, float("-inf"))


class DiscriminativeLoss(nn.Module):
    """Losses of a micro-batch (see the module docstring).

    Args:
        pipe: the diffusers pipeline (its UNet is registered here; VAE and text encoders stay outside).
        adapter (`DiscriminativeAdapter`): the adapter being trained.
        config (`TrainConfig`): loss weights and options; a `TuneConfig` adds the denoising loss.
        train_unet (`bool`): backpropagate into the UNet (stage 2, LoRA).
    """

    def __init__(self, pipe, adapter: DiscriminativeAdapter, config: TrainConfig, train_unet: bool):
        super().__init__()
        self.unet = get_unet(pipe)
        self.adapter = adapter
        self.pipe = pipe  # not a module: VAE and text encoders are used outside (frozen, no_grad)
        self.config = config
        self.train_unet = train_unet
        self.probe = FeatureProbe(self.unet, adapter.config.layers, detach=not train_unet, early_exit=True)
        self.rec = RECLoss(config.rec)
        self.maps = CrossAttentionMaps(self.unet) if getattr(config, "grounding_weight", 0) else None

    def forward(self, latents: torch.Tensor, text: TextEmbeddings, batch: Batch, num_boxes: float) -> dict:
        """
        Args:
            latents (`torch.Tensor` of shape `(N_img, C, h, w)`): VAE latents of `batch.images`.
            text (`TextEmbeddings`): encodings of `batch.texts`.
            batch (`Batch`): the micro-batch, on the latents' device.
            num_boxes (`float`): REC normaliser (boxes per process, averaged over processes).

        Returns:
            `dict[str, torch.Tensor]`: `loss` and its parts (`loss_itm`, `loss_itm_text`, ..., `loss_rec`,
            `loss_denoise`, `loss_contrast`), float32 scalars.
        """
        c = self.config
        logits, out = pair_outputs(
            self.pipe,
            self.adapter,
            self.probe,
            latents,
            text,
            batch.pairs,
            batch.timesteps,
            batch.noise,
            c.pair_batch_size,
            unet_grad=self.train_unet,
        )
        # Zero times every output keeps every parameter in the graph when a term is absent from this batch.
        anchor = logits.sum() + out.boxes.sum() + out.rec_logits.sum() + out.rec_embeds.sum() + out.token_embeds.sum()
        losses = {"loss": 0.0 * anchor}
        parts = {}  # side -> (weight, loss); the tables have different rows, so each is its own mean
        if c.itm_text_weight and len(batch.text_rows):
            parts["text"] = (c.itm_text_weight, multiple_choice_loss(gather_table(logits, batch.text_table)))
        if c.itm_image_weight and len(batch.image_rows):
            parts["image"] = (c.itm_image_weight, multiple_choice_loss(gather_table(logits, batch.image_table)))
        if c.itm_batch_weight and batch.batch_table is not None:
            parts["batch"] = (c.itm_batch_weight, in_batch_loss(logits[batch.batch_table]))
        if c.itm_weight and parts:
            total_weight = sum(weight for weight, _ in parts.values())
            losses["loss_itm"] = sum(weight * value for weight, value in parts.values()) / total_weight
            losses.update({f"loss_itm_{side}": value for side, (_, value) in parts.items()})
            losses["loss"] = losses["loss"] + c.itm_weight * losses["loss_itm"]
        if c.rec_weight and len(batch.rec_pairs):
            sel = batch.rec_pairs
            rec_out = AdapterOutput(
                itm_embeds=out.itm_embeds[sel],
                boxes=out.boxes[sel],
                rec_logits=out.rec_logits[sel],
                rec_embeds=out.rec_embeds[sel],
                token_embeds=out.token_embeds[sel],
            )
            token_mask = text.mask[batch.pairs[sel, 1]].bool()  # (R, L)
            targets = [{"boxes": b, "tokens": m} for b, m in zip(batch.rec_boxes, batch.rec_tokens)]
            rec = self.rec(rec_out, targets, token_mask=token_mask, num_boxes=num_boxes)
            losses["loss_rec"] = rec["loss"]
            losses["loss"] = losses["loss"] + c.rec_weight * rec["loss"]
        tuning = isinstance(c, TuneConfig) and len(batch.denoise_images) > 0
        if tuning and c.denoising_pass:
            x0, noise, t = self._denoise_inputs(latents, batch)
            grounded = self._grounded(batch) if self.maps is not None else None
            with self.maps if grounded is not None else contextlib.nullcontext():
                pred = self._predict(x0, noise, t, text.index(batch.denoise_texts))
            if grounded is not None:
                rows, recs = grounded
                grids = [CrossAttentionMaps.grid(m.shape[1], *x0.shape[-2:]) for m in self.maps]
                boxes = [batch.rec_boxes[r] for r in recs.tolist()]
                words = [batch.rec_tokens[r] for r in recs.tolist()]
                losses["loss_grounding"] = attention_grounding_loss([m[rows] for m in self.maps], grids, boxes, words)
                losses["loss"] = losses["loss"] + c.grounding_weight * losses["loss_grounding"]
                self.maps.clear()
            if c.denoise_weight:
                losses["loss_denoise"] = denoising_loss(pred, x0, noise, t, self.pipe.scheduler, snr_gamma=c.snr_gamma)
                losses["loss"] = losses["loss"] + c.denoise_weight * losses["loss_denoise"]
            if c.contrast_weight and len(batch.text_rows):
                errors = denoising_errors(pred, x0, noise, t, self.pipe.scheduler)  # (B_c,)
                losses["loss_contrast"] = self._contrast(errors, x0, noise, t, text, batch)
                losses["loss"] = losses["loss"] + c.contrast_weight * losses["loss_contrast"]
        return losses

    def _grounded(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor] | None:
        """`(denoising pairs, REC samples)` whose image and text agree (the REC phrase is the pair's caption, not
        dropped), or None when no pair has boxes for its words."""
        image, text = batch.pairs[batch.rec_pairs].T[:2]  # (R,) each
        same = (batch.denoise_images[:, None] == image) & (batch.denoise_texts[:, None] == text)
        rows, recs = (same & ~batch.denoise_dropped[:, None]).nonzero(as_tuple=True)
        return (rows, recs) if len(rows) else None

    def _denoise_inputs(self, latents: torch.Tensor, batch: Batch):
        """Clean latents, noise and uniform timesteps of the positive (image, caption) pairs."""
        x0 = latents[batch.denoise_images]  # (B_c, C, h, w)
        return x0, batch.denoise_noise.to(x0.dtype), batch.denoise_timesteps

    def _predict(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, text: TextEmbeddings) -> torch.Tensor:
        """The UNet's prediction on x0 noised with `noise` at `t`, conditioned on `text` (one per row)."""
        x_t = add_noise(self.pipe.scheduler.alphas_cumprod, x0, noise, t)
        return self.unet(x_t, t, text.encoder_hidden_states, **unet_text_kwargs(self.pipe, text, x_t)).sample

    def _contrast(self, errors, x0, noise, t, text: TextEmbeddings, batch: Batch) -> torch.Tensor:
        """Denoising-contrast loss of the text-side rows: each row's image, noised as its denoising pair, under the
        row's negative captions; `errors` (B_c,) are the positives' (column 0)."""
        where = torch.full((len(batch.images),), -1, dtype=torch.long, device=errors.device)
        where[batch.denoise_images] = torch.arange(len(batch.denoise_images), device=errors.device)
        rows = where[batch.text_rows]  # (R,): each row's denoising pair
        negatives = batch.text_table[:, 1:]  # (R, k) pair indices, -1 pads
        kept = ~batch.denoise_dropped[rows]  # a pair denoised under the empty caption has no caption to contrast
        rows, negatives = rows[kept], negatives[kept]
        if not len(rows):
            return errors.sum() * 0.0
        row, col = (negatives >= 0).nonzero(as_tuple=True)
        d = rows[row]
        texts = batch.pairs[negatives[row, col], 1]
        pred = self._predict(x0[d], noise[d], t[d], text.index(texts))
        table = torch.full(negatives.shape, float("inf"), dtype=errors.dtype, device=errors.device)
        table[row, col] = denoising_errors(pred, x0[d], noise[d], t[d], self.pipe.scheduler)
        return denoising_contrast_loss(torch.cat([errors[rows, None], table], dim=1), self.config.contrast_temperature)
