"""`FeatureProbe` and `DiscriminativeAdapter.for_pipeline` on UNets built from the real SD 1.5, SD 2.1 and SDXL
configs (`discadapt.testing.unet_config`), with random weights: the channel widths and block layouts are the
real ones, so these are the real feature shapes.

Probed block outputs at each model's default latent size (channels @ height x width, stride in latent pixels):

    block           SD 1.5 (64x64 latents)   SD 2.1 (96x96)        SDXL (128x128)
    down_blocks.0   320 @ 32x32   /2          320 @ 48x48   /2      320 @ 64x64    /2
    down_blocks.1   640 @ 16x16   /4          640 @ 24x24   /4      640 @ 32x32    /4
    down_blocks.2   1280 @ 8x8    /8          1280 @ 12x12  /8      1280 @ 32x32   /4  (last level: no downsampler)
    down_blocks.3   1280 @ 8x8    /8          1280 @ 12x12  /8      -
    mid_block       1280 @ 8x8    /8          1280 @ 12x12  /8      1280 @ 32x32   /4
    up_blocks.0     1280 @ 16x16  /4          1280 @ 24x24  /4      1280 @ 64x64   /2
    up_blocks.1     1280 @ 32x32  /2          1280 @ 48x48  /2      640 @ 128x128  /1
    up_blocks.2     640 @ 64x64   /1          640 @ 96x96   /1      320 @ 128x128  /1
    up_blocks.3     320 @ 64x64   /1          320 @ 96x96   /1      -

A block's output is taken after its down/upsampler, so down block i sits at stride 2^(i+1) (the last one has no
downsampler) and up block i at stride 2^(levels-2-i) (the last one has no upsampler). Finer paths are probed too:
`up_blocks.1.attentions.0` (SD) and `up_blocks.0.attentions.0` (SDXL) run before their block's upsampler,
1280 @ stride 4.

Cost on 2 CPU cores: building one of these UNets takes 2-4 s (up to 10 s on a busy machine) and 2.6-3.5 GB
(SDXL is built with `transformer_layers_per_block=1`: its real widths and layout, 641M instead of 2.57B
parameters). Each class builds its UNet once (class-scoped fixtures) and drops it when the class is done, so only
one is alive at a time: about 45 s and 4.4 GB peak for the file. Forward passes run on small non-square latents
(16x24). The full-depth configs are also checked at their default latent size on the meta device (shapes only,
no compute), and, under `-m slow` (+20 s), with real weights.
"""

from __future__ import annotations

import gc
import math
import types

import pytest
import torch
from diffusers import UNet2DConditionModel

from discadapt import DiscriminativeAdapter, FeatureInfo, FeatureProbe, block_names, itm_score
from discadapt.testing import sd_pipeline, sdxl_pipeline, unet_config

# Small latents for real forward passes: non-square, so height and width cannot be swapped unnoticed.
H, W = 16, 24
BATCH = 2

