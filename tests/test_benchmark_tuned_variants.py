"""benchmarks/tuned_variants.py (issue 12, hypothesis 5): stage-2 runs compared on train-split prompts, the best
chosen; the world CLI's `--contrast-weight` on the way."""

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import tuned_variants  # noqa: E402

from discadapt.cli import main as cli  # noqa: E402
from discadapt.testing import random_lora  # noqa: E402


def test_two_tune_runs_are_compared_on_train_prompts_and_one_is_chosen(tmp_path, capsys):
    tune = ["tune", "--world", "--steps", "1", "--batch-size", "2", "--shapes", "8", "--eval-shapes", "1"]
    tune += ["--lora-rank", "2", "--num-neg-captions", "2", "--no-progress"]
    assert cli([*tune, "--out", str(tmp_path / "plain")]) == 0
    assert cli([*tune, "--out", str(tmp_path / "contrast"), "--contrast-weight", "1"]) == 0
    logged = json.loads((tmp_path / "contrast" / "log.jsonl").read_text().splitlines()[-1])
    assert logged["loss_contrast"] > 0 and "loss_contrast" not in (tmp_path / "plain" / "log.jsonl").read_text()

    out = tmp_path / "variants"
    runs = [str(tmp_path / "plain"), str(tmp_path / "contrast")]
    args = ["--out", str(out), "--runs", *runs, "--prompts-per-category", "1", "--images-per-prompt", "1"]
    args += ["--probing", "1", "--held-out", "--held-out-prompts", "1"]
    assert tuned_variants.main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["train_multi_mean"]) == {"base", "plain", "contrast"}
    best = max(summary["train_multi_mean"][name] for name in ("plain", "contrast"))
    assert summary["chosen"] == [n for n in ("plain", "contrast") if summary["train_multi_mean"][n] == best]
    assert all(0 <= v <= 1 for v in summary["train_multi_mean"].values())
    assert [row[0] for row in summary["probing"]["rows"]] == ["base", "plain", "contrast"]
    assert list(summary["held_out"]) == ["base", *summary["chosen"]]
    assert all(summary["held_out"][name]["time_ratio"] > 0 for name in summary["chosen"])


def test_a_folder_without_a_lora_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="lora is missing: pass the folder of a finished `discadapt tune` run"):
        tuned_variants.tuned_pipeline(tmp_path)


def test_bundled_names_the_bundled_stage_2_fused():
    pipe = tuned_variants.tuned_pipeline(Path("bundled"))
    assert not any("lora" in name for name, _ in pipe.unet.named_modules())  # fused: plain weights
    base = tuned_variants.pipelines({})["base"]
    assert any(not torch.equal(a, b) for a, b in zip(pipe.unet.parameters(), base.unet.parameters()))


