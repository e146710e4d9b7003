"""`discadapt bench`: metrics in the runner (means, intervals, paired differences against a direct computation), a
sharded run equal to a one-process run (shards in turn, and `accelerate launch` with 2 processes), the report, prompt
suites from the public files as they are, COCO captions, `bench run` on a tiny pipeline (resume, missing evaluator
weights, GPU-sized jobs), `bench compare`, and `bench run --suite shapes` giving `discadapt demo`'s numbers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from test_bench import _method, _without_timing  # toy methods and results without wall times, shared

from discadapt.bench import Prompt, Suite, bootstrap_ci, paired_difference_ci, run_suite
from discadapt.bench.commands import gpu_sized
from discadapt.bench.compare import compare_runs
from discadapt.bench.suites import coco_suite, prompt_list_suite
from discadapt.cli import main
from discadapt.data import load_prompts
from discadapt.scorers import FunctionScorer

PROMPTS = [
    Prompt("a red <b>circle</b>", "color"),
    Prompt("a blue square", "color"),
    Prompt("two cats", "numeracy"),
    Prompt("a cat left of a dog", "spatial"),
]
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "prompts"


def _brightness(images, prompts):
    return torch.as_tensor(np.asarray(images), dtype=torch.float32).mean(dim=(1, 2, 3)) / 255


def _length(images, prompts):
    return torch.tensor([float(len(p)) for p in prompts]) + torch.as_tensor(np.asarray(images)[:, 0, 0, 0] % 3)


METRICS = [FunctionScorer("brightness", _brightness), FunctionScorer("length", _length)]


def test_metrics_without_a_judge_against_a_direct_computation(tmp_path, capsys):
    suite = Suite("toy", PROMPTS, None, images_per_prompt=3, metrics=METRICS)
    results = run_suite(suite, {"base": _method(0), "brighter": _method(40)}, tmp_path, batch_size=5, progress=False)
    seeds = np.array(suite.seeds())
    prompts = [suite.prompts[i].text for i, _ in suite.jobs()]
    cats = np.array([suite.prompts[i].category for i, _ in suite.jobs()])
    groups = suite.groups()
    for name, offset in (("base", 0), ("brighter", 40)):
        images = _method(offset)(prompts, list(seeds))
        direct = {m.name: m.score(images, prompts).double().numpy() for m in METRICS}
        found = results["methods"][name]
        assert "accuracy" not in found.get("overall", {}) and "difference_to_base" not in found
        for metric, values in direct.items():
            stats = found["metrics"][metric]
            assert stats["model"] == metric
            for c in ("color", "numeracy", "spatial"):
                ci = bootstrap_ci(values[cats == c], seed=0, groups=groups[cats == c], binary=False)
                assert stats["categories"][c]["mean"] == pytest.approx(values[cats == c].mean())
                assert (stats["categories"][c]["ci_low"], stats["categories"][c]["ci_high"]) == (ci.low, ci.high)
            assert stats["overall"]["mean"] == pytest.approx(values.mean())
            assert [r["scores"][metric] for r in found["images"]] == pytest.approx(values.tolist())
    base = _method(0)(prompts, list(seeds))
    bright = _method(40)(prompts, list(seeds))
    a, b = (METRICS[0].score(x, prompts).double().numpy() for x in (bright, base))
    diff = paired_difference_ci(a, b, seed=0, groups=groups, binary=False)
    assert results["methods"]["brighter"]["metrics"]["brightness"]["difference_to_base"]["all"] == diff.to_dict()
    out = capsys.readouterr().out
    for title in ("brightness per category", "length per category", "difference to base in brightness"):
        assert title in out
    assert "accuracy per category" not in out and "not the metrics" in out
    page = (tmp_path / "report.html").read_text()
    assert "<h2>brightness per category</h2>" in page and "<h2>length per category</h2>" in page
    assert "a red &lt;b&gt;circle&lt;/b&gt;" in page and "<b>circle</b>" not in page  # prompts are escaped
    assert "brightness 0." in page  # each shown image's scores, as it has no verdict


def test_shards_in_turn_equal_one_process(tmp_path):
    suite = Suite("toy", PROMPTS, None, images_per_prompt=2, metrics=METRICS)
    methods = {"base": _method(0), "other": _method(7)}
    one = run_suite(suite, methods, tmp_path / "one", batch_size=3, progress=False)
    wait, found = threading.Barrier(2), {}

    def process(rank):
        found[rank] = run_suite(suite, methods, tmp_path / "two", batch_size=3, progress=False, shard=(rank, 2),
                                barrier=wait.wait)  # fmt: skip

    threads = [threading.Thread(target=process, args=(rank,)) for rank in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert found[1] is None and _without_timing(found[0]) == _without_timing(one)
    with pytest.raises(ValueError, match=r"`shard` is \(2, 2\); pass \(process index, number of processes\)"):
        run_suite(suite, methods, tmp_path / "bad", shard=(2, 2))


def test_suite_checks_metrics():
    with pytest.raises(ValueError, match="no `judge` and no `metrics`"):
        Suite("toy", PROMPTS, None)
    with pytest.raises(ValueError, match=r"`metrics` are named \['brightness', 'brightness'\]"):
        Suite("toy", PROMPTS, None, metrics=[METRICS[0], METRICS[0]])
    with pytest.raises(ValueError, match="`metrics` holds a str; pass scorers.Scorer objects"):
        Suite("toy", PROMPTS, None, metrics=["clip"])


@pytest.mark.skipif(not SHARED.is_dir(), reason="the shared prompt files are not beside this checkout")
def test_the_shared_prompt_files_load_as_they_are():
    suite = prompt_list_suite([SHARED / "t2i-compbench", SHARED / "structure-diffusion"], metrics=METRICS)
    files = sorted((SHARED / "t2i-compbench").glob("*.txt")) + sorted((SHARED / "structure-diffusion").glob("*.txt"))
    assert len(suite.categories) == len(files) == 10
    for path in files:
        lines = [line.rstrip() for line in path.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
        category = path.stem.removesuffix("_val")
        assert [p.text for p in suite.prompts if p.category == category] == lines == load_prompts(path)
    assert {p.split for p in suite.prompts if p.category == "color"} == {"val"}
    assert {p.split for p in suite.prompts if p.category == "CC-500"} == {"all"}
    small = prompt_list_suite([SHARED / "t2i-compbench" / "spatial_val.txt"], metrics=METRICS, limit=3)
    assert [p.category for p in small.prompts] == ["spatial"] * 3 and small.name == "spatial"


def test_prompt_and_coco_suites(tmp_path):
    (tmp_path / "a_val.txt").write_text("\ufeffone  \n\ntwo\n", encoding="utf-8")
    (tmp_path / "b.txt").write_text("three\n", encoding="utf-8")
    suite = prompt_list_suite([tmp_path], metrics=METRICS, images_per_prompt=2)
    assert [(p.text, p.category, p.split) for p in suite.prompts] == [("one", "a", "val"), ("two", "a", "val"),
                                                                     ("three", "b", "all")]  # fmt: skip
    with pytest.raises(ValueError, match="two files of category 'a'"):
        prompt_list_suite([tmp_path / "a_val.txt", tmp_path / "a_val.txt"], metrics=METRICS)
    with pytest.raises(ValueError, match="`limit` is 0; pass an int >= 1"):
        prompt_list_suite([tmp_path], metrics=METRICS, limit=0)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="has no \\*.txt prompt files"):
        prompt_list_suite([tmp_path / "empty"], metrics=METRICS)
    coco = tmp_path / "captions_val2017.json"
    rows = [{"image_id": 9, "caption": "A plate  of food."}, {"image_id": 9, "caption": "Food."},
            {"image_id": 4, "caption": "A cat."}]  # fmt: skip
    coco.write_text(json.dumps({"images": [], "annotations": rows}))
    found = coco_suite(coco, metrics=METRICS)
    assert [(p.text, p.category, p.split) for p in found.prompts] == [
        ("A plate of food.", "coco", "captions_val2017"),
        ("A cat.", "coco", "captions_val2017"),
    ]
    coco.write_text(json.dumps({"images": []}))
    with pytest.raises(ValueError, match="has no `annotations` list"):
        coco_suite(coco, metrics=METRICS)


def _close(a, b, rel: float = 1e-5) -> bool:
    """Nested results equal, floats up to `rel` (relative)."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_close(a[k], b[k], rel) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(_close(x, y, rel) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float):
        return a == pytest.approx(b, rel=rel, abs=1e-9)
    return a == b