SD15_SHAPES = {
    "down_blocks.0": FeatureInfo(channels=320, height=32, width=32, stride=2),
    "down_blocks.1": FeatureInfo(channels=640, height=16, width=16, stride=4),
    "down_blocks.2": FeatureInfo(channels=1280, height=8, width=8, stride=8),
    "down_blocks.3": FeatureInfo(channels=1280, height=8, width=8, stride=8),
    "mid_block": FeatureInfo(channels=1280, height=8, width=8, stride=8),
    "up_blocks.0": FeatureInfo(channels=1280, height=16, width=16, stride=4),
    "up_blocks.1": FeatureInfo(channels=1280, height=32, width=32, stride=2),
    "up_blocks.2": FeatureInfo(channels=640, height=64, width=64, stride=1),
    "up_blocks.3": FeatureInfo(channels=320, height=64, width=64, stride=1),
}
SD15_FINE = {"up_blocks.1.attentions.0": FeatureInfo(channels=1280, height=16, width=16, stride=4)}
SD21_SHAPES = {
    "down_blocks.0": FeatureInfo(channels=320, height=48, width=48, stride=2),
    "down_blocks.1": FeatureInfo(channels=640, height=24, width=24, stride=4),
    "down_blocks.2": FeatureInfo(channels=1280, height=12, width=12, stride=8),
    "down_blocks.3": FeatureInfo(channels=1280, height=12, width=12, stride=8),
    "mid_block": FeatureInfo(channels=1280, height=12, width=12, stride=8),
    "up_blocks.0": FeatureInfo(channels=1280, height=24, width=24, stride=4),
    "up_blocks.1": FeatureInfo(channels=1280, height=48, width=48, stride=2),
    "up_blocks.2": FeatureInfo(channels=640, height=96, width=96, stride=1),
    "up_blocks.3": FeatureInfo(channels=320, height=96, width=96, stride=1),
}
SD21_FINE = {"up_blocks.1.attentions.0": FeatureInfo(channels=1280, height=24, width=24, stride=4)}
SDXL_SHAPES = {
    "down_blocks.0": FeatureInfo(channels=320, height=64, width=64, stride=2),
    "down_blocks.1": FeatureInfo(channels=640, height=32, width=32, stride=4),
    "down_blocks.2": FeatureInfo(channels=1280, height=32, width=32, stride=4),
    "mid_block": FeatureInfo(channels=1280, height=32, width=32, stride=4),
    "up_blocks.0": FeatureInfo(channels=1280, height=64, width=64, stride=2),
    "up_blocks.1": FeatureInfo(channels=640, height=128, width=128, stride=1),
    "up_blocks.2": FeatureInfo(channels=320, height=128, width=128, stride=1),
}
SDXL_FINE = {"up_blocks.0.attentions.0": FeatureInfo(channels=1280, height=32, width=32, stride=4)}

# Published parameter counts of the full UNets (stable-diffusion-v1-5, stable-diffusion-2-1,
# stable-diffusion-xl-base-1.0): the configs are the real architectures, not just the same widths.
REAL_PARAMETERS = {"sd15": 859_520_964, "sd21": 865_910_724, "sdxl": 2_567_463_684}


# ---------------------------------------------------------------------------------------------------------------
# helpers


def _expected_at(shapes: dict[str, FeatureInfo], height: int, width: int) -> dict[str, FeatureInfo]:
    return {
        name: FeatureInfo(info.channels, math.ceil(height / info.stride), math.ceil(width / info.stride), info.stride)
        for name, info in shapes.items()
    }


def _count_calls(module: torch.nn.Module) -> tuple[list[int], object]:
    calls = [0]
    handle = module.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls, handle


def _meta_inputs(unet, height, width):
    cfg = unet.config
    kwargs = dict(
        sample=torch.zeros(1, cfg.in_channels, height, width, device="meta"),
        timestep=torch.zeros(1, dtype=torch.long, device="meta"),
        encoder_hidden_states=torch.zeros(1, 77, cfg.cross_attention_dim, device="meta"),
    )
    if cfg.addition_embed_type == "text_time":
        kwargs["added_cond_kwargs"] = {
            "text_embeds": torch.zeros(1, 1280, device="meta"),
            "time_ids": torch.zeros(1, 6, device="meta"),
        }
    return kwargs


# ---------------------------------------------------------------------------------------------------------------
# fixtures: one real-size UNet per test class, alive only while that class runs


@pytest.fixture(scope="class")
def model(request):
    """`model.unet`: the class's UNet with random weights. Teardown drops it and collects, so the next class
    does not hold two multi-GB UNets at once."""
    spec = request.cls
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(unet_config(spec.ARCH, **spec.OVERRIDES)).eval().requires_grad_(False)
    holder = types.SimpleNamespace(unet=unet)
    del unet
    yield holder
    holder.unet = None
    gc.collect()


