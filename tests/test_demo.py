"""Fast tests of `discadapt demo`: bootstrap intervals (`bench.stats`), the report (`bench.report`), the demo
(`worlds.shapes.demo`, the world's suite `worlds.shapes.suite` run by `bench.run_suite`) on a tiny trained world, and
the CLI."""

from __future__ import annotations

import base64
import html
import io
import itertools
import json
import re
import warnings

import numpy as np
import pytest
from diffusers import StableDiffusionPipeline
from PIL import Image

from discadapt.bench import (
    Interval,
    ReportRow,
    Table,
    accuracy_table,
    bootstrap_ci,
    paired_difference_ci,
    pipeline_method,
    render_html,
    write_report,
)
from discadapt.cli import main
from discadapt.sampling.seeds import image_seed
from discadapt.worlds.shapes import bundle, check, parse, render
from discadapt.worlds.shapes.demo import FULL, QUICK, run_demo
from discadapt.worlds.shapes.models import ModelSizes
from discadapt.worlds.shapes.suite import OracleJudge, demo_prompts, shapes_suite
from discadapt.worlds.shapes.train import train_world

SMALL = dict(n_prompts=2, images_per_prompt=2, steps=2, progress=False)
BACKGROUND = 40


def blank(prompts, seeds):
    """A method drawing nothing: dark-grey images."""
    return np.full((len(prompts), 32, 32, 3), BACKGROUND, np.uint8)


def truth_method(categories, n_prompts, seed=0):
    """A method rendering the scene each drawn caption was made from: the oracle must accept every image."""
    scenes = {p.text: p.scene for p in demo_prompts(categories, n_prompts, seed)}
    return lambda prompts, seeds: np.stack([render(scenes[p]) for p in prompts])


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Path of a tiny trained world's pipeline folder (3 VAE + 3 UNet steps)."""
    out = tmp_path_factory.mktemp("world")
    result = train_world(
        out,
        vae_steps=3,
        unet_steps=3,
        batch_size=2,
        vae_batch_size=2,
        sizes=ModelSizes.tiny(),
        progress=False,
        scale_examples=16,
    )
    return result["pipeline"]


@pytest.fixture(scope="module")
def pipe(world):
    return StableDiffusionPipeline.from_pretrained(world, local_files_only=True)


# ---- bench.stats ------------------------------------------------------------------------------------------------


def test_bootstrap_known_values():
    ci = bootstrap_ci([1, 0] * 5)  # percentiles 2.5 / 97.5 of Binomial(10, 0.5) / 10 are 0.2 / 0.8
    assert ci == Interval(estimate=0.5, low=0.2, high=0.8, n=10, n_groups=10, level=0.95)
    assert ci.estimate - ci.low == pytest.approx(ci.high - ci.estimate)  # symmetric data, symmetric interval
    assert str(ci) == "0.500 [0.200, 0.800]"
    assert bootstrap_ci([True, False] * 5, seed=3) == bootstrap_ci(np.array([1, 0] * 5), seed=3)
    wide = bootstrap_ci([1, 0] * 5, level=0.99)
    assert (wide.low, wide.high) == (0.1, 0.9)
    x = np.random.default_rng(1).integers(0, 2, 30)
    assert bootstrap_ci(x, seed=7) == bootstrap_ci(x, seed=7)
    grouped = bootstrap_ci([1, 1, 0, 1, 0, 1, 1, 0], groups=[0, 0, 1, 1, 2, 2, 3, 3])
    assert (grouped.estimate, grouped.n, grouped.n_groups) == (0.625, 8, 4)
    # resampling 4 groups of 2: the accuracy takes values k / 8; the interval ends are among them
    assert grouped.low * 8 == round(grouped.low * 8) and grouped.high * 8 == round(grouped.high * 8)
    assert 0.25 <= grouped.low < 0.625 < grouped.high <= 1