def _prompts(tmp_path) -> Path:
    folder = tmp_path / "prompts"
    folder.mkdir()
    (folder / "color_val.txt").write_text("a red <script>x</script> circle\na blue square\n", encoding="utf-8")
    (folder / "numeracy_val.txt").write_text("two cats\n", encoding="utf-8")
    return folder


def _bench(folder, out, *extra):
    args = ["bench", "run", "--suite", str(folder), "--tiny", "--metric", "denoising", "--steps", "2"]
    return main([*args, "--images-per-prompt", "2", "--batch-size", "2", "--out", str(out), "--no-progress", *extra])


def test_bench_run_resumes_and_compares(tmp_path, capsys):
    folder = _prompts(tmp_path)
    assert _bench(folder, tmp_path / "a") == 0
    first = json.loads((tmp_path / "a" / "results.json").read_text())
    assert first["methods"]["base"]["metrics"]["denoising score"]["model"] == "the pipeline under test"
    assert len(first["methods"]["base"]["images"]) == 6
    page = (tmp_path / "a" / "report.html").read_text()
    assert "&lt;script&gt;x&lt;/script&gt;" in page and "<script>" not in page
    # a kill after some images: the batch files that exist are kept, the missing one is drawn again
    batches = sorted((tmp_path / "a" / "batches" / "method00").iterdir())
    kept = {p.name: p.stat().st_mtime_ns for p in batches[1:]}
    batches[0].unlink()
    (tmp_path / "a" / "results.json").unlink()
    assert _bench(folder, tmp_path / "a") == 0
    again = json.loads((tmp_path / "a" / "results.json").read_text())
    assert _without_timing(again) == _without_timing(first)
    assert {
        p.name: p.stat().st_mtime_ns for p in sorted((tmp_path / "a" / "batches" / "method00").iterdir())[1:]
    } == kept
    # another run of the same suite (other steps), compared image by image
    assert _bench(folder, tmp_path / "b", "--guidance", "1.0") == 0
    second = json.loads((tmp_path / "b" / "results.json").read_text())
    tables = compare_runs(tmp_path / "a" / "results.json", tmp_path / "b" / "results.json")
    assert [t.title for t in tables] == ["denoising score: B - A [95% CI, paired]"]
    x = np.array([r["scores"]["denoising score"] for r in first["methods"]["base"]["images"]])
    y = np.array([r["scores"]["denoising score"] for r in second["methods"]["base"]["images"]])
    direct = paired_difference_ci(y, x, groups=[r["prompt"] for r in first["methods"]["base"]["images"]], binary=False)
    assert tables[0].rows[0][:2] == ["base", 6]
    assert tables[0].rows[0][-1] == f"{direct.estimate:+.3f} [{direct.low:+.3f}, {direct.high:+.3f}]"
    capsys.readouterr()
    assert main(["bench", "compare", str(tmp_path / "a" / "results.json"), str(tmp_path / "b" / "results.json")]) == 0
    assert "denoising score: B - A" in capsys.readouterr().out
    assert main(["bench", "compare", str(tmp_path / "a" / "results.json"), str(tmp_path / "nope.json")]) == 2
    assert "is not a file; pass the results.json" in capsys.readouterr().err


