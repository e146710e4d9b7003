"""The evaluation runner (`bench.run_suite`) on toy methods and a toy judge: interleaved batches, statistics against
a direct computation, resuming after a failure or a kill, refusing a changed configuration; `bench.Suite`; judges."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from discadapt.bench import Prompt, Suite, Table, bootstrap_ci, paired_difference_ci, run_suite
from discadapt.sampling.seeds import image_seed
from discadapt.scorers import FunctionJudge, Judge, Judgement, JudgeScorer

PROMPTS = [
    Prompt("a red circle", "single", "test_id"),
    Prompt("a blue square", "single", "test_ood"),
    Prompt("two green triangles", "counting", "test_id", group="g"),
    Prompt("three red squares", "counting", "test_ood", group="g"),
    Prompt("a circle left of a square", "spatial", "test_id"),
]
TIMING = ("seconds", "seconds_per_image", "time_ratio")


def _verdict(image, prompt):
    value = int(image[0, 0, 0])
    return Judgement(value % 2 == 0, f"value {value}", marginal=value % 3 == 0)


JUDGE = FunctionJudge("parity", _verdict)


def _suite(images_per_prompt=2, **kwargs):
    return Suite("toy", PROMPTS, JUDGE, images_per_prompt, **kwargs)


def _method(offset, calls=None, name=""):
    """Images whose pixels are (seed + offset) % 256: deterministic, and a verdict that depends on the seed."""

    def generate(prompts, seeds):
        if calls is not None:
            calls.append((name, list(prompts), list(seeds)))
        return np.stack([np.full((4, 4, 3), (s + offset) % 256, np.uint8) for s in seeds])

    return generate


def _without_timing(results):
    out = json.loads(json.dumps(results))
    out.pop("seconds")
    for m in out["methods"].values():
        for key in TIMING:
            m.pop(key)
    return out


def test_suite_seeds_groups_and_config():
    suite = _suite()
    assert suite.jobs() == [(i, k) for i in range(5) for k in range(2)]
    assert suite.seeds() == [image_seed(0, PROMPTS[i].text, k) for i, k in suite.jobs()]
    assert suite.groups().tolist() == [0, 0, 1, 1, 2, 2, 2, 2, 4, 4]  # prompts 2 and 3 share group "g"
    assert suite.categories == ["single", "counting", "spatial"] and suite.splits == ["test_id", "test_ood"]
    assert suite.config()["prompts"][2] == ["two green triangles", "counting", "test_id", "g"]
    assert _suite(seed=1).seeds() != suite.seeds()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(prompts=[]), "`prompts` is empty; pass one or more bench.Prompt"),
        (dict(prompts=["a red circle"]), r"`prompts` holds 'a red circle'; pass bench.Prompt objects"),
        (dict(judge=lambda images, prompts: []), "`judge` is a function; pass a scorers.Judge"),
        (dict(images_per_prompt=0), "`images_per_prompt` is 0; pass an int >= 1"),
        (dict(seed=-1), "`seed` is -1; pass an int >= 0"),
        (dict(min_image_size=0), "`min_image_size` is 0; pass an int >= 1"),
        (dict(pools={"all": ["single"]}), "`pools` names 'all', a column already; give the pool another name"),
        (dict(pools={"counting": ["single"]}), "`pools` names 'counting', a column already"),
        (
            dict(pools={"multi": ["counting", "two_objects"]}),
            r"`pools\['multi'\]` is \['counting', 'two_objects'\]; pass",
        ),
        (dict(pools={"multi": []}), r"`pools\['multi'\]` is \[\]; pass one or more of the prompts' categories"),
    ],
)
def test_suite_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Suite(**{"name": "toy", "prompts": PROMPTS, "judge": JUDGE, **kwargs})


def test_run_suite_interleaves_and_computes(tmp_path, capsys):
    calls = []
    methods = {"base": _method(0, calls, "base"), "odd": _method(1, calls, "odd"), "same": _method(0, calls, "same")}
    suite = _suite()
    results = run_suite(suite, methods, tmp_path, batch_size=4, settings={"steps": 3}, progress=False)
    out = capsys.readouterr().out
    # batch b of every method before batch b + 1 of any; each call the suite's prompts and seeds
    assert [name for name, _, _ in calls] == ["base", "odd", "same"] * 3
    assert [len(p) for _, p, _ in calls[::3]] == [4, 4, 2]
    assert sum((s for name, _, s in calls if name == "odd"), []) == suite.seeds()
    assert results["settings"]["steps"] == 3 and results["settings"]["suite"] == "toy"
    assert results["settings"]["judge"] == "parity" and "versions" in results["settings"]
    assert json.loads((tmp_path / "results.json").read_text()) == results
    # statistics against a direct computation: outcomes per image, groups of prompts
    base = np.array([s % 2 == 0 for s in suite.seeds()])
    groups, cats = suite.groups(), np.array([PROMPTS[i].category for i, _ in suite.jobs()])
    m = results["methods"]
    assert [image["ok"] for image in m["base"]["images"]] == base.tolist()
    assert [image["ok"] for image in m["odd"]["images"]] == (~base).tolist()
    counting = bootstrap_ci(base[cats == "counting"], groups=groups[cats == "counting"])
    assert m["base"]["categories"]["counting"] == dict(
        accuracy=counting.estimate, ci_low=counting.low, ci_high=counting.high, n_prompts=1, n_images=4
    )  # prompts 2 and 3 form one group
    assert m["base"]["overall"]["n_prompts"] == 4 and m["base"]["splits"]["test_ood"]["all"]["n_images"] == 4
    want = paired_difference_ci(~base, base, groups=groups)
    assert m["odd"]["difference_to_base"]["all"] == want.to_dict() and "difference_to_base" not in m["base"]
    assert m["same"]["difference_to_base"]["all"]["estimate"] == 0.0
    marginal = np.array([s % 256 % 3 == 0 for s in suite.seeds()])
    assert m["base"]["marginal"]["all"] == pytest.approx(marginal.mean())
    assert m["base"]["images"][0] == {"prompt": 0, "image": 0, "ok": bool(base[0]), "marginal": bool(marginal[0]),
                                      "reason": f"value {suite.seeds()[0] % 256}"}  # fmt: skip
    assert m["base"]["time_ratio"] == 1.0
    for title in ("accuracy per category", "accuracy per split", "difference to base", "marginal verdicts",
                  "time per image"):  # fmt: skip
        assert title in out
    assert "ratio to base" in out and "not the parity)" in out


def test_a_pool_is_one_more_column_of_its_categories_images(tmp_path, capsys):
    suite = _suite(pools={"multi": ("counting", "spatial")})
    results = run_suite(suite, {"base": _method(0), "odd": _method(1)}, tmp_path, batch_size=4, progress=False)
    base = np.array([s % 2 == 0 for s in suite.seeds()])
    groups, cats = suite.groups(), np.array([PROMPTS[i].category for i, _ in suite.jobs()])
    pooled = cats != "single"
    m = results["methods"]
    found = bootstrap_ci(base[pooled], groups=groups[pooled])
    assert m["base"]["pools"]["multi"] == dict(
        accuracy=found.estimate, ci_low=found.low, ci_high=found.high, n_prompts=2, n_images=6
    )
    want = paired_difference_ci(~base[pooled], base[pooled], groups=groups[pooled])
    assert m["odd"]["difference_to_base"]["multi"] == want.to_dict()
    assert m["base"]["splits"]["test_ood"]["pools"]["multi"]["n_images"] == 2  # the counting prompt of test_ood
    assert suite.config()["pools"] == {"multi": ["counting", "spatial"]} and "pools" not in _suite().config()
    out = capsys.readouterr().out
    assert out.count(" multi ") >= 2  # a column of the accuracy and the difference tables


def test_compare_pairs_two_methods_of_one_run_with_its_pools(tmp_path, capsys):
    from discadapt.bench.compare import compare_runs
    from discadapt.cli import main

    suite = _suite(pools={"multi": ("counting", "spatial")})
    results = run_suite(suite, {"base": _method(0), "odd": _method(1)}, tmp_path, batch_size=4, progress=False)
    assert results["pools"] == {"multi": ["counting", "spatial"]}
    path = tmp_path / "results.json"
    (table,) = compare_runs(path, path, [("base", "odd")])
    assert table.columns[-2:] == ["multi", "all"] and table.rows[0][:2] == ["odd - base", 10]
    # the same differences the run computed against its first method, category by category, pool and all
    found = results["methods"]["odd"]["difference_to_base"]
    for column, cell in zip(table.columns[2:], table.rows[0][2:]):
        d = found[column]
        assert cell == f"{d['estimate']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]"
    capsys.readouterr()
    assert main(["bench", "compare", str(path), str(path), "--pair", "base:odd", "--pair", "odd:odd"]) == 0
    out = capsys.readouterr().out
    assert "odd - base" in out and " multi " in out
    assert main(["bench", "compare", str(path), str(path), "--pair", "base:nope"]) == 2
    assert "has no method 'nope'; its methods are ['base', 'odd']" in capsys.readouterr().err
    assert main(["bench", "compare", str(path), str(path), "--pair", "base"]) == 2
    assert "`--pair` is 'base'; pass A_METHOD:B_METHOD" in capsys.readouterr().err


def test_run_suite_resumes_after_a_failure_and_a_kill(tmp_path):
    suite = _suite()
    straight = run_suite(suite, {"base": _method(0), "odd": _method(1)}, tmp_path / "straight", batch_size=3,
                         progress=False)  # fmt: skip

    def failing(prompts, seeds):
        if len(calls) == 2:
            raise RuntimeError("out of memory")
        return _method(1, calls, "odd")(prompts, seeds)

    calls = []
    with pytest.raises(RuntimeError, match="out of memory"):
        run_suite(suite, {"base": _method(0), "odd": failing}, tmp_path / "cut", batch_size=3, progress=False)
    batches = tmp_path / "cut" / "batches"
    finished = lambda: {m.name: sorted(f.stem for f in m.glob("*.npz")) for m in sorted(batches.iterdir())}  # noqa: E731
    assert finished() == {"method00": ["00000", "00001", "00002"], "method01": ["00000", "00001"]}
    # a kill while batch 1's file was written: a torn file is drawn again
    (batches / "method01" / "00001.npz").write_bytes(b"PK\x03\x04torn")
    (tmp_path / "cut" / ".results.json.123.abcd.tmp").write_text("half")  # a killed writer's leftover
    calls.clear()
    resumed = run_suite(suite, {"base": _method(0, calls, "base"), "odd": _method(1, calls, "odd")},
                        tmp_path / "cut", batch_size=3, progress=False)  # fmt: skip
    assert [(name, len(p)) for name, p, _ in calls] == [("odd", 3), ("odd", 3), ("base", 1), ("odd", 1)]
    assert _without_timing(resumed) == _without_timing(straight)
    assert all(len(b) == 4 for b in finished().values())
    assert not list((tmp_path / "cut").glob(".*.tmp"))
    calls.clear()
    again = run_suite(suite, {"base": _method(0, calls, "base"), "odd": _method(1, calls, "odd")},
                      tmp_path / "cut", batch_size=3, progress=False)  # fmt: skip
    assert calls == [] and _without_timing(again) == _without_timing(straight)  # all read back
    assert again["methods"]["odd"]["seconds"] == resumed["methods"]["odd"]["seconds"]  # the recorded wall times


def test_run_suite_refuses_another_configuration(tmp_path):
    run_suite(_suite(), {"base": _method(0)}, tmp_path, progress=False, settings={"steps": 3})
    with pytest.raises(ValueError, match=r"holds a run of another configuration \(images_per_prompt: 2 there, 3 now\)"):
        run_suite(_suite(3), {"base": _method(0)}, tmp_path, progress=False, settings={"steps": 3})
    with pytest.raises(ValueError, match=r"another configuration \(settings.steps: 3 there, 4 now\); pass another"):
        run_suite(_suite(), {"base": _method(0)}, tmp_path, progress=False, settings={"steps": 4})
    with pytest.raises(ValueError, match=r"another configuration \(methods: \['base'\] there, \['base', 'x'\] now\)"):
        run_suite(_suite(), {"base": _method(0), "x": _method(1)}, tmp_path, progress=False, settings={"steps": 3})
    calls = []
    fresh = run_suite(_suite(3), {"base": _method(0, calls)}, tmp_path, progress=False, resume=False)
    assert len(calls) == 1 and fresh["settings"]["images_per_prompt"] == 3
    assert sorted(p.name for p in (tmp_path / "batches" / "method00").iterdir()) == ["00000.npz"]


def test_run_suite_tables_and_bad_input(tmp_path, capsys):
    extra = Table("extra", ["k"], [["v"]])
    late = lambda: Table("late", ["x"], [[1]])  # noqa: E731
    results = run_suite(_suite(1), {"base": _method(0)}, tmp_path / "t", tables=[extra, late], progress=False)
    assert [t["title"] for t in results["tables"]] == ["extra", "late"] and "late" in capsys.readouterr().out
    cases = [
        (dict(suite="toy"), "`suite` is a str; pass a bench.Suite"),
        (dict(methods={}), r"`methods` is \{\}; pass a non-empty dict"),
        (dict(methods={"": _method(0)}), "`methods` has a method named ''; pass non-empty string names"),
        (dict(methods={"x": 3}), r"`methods\['x'\]` is 3; pass a function"),
        (dict(tables=["t"]), "`tables` holds 't'; pass bench.Table objects or functions"),
        (dict(batch_size=0), "`batch_size` is 0; pass an int >= 1"),
        (dict(resume="yes"), "`resume` is 'yes'; pass True or False"),
    ]
    for kwargs, match in cases:
        args = {"suite": _suite(), "methods": {"base": _method(0)}, **kwargs}
        with pytest.raises(ValueError, match=match):
            run_suite(args.pop("suite"), args.pop("methods"), tmp_path / "bad", progress=False, **args)
        assert not (tmp_path / "bad").exists()
    small = Suite("toy", PROMPTS, JUDGE, min_image_size=8)
    with pytest.raises(ValueError, match=r"method 'base' returned images of shape \(4, 4, 4, 3\); return .*S >= 8"):
        run_suite(small, {"base": _method(0)}, tmp_path / "small", batch_size=4, progress=False)
    with pytest.raises(ValueError, match=r"`tables` function .* returned 3; return a bench.Table"):
        run_suite(_suite(1), {"base": _method(0)}, tmp_path / "f", tables=[lambda: 3], progress=False)


def test_judges_and_judge_scorer():
    assert isinstance(JUDGE, Judge)
    images = np.stack([np.full((4, 4, 3), v, np.uint8) for v in (2, 3)])
    assert [v.ok for v in JUDGE.judge(images, ["a", "b"])] == [True, False]
    scorer = JudgeScorer(JUDGE)
    assert scorer.name == "parity" and scorer.score(images, ["a", "b"]).tolist() == [1.0, 0.0]
    assert isinstance(scorer.score(images, ["a", "b"]), torch.Tensor)
    with pytest.raises(ValueError, match=r"`prompts` is \['a'\]; pass one prompt per image \(2\)"):
        JUDGE.judge(images, ["a"])
    with pytest.raises(ValueError, match="`fn` is a int; pass a function"):
        FunctionJudge("x", 3)
    with pytest.raises(ValueError, match="`judge` is a function; pass a Judge"):
        JudgeScorer(lambda images, prompts: [])


def test_registry_scorers_judges_suites():
    from discadapt.plugins import Registry, registry

    found = Registry()
    found.add_scorer("mine", lambda: JudgeScorer(JUDGE))
    found.add_judge("parity", lambda: JUDGE)
    found.add_suite("toy", _suite)
    assert found.suites["toy"](images_per_prompt=3).images_per_prompt == 3 and found.judges["parity"]() is JUDGE
    with pytest.raises(ValueError, match="scorer 'mine' is registered twice or unnamed; pick another"):
        found.add_scorer("mine", lambda: None)
    with pytest.raises(ValueError, match="judge '' is registered twice or unnamed"):
        found.add_judge("", lambda: JUDGE)
    with pytest.raises(ValueError, match="the factory of suite 'x' is 3; pass a function returning the suite"):
        found.add_suite("x", 3)
    # the shapes world's plug-in: its suite, its oracle as a judge (evaluation only), its CLIP as a scorer
    world = registry()
    assert {"shapes"} <= set(world.suites) and {"shapes oracle"} <= set(world.judges)
    assert {"world CLIP"} <= set(world.scorers)
    suite = world.suites["shapes"](categories=["single"], n_prompts=2, images_per_prompt=1)
    everything = world.suites["shapes"](n_prompts=1, images_per_prompt=1)  # the multi-object mean is a column
    assert everything.pools == {"multi-object": ("two_objects", "counting", "spatial", "referring")} and not suite.pools
    assert (
        isinstance(suite, Suite) and suite.judge.name == "oracle" and isinstance(world.judges["shapes oracle"](), Judge)
    )