def test_bootstrap_degenerate_collapses_without_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert bootstrap_ci([1] * 12) == Interval(1.0, 1.0, 1.0, 12, 12, 0.95)
        assert bootstrap_ci([0] * 6, groups=[0, 0, 1, 1, 2, 2]) == Interval(0.0, 0.0, 0.0, 6, 3, 0.95)
        assert bootstrap_ci([1]) == Interval(1.0, 1.0, 1.0, 1, 1, 0.95)
        one_group = bootstrap_ci([1, 0, 0], groups=["a", "a", "a"])  # one prompt: every resample is itself
        assert (one_group.low, one_group.high, one_group.n_groups) == (1 / 3, 1 / 3, 1)


def test_bootstrap_clusters_widen_correlated_data():
    outcomes = np.repeat([1, 0, 1, 1, 0, 0, 1, 0, 1, 1], 6)  # 10 prompts, 6 identical images each
    groups = np.repeat(np.arange(10), 6)
    naive, clustered = bootstrap_ci(outcomes), bootstrap_ci(outcomes, groups=groups)
    assert naive.estimate == clustered.estimate == 0.6
    assert clustered.high - clustered.low > 2 * (naive.high - naive.low)
    per_prompt = bootstrap_ci([1, 0, 1, 1, 0, 0, 1, 0, 1, 1])  # same as bootstrapping the 10 prompts
    assert clustered.low == pytest.approx(per_prompt.low, abs=0.1) and clustered.high == pytest.approx(
        per_prompt.high, abs=0.1
    )


def test_bootstrap_coverage_simulation():
    rng = np.random.default_rng(0)
    p, trials = 0.3, 200
    covered = 0
    for t in range(trials):
        ci = bootstrap_ci(rng.random(40) < p, n_resamples=999, seed=t)
        covered += ci.low <= p <= ci.high
    assert 0.88 <= covered / trials <= 0.99
    # 20 prompts x 5 images, per-prompt success rates ~ Beta(0.5, 0.5) (strongly correlated images), true mean 0.5
    naive = clustered = 0
    groups = np.repeat(np.arange(20), 5)
    for t in range(trials):
        x = rng.random(100) < np.repeat(rng.beta(0.5, 0.5, 20), 5)
        a, b = bootstrap_ci(x, n_resamples=999, seed=t), bootstrap_ci(x, n_resamples=999, seed=t, groups=groups)
        naive += a.low <= 0.5 <= a.high
        clustered += b.low <= 0.5 <= b.high
    assert clustered / trials >= 0.87 and naive / trials <= 0.85


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(successes=[]), r"`successes` has shape \(0,\); pass a non-empty 1-d"),
        (dict(successes=[[1, 0]]), r"`successes` has shape \(1, 2\)"),
        (dict(successes=[1, 2, 0.5]), r"`successes` holds \[2.0, 0.5\]; pass outcomes 0 / 1"),
        (dict(successes=["1"]), r"`successes` holds \['1'\]"),
        (dict(successes=[1, 0], level=1.5), r"`level` is 1.5; pass a confidence level in \(0, 1\)"),
        (dict(successes=[1, 0], n_resamples=0), r"`n_resamples` is 0; pass an int >= 1"),
        (dict(successes=[1, 0], groups=[0]), r"`groups` has shape \(1,\) and the outcomes \(2,\)"),
    ],
)
def test_bootstrap_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        bootstrap_ci(**kwargs)


def test_paired_difference_known_values_and_brute_force():
    # 4 prompts x 2 images; per prompt, a's successes minus b's: +2, 0, -1, +1
    a, b = [1, 1, 1, 0, 0, 0, 1, 0], [0, 0, 1, 0, 1, 0, 0, 0]
    groups = [0, 0, 1, 1, 2, 2, 3, 3]
    ci = paired_difference_ci(a, b, groups=groups, n_resamples=20000, seed=1)
    assert (ci.estimate, ci.n, ci.n_groups) == (0.25, 8, 4)
    # the 256 equally likely resamples of 4 prompts: difference = (sum of the chosen prompts' differences) / 8
    exact = [sum(c) / 8 for c in itertools.product([2, 0, -1, 1], repeat=4)]
    step = 1 / 8  # the support's spacing: the Monte Carlo percentile lands within one step of the exact one
    assert abs(ci.low - np.percentile(exact, 2.5, method="inverted_cdf")) <= step + 1e-9
    assert abs(ci.high - np.percentile(exact, 97.5, method="inverted_cdf")) <= step + 1e-9
    assert -1 <= ci.low < 0 < 0.25 < ci.high <= 1
    assert paired_difference_ci(a, b, groups=groups) == paired_difference_ci(a, b, groups=groups)  # seeded


