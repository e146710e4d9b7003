"""`interaction.merge_loras`: one LoRA whose update is the weighted sum of several (a soup of stage-2 runs)."""

import json

import pytest
import torch
from safetensors import safe_open

from discadapt.interaction import fuse_enhancements, merge_loras
from discadapt.testing import random_lora, tiny_sd_pipeline


def _fused(folders, scales=None):
    pipe = tiny_sd_pipeline(seed=0)
    fuse_enhancements(pipe, folders, scales)
    return dict(pipe.unet.named_parameters())


def test_merged_lora_fuses_to_the_weighted_sum(tmp_path):
    pipe = tiny_sd_pipeline(seed=0)
    a = random_lora(pipe, tmp_path / "a", seed=0, rank=2)
    b = random_lora(pipe, tmp_path / "b", seed=1, rank=4)
    soup = merge_loras([a, b], tmp_path / "soup")
    with safe_open(soup / "pytorch_lora_weights.safetensors", framework="pt") as f:
        assert '"unet.r": 6' in f.metadata()["lora_adapter_metadata"]
        assert {f.get_tensor(k).shape[0 if k.endswith("down.weight") else 1] for k in f.keys()} == {6}
    assert not getattr(pipe.unet, "peft_config", None)  # the pipeline the LoRAs were drawn for is left as it was
    want, got = _fused([a, b], [0.5, 0.5]), _fused([soup])
    base = dict(pipe.unet.named_parameters())
    assert any(not torch.equal(want[k], base[k]) for k in base)
    for k in want:
        torch.testing.assert_close(got[k], want[k], atol=1e-6, rtol=1e-5)
    weighted = merge_loras([a, b], tmp_path / "weighted", scales=[2.0, -1.0])
    want, got = _fused([a, b], [2.0, -1.0]), _fused([weighted])
    for k in want:
        torch.testing.assert_close(got[k], want[k], atol=1e-6, rtol=1e-5)