def test_bundled_plus_a_lora_fuses_it_on_the_bundled_stage_2(tmp_path):
    bundled = tuned_variants.tuned_pipeline("bundled")
    extra = random_lora(bundled, tmp_path / "extra" / "lora")
    more = tuned_variants.tuned_pipeline(f"bundled+{tmp_path / 'extra'}")
    none = tuned_variants.tuned_pipeline(f"bundled+{tmp_path / 'extra'}@0")
    assert tuned_variants.variant_name(f"bundled+{extra}") == "bundled+extra/lora"
    assert any(not torch.equal(a, b) for a, b in zip(more.unet.parameters(), bundled.unet.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(none.unet.parameters(), bundled.unet.parameters()))


def test_a_sweep_keeps_each_marks_lora_and_tuned_variants_compares_them(tmp_path):
    """tune_sweep.py: each lane trained in slices, the LoRA of every mark kept and equal to a run of that many steps;
    tuned_variants.py takes those LoRA folders, each named by lane and mark."""
    from safetensors.torch import load_file

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import tune_sweep

    out = tmp_path / "sweep"
    extra = "--shapes 8 --batch-size 2 --lora-rank 2"
    args = ["--out", str(out), "--lanes", "c-s0", "--marks", "1", "2", "--extra", extra]
    assert tune_sweep.main(args) == 0
    loras = {("c-s0", k): out / "c-s0" / f"lora-{k}" for k in (1, 2)}
    weights = {key: load_file(folder / "pytorch_lora_weights.safetensors") for key, folder in loras.items()}
    assert any(not torch.equal(weights["c-s0", 1][k], weights["c-s0", 2][k]) for k in weights["c-s0", 1])
    assert "loss_contrast" in (out / "c-s0" / "log.jsonl").read_text()

    # the lane's LoRA at 2 steps is a 2-step run's
    direct = ["tune", *tune_sweep.shlex.split(tune_sweep.BASE), *extra.split(), "--steps", "2"]
    assert cli([*direct, "--out", str(tmp_path / "direct")]) == 0
    alone = load_file(tmp_path / "direct" / "lora" / "pytorch_lora_weights.safetensors")
    assert alone.keys() == weights["c-s0", 2].keys() and all(
        torch.equal(alone[k], weights["c-s0", 2][k]) for k in alone
    )

    assert tune_sweep.main(args) == 0  # everything kept: nothing to do
    assert (out / "c-s0.log").read_text().count("$ ") == 2

    variants = tmp_path / "variants"
    runs = [str(loras["c-s0", 1]), str(loras["c-s0", 2])]
    args = ["--out", str(variants), "--runs", *runs, "--prompts-per-category", "1", "--guidance", "2", "4"]
    assert tuned_variants.main(args) == 0
    summary = json.loads((variants / "summary.json").read_text())
    names = ["base", "base g=2", "c-s0/lora-1", "c-s0/lora-1 g=2", "c-s0/lora-2", "c-s0/lora-2 g=2"]
    assert list(summary["train_multi_mean"]) == names  # each pipeline at each scale, the demo's base row first
    assert summary["train_difference_to_base"]["base"] is None and set(summary["chosen"]) <= set(names[2:])


def test_every_lane_is_a_valid_tune_command():
    """Each lane's options, after the bundled recipe's, parse as `discadapt tune` arguments (no lane fails late)."""
    import tune_sweep

    from discadapt.arguments import Parser
    from discadapt.train.commands import add_commands

    parser = Parser(prog="discadapt")
    add_commands(parser.add_subparsers(dest="command", required=True))
    lane = lambda name: parser.parse_args(["tune", *tune_sweep.lane_args(name), "--out", "x"])  # noqa: E731
    for name in tune_sweep.LANES:
        args = lane(name)
        assert args.command == "tune" and args.world != args.world_tuned == name.startswith("t-"), name
    batch = lane("c-b32-s1")
    assert (batch.batch_size, batch.grad_accum, batch.seed) == (16, 2, 1)
    grounded = lane("t-g3-s1")
    assert (grounded.grounding_weight, grounded.contrast_weight, grounded.shapes_phrase_boxes) == (3.0, 0.0, "objects")


def test_a_lane_stopped_before_its_first_checkpoint_starts_over(tmp_path):
    """A sweep killed before a lane's first checkpoint leaves its record and log only; a rerun trains that lane."""
    import shutil

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import tune_sweep

    out, extra = tmp_path / "sweep", "--shapes 8 --batch-size 2 --lora-rank 2"
    args = ["--out", str(out), "--lanes", "c-s1", "--marks", "1", "--extra", extra]
    assert tune_sweep.main(args) == 0
    for name in ("checkpoints", "lora", "lora-1"):
        shutil.rmtree(out / "c-s1" / name)
    assert (out / "c-s1" / "log.jsonl").is_file()
    assert tune_sweep.main(args) == 0
    assert (out / "c-s1" / "lora-1" / "pytorch_lora_weights.safetensors").is_file()


def test_variants_merge_loras_at_scales(tmp_path):
    """`A@s` merges A's update times s; `A@0.5+B@0.5` the mean of both updates (a soup)."""
    world = tuned_variants.load_pipeline()
    a, b = random_lora(world, tmp_path / "a" / "lora", 0), random_lora(world, tmp_path / "b" / "lora", 1)
    base = dict(world.unet.named_parameters())
    delta = lambda spec: {  # noqa: E731
        k: p.detach() - base[k] for k, p in tuned_variants.tuned_pipeline(spec).unet.named_parameters()
    }
    one, two = delta(str(a)), delta(str(b))
    assert any(d.abs().max() > 0 for d in one.values())
    for k, d in delta(f"{a}@2").items():
        torch.testing.assert_close(d, 2 * one[k], atol=1e-6, rtol=1e-4)
    for k, d in delta(f"{a}@0.5+{b}@0.5").items():
        torch.testing.assert_close(d, (one[k] + two[k]) / 2, atol=1e-6, rtol=1e-4)
    assert tuned_variants.variant_name(f"{a}@0.5+{b}@0.5") == "a/lora@0.5+b/lora@0.5"
    assert tuned_variants.variant_name(str(tmp_path / "a")) == "a"  # a run folder: its name
    with pytest.raises(ValueError, match="`scales` is \\[1.0\\] for 2 folders"):
        tuned_variants.fuse_enhancements(tuned_variants.load_pipeline(), [a, b], scales=[1.0])


def test_lora_update_and_geometry_of_a_soup(tmp_path):
    """`lora_update` is what fusing adds to the weights; a merged mean of two LoRAs is their updates' mean."""
    import lora_geometry

    from discadapt.interaction import lora_update, merge_loras

    world = tuned_variants.load_pipeline()
    a, b = random_lora(world, tmp_path / "a" / "lora", 0), random_lora(world, tmp_path / "b" / "lora", 1)
    base = dict(world.unet.named_parameters())
    fused = dict(tuned_variants.tuned_pipeline(str(a)).unet.named_parameters())
    update = lora_update(a)
    for module, delta in update.items():  # file key "unet.<module>" -> the module's weight
        weight = module.removeprefix("unet.") + ".weight"
        torch.testing.assert_close(fused[weight].detach() - base[weight], delta, atol=1e-6, rtol=1e-4)
    mean = lora_update(merge_loras([a, b], tmp_path / "mean"))
    for module, delta in lora_update(b).items():
        torch.testing.assert_close(mean[module], (update[module] + delta) / 2, atol=1e-6, rtol=1e-4)
    figures = lora_geometry.geometry([str(a), str(a), str(tmp_path / "mean")])
    assert figures["cosines"][0][2] == pytest.approx(1.0, abs=1e-5)
    assert lora_geometry.main([str(a), str(b), "--json", str(tmp_path / "g.json")]) == 0
    assert json.loads((tmp_path / "g.json").read_text())["norms"][str(a)] > 0
    bundled = lora_geometry.geometry(["bundled", "bundled"])  # the world's bundled LoRA read as a LoRA folder
    modules = set(lora_geometry._update("bundled"))  # the attention projections of the world's UNet
    assert bundled["norms"]["bundled"] > 0 and set(update) <= modules
    assert all(m.endswith(("to_q", "to_k", "to_v", "to_out.0")) for m in modules)


def test_denoising_fit_of_base_and_a_lora(tmp_path, capsys):
    """`denoising_fit.fit` is minus DiffusionITM's score under the captions and under ""; `main` gives base's and
    each variant's on the train-split scenes of its seed."""
    import denoising_fit

    from discadapt.scorers import DenoisingScorer
    from discadapt.worlds.shapes.adapter_data import ShapeWorldItems

    world = tuned_variants.load_pipeline()
    items = ShapeWorldItems(3, split="train", seed=123, negative_images=False)
    images, captions = [items[i]["image"] for i in range(3)], [items[i]["caption"] for i in range(3)]
    figures = denoising_fit.fit(world, images, captions)
    by_hand = -DenoisingScorer(world, 10).score(images, [""] * 3).mean().item()
    assert figures["unconditional"] == pytest.approx(by_hand, rel=1e-5) and figures["conditional"] > 0
    lora = random_lora(world, tmp_path / "a" / "lora", 0)
    assert denoising_fit.main(["--runs", str(lora), "--scenes", "3", "--json", str(tmp_path / "f.json")]) == 0
    rows = json.loads((tmp_path / "f.json").read_text())
    assert list(rows) == ["base", "a/lora"] and rows["base"] == pytest.approx(figures, rel=1e-5)
    assert rows["a/lora"] != rows["base"] and "(+0%)" in capsys.readouterr().out


def test_a_window_uses_the_tuned_unet_inside_it_and_base_outside():
    """`SPEC~A-B`: the tuned UNet in the steps [A, B) of the schedule, base's elsewhere; the whole schedule gives the
    tuned pipeline's images, a window holding no step base's, one between them neither; segments join windows."""
    import numpy as np

    runs = {name: name for name in ("bundled~0-1", "bundled~0.99-1", "bundled~0-0.5", "bundled~0-0.5,bundled@0~0.5-1")}
    pipes = tuned_variants.pipelines({"bundled": "bundled", **runs})
    schedules = tuned_variants.unet_schedules(runs, pipes)
    assert list(schedules) == list(runs) and [a for a, _, _ in schedules["bundled~0-0.5,bundled@0~0.5-1"]] == [0, 0.5]
    generate = tuned_variants.methods(tuned_variants.rows(pipes), pipes, schedules)
    images = {name: method(["a red circle above a blue square"], [0]) for name, method in generate.items()}
    same = lambda a, b: np.array_equal(images[a], images[b])  # noqa: E731
    assert same("bundled~0-1", "bundled") and same("bundled~0.99-1", "base") and not same("bundled", "base")
    assert not same("bundled~0-0.5", "bundled") and not same("bundled~0-0.5", "base")
    assert same("bundled~0-0.5,bundled@0~0.5-1", "bundled~0-0.5")  # the update at 0 times is base's UNet
    assert all(pipes[name].unet is schedules[name][0][2] for name in runs)  # each UNet back after each call
    assert tuned_variants.variant_name("bundled~0-0.6,bundled@1.5~0.6-1") == "bundled~0-0.6,bundled@1.5~0.6-1"
    with pytest.raises(ValueError, match="pass A-B with 0 <= A < B <= 1"):
        tuned_variants.window("bundled~0.6-0.3")
    with pytest.raises(ValueError, match="joins segments without a window"):
        tuned_variants.segments("bundled,bundled~0-1")
