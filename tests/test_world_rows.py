"""The demo's rows from bundled models: the adapter bundle, its probing row and the self-correction rows."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline

from discadapt import DiscriminativeAdapter
from discadapt.worlds.shapes.bundle import BundleError, bundle_adapter, load_adapter
from discadapt.worlds.shapes.models import ModelSizes
from discadapt.worlds.shapes.rows import bundled_adapter, correction_methods, probing_table
from discadapt.worlds.shapes.train import train_world


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    result = train_world(
        out, vae_steps=2, unet_steps=2, batch_size=2, vae_batch_size=2, sizes=ModelSizes.tiny(), progress=False,
        scale_examples=16,
    )  # fmt: skip
    pipe = StableDiffusionPipeline.from_pretrained(result["pipeline"], local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    adapter = DiscriminativeAdapter.for_pipeline(pipe, layers=["up_blocks.1"], hidden_size=32, num_heads=4,
                                                 itm_text="tokens")  # fmt: skip
    return pipe, adapter


def test_adapter_bundle_round_trip(world, tmp_path):
    _, adapter = world
    adapter.save_pretrained(tmp_path / "saved")
    bundle_adapter(tmp_path / "saved", tmp_path / "weights" / "adapter")
    loaded = load_adapter(root=tmp_path / "weights")
    assert loaded.config.itm_text == "tokens" and loaded.config.layers == ["up_blocks.1"]
    for key, value in adapter.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value.half().float()), key
    assert bundled_adapter(root=tmp_path / "weights") is not None and bundled_adapter(root=tmp_path) is None
    with pytest.raises(BundleError, match="adapter/manifest.json is missing.*discadapt probe --world"):
        load_adapter(root=tmp_path)


def test_correction_rows_and_adapter_probing_row(world):
    pipe, adapter = world
    rows = correction_methods(pipe, adapter, steps=2, guidance=4.0)
    assert list(rows) == ["self-correction (plain)", "self-correction (reuse)"]
    for generate in rows.values():
        images = generate(["a red circle", "two blue squares"], [0, 1])
        assert images.shape == (2, 32, 32, 3) and images.dtype == np.uint8
    zero = correction_methods(pipe, adapter, steps=2, guidance=4.0, scale=0.0)["self-correction (plain)"]
    from discadapt.worlds.shapes.demo import pipeline_method

    base = pipeline_method(pipe, 2, 4.0)(["a red circle"], [3])
    assert np.array_equal(zero(["a red circle"], [3]), base)  # scale 0 is the base row, bit for bit
    table = probing_table(quick=True, adapter=adapter)(pipe)
    assert [row[0] for row in table.rows][-2:] == ["denoising error (10 t)", "adapter ITM (t=250)"]


def test_lora_bundle_loads_fused_and_equals_diffusers_loading(world, tmp_path):
    from discadapt.train import TuneConfig, add_lora, save_lora
    from discadapt.worlds.shapes.bundle import bundle_lora, load_lora
    from discadapt.worlds.shapes.demo import pipeline_method
    from discadapt.worlds.shapes.rows import tuned_methods

    pipe, adapter = world
    tuned = StableDiffusionPipeline.from_pretrained(pipe.name_or_path, local_files_only=True)
    add_lora(tuned.unet, TuneConfig(lora_rank=2, lora_alpha=4, adapter_config={"hidden_size": 32, "num_heads": 4}))
    with torch.no_grad():
        for name, param in tuned.unet.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.1, generator=torch.Generator().manual_seed(len(name)))  # a non-zero update
    save_lora(tuned, tmp_path / "lora")
    bundle_lora(tmp_path / "lora", tmp_path / "weights" / "lora")

    reference = StableDiffusionPipeline.from_pretrained(pipe.name_or_path, local_files_only=True)
    reference.load_lora_weights(tmp_path / "lora")
    fused = load_lora(StableDiffusionPipeline.from_pretrained(pipe.name_or_path, local_files_only=True),
                      root=tmp_path / "weights")  # fmt: skip
    assert not any("lora" in name for name, _ in fused.unet.named_modules())
    prompt, seed = ["a red circle"], [5]
    want = pipeline_method(reference, 2, 4.0)(prompt, seed)
    got = tuned_methods(fused, adapter, steps=2)
    assert list(got) == ["tuned", "tuned + self-correction (reuse)"]
    assert np.abs(got["tuned"](prompt, seed).astype(int) - want.astype(int)).max() <= 1  # fused: float rounding
    assert not np.array_equal(want, pipeline_method(pipe, 2, 4.0)(prompt, seed))  # the LoRA changes the images
