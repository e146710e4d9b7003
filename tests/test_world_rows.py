"""The demo's rows from bundled models: adapter and LoRA bundles, probing tables, self-correction and tuned rows."""

from __future__ import annotations

import inspect
import shutil

import numpy as np
import pytest
import torch

from discadapt import DiscriminativeAdapter
from discadapt.worlds.shapes.bundle import BundleError, bundle_adapter, bundle_world, load_adapter, load_pipeline
from discadapt.worlds.shapes.models import ModelSizes
from discadapt.worlds.shapes.rows import bundled_adapter, correction_methods, probing_table
from discadapt.worlds.shapes.train import train_world


@pytest.fixture(scope="module")
def world_root(tmp_path_factory):
    """A weights root holding a tiny trained world bundle."""
    out, root = tmp_path_factory.mktemp("world"), tmp_path_factory.mktemp("weights")
    train_world(
        out, vae_steps=2, unet_steps=2, batch_size=2, vae_batch_size=2, sizes=ModelSizes.tiny(), progress=False,
        scale_examples=16,
    )  # fmt: skip
    bundle_world(out, root / "world")
    return root


def _pipe(root):
    pipe = load_pipeline(root=root)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def world(world_root):
    pipe = _pipe(world_root)
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
    bundle_adapter(tmp_path / "saved", tmp_path / "weights" / "tuned_adapter")
    assert bundled_adapter(root=tmp_path / "weights", name="tuned_adapter") is not None
    with pytest.raises(BundleError, match="tuned_adapter/manifest.json is missing.*probe_curve.py --tuned"):
        load_adapter(root=tmp_path, name="tuned_adapter")


def test_correction_rows_and_adapter_probing_row(world):
    pipe, adapter = world
    rows = correction_methods(pipe, adapter, steps=2, guidance=4.0)
    assert list(rows) == ["self-correction (plain)", "self-correction (reuse)"]
    for generate in rows.values():
        images = generate(["a red circle", "two blue squares"], [0, 1])
        assert images.shape == (2, 32, 32, 3) and images.dtype == np.uint8
    zero = correction_methods(pipe, adapter, steps=2, guidance=4.0, scale=0.0)["self-correction (plain)"]
    from discadapt.bench import pipeline_method

    base = pipeline_method(pipe, 2, 4.0)(["a red circle"], [3])
    assert np.array_equal(zero(["a red circle"], [3]), base)  # scale 0 is the base row, bit for bit
    table = probing_table(quick=True, adapter=adapter)(pipe)
    assert [row[0] for row in table.rows][-2:] == ["denoising error (10 t)", "adapter ITM (t=250)"]


def test_adapter_table_pools_evaluate_adapter(world):
    from discadapt.train import evaluate_adapter
    from discadapt.worlds.shapes.adapter_data import ShapeWorldItems
    from discadapt.worlds.shapes.probing import adapter_item_results, adapter_table

    pipe, adapter = world
    table = adapter_table({"probe": (pipe, adapter)}, n=10, t=100, splits=["test_id", "test_ood"])
    want = {"itm_text": [0, 0], "itm_image": [0, 0], "rec": [0, 0]}
    for split in ("test_id", "test_ood"):
        found = evaluate_adapter(pipe, adapter, ShapeWorldItems(10, split=split), timesteps=[100])["all"]
        for kind, (hits, total) in want.items():
            want[kind] = [hits + round(found[kind] * found[f"n_{kind}"]), total + found[f"n_{kind}"]]
    assert table.rows[0][0] == "probe" and len(table.rows[0]) == 4
    for cell, (hits, total) in zip(table.rows[0][1:], want.values()):
        assert cell.startswith(f"{hits / total:.3f} [")
    # the table's pooling is `adapter_item_results`: one right/wrong per item of each kind
    right = adapter_item_results(pipe, adapter, n=10, t=100, splits=["test_id", "test_ood"])
    assert {kind: [sum(r), len(r)] for kind, r in right.items()} == want
    with pytest.raises(ValueError, match=r"`n` is 0; pass an int >= 1"):
        adapter_item_results(pipe, adapter, n=0)


