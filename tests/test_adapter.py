import math

import pytest
import torch

from discadapt import DiscriminativeAdapter, FeatureProbe
from discadapt.adapter import sine_position_embedding

SMALL = dict(hidden_size=32, num_heads=4)


def _features(adapter, pipe, latents, seed=0):
    ehs = torch.randn(
        latents.shape[0], 6, pipe.unet.config.cross_attention_dim, generator=torch.Generator().manual_seed(seed)
    )
    kwargs = {}
    if pipe.unet.config.addition_embed_type == "text_time":
        kwargs["added_cond_kwargs"] = {
            "text_embeds": torch.zeros(latents.shape[0], 32),
            "time_ids": torch.ones(latents.shape[0], 6),
        }
    with torch.no_grad():
        return FeatureProbe(pipe.unet, adapter.config.layers)(latents, 400, ehs, **kwargs), ehs


def test_for_pipeline_reads_sizes(sd_pipe, sdxl_pipe):
    a = DiscriminativeAdapter.for_pipeline(sd_pipe, layers=["down_blocks.0", "up_blocks.1"], **SMALL)
    assert (list(a.config.in_channels), a.config.text_dim, a.config.token_dim) == ([32, 64], 32, 32)
    xl = DiscriminativeAdapter.for_pipeline(sdxl_pipe, layers="mid_block", **SMALL)
    # SDXL: ITM space = text_encoder_2's projection, tokens = both encoders concatenated
    assert (list(xl.config.in_channels), xl.config.text_dim, xl.config.token_dim) == ([64], 32, 64)


def test_outputs(sd_pipe, latents):
    torch.manual_seed(0)
    adapter = DiscriminativeAdapter.for_pipeline(
        sd_pipe, layers=["mid_block", "up_blocks.1"], num_itm_queries=3, num_rec_queries=5, align_dim=16, **SMALL
    )
    feats, ehs = _features(adapter, sd_pipe, latents)
    assert [f.shape[-1] for f in feats.values()] == [4, 16]  # resized to a common 4x4 grid
    out = adapter(feats, torch.tensor([400] * 3), text_tokens=ehs)
    assert out.itm_embeds.shape == (3, 3, 32) and out.boxes.shape == (3, 5, 4) and out.rec_logits.shape == (3, 5, 2)
    assert out.rec_embeds.shape == (3, 5, 16) and out.token_embeds.shape == (3, 6, 16)
    for unit in (out.itm_embeds, out.rec_embeds, out.token_embeds):
        torch.testing.assert_close(unit.norm(dim=-1), torch.ones(unit.shape[:-1]))
    assert ((out.boxes > 0) & (out.boxes < 1)).all()
    # a list in config order is the same input as the dict; an int timestep is broadcast
    again = adapter(list(feats.values()), 400, text_tokens=ehs)
    assert torch.equal(again.itm_embeds, out.itm_embeds)
    # the timestep conditions the output
    assert not torch.allclose(adapter(feats, 900).itm_embeds, out.itm_embeds)


def test_itm_logits_formula(sd_pipe, latents):
    adapter = DiscriminativeAdapter.for_pipeline(sd_pipe, **SMALL)
    feats, _ = _features(adapter, sd_pipe, latents)
    with torch.no_grad():
        out = adapter(feats, 400)
    text = torch.randn(3, 32)
    q, t = out.itm_embeds.double(), text.double() / text.double().norm(dim=-1, keepdim=True)
    cos = torch.tensor([max(float(q[b, i] @ t[b]) for i in range(q.shape[1])) for b in range(3)], dtype=torch.float64)
    expected = math.exp(math.log(1 / 0.07)) * cos
    torch.testing.assert_close(adapter.itm_logits(out, text).double(), expected, rtol=1e-5, atol=1e-5)
    matrix = adapter.itm_logits(out, text, pairwise=False)
    assert matrix.shape == (3, 3) and matrix.dtype == torch.float32
    torch.testing.assert_close(matrix.diagonal(), adapter.itm_logits(out, text))
    with pytest.raises(ValueError, match="one text per output: got 2 texts for 3"):
        adapter.itm_logits(out, text[:2])


def test_sine_position_embedding():
    emb = sine_position_embedding(8, 2, 3)
    assert emb.shape == (6, 8)
    # token (row 1, col 2): first half encodes row position (1.5 * 16/2 = 12), second half col (2.5 * 16/3)
    row, col = 12.0, 2.5 * 16 / 3
    omega = 1.0 / 10000 ** (torch.arange(2, dtype=torch.float64) / 2)
    expected = torch.cat(
        [torch.sin(row * omega), torch.cos(row * omega), torch.sin(col * omega), torch.cos(col * omega)]
    )
    torch.testing.assert_close(emb[1 * 3 + 2].double(), expected, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="multiple of 4"):
        sine_position_embedding(6, 2, 2)


def test_save_load_round_trip_exact(sd_pipe, latents, tmp_path):
    adapter = DiscriminativeAdapter.for_pipeline(sd_pipe, layers=["mid_block", "up_blocks.0"], **SMALL)
    adapter.save_pretrained(tmp_path)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").is_file()
    loaded = DiscriminativeAdapter.from_pretrained(tmp_path)
    public = lambda config: {k: v for k, v in config.items() if not k.startswith("_")}  # noqa: E731
    assert public(loaded.config) == public(adapter.config)
    ours, theirs = adapter.state_dict(), loaded.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    feats, ehs = _features(adapter, sd_pipe, latents)
    adapter.eval()
    a, b = adapter(feats, 400, ehs), loaded(feats, 400, ehs)
    assert torch.equal(a.itm_embeds, b.itm_embeds) and torch.equal(a.boxes, b.boxes)


