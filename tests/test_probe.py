import pytest
import torch

from discadapt import FeatureInfo, FeatureProbe, block_names


def _inputs(pipe, latents):
    ehs = torch.randn(
        latents.shape[0], 5, pipe.unet.config.cross_attention_dim, generator=torch.Generator().manual_seed(2)
    )
    return latents, torch.tensor([300] * latents.shape[0]), ehs


def _hooked_forward(unet, names, *inputs, **kwargs):
    """Block outputs recorded by plain hooks around an ordinary full forward (the reference)."""
    modules = dict(unet.named_modules())
    out = {}

    def keep(name):
        return lambda m, a, o: out.__setitem__(name, o[0] if isinstance(o, tuple) else o)

    handles = [modules[n].register_forward_hook(keep(n)) for n in names]
    with torch.no_grad():
        unet(*inputs, **kwargs)
    for h in handles:
        h.remove()
    return out


def test_block_names(sd_pipe):
    assert block_names(sd_pipe.unet) == [
        "down_blocks.0",
        "down_blocks.1",
        "down_blocks.2",
        "mid_block",
        "up_blocks.0",
        "up_blocks.1",
        "up_blocks.2",
    ]


@pytest.mark.parametrize("early_exit", [True, False])
def test_features_equal_block_outputs_of_plain_forward(sd_pipe, latents, early_exit):
    unet = sd_pipe.unet
    names = block_names(unet)
    inputs = _inputs(sd_pipe, latents)
    expected = _hooked_forward(unet, names, *inputs)
    with torch.no_grad():
        feats = FeatureProbe(unet, names, early_exit=early_exit)(*inputs)
    assert list(feats) == names
    for name in names:
        assert torch.equal(feats[name], expected[name]), name


def test_first_block_equals_manual_computation(sd_pipe, latents):
    """Independent of hooks: conv_in, time embedding and down_blocks[0] called by hand."""
    unet = sd_pipe.unet
    x, t, ehs = _inputs(sd_pipe, latents)
    with torch.no_grad():
        emb = unet.time_embedding(unet.time_proj(t).to(x.dtype))
        manual, _ = unet.down_blocks[0](unet.conv_in(x), emb)
        feats = FeatureProbe(unet, "down_blocks.0")(x, t, ehs)
    torch.testing.assert_close(feats["down_blocks.0"], manual, rtol=0, atol=1e-6)


def _count_calls(unet):
    counts = {}
    handles = []
    for name, module in unet.named_modules():
        if name.count(".") == 3 and name.split(".")[2] in ("resnets", "attentions"):  # e.g. up_blocks.1.resnets.0
            counts[name] = 0
            handles.append(module.register_forward_hook(lambda m, a, o, n=name: counts.__setitem__(n, counts[n] + 1)))
    return counts, handles


def test_early_exit_identical_features_and_fewer_block_calls(sd_pipe, latents):
    unet = sd_pipe.unet
    inputs = _inputs(sd_pipe, latents)
    runs = {}
    for early_exit in (False, True):
        counts, handles = _count_calls(unet)
        with torch.no_grad():
            feats = FeatureProbe(unet, ["mid_block", "up_blocks.0"], early_exit=early_exit)(*inputs)
        for h in handles:
            h.remove()
        runs[early_exit] = feats, counts
    (full, full_counts), (early, early_counts) = runs[False], runs[True]
    assert all(torch.equal(full[k], early[k]) for k in full)
    assert sum(early_counts.values()) < sum(full_counts.values())
    later = [n for n in early_counts if n.startswith(("up_blocks.1", "up_blocks.2"))]
    assert later and all(early_counts[n] == 0 for n in later)  # nothing after up_blocks.0 ran
    assert all(full_counts[n] == 1 for n in later)


def test_passive_use_as_context_manager(sd_pipe, latents):
    unet = sd_pipe.unet
    inputs = _inputs(sd_pipe, latents)
    with FeatureProbe(unet, ["up_blocks.1"], early_exit=False) as probe:
        assert probe.attached
        with torch.no_grad():
            out = unet(*inputs).sample  # the caller's own forward; early exit never interrupts it
        feats = probe.features
    assert out.shape == latents.shape
    assert not probe.attached and not unet.up_blocks[1]._forward_hooks
    assert torch.equal(feats["up_blocks.1"], _hooked_forward(unet, ["up_blocks.1"], *inputs)["up_blocks.1"])


