"""benchmarks/probe_curve.py (issue 12's stage-1 learning curve): trained in slices, resumed, extended."""

import json
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import probe_curve  # noqa: E402

SMALL = ["--probe-examples", "1", "--items", "2", "--batch-size", "2"]


def _weights(folder: Path) -> dict:
    return load_file(next(folder.glob("*.safetensors")))


def test_the_curve_in_slices_equals_one_run_and_extends(tmp_path, capsys):
    probe_curve.main(["--out", str(tmp_path / "whole"), "--at", "4", *SMALL])
    probe_curve.main(["--out", str(tmp_path / "sliced"), "--at", "2", "4", *SMALL])
    whole, sliced = _weights(tmp_path / "whole" / "adapter-4"), _weights(tmp_path / "sliced" / "adapter-4")
    assert whole.keys() == sliced.keys() and all((whole[k] == sliced[k]).all() for k in whole)

    first = json.loads((tmp_path / "sliced" / "curve.json").read_text())["points"]
    probe_curve.main(["--out", str(tmp_path / "sliced"), "--at", "2", "4", "6", *SMALL])  # only step 6 is new
    points = json.loads((tmp_path / "sliced" / "curve.json").read_text())["points"]
    assert [p["step"] for p in points] == [2, 4, 6] and points[:2] == first
    for point in points:
        assert point["samples"] == 2 * point["step"]
        assert all(0 <= point[c] <= 1 for c in ("single", "two_objects", "counting", "spatial", "referring"))


def test_tuned_probes_the_tuned_model(tmp_path):
    """`--tuned` trains on the bundled tuned pipeline's features: the same seeds give another adapter."""
    probe_curve.main(["--out", str(tmp_path / "base"), "--at", "2", *SMALL])
    probe_curve.main(["--out", str(tmp_path / "tuned"), "--tuned", "--at", "2", *SMALL])
    base, tuned = _weights(tmp_path / "base" / "adapter-2"), _weights(tmp_path / "tuned" / "adapter-2")
    assert base.keys() == tuned.keys() and any(not (base[k] == tuned[k]).all() for k in base)
    assert json.loads((tmp_path / "tuned" / "curve.json").read_text())["settings"]["tuned"] is True
    # `--unstacked`: the stage-2 LoRA without the LoRAs stacked on it (the bundle has one), another model again
    probe_curve.main(["--out", str(tmp_path / "unstacked"), "--tuned", "--unstacked", "--at", "2", *SMALL])
    unstacked = _weights(tmp_path / "unstacked" / "adapter-2")
    assert any(not (unstacked[k] == tuned[k]).all() for k in tuned)


def test_unstacked_needs_tuned(tmp_path, capsys):
    with pytest.raises(SystemExit):
        probe_curve.main(["--out", str(tmp_path / "x"), "--unstacked", "--at", "2", *SMALL])
    assert "`--unstacked` applies to --tuned" in capsys.readouterr().err and not (tmp_path / "x").exists()