@pytest.fixture(scope="class")
def inputs(model, request):
    """UNet inputs for BATCH latents of H x W, seeded, with per-sample timesteps."""
    cfg = model.unet.config
    gen = torch.Generator().manual_seed(0)
    kwargs = dict(
        sample=torch.randn(BATCH, cfg.in_channels, H, W, generator=gen),
        timestep=torch.tensor([100, 700]),
        encoder_hidden_states=torch.randn(BATCH, 77, cfg.cross_attention_dim, generator=gen),
    )
    if request.cls.ARCH == "sdxl":
        kwargs["added_cond_kwargs"] = {
            "text_embeds": torch.randn(BATCH, 1280, generator=gen),
            "time_ids": torch.tensor([[8.0 * H, 8.0 * W, 0, 0, 8.0 * H, 8.0 * W]] * BATCH),
        }
    return kwargs


@pytest.fixture(scope="class")
def reference(model, inputs, request):
    """Features of every block and the finer path from one full forward (`early_exit=False`)."""
    unet = model.unet
    calls, handle = _count_calls(unet.conv_out)
    try:
        with torch.no_grad():
            feats = FeatureProbe(unet, list(request.cls.shapes()), early_exit=False)(**inputs)
    finally:
        handle.remove()
    assert calls[0] == 1, "early_exit=False must run the whole UNet"
    return feats


@pytest.fixture(scope="class")
def pipe(model, request):
    return request.cls.build_pipeline(model.unet)


# ---------------------------------------------------------------------------------------------------------------
# checks shared by the three architectures (not collected itself: no `Test` prefix)


