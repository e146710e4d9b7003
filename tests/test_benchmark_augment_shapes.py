"""benchmarks/augment_shapes.py --tuned-corrected: one round of the interaction loop on the bundled tuned model,
its candidates drawn with the demo's tuned self-correction; a smoke test on a few prompts."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import augment_shapes  # noqa: E402

from discadapt.sampling import StableDiffusionSelfCorrectionPipeline  # noqa: E402
from discadapt.worlds.shapes.rows import LAYOUT, TUNED_CORRECTION  # noqa: E402


def test_tuned_corrected_pipeline_is_the_demos_tuned_correction():
    pipe = augment_shapes.tuned_corrected()
    assert isinstance(pipe, StableDiffusionSelfCorrectionPipeline)
    assert pipe.config.correction == {**TUNED_CORRECTION, "mode": "reuse"} and pipe.config.layout is None
    assert augment_shapes.tuned_corrected(layout=True).config.layout == LAYOUT  # the demo's layout row


def test_one_distilling_round(tmp_path):
    out = tmp_path / "aug"
    args = ["--critic", "clip", "--out", str(out), "--rounds", "1", "--prompts-per-category", "1", "--candidates", "2",
            "--lora-steps", "1", "--batch-size", "4", "--holdout-images", "1", "--tuned-corrected"]  # fmt: skip
    assert augment_shapes.main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["args"]["tuned_corrected"] is True
    (round_one,) = summary["rounds"]
    assert round_one["kept"] > 0 and Path(round_one["lora"], "pytorch_lora_weights.safetensors").is_file()