def test_bad_inputs(tmp_path):
    pipe = tiny_sd_pipeline(seed=0)
    a = random_lora(pipe, tmp_path / "a")
    other = random_lora(pipe, tmp_path / "other", targets=("to_k",))
    with pytest.raises(ValueError, match="`folders` is empty"):
        merge_loras([], tmp_path / "x")
    with pytest.raises(ValueError, match=r"`scales` is \[1.0\] for 2 folders"):
        merge_loras([a, a], tmp_path / "x", scales=[1.0])
    with pytest.raises(FileNotFoundError, match="No LoRA at .*missing"):
        merge_loras([a, tmp_path / "missing"], tmp_path / "x")
    with pytest.raises(ValueError, match="is on other modules than"):
        merge_loras([a, other], tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_world_bundle_soup(tmp_path, capsys):
    """`discadapt world bundle --tune RUN --soup MORE`: the bundled LoRA is the mean of the updates, the adapter
    RUN's."""
    from discadapt import DiscriminativeAdapter
    from discadapt.cli import main
    from discadapt.worlds.shapes.bundle import load_lora, load_pipeline

    world = load_pipeline()
    run, more = tmp_path / "run", tmp_path / "more"
    random_lora(world, run / "lora", seed=0)
    random_lora(world, more / "lora", seed=1)
    DiscriminativeAdapter.for_pipeline(world, layers=["mid_block"], hidden_size=32, num_heads=4).save_pretrained(
        run / "adapter"
    )
    dest = tmp_path / "weights"
    assert main(["world", "bundle", "--tune", str(run), "--soup", str(more), "--dest", str(dest)]) == 0
    assert (dest / "tuned_adapter").is_dir() and '"soup"' in (dest / "lora" / "manifest.json").read_text()
    got = dict(load_lora(load_pipeline(), root=dest).unet.named_parameters())
    want = load_pipeline()
    fuse_enhancements(want, [run / "lora", more / "lora"], [0.5, 0.5])
    for k, p in want.unet.named_parameters():
        torch.testing.assert_close(got[k], p, atol=1e-6, rtol=1e-5)
    assert main(["world", "bundle", "--probe", str(run), "--soup", str(more), "--dest", str(dest)]) == 2
    assert "`--soup` applies to --tune RUN" in capsys.readouterr().err


def test_world_bundle_tuned_adapter(tmp_path, capsys):
    """`--tuned-adapter DIR` bundles an adapter for the tuned model, alone or instead of --tune RUN's."""
    from discadapt import DiscriminativeAdapter
    from discadapt.cli import main
    from discadapt.worlds.shapes.bundle import load_adapter, load_pipeline

    world = load_pipeline()
    run, refit = tmp_path / "run", tmp_path / "refit"
    random_lora(world, run / "lora", seed=0)
    for folder, size in ((run / "adapter", 32), (refit, 16)):
        torch.manual_seed(0)
        DiscriminativeAdapter.for_pipeline(world, layers=["mid_block"], hidden_size=size, num_heads=4).save_pretrained(
            folder
        )
    dest = tmp_path / "weights"
    assert main(["world", "bundle", "--tuned-adapter", str(refit), "--dest", str(dest)]) == 0
    assert not (dest / "lora").exists() and load_adapter(root=dest, name="tuned_adapter").config.hidden_size == 16
    assert main(["world", "bundle", "--tune", str(run), "--tuned-adapter", str(refit), "--dest", str(dest / "b")]) == 0
    assert (dest / "b" / "lora").is_dir()
    assert load_adapter(root=dest / "b", name="tuned_adapter").config.hidden_size == 16
    assert main(["world", "bundle", "--tuned-adapter", str(tmp_path / "nowhere"), "--dest", str(dest)]) == 2
    assert "`--tuned-adapter` is " in capsys.readouterr().err


def test_world_bundle_stack(tmp_path, capsys):
    """`--stack LORA` bundles LoRAs trained on the tuned model beside its LoRA: `load_lora` fuses both (and
    `stack=False` the LoRA alone); stacking again adds to what is stacked, the bundled LoRA's file left as it was."""
    from discadapt import DiscriminativeAdapter
    from discadapt.cli import main
    from discadapt.worlds.shapes.bundle import bundle_lora, load_lora, load_pipeline

    world = load_pipeline()
    run, first, second = (random_lora(world, tmp_path / name, seed=k) for k, name in enumerate(("run/lora", "a", "b")))
    DiscriminativeAdapter.for_pipeline(world, layers=["mid_block"], hidden_size=32, num_heads=4).save_pretrained(
        tmp_path / "run" / "adapter"
    )
    dest = tmp_path / "weights"
    assert main(["world", "bundle", "--stack", str(first), "--dest", str(dest)]) == 2
    assert "lora/manifest.json is missing" in capsys.readouterr().err  # nothing bundled to stack on
    with pytest.raises(ValueError, match="`lora_dir` is None and `stack` is empty"):
        bundle_lora(None, dest / "lora")
    assert main(["world", "bundle", "--tune", str(tmp_path / "run"), "--dest", str(dest)]) == 0
    lora_file = (dest / "lora" / "lora.safetensors").read_bytes()
    assert main(["world", "bundle", "--stack", str(first), "--dest", str(dest)]) == 0
    assert main(["world", "bundle", "--stack", str(second), "--dest", str(dest)]) == 0
    assert (dest / "lora" / "lora.safetensors").read_bytes() == lora_file
    manifest = json.loads((dest / "lora" / "manifest.json").read_text())
    assert manifest["stack"]["sources"] == [str(first), str(second)] and set(manifest["files"]) == {"lora", "stack"}

    def unet(*folders):
        pipe = load_pipeline()
        fuse_enhancements(pipe, folders)
        return dict(pipe.unet.named_parameters())

    for got, want in ((load_lora(load_pipeline(), root=dest), unet(run, first, second)),
                      (load_lora(load_pipeline(), root=dest, stack=False), unet(run))):  # fmt: skip
        for k, p in got.unet.named_parameters():
            torch.testing.assert_close(p, want[k], atol=1e-6, rtol=1e-5)
    for k, p in load_lora(load_pipeline(), root=dest, scale=0).unet.named_parameters():  # `scale` scales both
        torch.testing.assert_close(p, dict(world.unet.named_parameters())[k], atol=0, rtol=0)
    unfused = load_lora(load_pipeline(), root=dest, fuse=False)
    assert set(unfused.unet.peft_config) == {"tuned", "stacked"}
    assert main(["world", "bundle", "--tune", str(tmp_path / "run"), "--stack", str(first), "--dest", str(dest)]) == 0
    assert json.loads((dest / "lora" / "manifest.json").read_text())["stack"]["sources"] == [str(first)]