def test_lora_bundle_tuned_rows_and_demo_rows(world_root, world, tmp_path):
    from discadapt.bench import pipeline_method
    from discadapt.train import TuneConfig, add_lora, save_lora
    from discadapt.worlds.shapes.bundle import bundle_lora, load_lora
    from discadapt.worlds.shapes.rows import LAYOUT, TUNED_CORRECTION, demo_rows, tuned_methods

    pipe, adapter = world
    root = tmp_path / "weights"
    shutil.copytree(world_root / "world", root / "world")
    tuned = _pipe(root)
    add_lora(tuned.unet, TuneConfig(lora_rank=2, lora_alpha=4, adapter_config={"hidden_size": 32, "num_heads": 4}))
    with torch.no_grad():
        for name, param in tuned.unet.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.1, generator=torch.Generator().manual_seed(len(name)))  # a non-zero update
    save_lora(tuned, tmp_path / "lora")
    bundle_lora(tmp_path / "lora", root / "lora")

    reference = _pipe(root)
    reference.load_lora_weights(tmp_path / "lora")
    fused = load_lora(_pipe(root), root=root)
    assert not any("lora" in name for name, _ in fused.unet.named_modules())
    prompt, seed = ["a red circle"], [5]
    want = pipeline_method(reference, 2, 4.0)(prompt, seed)
    got = tuned_methods(fused, adapter, steps=2)
    assert list(got) == [
        "tuned",
        "tuned + self-correction (plain)",
        "tuned + self-correction (reuse)",
        "tuned + self-correction (reuse) + layout",
    ]
    for mode in ("plain", "reuse"):  # the tuned rows correct with the settings chosen for the tuned model
        corrected = inspect.getclosurevars(got[f"tuned + self-correction ({mode})"]).nonlocals["pipe"]
        assert corrected.config.correction == {**TUNED_CORRECTION, "mode": mode} and corrected.config.layout is None
    laid = inspect.getclosurevars(got["tuned + self-correction (reuse) + layout"]).nonlocals["pipe"]
    assert laid.config.correction == {**TUNED_CORRECTION, "mode": "reuse"} and laid.config.layout == LAYOUT
    assert np.abs(got["tuned"](prompt, seed).astype(int) - want.astype(int)).max() <= 1  # fused: float rounding
    assert not np.array_equal(want, pipeline_method(pipe, 2, 4.0)(prompt, seed))  # the LoRA changes the images
    base = dict(_pipe(root).unet.named_parameters())
    delta = lambda p: {k: v.detach() - base[k] for k, v in p.unet.named_parameters()}  # noqa: E731
    once, twice = delta(fused), delta(load_lora(_pipe(root), root=root, scale=2))  # `scale` multiplies the update
    assert any(d.abs().max() > 0 for d in once.values())
    for k, d in twice.items():
        torch.testing.assert_close(d, 2 * once[k], atol=1e-6, rtol=1e-4)

    # every bundle present: the demo gets all rows and both tables
    adapter.save_pretrained(tmp_path / "adapter")
    for name in ("adapter", "tuned_adapter"):
        bundle_adapter(tmp_path / "adapter", root / name)
    base = _pipe(root)
    methods, tables = demo_rows(base, steps=2, quick=True, root=root)
    assert list(methods) == [
        "self-correction (plain)",
        "self-correction (reuse)",
        "tuned",
        "tuned + self-correction (plain)",
        "tuned + self-correction (reuse)",
        "tuned + self-correction (reuse) + layout",
    ]
    assert methods["tuned"](["a red circle"], [5]).shape == (1, 32, 32, 3)
    probing, discrimination = (table(base) for table in tables)
    assert [row[0] for row in probing.rows] == [
        "denoising error (10 t)",
        "adapter ITM (t=250)",
        "tuned: denoising error (10 t)",
        "tuned: adapter ITM (t=250)",
    ]  # no world CLIP bundled in this root
    assert [row[0] for row in discrimination.rows] == ["stage 1, base model", "tuned_adapter, tuned model"]
    # no bundles but the world: no rows, and no adapter table
    shutil.rmtree(root / "lora"), shutil.rmtree(root / "adapter")
    methods, tables = demo_rows(base, steps=2, quick=True, root=root)
    assert methods == {} and len(tables) == 1


