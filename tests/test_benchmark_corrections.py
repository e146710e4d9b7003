"""benchmarks/negative_guidance.py, correction_modes.py --tuned and layout_correction.py --tuned (issue 12): the sweep
on train-split prompts, the chosen setting held out; a smoke test on one prompt per category."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import correction_modes  # noqa: E402
import layout_correction  # noqa: E402
import negative_guidance  # noqa: E402

SMALL = ["--prompts-per-category", "1", "--images-per-prompt", "1", "--held-out", "--held-out-prompts", "1"]


def test_negative_guidance_sweeps_kinds_and_holds_out_the_best(tmp_path):
    out = tmp_path / "ng"
    args = ["--out", str(out), "--scales", "0", "2", "--windows", "0:1", "--kinds", "hard", "drop_phrase"]
    assert negative_guidance.main([*args, "--guidance-controls", "6", *SMALL]) == 0
    summary = json.loads((out / "summary.json").read_text())
    names = ["base", "guidance 6", "w 0 in [0, 1)", "w 2 in [0, 1)", "w 0 in [0, 1) drop_phrase",
             "w 2 in [0, 1) drop_phrase"]  # fmt: skip
    assert list(summary["train_multi_mean"]) == names
    # scale 0 changes nothing: the same images, the same verdicts as base
    assert summary["train_multi_mean"]["w 0 in [0, 1)"] == summary["train_multi_mean"]["base"]
    assert summary["chosen"] == max(names[2:], key=lambda n: summary["train_multi_mean"][n])
    assert list(summary["held_out"]) == ["base", summary["chosen"]]


def test_correction_modes_on_the_tuned_model(tmp_path):
    out = tmp_path / "cm"
    args = ["--out", str(out), "--tuned", "--modes", "reuse", "--scales", "0.5", "--stop", "0.3", "--every", "2"]
    assert correction_modes.main([*args, *SMALL]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["window"] == [0.0, 0.3] and summary["every"] == 2
    assert list(summary["train_multi_mean"]) == ["base", "uncorrected", "reuse 0.5"]
    assert list(summary["held_out"]) == ["base", "uncorrected", "reuse (chosen: 0.5)"]


def test_layout_correction_on_the_tuned_model(tmp_path):
    out = tmp_path / "lc"
    args = ["--out", str(out), "--tuned", "--scales", "0", "1", "--windows", "0-0.6"]
    assert layout_correction.main([*args, *SMALL]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["train_multi_mean"]) == ["base", "reference", "layout 0 0-0.6", "layout 1 0-0.6"]
    # scale 0 changes nothing: the reference's images, its verdicts
    assert summary["train_multi_mean"]["layout 0 0-0.6"] == summary["train_multi_mean"]["reference"]
    assert list(summary["held_out"]) == ["base", "reference", summary["chosen"][0]]