def test_paired_difference_is_sharper_than_two_intervals():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(40), 5)
    base = rng.random(200) < np.repeat(rng.beta(0.5, 0.5, 40), 5)  # prompts differ a lot in difficulty
    better = base | (rng.random(200) < 0.15)  # the same images, some failures fixed
    diff = paired_difference_ci(better, base, groups=groups)
    one, two = bootstrap_ci(better, groups=groups), bootstrap_ci(base, groups=groups)
    assert diff.estimate == pytest.approx(one.estimate - two.estimate)
    assert diff.low > 0  # paired: the gain is clear ...
    assert one.low < two.high  # ... though the two separate intervals overlap
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert paired_difference_ci(base, base, groups=groups) == Interval(0.0, 0.0, 0.0, 200, 40, 0.95)
        assert paired_difference_ci([1, 1, 0, 0], [0, 0, 0, 0], groups=[0, 0, 1, 1]).n_groups == 2
    with pytest.raises(ValueError, match=r"`a` has 2 outcomes and `b` 3; pass outcomes of the same observations"):
        paired_difference_ci([1, 0], [1, 0, 1])
    with pytest.raises(ValueError, match=r"`b` holds \[2\]; pass outcomes 0 / 1"):
        paired_difference_ci([1, 0], [1, 2])


# ---- bench.report -----------------------------------------------------------------------------------------------


def _row(method="base", category="single", accuracy=0.5, caption="a red circle", n=2):
    image = np.zeros((32, 32, 3), np.uint8)
    image[8:16, 8:16] = (225, 45, 45)
    return ReportRow(
        method,
        category,
        accuracy,
        max(0.0, accuracy - 0.25),
        min(1.0, accuracy + 0.25),
        n_prompts=n,
        n_images=2 * n,
        images=np.stack([image] * n),
        captions=[caption] * n,
        passed=[True, False][:n],
        notes=["found 1 red circle", "found <0> red & circles"][:n],
    )


def test_tables_format():
    table = Table("timing", ["method", "s / image", "ratio"], [["base", 0.0512, 1.0], ["slow", 0.1, None]], "note")
    assert table.format().splitlines() == [
        "timing",
        "method  s / image  ratio",
        "------  ---------  -----",
        "base    0.051      1.000",
        "slow    0.100",
        "note",
    ]
    assert Table.from_dict(json.loads(json.dumps(table.to_dict()))) == table
    acc = accuracy_table([_row(), _row("oracle", accuracy=1.0), _row(category="counting", accuracy=0.0)])
    assert acc.columns == ["method", "single", "counting"]
    assert acc.rows == [
        ["n prompts / images", "2 / 4", "2 / 4"],
        ["base", "0.500 [0.250, 0.750]", "0.000 [0.000, 0.250]"],
        ["oracle", "1.000 [0.750, 1.000]", ""],
    ]


def test_write_report(tmp_path):
    tricky = 'the <b>large</b> "red" & circle'
    rows = [_row(caption=tricky), _row("x & y", accuracy=1.0)]
    paths = write_report(tmp_path / "out", {"a": [1, 2]}, rows, [Table("extra <t>", ["k"], [["v&"]])], "T", {"s": 1})
    assert json.loads(paths["results"].read_text()) == {"a": [1, 2]}
    page = paths["report"].read_text()
    assert html.escape(tricky) in page and tricky not in page
    assert "found &lt;0&gt; red &amp; circles" in page and "extra &lt;t&gt;" in page and "v&amp;" in page
    assert page.count("<svg") == 1 and "x &amp; y" in page  # one category: one chart, two bars
    assert not re.search(r"(src|href)=\"(http|//)", page) and "<link" not in page and "<script" not in page
    uris = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(uris) == 4
    picture = Image.open(io.BytesIO(base64.b64decode(uris[0])))
    assert picture.size == (96, 96)  # 32 px upscaled 3x, nearest: the square keeps its exact color and edges
    assert np.asarray(picture)[24:48, 24:48].tolist() == [[[225, 45, 45]] * 24] * 24
    assert np.asarray(picture)[23, 24].tolist() == [0, 0, 0]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["report.html", "results.json"]  # no temp files


