"""Bundled shapes-world weights: write, verify and load (`discadapt.worlds.shapes.bundle`)."""

from __future__ import annotations

import json

import pytest
import torch

from discadapt.worlds.shapes.bundle import (
    WEIGHTS_DIR,
    BundleError,
    bundle_clip,
    bundle_world,
    load_clip,
    load_pipeline,
    read_bundle,
    write_bundle,
)
from discadapt.worlds.shapes.clip import WorldClipSizes
from discadapt.worlds.shapes.clip.train import load_world_clip, train_world_clip
from discadapt.worlds.shapes.models import ModelSizes, initial_models
from discadapt.worlds.shapes.train import load_run, train_world

TINY = dict(
    vae_steps=3,
    unet_steps=3,
    batch_size=2,
    vae_batch_size=2,
    sizes=ModelSizes.tiny(),
    progress=False,
    scale_examples=16,
)


@pytest.fixture(scope="module")
def bundled(tmp_path_factory):
    """A tiny trained world, bundled: (run dir, weights root)."""
    run, root = tmp_path_factory.mktemp("run"), tmp_path_factory.mktemp("weights")
    train_world(run, **TINY)
    bundle_world(run, root / "world")
    return run, root


def test_loaded_pipeline_equals_the_trained_one_up_to_float16(bundled):
    run, root = bundled
    trained = load_run(run).pipeline()
    pipe = load_pipeline(root=root)
    for name in ("vae", "unet", "text_encoder"):
        got, want = getattr(pipe, name).state_dict(), getattr(trained, name).state_dict()
        assert set(got) == set(want), name
        for key in want:
            if key == "embeddings.token_embedding.weight":
                continue
            assert torch.equal(got[key], want[key].half().float()), f"{name}.{key}"
    # token embedding: used rows rounded to float16, the others rebuilt exactly from the seed
    got = pipe.text_encoder.get_input_embeddings().weight
    want = trained.text_encoder.get_input_embeddings().weight
    initial = initial_models(ModelSizes.tiny(), seed=0)[1].get_input_embeddings().weight
    used = (want != initial).any(dim=1)
    assert 0 < used.sum() < 100
    assert torch.equal(got[used], want[used].half().float()) and torch.equal(got[~used], want[~used])
    assert pipe.vae.config.scaling_factor == trained.vae.config.scaling_factor
    image = pipe("a red circle", num_inference_steps=2, output_type="np", generator=torch.manual_seed(0)).images
    assert image.shape == (1, 32, 32, 3)
    assert load_pipeline(root=root, torch_dtype=torch.bfloat16).unet.dtype == torch.bfloat16


def test_world_clip_bundle_equals_the_trained_model_up_to_float16(tmp_path):
    train_world_clip(tmp_path / "run", steps=2, batch_size=4, sizes=WorldClipSizes.tiny(), progress=False)
    bundle_clip(tmp_path / "run", tmp_path / "weights" / "clip")
    got, want = load_clip(root=tmp_path / "weights").state_dict(), load_world_clip(tmp_path / "run").state_dict()
    assert set(got) == set(want)
    key = "text_model.embeddings.token_embedding.weight"
    used = (got[key] != want[key]).any(dim=1)  # the used rows are rounded, the rest rebuilt exactly from the seed
    assert 0 < used.sum() < 100 and torch.equal(got[key][used], want[key][used].half().float())
    for k in set(want) - {key}:
        assert torch.equal(got[k], want[k].half().float()), k


def test_manifest_and_sparse_text_encoder(bundled):
    _, root = bundled
    manifest, components = read_bundle("world", root)
    assert (
        manifest["kind"] == "world"
        and manifest["unet_steps"] == 3
        and set(manifest["files"])
        == {
            "vae",
            "text_encoder",
            "unet",
        }
    )
    ids, rows = components["text_encoder"]["token_embedding.ids"], components["text_encoder"]["token_embedding.rows"]
    assert ids.dtype == torch.int64 and rows.shape == (len(ids), 64)
    assert "embeddings.token_embedding.weight" not in components["text_encoder"]


def test_missing_and_corrupt_files_name_the_file_and_the_rebuild_command(bundled, tmp_path):
    _, root = bundled
    with pytest.raises(BundleError, match=r"manifest.json is missing.*discadapt world train --out RUN"):
        load_pipeline(root=tmp_path)
    write_bundle(tmp_path / "world", {"kind": "world"}, {"unet": {"w": torch.ones(3)}})
    (tmp_path / "world" / "unet.safetensors").unlink()
    with pytest.raises(BundleError, match=r"unet.safetensors is missing; rebuild with `discadapt world train"):
        read_bundle("world", tmp_path)
    write_bundle(tmp_path / "world", {"kind": "world"}, {"unet": {"w": torch.ones(3)}})
    path = tmp_path / "world" / "unet.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"unet.safetensors is corrupt \(sha256 differs"):
        read_bundle("world", tmp_path)
    (tmp_path / "world" / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="manifest.json is corrupt"):
        read_bundle("world", tmp_path)
    assert issubclass(BundleError, FileNotFoundError)


def test_write_bundle_replaces_atomically_and_stores_float16(tmp_path):
    write_bundle(tmp_path / "b", {"kind": "x"}, {"a": {"w": torch.full((2,), 1 / 3), "i": torch.arange(3)}})
    manifest, components = read_bundle("b", tmp_path)
    assert components["a"]["w"].dtype == torch.float32
    assert torch.equal(components["a"]["w"], torch.full((2,), 1 / 3).half().float())
    assert torch.equal(components["a"]["i"], torch.arange(3))
    write_bundle(tmp_path / "b", {"kind": "y"}, {"c": {"w": torch.zeros(1)}})
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["kind"] == "y"
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["c.safetensors", "manifest.json"]
    assert [p.name for p in tmp_path.iterdir()] == ["b"]  # no temporary folder left


@pytest.mark.skipif(not (WEIGHTS_DIR / "world" / "manifest.json").exists(), reason="world weights not bundled")
def test_the_bundled_world_loads_offline():
    pipe = load_pipeline()
    assert load_clip().config.vision_config.image_size == 32
    if (WEIGHTS_DIR / "adapter" / "manifest.json").exists():
        from discadapt.worlds.shapes.bundle import load_adapter

        load_adapter().check_pipeline(pipe)  # built for the bundled pipeline's UNet
    assert type(pipe).__name__ == "StableDiffusionPipeline" and pipe.unet.config.sample_size == 8
    size = sum(p.stat().st_size for p in WEIGHTS_DIR.rglob("*") if p.is_file())
    assert size <= 25 * 2**20  # all bundled weights
