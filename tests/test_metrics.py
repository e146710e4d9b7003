"""`discadapt.metrics`: each metric against a direct computation, its per-item states, and their reduction over
processes (merged states; a real two-process run is in the slow tier)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from discadapt.losses import multiple_choice_accuracy
from discadapt.metrics import DiscriminationAccuracy, ItemAccuracy, JudgeAccuracy, MultipleChoiceAccuracy, category_code
from discadapt.scorers import Judgement

CATS = ["single", "counting", "spatial"]


def _random_tables(seed: int, n: int = 40, k: int = 4):
    """`(B, 1 + k)` score tables with ties, -inf pads, and categories."""
    rng = np.random.default_rng(seed)
    scores = torch.tensor(rng.integers(0, 4, (n, 1 + k)), dtype=torch.float32)  # small integers: many ties
    pads = torch.tensor(rng.random((n, 1 + k)) < 0.3)
    pads[:, :2] = False  # the positive and at least one negative
    scores[pads] = float("-inf")
    cats = [CATS[i] for i in rng.integers(0, 3, n)]
    return scores, cats


def test_multiple_choice_accuracy_against_a_direct_count():
    scores, cats = _random_tables(0)
    metric = MultipleChoiceAccuracy(["spatial", "single"])
    for start in range(0, len(cats), 7):  # several updates
        metric.update(scores[start : start + 7], cats[start : start + 7], groups=list(range(start, min(start + 7, 40))))
    direct = [bool(row[0] > max(row[1:])) for row in scores.tolist()]  # strictly higher than every negative
    result = metric.compute()
    assert list(result) == ["all", "spatial", "single"]  # "all", then the categories passed, in order
    assert result["all"] == sum(direct) / len(direct)
    for c in ("spatial", "single"):
        mine = [ok for ok, cat in zip(direct, cats) if cat == c]
        assert result[c] == sum(mine) / len(mine)
    items = metric.items()  # the per-item states, in the order added
    assert items["correct"].tolist() == direct == multiple_choice_accuracy(scores).tolist()
    assert items["category"].tolist() == cats and items["group"].tolist() == list(range(40))
    assert all(metric._reductions[name].__name__ == "dim_zero_cat" for name in ("correct", "category", "group"))
    tie = MultipleChoiceAccuracy()
    tie.update(torch.tensor([[1.0, 1.0], [1.0, float("-inf")]]))
    assert tie.compute() == {"all": 0.5}  # a tie is a miss; a padded negative never wins


def test_item_accuracy_categories_met_groups_and_empty():
    metric = ItemAccuracy()
    with pytest.warns(UserWarning, match="called before the ``update``"):
        assert metric.compute() == {"all": None}
    metric.update(torch.tensor([True, False, True]), ["b", None, "a"])
    metric.update([0, 1], ["b", "b"])
    assert metric.compute() == {"all": 0.6, "a": 1.0, "b": pytest.approx(2 / 3)}  # every category met, sorted
    assert metric.categories_met() == ["a", "b"]
    items = metric.items()
    assert items["category"].tolist() == ["b", None, "a", "b", "b"]
    assert items["group"].tolist() == [-2, -3, -4, -5, -6]  # no groups: each item alone, distinct labels
    assert category_code(None) == -1 and category_code("a") == category_code("a") != category_code("b")
    assert 0 <= category_code("spatial") < 2**56


def test_judge_accuracy_and_marginal_fraction():
    verdicts = [Judgement(True), Judgement(False, "found 0", True), Judgement(True, marginal=True), Judgement(False)]
    cats = ["single", "single", "spatial", "counting"]
    metric = JudgeAccuracy(["single", "counting", "spatial"])
    metric.update(verdicts[:2], cats[:2], groups=[0, 0])
    metric.update(verdicts[2:], cats[2:], groups=[1, 2])
    assert metric.compute() == {"all": 0.5, "single": 0.5, "counting": 0.0, "spatial": 1.0}
    assert metric.marginal_fraction() == {"single": 0.5, "counting": 0.0, "spatial": 1.0, "all": 0.5}
    items = metric.items()
    assert items["marginal"].tolist() == [False, True, True, False] and items["group"].tolist() == [0, 0, 1, 2]


def test_discrimination_accuracy_tables_booleans_and_counts():
    scores, cats = _random_tables(1, n=12)
    metric = DiscriminationAccuracy(["single", "spatial"])
    metric.update("itm_text", scores, cats)
    metric.update("itm_image", torch.tensor([True, False]), ["spatial", None])
    metric.update("rec", torch.tensor([False]), ["counting"])
    result = metric.compute()
    direct = multiple_choice_accuracy(scores).tolist()
    assert result["all"]["itm_text"] == sum(direct) / 12 and result["all"]["n_itm_text"] == 12
    single = [ok for ok, c in zip(direct, cats) if c == "single"]
    assert result["single"]["itm_text"] == sum(single) / len(single)
    assert result["spatial"]["itm_image"] == 1.0 and result["single"]["n_itm_image"] == 0
    assert result["single"]["itm_image"] is None and result["all"]["rec"] == 0.0 and "counting" not in result
    with pytest.raises(ValueError, match="`answers` of kind 'rec' is a score table"):
        metric.update("rec", scores, cats)


def test_states_merge_as_processes_gather():
    """Two metrics' states merged (what a distributed `compute` does with "cat" states) equal one metric fed all."""
    scores, cats = _random_tables(2)
    whole, first, second = (MultipleChoiceAccuracy(CATS) for _ in range(3))
    whole.update(scores, cats, groups=list(range(40)))
    first.update(scores[:25], cats[:25], groups=list(range(25)))
    second.update(scores[25:], cats[25:], groups=list(range(25, 40)))
    second.merge_state(first)  # torchmetrics puts the incoming items first
    assert second.compute() == whole.compute()
    assert second.items()["correct"].tolist() == whole.items()["correct"].tolist()
    judged = [JudgeAccuracy(CATS) for _ in range(2)]
    judged[0].update([Judgement(True)], ["single"])
    judged[1].update([Judgement(False, marginal=True)], ["spatial"])
    judged[0].merge_state(judged[1])
    assert judged[0].marginal_fraction()["all"] == 0.5 and judged[0].compute()["spatial"] == 0.0