def test_report_bad_input(tmp_path):
    with pytest.raises(ValueError, match=r"`notes` has 1 items and `images` 0; pass one per image"):
        ReportRow("m", "c", 0.5, 0.1, 0.9, 1, 1, notes=["x"])
    with pytest.raises(ValueError, match=r"the interval is \[0.9, 0.1\]; pass 0 <= `ci_low` <= `ci_high` <= 1"):
        ReportRow("m", "c", 0.5, 0.9, 0.1, 1, 1)
    with pytest.raises(ValueError, match=r"`rows\[0\]` has 1 cells and `columns` 2 names"):
        Table("t", ["a", "b"], [["x"]])
    with pytest.raises(ValueError, match="`rows` is empty; pass one ReportRow"):
        render_html([])
    with pytest.raises(ValueError, match="`max_images` is -1; pass an int >= 0"):
        render_html([_row()], max_images=-1)
    bad = ReportRow("m", "c", 0.5, 0.1, 0.9, 1, 1, images=[np.zeros((32, 32), np.float32)], captions=["a"],
                    passed=[True], notes=[""])  # fmt: skip
    with pytest.raises(ValueError, match=r"an image has shape \(32, 32\) and dtype float32; pass \(S, S, 3\) uint8"):
        write_report(tmp_path / "bad", {}, [bad])
    assert not (tmp_path / "bad").exists()  # nothing written


# ---- worlds.shapes.demo -----------------------------------------------------------------------------------------


def test_demo_prompts():
    prompts = demo_prompts(["single", "spatial"], n_prompts=10, seed=0)
    single = [p for p in prompts if p.category == "single"]
    assert [p.category for p in prompts] == ["single"] * 10 + ["spatial"] * 10
    # test_ood has 4 single-object captions (the held-out pairs); test_id fills in
    assert [p.split for p in single] == ["test_id", "test_ood"] * 4 + ["test_id"] * 2
    assert len({p.text for p in prompts}) == 20
    for p in prompts:
        assert parse(p.text).category == p.category
        assert check(render(p.scene), p.text).ok
    assert demo_prompts(["single", "spatial"], n_prompts=10, seed=0) == prompts
    assert demo_prompts(["single"], n_prompts=10, seed=1) != single
    assert image_seed(0, "a red circle", 1) == image_seed(0, "a red circle", 1)
    assert len({image_seed(s, t, k) for s in (0, 1) for t in ("a red circle", "a blue square") for k in (0, 1)}) == 8
    suite = shapes_suite(["single", "spatial"], n_prompts=10, images_per_prompt=3, seed=0)
    assert list(suite.prompts) == prompts and suite.images_per_prompt == 3 and suite.min_image_size == 32
    assert suite.seeds()[:3] == [image_seed(0, prompts[0].text, k) for k in range(3)]
    verdicts = OracleJudge().judge(np.stack([render(p.scene) for p in prompts]), [p.text for p in prompts])
    assert all(v.ok and not v.marginal for v in verdicts)
    with pytest.raises(ValueError, match=r"`prompts` is \['a red circle'\]; pass one caption per image \(2\)"):
        OracleJudge().judge(np.zeros((2, 32, 32, 3), np.uint8), ["a red circle"])


def test_pipeline_method_is_seeded_per_image(pipe):
    generate = pipeline_method(pipe, steps=2, guidance=4.0)
    pair = generate(["a red circle", "a blue square"], [5, 6])
    assert pair.shape == (2, 32, 32, 3) and pair.dtype == np.uint8
    alone = generate(["a blue square"], [6])
    assert np.abs(alone[0].astype(int) - pair[1].astype(int)).max() <= 1  # the batch does not change an image
    assert not np.array_equal(generate(["a blue square"], [7])[0], alone[0])