def _augment_run(root, tmp_path, accepted=(True, True, False)):
    """A fake interaction loop folder: augment.json and one round per entry of `accepted`, each with a random LoRA."""
    import json

    from discadapt.train import TuneConfig, add_lora, save_lora

    run = tmp_path / "augment"
    run.mkdir()
    (run / "augment.json").write_text(json.dumps({"critic": "world CLIP", "prompts": "x", "config": {}}))
    for r, ok in enumerate(accepted, start=1):
        pipe = _pipe(root)
        add_lora(pipe.unet, TuneConfig(lora_rank=2, lora_alpha=4, adapter_config={"hidden_size": 32, "num_heads": 4}))
        with torch.no_grad():
            for name, param in pipe.unet.named_parameters():
                if "lora_B" in name:
                    param.normal_(0, 0.1, generator=torch.Generator().manual_seed(len(name) + r))
        folder = run / f"round-{r:02d}"
        save_lora(pipe, folder / "enhance" / "lora")
        done = {"round": r, "accepted": ok, "win_rate": 0.6, "lora": str(folder / "enhance" / "lora")}
        (folder / "done.json").write_text(json.dumps(done))
    return run


def test_interaction_bundle_fuses_the_accepted_rounds_in_order(world_root, tmp_path):
    from discadapt.cli import main
    from discadapt.interaction.enhance import fuse_enhancements
    from discadapt.worlds.shapes.bundle import bundle_interaction, load_interaction
    from discadapt.worlds.shapes.rows import bundled_interaction, demo_rows

    root = tmp_path / "weights"
    shutil.copytree(world_root / "world", root / "world")
    run = _augment_run(root, tmp_path)
    bundle_interaction(run, root / "interaction")  # rounds 1 and 2: round 3 was rejected
    fused, manifest = load_interaction(_pipe(root), root=root)
    assert [r["round"] for r in manifest["rounds"]] == [1, 2] and manifest["critic"] == "world CLIP"
    want = _pipe(root)
    fuse_enhancements(want, [run / "round-01/enhance/lora", run / "round-02/enhance/lora"])
    for (name, got), expected in zip(fused.unet.state_dict().items(), want.unet.state_dict().values()):
        assert torch.equal(got, expected), name  # the loop's fusion, bit for bit
    assert not any("lora" in name for name, _ in fused.unet.named_modules())

    label, _ = bundled_interaction(root=root)
    assert label == "interaction (world CLIP, 2 rounds)"
    methods, _ = demo_rows(_pipe(root), steps=2, quick=True, correction=False, probing=False, root=root)
    assert list(methods) == ["interaction (world CLIP, 2 rounds)"]
    assert methods[label](["a red circle"], [5]).shape == (1, 32, 32, 3)

    with pytest.raises(ValueError, match="`rounds` is 3, but .* has 2 accepted round"):
        bundle_interaction(run, tmp_path / "x", rounds=3)
    with pytest.raises(FileNotFoundError, match="augment.json is missing"):
        bundle_interaction(tmp_path, tmp_path / "x")
    assert main(["world", "bundle", "--augment", str(run), "--rounds", "1", "--dest", str(tmp_path / "cli")]) == 0
    assert len(load_interaction(_pipe(root), root=tmp_path / "cli")[1]["rounds"]) == 1
    assert bundled_interaction(root=tmp_path) is None
    (run / "round-01" / "done.json").write_text('{"round": 1, "accepted": false, "win_rate": 0.4}')
    with pytest.raises(ValueError, match="has no accepted round"):
        bundle_interaction(run, tmp_path / "x")