class _RealUNetChecks:
    ARCH: str
    OVERRIDES: dict = {}
    SAMPLE_SIZE: int  # default latent size (unet.config.sample_size)
    BLOCKS: dict[str, FeatureInfo]  # top-level blocks at the default latent size
    FINE: dict[str, FeatureInfo]  # a finer module path inside a block, same size
    TEXT_DIM: int  # pooled prompt embedding (ITM target space)
    TOKEN_DIM: int  # prompt token embeddings = cross-attention width
    ADAPTER_LAYERS: list[str]

    @staticmethod
    def build_pipeline(unet):
        return sd_pipeline(unet)

    @classmethod
    def shapes(cls) -> dict[str, FeatureInfo]:
        """Everything probed: the blocks, then the finer path."""
        return {**cls.BLOCKS, **cls.FINE}

    # the architecture -------------------------------------------------------------------------------------
    def test_full_config_is_the_real_architecture(self):
        """Built on the meta device (no memory, no time): exact published parameter count."""
        with torch.device("meta"):
            unet = UNet2DConditionModel.from_config(unet_config(self.ARCH))
        assert sum(p.numel() for p in unet.parameters()) == REAL_PARAMETERS[self.ARCH]

    def test_full_config_shapes_at_default_size_on_meta(self):
        """The full-depth UNet (SDXL with its 10-layer transformers too) run at its real default latent size,
        shapes only: every block gives the table's shape, and `describe()` agrees."""
        with torch.device("meta"):
            unet = UNet2DConditionModel.from_config(unet_config(self.ARCH))
        size = unet.config.sample_size
        probe = FeatureProbe(unet, list(self.shapes()), early_exit=False)
        feats = probe(**_meta_inputs(unet, size, size))
        for name, info in self.shapes().items():
            assert tuple(feats[name].shape) == (1, info.channels, info.height, info.width), name
        assert probe.describe() == self.shapes()

    def test_block_names(self, model):
        assert block_names(model.unet) == list(self.BLOCKS)

    # describe ---------------------------------------------------------------------------------------------
    def test_describe_at_default_latent_size(self, model):
        assert model.unet.config.sample_size == self.SAMPLE_SIZE
        info = FeatureProbe(model.unet, list(self.shapes())).describe()
        assert list(info) == list(self.shapes())
        assert info == self.shapes()

    def test_describe_small_and_explicit_sizes(self, model):
        probe = FeatureProbe(model.unet, list(self.shapes()))
        assert probe.describe(H, W) == _expected_at(self.shapes(), H, W)
        size = model.unet.config.sample_size
        assert probe.describe(size, size) == self.shapes()

    # real forward passes ---------------------------------------------------------------------------------------
    def test_full_run_shapes(self, reference):
        """Real features at H x W: the table's channels at ceil(H / stride) x ceil(W / stride)
        (e.g. SD 1.5 up_blocks.1: 1280 @ 8x12), as `describe(H, W)` says (test above)."""
        assert list(reference) == list(self.shapes())
        for name, info in _expected_at(self.shapes(), H, W).items():
            assert tuple(reference[name].shape) == (BATCH, info.channels, info.height, info.width), name
            assert reference[name].dtype == torch.float32
            assert torch.isfinite(reference[name]).all(), name

    def test_early_exit_features_equal_full_run(self, model, inputs, reference, layer):
        """`FeatureProbe(unet, [layer])(...)` stops after `layer` (conv_out never runs), gives exactly the
        full run's features, and leaves no hook behind."""
        unet = model.unet
        calls, handle = _count_calls(unet.conv_out)
        try:
            with torch.no_grad():
                feats = FeatureProbe(unet, [layer])(**inputs)
        finally:
            handle.remove()
        assert calls[0] == 0
        assert list(feats) == [layer]
        info = _expected_at(self.shapes(), H, W)[layer]
        assert tuple(feats[layer].shape) == (BATCH, info.channels, info.height, info.width)
        assert torch.equal(feats[layer], reference[layer])
        assert not dict(unet.named_modules())[layer]._forward_hooks

    def test_adapter_forward_on_probed_features(self, model, reference):
        """An adapter built from `describe()`'s channels reads the probed real-size features."""
        layers = self.ADAPTER_LAYERS
        info = FeatureProbe(model.unet, layers).describe()
        torch.manual_seed(0)
        adapter = DiscriminativeAdapter(
            layers=layers,
            in_channels=[info[name].channels for name in layers],
            text_dim=self.TEXT_DIM,
            token_dim=self.TOKEN_DIM,
            hidden_size=64,
            num_heads=4,
        ).eval()
        tokens = torch.randn(BATCH, 77, self.TOKEN_DIM, generator=torch.Generator().manual_seed(3))
        with torch.no_grad():
            out = adapter({name: reference[name] for name in layers}, torch.tensor([100, 700]), text_tokens=tokens)
        assert out.itm_embeds.shape == (BATCH, 8, self.TEXT_DIM)
        assert out.boxes.shape == (BATCH, 8, 4)
        assert out.rec_logits.shape == (BATCH, 8, 2)
        assert out.rec_embeds.shape == (BATCH, 8, 64)
        assert out.token_embeds.shape == (BATCH, 77, 64)
        for value in (out.itm_embeds, out.boxes, out.rec_logits, out.rec_embeds, out.token_embeds):
            assert torch.isfinite(value).all()
        assert ((out.boxes >= 0) & (out.boxes <= 1)).all()
        logits = adapter.itm_logits(out, torch.randn(BATCH, self.TEXT_DIM))
        assert logits.shape == (BATCH,) and torch.isfinite(logits).all()

    # the adapter on a pipeline ----------------------------------------------------------------------------------
    def test_for_pipeline_sizes(self, model, pipe):
        adapter = DiscriminativeAdapter.for_pipeline(pipe, layers=self.ADAPTER_LAYERS, hidden_size=64, num_heads=4)
        assert list(adapter.config.layers) == self.ADAPTER_LAYERS
        assert list(adapter.config.in_channels) == [self.BLOCKS[name].channels for name in self.ADAPTER_LAYERS]
        assert adapter.config.text_dim == self.TEXT_DIM
        assert adapter.config.token_dim == self.TOKEN_DIM == model.unet.config.cross_attention_dim
        assert [conv.in_channels for conv in adapter.proj] == list(adapter.config.in_channels)
        assert adapter.itm_head.out_features == self.TEXT_DIM
        assert adapter.align_token.in_features == self.TOKEN_DIM
        adapter.check_pipeline(pipe)  # raises on any mismatch

    def test_itm_score(self, pipe):
        torch.manual_seed(0)
        adapter = DiscriminativeAdapter.for_pipeline(pipe, layers=self.ADAPTER_LAYERS, hidden_size=64, num_heads=4)
        latents = torch.randn(BATCH, 4, H, W, generator=torch.Generator().manual_seed(4))
        scores = itm_score(pipe, adapter, latents, ["a red cube on a table", "two dogs in the snow"], t=500)
        assert scores.shape == (BATCH,)
        assert scores.dtype == torch.float32
        assert torch.isfinite(scores).all()
        assert (scores.abs() <= adapter.logit_scale.exp() + 1e-4).all()  # exp(scale) * cosine

    # the real default size with real weights (minutes on 2 cores) ----------------------------------------------
    @pytest.mark.slow
    def test_real_weights_full_run_at_default_size(self, model):
        unet = model.unet
        size = unet.config.sample_size
        gen = torch.Generator().manual_seed(5)
        kwargs = {}
        if self.ARCH == "sdxl":
            kwargs["added_cond_kwargs"] = {
                "text_embeds": torch.randn(1, 1280, generator=gen),
                "time_ids": torch.tensor([[8.0 * size, 8.0 * size, 0, 0, 8.0 * size, 8.0 * size]]),
            }
        sample = torch.randn(1, 4, size, size, generator=gen)
        ehs = torch.randn(1, 77, unet.config.cross_attention_dim, generator=gen)
        with torch.no_grad():
            feats = FeatureProbe(unet, list(self.shapes()), early_exit=False)(sample, 500, ehs, **kwargs)
        for name, info in self.shapes().items():
            assert tuple(feats[name].shape) == (1, info.channels, info.height, info.width), name
            assert torch.isfinite(feats[name]).all(), name