def test_detach_or_keep_graph(sd_pipe, latents):
    x, t, ehs = _inputs(sd_pipe, latents)
    x = x.clone().requires_grad_(True)
    kept = FeatureProbe(sd_pipe.unet, "mid_block", detach=False)(x, t, ehs)["mid_block"]
    (grad,) = torch.autograd.grad(kept.square().sum(), x)
    assert grad.abs().sum() > 0
    assert not FeatureProbe(sd_pipe.unet, "mid_block")(x, t, ehs)["mid_block"].requires_grad
    assert not sd_pipe.unet.mid_block._forward_hooks  # a call attaches only for its duration


def test_finer_module_paths(sd_pipe, latents):
    name = "up_blocks.1.attentions.0"
    inputs = _inputs(sd_pipe, latents)
    with torch.no_grad():
        feats = FeatureProbe(sd_pipe.unet, name)(*inputs)
    assert torch.equal(feats[name], _hooked_forward(sd_pipe.unet, [name], *inputs)[name])


def test_describe_reads_shapes_from_the_model(sd_pipe, sdxl_pipe):
    probe = FeatureProbe(sd_pipe.unet, ["down_blocks.0", "mid_block", "up_blocks.0", "up_blocks.2"])
    assert probe.describe() == {  # default: unet.config.sample_size = 16
        "down_blocks.0": FeatureInfo(32, 8, 8, 2),
        "mid_block": FeatureInfo(64, 4, 4, 4),
        "up_blocks.0": FeatureInfo(64, 8, 8, 2),
        "up_blocks.2": FeatureInfo(32, 16, 16, 1),
    }
    assert probe.describe(32, 48)["mid_block"] == FeatureInfo(64, 8, 12, 4)
    # SDXL-shaped UNet with added text_time conditioning
    xl = FeatureProbe(sdxl_pipe.unet, ["down_blocks.1", "up_blocks.0"]).describe(16, 16)
    assert xl == {"down_blocks.1": FeatureInfo(64, 8, 8, 2), "up_blocks.0": FeatureInfo(64, 16, 16, 1)}


def test_sdxl_probe_with_added_cond_kwargs(sdxl_pipe, latents):
    unet = sdxl_pipe.unet
    b = latents.shape[0]
    kwargs = {"added_cond_kwargs": {"text_embeds": torch.randn(b, 32), "time_ids": torch.ones(b, 6) * 32}}
    ehs = torch.randn(b, 7, 64)
    t = torch.tensor([10] * b)
    expected = _hooked_forward(unet, ["mid_block"], latents, t, ehs, **kwargs)
    with torch.no_grad():
        feats = FeatureProbe(unet, "mid_block")(latents, t, ehs, **kwargs)
    assert torch.equal(feats["mid_block"], expected["mid_block"])


def test_bad_layer_names(sd_pipe):
    with pytest.raises(ValueError, match=r"names 'up_blocks.7' .* down_blocks.0, .* mid_block, .* up_blocks.2"):
        FeatureProbe(sd_pipe.unet, "up_blocks.7")
    with pytest.raises(ValueError, match="`layers` is empty"):
        FeatureProbe(sd_pipe.unet, [])
    with pytest.raises(ValueError, match="lists a block twice"):
        FeatureProbe(sd_pipe.unet, ["mid_block", "mid_block"])
    with pytest.raises(ValueError, match="not a diffusers UNet"):
        FeatureProbe(sd_pipe.vae, "mid_block")


def test_describe_rejects_modules_without_a_feature_map(sd_pipe):
    probe = FeatureProbe(sd_pipe.unet, ["mid_block", "up_blocks.1.attentions.0.transformer_blocks.0"])
    with pytest.raises(
        ValueError, match=r"not a \(B, C, h, w\) feature map: \{'up_blocks.1.attentions.0.transformer_blocks.0'"
    ):
        probe.describe()


def test_describe_non_square_sample_size():
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel(
        sample_size=(8, 16),
        block_out_channels=(32, 32),
        layers_per_block=1,
        cross_attention_dim=8,
        norm_num_groups=8,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
    )
    assert FeatureProbe(unet, "mid_block").describe() == {"mid_block": FeatureInfo(32, 4, 8, 2)}