@pytest.mark.parametrize(
    "update, match",
    [
        (lambda m: m.update([True, 2]), r"`correct` holds \[1, 2\]; pass booleans"),
        (lambda m: m.update([[True]]), r"`correct` has shape \(1, 1\); pass \(n,\) booleans"),
        (lambda m: m.update([True], ["a", "b"]), r"`categories` is \['a', 'b'\]; pass 1 category names"),
        (lambda m: m.update([True], groups=[-1]), r"`groups` is \[-1\]; pass 1 ints >= 0"),
        (lambda m: m.update([True], groups=[0.5]), r"`groups` is \[0.5\]; pass 1 ints >= 0"),
    ],
)
def test_item_accuracy_bad_input(update, match):
    with pytest.raises(ValueError, match=match):
        update(ItemAccuracy())


def test_other_bad_input():
    with pytest.raises(ValueError, match="`categories` is 'single'; pass a list of names"):
        ItemAccuracy("single")
    with pytest.raises(ValueError, match=r"`scores` is \(2, 1\); pass a \(B, 1 \+ k\) tensor"):
        MultipleChoiceAccuracy().update(torch.zeros(2, 1))
    with pytest.raises(ValueError, match="`verdicts` holds True; pass verdicts with `ok` and `marginal`"):
        JudgeAccuracy().update([True])
    with pytest.raises(ValueError, match=r"`kind` is 'itm'; pass one of \('itm_text'"):
        DiscriminationAccuracy().update("itm", torch.tensor([True]), ["a"])
    with pytest.raises(ValueError, match=r"`answers` has 1 answers but `categories` is None; pass one category"):
        DiscriminationAccuracy().update("rec", torch.tensor([True]), None)


def _two_processes(rank: int, path: str, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{path}", rank=rank, world_size=2)
    metric = JudgeAccuracy(["single", "spatial"])
    mine = [Judgement(True), Judgement(False, marginal=True)] if rank == 0 else [Judgement(True)] * 3
    metric.update(mine, ["single", "spatial"] if rank == 0 else ["spatial"] * 3, groups=[rank] * len(mine))
    result = (metric.compute(), metric.marginal_fraction(), metric.items()["group"].tolist())
    if rank == 0:
        torch.save(result, out)
    dist.destroy_process_group()


@pytest.mark.slow
def test_gathered_over_two_processes(tmp_path):
    torch.multiprocessing.spawn(_two_processes, args=(str(tmp_path / "init"), str(tmp_path / "out.pt")), nprocs=2)
    result, marginal, groups = torch.load(tmp_path / "out.pt")
    assert result == {"all": 0.8, "single": 1.0, "spatial": 0.75}
    assert marginal == {"single": 0.0, "spatial": 0.25, "all": 0.2} and sorted(groups) == [0, 0, 1, 1, 1]