def pytest_generate_tests(metafunc):
    """`layer`: every block of the class's UNet plus one finer module path."""
    if "layer" in metafunc.fixturenames:
        metafunc.parametrize("layer", list(metafunc.cls.shapes()))


# ---------------------------------------------------------------------------------------------------------------
# the three architectures


class TestSD15(_RealUNetChecks):
    ARCH = "sd15"
    SAMPLE_SIZE = 64  # 512 px
    BLOCKS, FINE = SD15_SHAPES, SD15_FINE
    TEXT_DIM = 768  # CLIP ViT-L/14
    TOKEN_DIM = 768
    ADAPTER_LAYERS = ["down_blocks.1", "mid_block", "up_blocks.1"]


class TestSD21(_RealUNetChecks):
    ARCH = "sd21"
    SAMPLE_SIZE = 96  # 768 px
    BLOCKS, FINE = SD21_SHAPES, SD21_FINE
    TEXT_DIM = 1024  # OpenCLIP ViT-H/14
    TOKEN_DIM = 1024
    ADAPTER_LAYERS = ["down_blocks.1", "mid_block", "up_blocks.1"]


class TestSDXL(_RealUNetChecks):
    ARCH = "sdxl"
    SAMPLE_SIZE = 128  # 1024 px
    OVERRIDES = {"transformer_layers_per_block": 1}  # real widths and layout, 641M instead of 2.57B parameters
    BLOCKS, FINE = SDXL_SHAPES, SDXL_FINE
    TEXT_DIM = 1280  # text_encoder_2's projection (OpenCLIP ViT-bigG/14)
    TOKEN_DIM = 2048  # 768 + 1280, both encoders' penultimate hidden states
    ADAPTER_LAYERS = ["down_blocks.1", "up_blocks.0", "up_blocks.1"]
    build_pipeline = staticmethod(sdxl_pipeline)

    def test_reduced_config_keeps_real_widths(self, model):
        cfg = model.unet.config
        assert tuple(cfg.block_out_channels) == (320, 640, 1280)
        assert cfg.cross_attention_dim == 2048
        assert cfg.projection_class_embeddings_input_dim == 1280 + 6 * 256
        assert sum(p.numel() for p in model.unet.parameters()) == 640_622_724