def test_bench_run_refuses_before_drawing(tmp_path, capsys):
    folder = _prompts(tmp_path)
    missing = tmp_path / "clip-vit-large-patch14"
    assert _bench(folder, tmp_path / "out", "--metric", f"clip={missing}") == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "huggingface-cli download" in err
    assert not (tmp_path / "out" / "batches").exists()
    assert _bench(folder, tmp_path / "out", "--metric", "nonsense") == 2
    assert "`--metric` is 'nonsense'; pass one of clip=DIR" in capsys.readouterr().err
    assert _bench(folder, tmp_path / "out", "--methods", "base,self-correction") == 2
    assert "pass the adapter with --adapter DIR" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert _bench(folder, tmp_path / "out", "--device", "cuda") == 2
        err = capsys.readouterr().err
        assert "torch finds no CUDA device on this machine; this run is sized for a GPU" in err
        assert "`--device cpu --limit N`" in err
    assert main(["bench", "run", "--suite", str(folder), "--out", str(tmp_path / "out")]) == 2
    assert "needs a pipeline; pass --pipeline DIR" in capsys.readouterr().err
    assert not (tmp_path / "out" / "batches").exists()
    assert gpu_sized(860_000_000, 1200, "cpu").startswith("the run draws 1200 images with a 860M-parameter UNet")
    assert "--device cpu --limit N" in gpu_sized(860_000_000, 1200, "cpu")
    assert gpu_sized(860_000_000, 1200, "cuda") is None and gpu_sized(4_000_000, 1200, "cpu") is None
    assert gpu_sized(860_000_000, 8, "cpu") is None


