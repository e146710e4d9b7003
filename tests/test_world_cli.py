"""`discadapt world train` / `discadapt world bundle`: a smoke test of the real-size training code."""

from __future__ import annotations

import json

import pytest

from discadapt.cli import main
from discadapt.worlds.shapes.bundle import load_clip, load_pipeline


def test_world_train_then_bundle_smoke(tmp_path, capsys):
    """Two VAE and two UNet steps of the default (bundled) sizes, resumed, then bundled and loaded."""
    run = tmp_path / "run"
    assert main(["world", "train", "--out", str(run), "--steps", "2", "--stop-after", "3"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["world"]["step"] == 3 and not first["world"]["done"] and first["clip"] is None
    assert main(["world", "train", "--out", str(run), "--steps", "2"]) == 0
    second = json.loads(capsys.readouterr().out)
    assert second["world"]["step"] == 4 and second["world"]["done"]
    assert second["clip"]["step"] == 2 and second["clip"]["done"]
    assert main(["world", "bundle", str(run), "--dest", str(tmp_path / "weights")]) == 0
    pipe = load_pipeline(root=tmp_path / "weights")
    assert pipe.unet.config.sample_size == 8 and pipe.vae.config.scaling_factor > 0
    assert load_clip(root=tmp_path / "weights").config.vision_config.image_size == 32


def test_world_train_errors(tmp_path, capsys):
    main(["world", "train", "--out", str(tmp_path), "--steps", "1", "--tiny", "--stop-after", "1"])
    capsys.readouterr()
    assert main(["world", "train", "--out", str(tmp_path), "--steps", "1", "--seed", "3", "--tiny"]) == 2
    assert "another configuration (config.seed: saved 0, now 3)" in capsys.readouterr().err
    assert main(["world", "bundle", str(tmp_path)]) == 2  # an unfinished run
    assert f"{tmp_path / 'world' / 'pipeline'} is missing: {tmp_path / 'world'} is not a finished" in (
        capsys.readouterr().err
    )
    assert main(["world", "bundle", "--tune", str(tmp_path)]) == 2
    assert f"{tmp_path / 'lora'} is missing: has that run finished? Nothing was bundled." in capsys.readouterr().err
    assert main(["world", "bundle"]) == 2
    needs = "needs a world RUN folder, --probe RUN, --tune RUN, --stack LORA, --tuned-adapter DIR or --augment RUN"
    assert needs in capsys.readouterr().err
    assert main(["world", "bundle", "--rounds", "2", str(tmp_path)]) == 2
    assert "`--rounds` applies to --augment RUN" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["world", "train"])  # --out is required