def test_run_demo_results_and_report(pipe, tmp_path, capsys):
    cats = ["single", "counting", "referring"]
    calls = []

    def recording(prompts, seeds):
        calls.append((list(prompts), list(seeds)))
        return blank(prompts, seeds)

    methods = {"truth": truth_method(cats, 2), "blank": recording}
    results = run_demo(pipe, tmp_path / "out", categories=cats, methods=methods, batch_size=5, **SMALL)
    out = capsys.readouterr().out
    assert json.loads((tmp_path / "out" / "results.json").read_text()) == results

    settings = results["settings"]
    assert {k: settings[k] for k in ("seed", "steps", "guidance", "n_prompts", "images_per_prompt", "quick")} == dict(
        seed=0, steps=2, guidance=4.0, n_prompts=2, images_per_prompt=2, quick=False
    )
    assert settings["categories"] == cats and settings["image_size"] == 32 and settings["prompt_source"] == "held-out"
    assert set(settings["versions"]) == {"discadapt", "diffusers", "torch", "numpy", "scipy", "python"}

    prompts = results["prompts"]
    assert [p["split"] for p in prompts] == ["test_id", "test_ood"] * 3
    assert [p["category"] for p in prompts] == ["single"] * 2 + ["counting"] * 2 + ["referring"] * 2
    assert all(p["seeds"] == [image_seed(0, p["text"], k) for k in (0, 1)] for p in prompts)
    # every method saw the same prompts and seeds, in batches of 5 images
    assert [len(c[0]) for c in calls] == [5, 5, 2]
    assert sum((c[0] for c in calls), []) == [p["text"] for p in prompts for _ in range(2)]
    assert sum((c[1] for c in calls), []) == sum((p["seeds"] for p in prompts), [])

    m = results["methods"]
    assert list(m) == ["base", "truth", "blank"]
    for c in cats:
        assert m["truth"]["categories"][c] == dict(accuracy=1.0, ci_low=1.0, ci_high=1.0, n_prompts=2, n_images=4)
        assert m["blank"]["categories"][c] == dict(accuracy=0.0, ci_low=0.0, ci_high=0.0, n_prompts=2, n_images=4)
        assert m["blank"]["splits"]["test_ood"]["categories"][c]["n_images"] == 2
    assert m["truth"]["overall"] == dict(accuracy=1.0, ci_low=1.0, ci_high=1.0, n_prompts=6, n_images=12)
    assert m["blank"]["splits"]["test_id"]["all"] == dict(
        accuracy=0.0, ci_low=0.0, ci_high=0.0, n_prompts=3, n_images=6
    )
    base = m["base"]
    ok = [image["ok"] for image in base["images"]]
    assert base["overall"]["accuracy"] == pytest.approx(np.mean(ok))
    assert base["overall"]["ci_low"] <= base["overall"]["accuracy"] <= base["overall"]["ci_high"]
    assert [(i["prompt"], i["image"]) for i in base["images"]] == [(p, k) for p in range(6) for k in range(2)]
    assert m["blank"]["images"][0] == {"prompt": 0, "image": 0, "ok": False, "marginal": False, "reason": "found 0 " + (
        parse(prompts[0]["text"]).phrases[0].words(plural=True))}  # fmt: skip
    for name in m:  # the fraction of marginal verdicts, per category and over all
        flags = np.array([image["marginal"] for image in m[name]["images"]])
        assert m[name]["marginal"]["all"] == pytest.approx(flags.mean())
    assert m["truth"]["marginal"] == dict.fromkeys([*cats, "all"], 0.0)  # rendered scenes: nothing marginal
    assert base["time_ratio"] == 1.0 and base["seconds_per_image"] > 0
    for name in ("truth", "blank"):
        assert m[name]["time_ratio"] == pytest.approx(m[name]["seconds_per_image"] / base["seconds_per_image"])
    assert m["blank"]["time_ratio"] < 1  # a constant array is cheaper than a pipeline
    assert results["tables"] == [] and results["seconds"] > 0
    # differences to base, paired image by image: truth - base and blank - base, exactly
    assert "difference_to_base" not in base
    for name, value in (("truth", 1.0), ("blank", 0.0)):
        for key in (*cats, "all"):
            mask = [prompts[i["prompt"]]["category"] == key or key == "all" for i in base["images"]]
            want = value - np.mean(np.array(ok)[mask])
            assert m[name]["difference_to_base"][key]["estimate"] == pytest.approx(want), (name, key)

    lines = out.splitlines()
    assert lines[0] == "accuracy per category [95% CI over prompts]"
    assert lines[1].split() == ["method", "single", "counting", "referring"]
    assert lines[3].split() == ["n", "prompts", "/", "images"] + ["2", "/", "4"] * 3
    assert lines[5] == "truth" + " " * 15 + "  ".join(["1.000 [1.000, 1.000]"] * 3)
    assert lines[6] == "blank" + " " * 15 + "  ".join(["0.000 [0.000, 0.000]"] * 3)
    assert "accuracy per split [95% CI over prompts]" in lines and "time per image" in lines
    title = "difference to base [95% CI, paired: same prompts and seeds]"
    assert lines.index(title) < lines.index("time per image")
    first = lines[lines.index(title) + 3].split()
    truth_all = m["truth"]["difference_to_base"]["all"]
    assert first[0] == "truth" and " ".join(first[-3:]) == (
        f"{truth_all['estimate']:+.3f} [{truth_all['low']:+.3f}, {truth_all['high']:+.3f}]"
    )
    assert lines.index("marginal verdicts (fraction of images)") < lines.index("time per image")
    timing = lines[lines.index("time per image") + 3].split()
    assert timing[:2] == ["base", "12"] and timing[-1] == "1.000"
    assert out.rstrip().splitlines()[-1].startswith(f"wrote {tmp_path / 'out' / 'results.json'} and ")

    page = (tmp_path / "out" / "report.html").read_text()
    assert page.count("<svg") == 3  # one chart per category
    assert all(html.escape(p["text"]) in page for p in prompts)
    assert page.count('src="data:image/png;base64,') == 3 * 6  # first image of each prompt, per method
    assert "ratio to base" in page and "accuracy per split" in page