@pytest.mark.skipif(sys.platform == "win32", reason="torchrun on POSIX")
def test_accelerate_launch_two_processes_equal_one(tmp_path):
    folder = _prompts(tmp_path)
    assert _bench(folder, tmp_path / "one") == 0
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]  # fmt: skip
    args = ["-m", "discadapt.cli", "bench", "run", "--suite", str(folder), "--tiny", "--metric", "denoising",
            "--steps", "2", "--images-per-prompt", "2", "--batch-size", "2", "--out", str(tmp_path / "two"),
            "--no-progress"]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(launch + args, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    one = json.loads((tmp_path / "one" / "results.json").read_text())
    two = json.loads((tmp_path / "two" / "results.json").read_text())
    assert _close(_without_timing(two), _without_timing(one))  # float32 sums in 1 and 2 processes: rounding apart


def test_bench_suite_shapes_is_the_demo(tmp_path):
    options = ["--quick", "--n-prompts", "1", "--images-per-prompt", "1", "--categories", "single", "spatial",
               "--no-probing", "--no-correction", "--no-progress"]  # fmt: skip
    assert main(["demo", "--out", str(tmp_path / "demo"), *options]) == 0
    assert main(["bench", "run", "--suite", "shapes", "--out", str(tmp_path / "bench"), *options]) == 0
    demo = json.loads((tmp_path / "demo" / "results.json").read_text())
    bench = json.loads((tmp_path / "bench" / "results.json").read_text())
    assert _without_timing(bench) == _without_timing(demo)
    assert len(demo["methods"]) > 1  # the bundled rows too


def test_bench_discriminate_reports_itm_and_rec_with_intervals(tmp_path, capsys):
    from discadapt.adapter import DiscriminativeAdapter
    from discadapt.bench.discriminate import accuracy_rows
    from discadapt.testing import tiny_sd_pipeline

    torch.manual_seed(0)
    DiscriminativeAdapter.for_pipeline(tiny_sd_pipeline(), hidden_size=32, num_heads=2).save_pretrained(tmp_path / "a")
    args = ["bench", "discriminate", "--tiny", "--adapter", str(tmp_path / "a"), "--shapes", "10", "--limit", "6"]
    assert main([*args, "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    assert "discrimination accuracy [95% CI over items]" in capsys.readouterr().out
    found = json.loads((tmp_path / "out" / "results.json").read_text())["accuracy"]
    assert found["all"]["itm_text"]["n"] == 6 and 0 <= found["all"]["itm_text"]["accuracy"] <= 1
    rows = accuracy_rows({"all": {"itm_text": 0.5, "n_itm_text": 10, "itm_image": None, "n_itm_image": 0}})
    ci = bootstrap_ci([1] * 5 + [0] * 5)
    assert rows == {"all": {"itm_text": {"accuracy": 0.5, "ci_low": ci.low, "ci_high": ci.high, "n": 10}}}
    assert main(["bench", "discriminate", "--tiny", "--adapter", str(tmp_path / "nope"), "--shapes", "4",
                 "--out", str(tmp_path / "x")]) == 2  # fmt: skip
    assert "nope" in capsys.readouterr().err


def test_bench_run_adapter_metric(tmp_path):
    from discadapt.adapter import DiscriminativeAdapter
    from discadapt.testing import tiny_sd_pipeline

    torch.manual_seed(0)
    DiscriminativeAdapter.for_pipeline(tiny_sd_pipeline(), hidden_size=32, num_heads=2).save_pretrained(tmp_path / "a")
    assert _bench(_prompts(tmp_path), tmp_path / "out", "--metric", f"adapter={tmp_path / 'a'}") == 0
    found = json.loads((tmp_path / "out" / "results.json").read_text())["methods"]["base"]["metrics"]
    assert list(found) == ["denoising score", "adapter ITM"]
    assert found["adapter ITM"]["model"] == f"adapter at {tmp_path / 'a'}"


@pytest.mark.parametrize("script", ["compbench_self_correction.py", "probe_coco_negatives.py"])
def test_examples_run_on_the_tiny_pipeline(script, tmp_path):
    path = Path(__file__).resolve().parents[1] / "examples" / script
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, str(path), "--tiny", "--out", str(tmp_path / "out")], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "wrote" in done.stdout


class _Means(torch.nn.Module):
    """A feature module for FID: per-channel means and standard deviations (6 features)."""

    num_features = 6

    def forward(self, x):
        return torch.cat([x.mean(dim=(2, 3)), x.std(dim=(2, 3))], dim=1)


def test_fid_table_against_a_direct_computation(tmp_path, capsys):
    from PIL import Image

    from discadapt.bench.fid_table import fid_table, reference_images
    from discadapt.metrics import FID

    rng = np.random.default_rng(0)
    for i in range(12):
        Image.fromarray(rng.integers(0, 256, (8, 6, 3), dtype=np.uint8)).save(tmp_path / f"{i:02d}.png")
    real = reference_images(tmp_path, 4)
    assert real.shape == (12, 4, 4, 3) and real.dtype == np.uint8

    def noisy(prompts, seeds):
        return np.stack([np.random.default_rng(s).integers(0, 256, (4, 4, 3), dtype=np.uint8) for s in seeds])

    suite = Suite("toy", PROMPTS, None, images_per_prompt=3, metrics=METRICS[:1])
    methods = {"base": _method(0), "noisy": noisy}
    results = run_suite(
        suite, methods, tmp_path / "out", progress=False, image_tables=[fid_table(lambda: FID(_Means()), real)]
    )
    table = results["tables"][0]
    assert table["columns"] == ["method", "FID", "images", "reference"]
    prompts = [suite.prompts[i].text for i, _ in suite.jobs()]
    for row, fn in zip(table["rows"], methods.values()):
        direct = FID(_Means())
        direct.update(torch.from_numpy(real).permute(0, 3, 1, 2).float() / 255, real=True)
        generated = fn(prompts, suite.seeds())
        direct.update(torch.from_numpy(generated).permute(0, 3, 1, 2).float() / 255, real=False)
        assert row[1] == pytest.approx(float(direct.compute()), rel=1e-6) and row[2:] == [12, 12]
    assert "FID against the reference images" in capsys.readouterr().out
    with pytest.raises(ValueError, match="holds 0 images"):
        reference_images(tmp_path / "out", 4)


def test_bench_run_fid_flags_fail_before_drawing(tmp_path, capsys):
    folder = _prompts(tmp_path)
    assert _bench(folder, tmp_path / "out", "--fid-reference", str(tmp_path)) == 2
    assert "FID needs both --fid-reference DIR" in capsys.readouterr().err
    missing = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    assert _bench(folder, tmp_path / "out", "--fid-reference", str(tmp_path), "--fid-weights", str(missing)) == 2
    assert str(missing) in capsys.readouterr().err
    assert not (tmp_path / "out" / "batches").exists()
