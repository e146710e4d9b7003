"""`bench run --metric` with the real evaluators on tiny random models (`discadapt.testing`): the scores in
results.json and in the batch files against each evaluator's own `score` on the saved images, `metrics.PromptScore`
around each evaluator, and missing weights refused before any image is drawn."""

import json

import numpy as np
import pytest
import torch

from discadapt.cli import main
from discadapt.evaluators import AestheticScorer, BLIPVQAScorer, CLIPScorer, DetectionScorer
from discadapt.metrics import PromptScore
from discadapt.testing import tiny_aesthetic_head_file, tiny_blip_vqa_folder, tiny_clip_folder, tiny_owlv2_folder

PROMPT_FILES = {"color_val.txt": "a red car and a blue bench\n", "spatial_val.txt": "a dog left of a cat\n"}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Tiny CLIP, aesthetic head, BLIP-VQA and OWLv2, each in its own folder (file for the head)."""
    root = tmp_path_factory.mktemp("models")
    clip = tiny_clip_folder(root / "clip", seed=5)
    return {
        "clip": clip,
        "head": tiny_aesthetic_head_file(root / "aesthetic.safetensors", clip, seed=1),
        "blip": tiny_blip_vqa_folder(root / "blip-vqa", seed=0),
        "owl": tiny_owlv2_folder(root / "owlv2", seed=1),  # seed 1 passes one of the four images: scores 1 and 0
    }


@pytest.fixture(scope="module")
def scorers(models):
    """The evaluators as `--metric clip= blip-vqa= detector= aesthetic=` name them, in that order, loaded directly."""
    return [
        CLIPScorer.from_pretrained(models["clip"], scale=100.0, name="CLIP score"),
        BLIPVQAScorer.from_pretrained(models["blip"]),
        DetectionScorer.from_pretrained(models["owl"]),
        AestheticScorer.from_pretrained(models["clip"], head_path=models["head"]),
    ]


@pytest.fixture
def suite_folder(tmp_path):
    folder = tmp_path / "prompts"
    folder.mkdir()
    for name, text in PROMPT_FILES.items():
        (folder / name).write_text(text, encoding="utf-8")
    return folder


def _bench(folder, out, *metrics):
    args = ["bench", "run", "--suite", str(folder), "--tiny", "--steps", "2", "--images-per-prompt", "2"]
    args += ["--batch-size", "2", *[a for m in metrics for a in ("--metric", m)], "--out", str(out), "--no-progress"]
    return main(args)


def test_bench_run_scores_are_the_evaluators_own(models, scorers, suite_folder, tmp_path, capsys):
    clip, head, blip, owl = models["clip"], models["head"], models["blip"], models["owl"]
    specs = [f"clip={clip}", f"blip-vqa={blip}", f"detector={owl}", f"aesthetic={clip}:{head}"]
    assert _bench(suite_folder, tmp_path / "out", *specs) == 0
    capsys.readouterr()
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    base = results["methods"]["base"]
    names = ["CLIP score", "BLIP-VQA", "detection", "aesthetic"]
    assert [s.name for s in scorers] == names and list(base["metrics"]) == names
    models_named = [f"CLIPModel at {clip}", f"BlipForQuestionAnswering at {blip}", f"Owlv2ForObjectDetection at {owl}",
                    f"AestheticHead {head} on CLIPModel at {clip}"]  # fmt: skip
    assert [base["metrics"][n]["model"] for n in names] == models_named
    # the saved images and scores: two batches of one prompt's two images
    batches = sorted((tmp_path / "out" / "batches" / "method00").glob("*.npz"))
    assert [b.name for b in batches] == ["00000.npz", "00001.npz"]
    saved = [dict(np.load(b)) for b in batches]
    images = np.concatenate([s["images"] for s in saved])  # (4, 32, 32, 3) uint8
    assert images.shape == (4, 32, 32, 3) and images.dtype == np.uint8
    records = base["images"]
    prompts = [results["prompts"][r["prompt"]]["text"] for r in records]
    cats = np.array([results["prompts"][r["prompt"]]["category"] for r in records])
    assert prompts == ["a red car and a blue bench"] * 2 + ["a dog left of a cat"] * 2
    for k, (name, scorer) in enumerate(zip(names, scorers)):
        direct = scorer.score(images, prompts).numpy().astype(np.float64)  # (4,)
        in_batches = np.concatenate([s[f"score{k}"] for s in saved])
        np.testing.assert_allclose(in_batches, direct, rtol=1e-5, atol=1e-5, err_msg=name)
        np.testing.assert_allclose([r["scores"][name] for r in records], direct, rtol=1e-5, atol=1e-5, err_msg=name)
        stats = base["metrics"][name]
        for c in ("color", "spatial"):
            assert stats["categories"][c]["mean"] == pytest.approx(direct[cats == c].mean(), rel=1e-5, abs=1e-5)
            assert stats["categories"][c]["n_images"] == 2 and stats["categories"][c]["n_prompts"] == 1
        assert stats["overall"]["mean"] == pytest.approx(direct.mean(), rel=1e-5, abs=1e-5)
    assert set(np.concatenate([s["score2"] for s in saved]).tolist()) == {0.0, 1.0}  # the detector's checks: 1 or 0


def test_prompt_score_around_each_evaluator(scorers):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(4, 32, 32, 3), dtype=np.uint8)  # (N, H, W, 3)
    prompts = ["a red car and a blue bench", "a dog left of a cat", "a green bench and a blue bowl", "two cats"]
    cats = ["color", "spatial", "color", "spatial"]
    for scorer in scorers:
        metric = PromptScore(scorer)
        assert metric.name == scorer.name and metric.model == scorer.model
        metric.update(images[:2], prompts[:2], cats[:2])
        metric.update(images[2:], prompts[2:], cats[2:])
        direct = torch.cat([scorer.score(images[:2], prompts[:2]), scorer.score(images[2:], prompts[2:])]).double()
        torch.testing.assert_close(metric.items()["score"], direct.numpy(), rtol=1e-6, atol=1e-6)
        expected = {"all": direct.mean().item(), "color": direct[[0, 2]].mean().item()}
        expected["spatial"] = direct[[1, 3]].mean().item()
        assert metric.compute() == pytest.approx(expected, rel=1e-6, abs=1e-6), scorer.name


@pytest.mark.parametrize("kind, folder", [("blip-vqa", "blip-vqa-base"), ("detector", "owlv2-base-patch16")])
def test_missing_evaluator_weights_are_refused_before_drawing(kind, folder, suite_folder, tmp_path, capsys):
    missing = tmp_path / folder
    assert _bench(suite_folder, tmp_path / "out", f"{kind}={missing}") == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "huggingface-cli download" in err
    assert not (tmp_path / "out" / "batches").exists()