def test_run_demo_user_prompts_quick_and_extra_tables(pipe, tmp_path, capsys):
    probe = Table("adapter ITM vs hard negatives", ["category", "accuracy"], [["spatial", 0.75]], "probing rows")
    seen = []

    def computed(p):
        seen.append(p)
        return Table("computed", ["x"], [[1]])

    user = ["A red circle.", "two blue squares", "the circle on the left", "a red circle"]
    results = run_demo(
        pipe, tmp_path, quick=True, steps=2, prompts=user, extra_tables=[probe, computed], progress=False
    )
    out = capsys.readouterr().out
    assert seen == [pipe]
    s = results["settings"]
    assert (s["n_prompts"], s["images_per_prompt"], s["prompt_source"]) == (None, QUICK["images_per_prompt"], "user")
    assert s["categories"] == ["single", "counting", "referring"]
    assert [p["split"] for p in results["prompts"]] == ["user"] * 4
    assert [p["text"] for p in results["prompts"]] == user
    single = results["methods"]["base"]["categories"]["single"]
    assert (single["n_prompts"], single["n_images"]) == (2, 4)
    assert list(results["methods"]["base"]["splits"]) == ["user"]
    assert results["tables"] == [probe.to_dict(), {"title": "computed", "columns": ["x"], "rows": [[1]], "note": ""}]
    assert probe.format() in out and "computed" in out
    page = (tmp_path / "report.html").read_text()
    assert "adapter ITM vs hard negatives" in page and "probing rows" in page