def test_refuses_pickled_or_corrupt_weights(sd_pipe, tmp_path):
    adapter = DiscriminativeAdapter.for_pipeline(sd_pipe, **SMALL)
    adapter.save_pretrained(tmp_path, safe_serialization=False)  # writes a pickled .bin
    assert (tmp_path / "diffusion_pytorch_model.bin").is_file()
    with pytest.raises(ValueError, match=r"safetensors only.*weights_only=True"):
        DiscriminativeAdapter.from_pretrained(tmp_path)
    (tmp_path / "diffusion_pytorch_model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a valid safetensors file"):
        DiscriminativeAdapter.from_pretrained(tmp_path)


def test_mismatched_pipeline(sd_pipe):
    adapter = DiscriminativeAdapter.for_pipeline(sd_pipe, layers="down_blocks.0", **SMALL)
    adapter.check_pipeline(sd_pipe)
    with pytest.raises(ValueError, match=r"expects features with channels \[32\] .* gives \[64\]"):
        adapter.check_pipeline(_with_wider_unet())
    other_text = DiscriminativeAdapter(layers=["down_blocks.0"], in_channels=[32], text_dim=48, token_dim=32, **SMALL)
    with pytest.raises(ValueError, match=r"text widths \(pooled, tokens\) = \(48, 32\), .* gives \(32, 32\)"):
        other_text.check_pipeline(sd_pipe)
    with pytest.raises(ValueError, match="have channels \\[64\\], but this adapter expects \\[32\\]"):
        adapter([torch.zeros(1, 64, 4, 4)], 10)


def _with_wider_unet():
    from diffusers import UNet2DConditionModel

    from discadapt.testing import sd_pipeline

    unet = UNet2DConditionModel(
        sample_size=8,
        block_out_channels=(64, 64),
        layers_per_block=1,
        cross_attention_dim=32,
        norm_num_groups=16,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    )
    return sd_pipeline(unet)


def test_bad_config():
    with pytest.raises(ValueError, match="equal length"):
        DiscriminativeAdapter(layers=["mid_block"], in_channels=[4, 8], text_dim=4, token_dim=4)
    with pytest.raises(ValueError, match="multiple of `num_heads`"):
        DiscriminativeAdapter(
            layers=["mid_block"], in_channels=[4], text_dim=4, token_dim=4, hidden_size=30, num_heads=4
        )


def test_itm_text_tokens_is_the_masked_token_mean(sd_pipe, latents):
    from discadapt.scoring import itm_score
    from discadapt.text import encode_text

    adapter = DiscriminativeAdapter.for_pipeline(sd_pipe, itm_text="tokens", **SMALL)
    assert adapter.config.text_dim == sd_pipe.unet.config.cross_attention_dim
    adapter.check_pipeline(sd_pipe)
    prompts = ["a red circle", "a blue square left of a green triangle", "two cats"]
    text = encode_text(sd_pipe, prompts)
    target = adapter.text_target(text)
    for b in range(3):
        real = text.mask[b].bool()
        torch.testing.assert_close(target[b], text.encoder_hidden_states[b, real].mean(0))
    pooled = DiscriminativeAdapter.for_pipeline(sd_pipe, **SMALL)
    assert torch.equal(pooled.text_target(text), text.pooled)
    scores = itm_score(sd_pipe, adapter, latents, prompts, t=300)  # the scorer goes through text_target
    assert scores.shape == (3,) and torch.isfinite(scores).all()
    with pytest.raises(ValueError, match="`itm_text` is 'cls'; pick one of pooled, tokens"):
        DiscriminativeAdapter(layers=["mid_block"], in_channels=[4], text_dim=4, token_dim=4, itm_text="cls")
    with pytest.raises(ValueError, match=r"`text_dim` \(8\) must equal `token_dim` \(4\)"):
        DiscriminativeAdapter(layers=["mid_block"], in_channels=[4], text_dim=8, token_dim=4, itm_text="tokens")


def test_read_text_puts_the_prompt_tokens_in_the_memory(sd_pipe, latents, tmp_path):
    torch.manual_seed(0)
    adapter = DiscriminativeAdapter.for_pipeline(sd_pipe, read_text=True, **SMALL).eval()
    feats, ehs = _features(adapter, sd_pipe, latents)
    out = adapter(feats, 400, text_tokens=ehs)
    # the same UNet features with other words give other ITM embeddings: the adapter reads the text itself
    other = adapter(feats, 400, text_tokens=ehs.flip(1))
    assert not torch.allclose(out.itm_embeds, other.itm_embeds)
    # and the words enter as the encoder's extra tokens: the projection gets a gradient from the ITM embeddings
    out.itm_embeds.sum().backward()
    assert adapter.text_proj.weight.grad.abs().sum() > 0 and adapter.text_type.grad.abs().sum() > 0
    # a plain adapter has no such weights; read_text survives save and load
    assert not hasattr(DiscriminativeAdapter.for_pipeline(sd_pipe, **SMALL), "text_proj")
    adapter.save_pretrained(tmp_path)
    loaded = DiscriminativeAdapter.from_pretrained(tmp_path).eval()
    assert loaded.config.read_text and torch.equal(loaded(feats, 400, text_tokens=ehs).itm_embeds, out.itm_embeds)
    with pytest.raises(ValueError, match=r"read_text=True\): pass `text_tokens` of shape \(B=3, L, 32\).*got none"):
        adapter(feats, 400)
    with pytest.raises(ValueError, match=r"got shape \(2, 6, 32\)"):
        adapter(feats, 400, text_tokens=ehs[:2])
