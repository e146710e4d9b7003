"""benchmarks/distil_correction.py (issue 12): the tuned model's self-correction recorded on training prompts that the
choosing benchmarks do not draw, and distilled into a LoRA."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import distil_correction  # noqa: E402
from augment_shapes import train_prompts  # noqa: E402


def test_its_prompts_leave_the_choosing_prompts_alone_but_for_counting():
    chosen = distil_correction.distil_prompts(skip=5, per_category=3)
    choosing = train_prompts(5)
    assert {c: sum(v == c for v in chosen.values()) for c in set(chosen.values())} == {
        "two_objects": 3, "spatial": 3, "referring": 3, "counting": 8,
    }  # fmt: skip
    shared = {p for p in chosen if p in choosing}
    assert shared and all(chosen[p] == "counting" for p in shared)


def test_a_small_run_records_distils_and_resumes(tmp_path):
    args = ["--out", str(tmp_path), "--skip", "1", "--prompts-per-category", "1", "--seeds", "1", "--steps", "2"]
    args += ["--batch-size", "4", "--lora-rank", "2"]
    assert distil_correction.main(args) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["rows"] == 25 * sum(summary["prompts"].values())
    assert 0 < summary["corrected_rows"] < summary["rows"]
    assert (tmp_path / "lora-lr0.0001-r2" / "lora" / "pytorch_lora_weights.safetensors").is_file()
    assert distil_correction.main(args) == 0  # recorded steps and LoRA kept: nothing to redo
    assert json.loads((tmp_path / "summary.json").read_text())["rows"] == summary["rows"]