def test_run_demo_continues_and_refuses_other_settings(pipe, tmp_path, capsys):
    calls = []

    def recording(prompts, seeds):
        calls.append(list(prompts))
        return blank(prompts, seeds)

    small = dict(categories=["single"], n_prompts=2, images_per_prompt=1, progress=False, methods={"blank": recording})
    first = run_demo(pipe, tmp_path, steps=1, **small)
    assert len(calls) == 1 and (tmp_path / "manifest.json").exists()
    again = run_demo(pipe, tmp_path, steps=1, **small)  # everything read back from out_dir
    assert len(calls) == 1 and again["methods"]["base"]["images"] == first["methods"]["base"]["images"]
    assert again["methods"]["blank"]["seconds"] == first["methods"]["blank"]["seconds"]
    with pytest.raises(ValueError, match=r"another configuration \(settings.steps: 1 there, 2 now\).*--restart"):
        run_demo(pipe, tmp_path, steps=2, **small)
    assert run_demo(pipe, tmp_path, steps=2, resume=False, **small)["settings"]["steps"] == 2 and len(calls) == 2
    capsys.readouterr()


def test_run_demo_quick_defaults(pipe, tmp_path):
    results = run_demo(pipe, tmp_path, quick=True, categories=["single"], steps=1, progress=False)
    assert (results["settings"]["n_prompts"], results["settings"]["images_per_prompt"]) == (8, 2)
    assert results["methods"]["base"]["categories"]["single"]["n_images"] == 16
    assert FULL["n_prompts"] * FULL["images_per_prompt"] > 4 * QUICK["n_prompts"] * QUICK["images_per_prompt"]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(categories=["single", "hexagons"]), r"`category` is 'hexagons'; pick one of single, two_objects, "),
        (dict(categories=[]), r"`categories` is empty; pass one or more of single, two_objects"),
        (dict(categories=["single", "single"]), r"`categories` is \['single', 'single'\], with repeats"),
        (dict(n_prompts=0), r"`n_prompts` is 0; pass an int >= 1"),
        (dict(images_per_prompt=0), r"`images_per_prompt` is 0; pass an int >= 1"),
        (dict(steps=1.5), r"`steps` is 1.5; pass an int >= 1"),
        (dict(seed=-1), r"`seed` is -1; pass an int >= 0"),
        (dict(batch_size=0), r"`batch_size` is 0; pass an int >= 1"),
        (dict(guidance=float("nan")), r"`guidance` is nan; pass a finite number >= 0"),
        (dict(guidance=-2.0), r"`guidance` is -2.0; pass a finite number >= 0"),
        (dict(quick="yes"), r"`quick` is 'yes'; pass True or False"),
        (dict(prompts=[]), r"`prompts` is empty; pass one or more captions"),
        (dict(prompts="a red circle"), r"`prompts` is 'a red circle'; pass a list of captions"),
        (dict(prompts=["a red circle", "a red hexagon"]), r"`prompts` holds 'a red hexagon', not a caption of the"),
        (dict(prompts=["a red circle"], n_prompts=3), r"`prompts` was given with `categories` or `n_prompts`"),
        (dict(methods={"base": blank}), r"`methods` has a row named 'base'; pass non-empty names other than 'base'"),
        (dict(methods={"x": 3}), r"`methods\['x'\]` is 3; pass a function \(prompts, seeds\)"),
        (dict(methods=[blank]), r"`methods` is list; pass a dict of row name -> function"),
        (dict(extra_tables=["t"]), r"`extra_tables` holds 't'; pass bench.Table objects or functions"),
    ],
)
def test_run_demo_bad_input(pipe, tmp_path, kwargs, match):
    small = {k: v for k, v in SMALL.items() if k != "n_prompts" or "prompts" not in kwargs}
    with pytest.raises(ValueError, match=match):
        run_demo(pipe, tmp_path / "out", **{**small, **kwargs})
    assert not (tmp_path / "out").exists()


def test_run_demo_bad_methods_and_pipeline(pipe, tmp_path):
    small = dict(categories=["single"], n_prompts=1, images_per_prompt=1, steps=1, progress=False)
    wrong = {"gray": lambda prompts, seeds: np.zeros((len(prompts), 32, 32, 3), np.float32)}
    with pytest.raises(ValueError, match=r"method 'gray' returned ndarray of shape \(1, 32, 32, 3\) and dtype float32"):
        run_demo(pipe, tmp_path / "a", methods=wrong, **small)
    tiny = {"tiny": lambda prompts, seeds: np.zeros((len(prompts), 16, 16, 3), np.uint8)}
    with pytest.raises(ValueError, match=r"method 'tiny' returned images of shape \(1, 16, 16, 3\); return"):
        run_demo(pipe, tmp_path / "b", methods=tiny, **small)
    with pytest.raises(ValueError, match=r"`extra_tables` function .* returned 3; return a bench.Table"):
        run_demo(pipe, tmp_path / "c", extra_tables=[lambda p: 3], **small)
    with pytest.raises(ValueError, match=r"`pipe` is '/nonexistent/world', not a folder; pass a diffusers pipeline"):
        run_demo("/nonexistent/world", tmp_path, **small)


# ---- CLI --------------------------------------------------------------------------------------------------------


def test_cli_demo(world, tmp_path, capsys):
    args = ["demo", "--pipeline", world, "--out", str(tmp_path / "d"), "--categories", "single", "spatial"]
    assert (
        main(args + ["--n-prompts", "2", "--images-per-prompt", "1", "--steps", "2", "--no-progress", "--no-probing"])
        == 0
    )
    out = capsys.readouterr().out
    assert "hard negatives" not in out
    assert out.startswith("accuracy per category [95% CI over prompts]\nmethod")
    assert out.splitlines()[3].split() == ["n", "prompts", "/", "images", "2", "/", "2", "2", "/", "2"]
    results = json.loads((tmp_path / "d" / "results.json").read_text())
    assert results["settings"]["pipeline"] == world and results["settings"]["categories"] == ["single", "spatial"]
    assert (tmp_path / "d" / "report.html").exists()

    prompt_file = tmp_path / "prompts.txt"
    prompt_file.write_text("a red circle\nthree green triangles\n")
    assert main(["demo", "--pipeline", world, "--out", str(tmp_path / "p"), "--prompts", str(prompt_file)]
                + ["--quick", "--steps", "1", "--no-progress"]) == 0  # fmt: skip
    results = json.loads((tmp_path / "p" / "results.json").read_text())
    assert [p["text"] for p in results["prompts"]] == ["a red circle", "three green triangles"]
    (table,) = results["tables"]  # the probing table, 10 examples per category and split with --quick
    assert table["title"].startswith("image-text matching against hard negatives")
    assert [row[0] for row in table["rows"]][-1] == "denoising error (10 t)"
    assert "image-text matching against hard negatives" in capsys.readouterr().out

    assert main(["demo", "--pipeline", world, "--out", str(tmp_path / "x"), "--categories", "hexagons"]) == 2
    assert "discadapt demo: error: `category` is 'hexagons'; pick one of single" in capsys.readouterr().err


def test_cli_demo_bundled_world(pipe, tmp_path, capsys, monkeypatch):
    """Without --pipeline the demo loads the bundled world (`bundle.load_pipeline`, stubbed here)."""

    def missing(device="cpu", **kwargs):
        raise FileNotFoundError("bundled weights missing: unet.safetensors; rebuild with `python -m ...`")

    monkeypatch.setattr(bundle, "load_pipeline", missing)
    assert main(["demo", "--out", str(tmp_path), "--quick", "--no-progress"]) == 2
    assert "discadapt demo: error: bundled weights missing: unet.safetensors" in capsys.readouterr().err

    devices = []
    monkeypatch.setattr(bundle, "load_pipeline", lambda device="cpu", **kwargs: devices.append(device) or pipe)
    args = ["demo", "--out", str(tmp_path), "--categories", "two_objects", "--n-prompts", "1", "--steps", "1"]
    args += ["--no-probing", "--no-correction"]
    assert main(args + ["--images-per-prompt", "1", "--no-progress"]) == 0
    assert devices == ["cpu"] and "two_objects" in capsys.readouterr().out
