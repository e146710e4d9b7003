"""Fast tests of discadapt.losses: values against plain-Python float64 references written here, the matcher
against brute force over all assignments, precision, gradients, and every input check."""

import itertools
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler

from discadapt import DiscriminativeAdapter
from discadapt.losses import (
    HungarianMatcher,
    RECLoss,
    RECLossConfig,
    box_area,
    box_cxcywh_to_xyxy,
    box_iou,
    box_xyxy_to_cxcywh,
    denoising_contrast_loss,
    denoising_errors,
    denoising_loss,
    denoising_target,
    generalized_box_iou,
    in_batch_accuracy,
    in_batch_loss,
    itm_loss,
    min_snr_weights,
    multiple_choice_accuracy,
    multiple_choice_loss,
    rec_loss,
    snr,
)

# ---------------------------------------------------------------------------------------------------------------
# plain-Python references (floats, loops; nothing from the implementation)


def ref_xyxy(box):
    cx, cy, w, h = box
    return [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]


def ref_iou_giou(a, b):
    """IoU and GIoU of two xyxy boxes given as lists, with the documented zero-area conventions."""
    area_a = (a[2] - a[0]) * (a[3] - a[1])
    area_b = (b[2] - b[0]) * (b[3] - b[1])
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = area_a + area_b - inter
    iou = inter / union if union > 0 else 0.0
    enclosing = (max(a[2], b[2]) - min(a[0], b[0])) * (max(a[3], b[3]) - min(a[1], b[1]))
    penalty = (enclosing - union) / enclosing if enclosing > 0 else 0.0
    return iou, iou - penalty


def ref_cost(logits, boxes, targets, weights=(1.0, 5.0, 2.0)):
    """DETR matching cost C[q][j] for one sample: logits (Q, 2), boxes (Q, 4), targets (n, 4) as lists."""
    cost = []
    for lg, box in zip(logits, boxes):
        p_obj = math.exp(lg[0]) / (math.exp(lg[0]) + math.exp(lg[1]))
        row = []
        for t in targets:
            l1 = sum(abs(x - y) for x, y in zip(box, t))
            giou = ref_iou_giou(ref_xyxy(box), ref_xyxy(t))[1]
            row.append(-weights[0] * p_obj + weights[1] * l1 - weights[2] * giou)
        cost.append(row)
    return cost


def brute_force_match(cost, n):
    """The assignment (query of target 0, ..., query of target n-1) of least total cost, by enumeration."""
    num_queries = len(cost)
    best = min(itertools.permutations(range(num_queries), n), key=lambda p: sum(cost[q][j] for j, q in enumerate(p)))
    return list(best), sum(cost[q][j] for j, q in enumerate(best))


def ref_rec(logits, boxes, targets, rec_embeds, token_embeds, token_mask, eos=0.1, tau=0.07):
    """(ce, l1, giou, align) of the REC loss, computed with loops over float64 lists."""
    ce_num = ce_den = l1 = giou = align = 0.0
    num_boxes = max(sum(len(t["boxes"]) for t in targets), 1)
    for b, target in enumerate(targets):
        lg, bx = logits[b].tolist(), boxes[b].tolist()
        tb, tokens = target["boxes"].tolist(), target["tokens"].tolist()
        num_queries, length = len(lg), len(token_mask[b])
        perm, _ = brute_force_match(ref_cost(lg, bx, tb), len(tb))
        matched = {q: j for j, q in enumerate(perm)}  # query -> target
        for q in range(num_queries):
            cls = 0 if q in matched else 1
            weight = 1.0 if cls == 0 else eos
            lse = math.log(math.exp(lg[q][0]) + math.exp(lg[q][1]))
            ce_num += weight * (lse - lg[q][cls])
            ce_den += weight
        for j, q in enumerate(perm):
            l1 += sum(abs(x - y) for x, y in zip(bx[q], tb[j]))
            giou += 1 - ref_iou_giou(ref_xyxy(bx[q]), ref_xyxy(tb[j]))[1]
        qe, te, valid = rec_embeds[b].tolist(), token_embeds[b].tolist(), token_mask[b].tolist()
        s = [[sum(x * y for x, y in zip(qe[q], te[t])) / tau for t in range(length)] for q in range(num_queries)]
        pos = [[q in matched and tokens[matched[q]][t] for t in range(length)] for q in range(num_queries)]
        for q in range(num_queries):  # query -> tokens, negatives: valid tokens
            ps = [s[q][t] for t in range(length) if pos[q][t]]
            if ps:
                align += -sum(ps) / len(ps) + math.log(sum(math.exp(s[q][t]) for t in range(length) if valid[t]))
        for t in range(length):  # token -> queries, negatives: all queries
            ps = [s[q][t] for q in range(num_queries) if pos[q][t]]
            if ps:
                align += -sum(ps) / len(ps) + math.log(sum(math.exp(s[q][t]) for q in range(num_queries)))
    return ce_num / ce_den, l1 / num_boxes, giou / num_boxes, align / 2 / num_boxes


def ref_ce_towards(row, k):
    """-log softmax(row)[k] for a list of floats (-inf allowed)."""
    m = max(row)
    return -(row[k] - m - math.log(sum(math.exp(x - m) for x in row)))


def random_boxes(n, generator, dtype=torch.float64):
    """(n, 4) cxcywh boxes inside [0, 1]."""
    wh = torch.rand(n, 2, generator=generator, dtype=dtype) * 0.45 + 0.05
    centre = wh / 2 + torch.rand(n, 2, generator=generator, dtype=dtype) * (1 - wh)
    return torch.cat([centre, wh], dim=1)


def rec_inputs(dtype=torch.float64, seed=0, sizes=(2, 1), num_queries=4, length=5, dim=3):
    g = torch.Generator().manual_seed(seed)
    batch = len(sizes)
    logits = torch.randn(batch, num_queries, 2, generator=g, dtype=dtype)
    boxes = torch.stack([random_boxes(num_queries, g, dtype) for _ in range(batch)])
    rec_embeds = F.normalize(torch.randn(batch, num_queries, dim, generator=g, dtype=dtype), dim=-1)
    token_embeds = F.normalize(torch.randn(batch, length, dim, generator=g, dtype=dtype), dim=-1)
    token_mask = torch.ones(batch, length, dtype=torch.bool)
    token_mask[-1, -1] = False  # one padding token
    targets = []
    for n in sizes:
        tokens = torch.zeros(n, length, dtype=torch.bool)
        for j in range(n):
            tokens[j, j : j + 2] = True  # overlapping two-token phrases
        targets.append({"boxes": random_boxes(n, g, dtype), "tokens": tokens})
    return logits, boxes, targets, rec_embeds, token_embeds, token_mask


# ---------------------------------------------------------------------------------------------------------------
# box_ops


@pytest.mark.parametrize(
    "a, b, iou, giou",
    [
        ([0, 0, 1, 1], [2, 2, 3, 3], 0.0, -7 / 9),  # disjoint: enclosing 9, union 2
        ([0, 0, 4, 4], [1, 1, 2, 2], 1 / 16, 1 / 16),  # nested: enclosing box = union
        ([0.1, 0.2, 0.5, 0.9], [0.1, 0.2, 0.5, 0.9], 1.0, 1.0),  # identical
        ([0, 0, 2, 2], [1, 1, 3, 3], 1 / 7, 1 / 7 - 2 / 9),  # partial overlap
        ([0, 0, 1, 1], [1, 0, 2, 1], 0.0, 0.0),  # touching edges: enclosing box = union
        ([0, 0, 0, 1], [0, 0, 0, 1], 0.0, 0.0),  # identical zero-area boxes: union 0, enclosing 0
        ([0, 0, 0, 1], [0, 2, 0, 3], 0.0, 0.0),  # collinear zero-area boxes: enclosing area 0
        ([1, 1, 1, 1], [0, 0, 2, 2], 0.0, 0.0),  # a point inside a box
    ],
)
def test_iou_and_giou_known_values(a, b, iou, giou):
    ta, tb = torch.tensor([a], dtype=torch.float64), torch.tensor([b], dtype=torch.float64)
    for x, y in ((ta, tb), (tb, ta)):
        assert box_iou(x, y).item() == pytest.approx(iou, abs=1e-12)
        assert generalized_box_iou(x, y).item() == pytest.approx(giou, abs=1e-12)
        assert generalized_box_iou(x, y, aligned=True).item() == pytest.approx(giou, abs=1e-12)


def test_pairwise_iou_giou_match_reference():
    g = torch.Generator().manual_seed(3)
    shift = torch.tensor([0.5, 0.5, 0.0, 0.0], dtype=torch.float64)  # some boxes outside [0, 1]
    a = box_cxcywh_to_xyxy(random_boxes(4, g) * 2 - shift)
    b = box_cxcywh_to_xyxy(random_boxes(3, g) * 2 - shift)
    iou, giou = box_iou(a, b), generalized_box_iou(a, b)
    assert iou.shape == giou.shape == (4, 3)
    for i, j in itertools.product(range(4), range(3)):
        ref = ref_iou_giou(a[i].tolist(), b[j].tolist())
        assert (iou[i, j].item(), giou[i, j].item()) == pytest.approx(ref, abs=1e-12)
    assert ((giou >= -1) & (giou <= iou)).all()
    torch.testing.assert_close(generalized_box_iou(a[:3], b, aligned=True), giou[:3].diagonal())
    torch.testing.assert_close(box_iou(a[:3], b, aligned=True), iou[:3].diagonal())


def test_box_conversion_and_area():
    cxcywh = torch.tensor([[0.5, 0.5, 0.2, 0.4], [0.3, 0.7, 0.0, 0.1]], dtype=torch.float64)
    xyxy = box_cxcywh_to_xyxy(cxcywh)
    torch.testing.assert_close(xyxy, torch.tensor([[0.4, 0.3, 0.6, 0.7], [0.3, 0.65, 0.3, 0.75]], dtype=torch.float64))
    torch.testing.assert_close(box_area(xyxy), torch.tensor([0.08, 0.0], dtype=torch.float64))
    g = torch.Generator().manual_seed(0)
    boxes = random_boxes(10, g).view(2, 5, 4)  # any leading shape
    torch.testing.assert_close(box_xyxy_to_cxcywh(box_cxcywh_to_xyxy(boxes)), boxes)
    corners = box_cxcywh_to_xyxy(boxes)
    torch.testing.assert_close(box_cxcywh_to_xyxy(box_xyxy_to_cxcywh(corners)), corners)


@pytest.mark.parametrize(
    "fn, boxes, match",
    [
        (box_xyxy_to_cxcywh, [[0.5, 0.0, 0.4, 1.0]], r"degenerate or non-finite xyxy box\(es\), the first at index"),
        (box_area, [[0.0, 0.5, 1.0, 0.4]], "need x1 >= x0 and y1 >= y0"),
        (box_cxcywh_to_xyxy, [[0.5, 0.5, -0.1, 0.2]], "need w >= 0 and h >= 0"),
        (box_cxcywh_to_xyxy, [[0.5, 0.5, 0.1, float("nan")]], "non-finite cxcywh"),
        (box_cxcywh_to_xyxy, [[0.5, 0.5, 0.1]], r"pass a tensor of shape \(\.\.\., 4\)"),
        (lambda b: box_iou(b, b), [[0.0, 0.0, 1.0, 1.0], [1.0, 1.0, 0.0, 2.0]], "at index \\(1,\\)"),
        (lambda b: generalized_box_iou(b[0], b), [[0.0, 0.0, 1.0, 1.0]], r"`boxes1` is \(4,\); pass an \(N, 4\)"),
    ],
)
def test_degenerate_boxes_rejected(fn, boxes, match):
    with pytest.raises(ValueError, match=match):
        fn(torch.tensor(boxes))


def test_box_input_checks():
    with pytest.raises(ValueError, match="has dtype torch.int64; pass floating-point boxes"):
        box_area(torch.tensor([[0, 0, 1, 1]]))
    a = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    with pytest.raises(ValueError, match=r"aligned=True pairs box i with box i, but `boxes1` is \(1, 4\)"):
        generalized_box_iou(a, torch.cat([a, a]), aligned=True)
    with pytest.raises(ValueError, match="`fmt` is 'xywh'; pass 'xyxy' or 'cxcywh'"):
        from discadapt.losses.box_ops import check_boxes

        check_boxes(a, "xywh")


def test_giou_gradients_finite_on_zero_area():
    a = torch.tensor([[0.0, 0.0, 0.0, 1.0], [0.2, 0.2, 0.6, 0.5]], requires_grad=True)
    b = torch.tensor([[0.0, 0.0, 0.0, 1.0], [0.0, 2.0, 0.0, 3.0]], requires_grad=True)
    (generalized_box_iou(a, b).sum() + box_iou(a, b).sum()).backward()
    assert torch.isfinite(a.grad).all() and torch.isfinite(b.grad).all()
    assert a.grad[1].abs().sum() > 0  # the proper box still learns


# ---------------------------------------------------------------------------------------------------------------
# matcher


@pytest.mark.parametrize("seed", range(6))
def test_matcher_equals_brute_force(seed):
    g = torch.Generator().manual_seed(seed)
    num_queries = 1 + seed % 5  # 1..5
    sizes = [min(n, num_queries) for n in (0, 1, 2, 3)]
    logits = torch.randn(len(sizes), num_queries, 2, generator=g, dtype=torch.float64) * 2
    boxes = torch.stack([random_boxes(num_queries, g) for _ in sizes])
    targets = [{"boxes": random_boxes(n, g)} for n in sizes]
    matcher = HungarianMatcher()
    indices = matcher(logits, boxes, targets)
    costs = matcher.cost_matrices(logits, boxes, targets)
    for b, ((query_idx, target_idx), target) in enumerate(zip(indices, targets)):
        cost = ref_cost(logits[b].tolist(), boxes[b].tolist(), target["boxes"].tolist())
        torch.testing.assert_close(costs[b], torch.tensor(cost, dtype=torch.float64).reshape(num_queries, sizes[b]))
        perm, best = brute_force_match(cost, sizes[b])
        assert query_idx.dtype == target_idx.dtype == torch.int64
        assert query_idx.tolist() == sorted(query_idx.tolist()) and sorted(target_idx.tolist()) == list(range(sizes[b]))
        found = {int(t): int(q) for q, t in zip(query_idx, target_idx)}
        assert [found[j] for j in range(sizes[b])] == perm
        assert sum(cost[q][t] for q, t in zip(query_idx.tolist(), target_idx.tolist())) == pytest.approx(best)


def test_matcher_weights_and_no_grad():
    # class cost only: the two most confident queries get the two targets, whatever the boxes
    logits = torch.tensor([[[0.0, 0.0], [3.0, 0.0], [-2.0, 0.0], [2.0, 0.0]]], requires_grad=True)
    boxes = torch.full((1, 4, 4), 0.5, requires_grad=True)
    targets = [{"boxes": torch.tensor([[0.2, 0.2, 0.1, 0.1], [0.8, 0.8, 0.1, 0.1]])}]
    (query_idx, _), *_ = HungarianMatcher(class_weight=1.0, l1_weight=0.0, giou_weight=0.0)(logits, boxes, targets)
    assert query_idx.tolist() == [1, 3] and not query_idx.requires_grad
    # L1 only: each target goes to the query at its place
    boxes = torch.tensor([[[0.8, 0.8, 0.1, 0.1], [0.5, 0.5, 0.3, 0.3], [0.2, 0.2, 0.1, 0.1], [0.5, 0.5, 0.1, 0.1]]])
    (query_idx, target_idx), *_ = HungarianMatcher(0.0, 1.0, 0.0)(logits.detach(), boxes, targets)
    assert query_idx.tolist() == [0, 2] and target_idx.tolist() == [1, 0]
    assert repr(HungarianMatcher()) == "HungarianMatcher(class_weight=1.0, l1_weight=5.0, giou_weight=2.0)"


def test_matcher_input_checks():
    logits, boxes = torch.zeros(2, 3, 2), torch.full((2, 3, 4), 0.2)
    one = {"boxes": torch.tensor([[0.5, 0.5, 0.1, 0.1]])}
    matcher = HungarianMatcher()
    with pytest.raises(ValueError, match=r"`class_weight` is -1.0; matching cost weights must be finite numbers >= 0"):
        HungarianMatcher(class_weight=-1.0)
    with pytest.raises(ValueError, match="All matching cost weights are 0"):
        HungarianMatcher(0, 0, 0)
    with pytest.raises(ValueError, match=r"one dict per sample \(2 for these predictions\); got 1 targets"):
        matcher(logits, boxes, [one])
    with pytest.raises(ValueError, match=r"`targets\[1\]` has no 'boxes' \(found \['box'\]\)"):
        matcher(logits, boxes, [one, {"box": one["boxes"]}])
    with pytest.raises(ValueError, match=r"`targets\[0\]\['boxes'\]` is \(4,\); pass an \(n, 4\) tensor"):
        matcher(logits, boxes, [{"boxes": torch.ones(4)}, one])
    with pytest.raises(ValueError, match=r"`targets\[0\]` has 4 boxes but the model has only 3 REC queries"):
        matcher(logits, boxes, [{"boxes": one["boxes"].repeat(4, 1)}, one])
    with pytest.raises(ValueError, match=r"targets\[1\]\['boxes'\]` has 1 degenerate"):
        matcher(logits, boxes, [one, {"boxes": torch.tensor([[0.5, 0.5, -0.1, 0.1]])}])
    with pytest.raises(ValueError, match=r"`logits` is \(2, 3, 3\); pass \(B, Q, 2\) logits"):
        matcher(torch.zeros(2, 3, 3), boxes, [one, one])
    with pytest.raises(ValueError, match=r"`boxes` is \(2, 2, 4\) but `logits` is \(2, 3, 2\)"):
        matcher(logits, boxes[:, :2], [one, one])
    with pytest.raises(ValueError, match="The matching cost of sample 1 is not finite"):
        matcher(torch.stack([logits[0], torch.full((3, 2), float("nan"))]), boxes, [one, one])


# ---------------------------------------------------------------------------------------------------------------
# REC loss


@pytest.mark.parametrize("seed", range(3))
def test_rec_loss_matches_reference(seed):
    logits, boxes, targets, rec_embeds, token_embeds, token_mask = rec_inputs(seed=seed, sizes=(2, 1, 3))
    losses = rec_loss(logits, boxes, targets, rec_embeds, token_embeds, token_mask=token_mask)
    ce, l1, giou, align = ref_rec(logits, boxes, targets, rec_embeds, token_embeds, token_mask)
    assert losses["loss_ce"].item() == pytest.approx(ce, rel=1e-10)
    assert losses["loss_l1"].item() == pytest.approx(l1, rel=1e-10)
    assert losses["loss_giou"].item() == pytest.approx(giou, rel=1e-10)
    assert losses["loss_align"].item() == pytest.approx(align, rel=1e-10)
    assert losses["loss"].item() == pytest.approx(ce + 5 * l1 + 2 * giou + align, rel=1e-10)
    # float32 inputs: the same numbers to float32 accuracy
    f32 = rec_loss(
        logits.float(), boxes.float(), targets, rec_embeds.float(), token_embeds.float(), token_mask=token_mask
    )
    assert f32["loss"].dtype == torch.float32
    assert f32["loss"].item() == pytest.approx(ce + 5 * l1 + 2 * giou + align, rel=1e-5)


def test_rec_loss_config_weights_temperature_and_options():
    logits, boxes, targets, rec_embeds, token_embeds, token_mask = rec_inputs(seed=4)
    config = RECLossConfig(
        ce_weight=0.5, l1_weight=2.0, giou_weight=3.0, align_weight=0.25, no_object_weight=0.3, temperature=0.5
    )
    losses = rec_loss(logits, boxes, targets, rec_embeds, token_embeds, token_mask=token_mask, config=config)
    ce, l1, giou, align = ref_rec(logits, boxes, targets, rec_embeds, token_embeds, token_mask, eos=0.3, tau=0.5)
    assert [losses[k].item() for k in ("loss_ce", "loss_l1", "loss_giou", "loss_align")] == pytest.approx(
        [ce, l1, giou, align], rel=1e-10
    )
    assert losses["loss"].item() == pytest.approx(0.5 * ce + 2 * l1 + 3 * giou + 0.25 * align, rel=1e-10)
    # a given matching and normaliser are used as they are
    indices = config.matcher()(logits, boxes, targets)
    again = rec_loss(
        logits,
        boxes,
        targets,
        rec_embeds,
        token_embeds,
        token_mask=token_mask,
        config=config,
        indices=indices,
        num_boxes=6.0,
    )
    assert again["loss_l1"].item() == pytest.approx(l1 * 3 / 6, rel=1e-10)  # 3 boxes
    # without alignment, no embeddings or tokens are needed
    plain = [{"boxes": t["boxes"]} for t in targets]
    no_align = rec_loss(logits, boxes, plain, config=RECLossConfig(align_weight=0.0))
    ce_default = ref_rec(logits, boxes, targets, rec_embeds, token_embeds, token_mask)[0]  # no-object weight 0.1
    assert no_align["loss_align"].item() == 0.0
    assert no_align["loss"].item() == pytest.approx(ce_default + 5 * l1 + 2 * giou, rel=1e-10)


def test_rec_loss_without_targets():
    logits = torch.tensor([[[0.3, -0.2], [1.0, 2.0]], [[0.0, 0.0], [-1.0, 0.5]]], dtype=torch.float64)
    boxes = torch.full((2, 2, 4), 0.3, dtype=torch.float64)
    empty = {"boxes": torch.zeros(0, 4, dtype=torch.float64), "tokens": torch.zeros(0, 3, dtype=torch.bool)}
    losses = rec_loss(logits, boxes, [empty, {"boxes": torch.zeros(0, 4)}], config=RECLossConfig(align_weight=0))
    # every query is "no object": the weights cancel in the weighted mean
    expected = sum(ref_ce_towards(row, 1) for row in logits.view(-1, 2).tolist()) / 4
    assert losses["loss_ce"].item() == pytest.approx(expected, rel=1e-12)
    assert losses["loss_l1"].item() == losses["loss_giou"].item() == 0.0


def test_rec_loss_bf16_inputs_and_autocast_give_float32():
    logits, boxes, targets, rec_embeds, token_embeds, token_mask = rec_inputs(dtype=torch.float32, seed=5)
    args = [t.bfloat16() for t in (logits, boxes, rec_embeds, token_embeds)]
    low = rec_loss(args[0], args[1], targets, *args[2:], token_mask=token_mask)
    ref = rec_loss(*[t.float() for t in args[:2]], targets, *[t.float() for t in args[2:]], token_mask=token_mask)
    for key, value in low.items():
        assert value.dtype == torch.float32, key
        torch.testing.assert_close(value, ref[key], rtol=0, atol=0)
    # inside autocast the products stay in float32: same result as outside
    outside = rec_loss(logits, boxes, targets, rec_embeds, token_embeds, token_mask=token_mask)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = rec_loss(logits, boxes, targets, rec_embeds, token_embeds, token_mask=token_mask)
    for key in outside:
        assert inside[key].dtype == torch.float32
        torch.testing.assert_close(inside[key], outside[key])


def test_rec_loss_gradients_flow():
    inputs = rec_inputs(dtype=torch.float32, seed=6)
    logits, boxes, targets, rec_embeds, token_embeds, token_mask = inputs
    leaves = [t.clone().requires_grad_() for t in (logits, boxes, rec_embeds, token_embeds)]
    rec_loss(leaves[0], leaves[1], targets, leaves[2], leaves[3], token_mask=token_mask)["loss"].backward()
    for name, leaf in zip(("logits", "boxes", "rec_embeds", "token_embeds"), leaves):
        assert torch.isfinite(leaf.grad).all() and leaf.grad.abs().sum() > 0, name


def test_rec_loss_module_on_adapter_output():
    torch.manual_seed(0)
    adapter = DiscriminativeAdapter(
        layers=["up_blocks.0"],
        in_channels=[8],
        text_dim=16,
        token_dim=12,
        hidden_size=32,
        num_heads=4,
        num_itm_queries=2,
        num_rec_queries=4,
        align_dim=8,
    )
    out = adapter([torch.randn(2, 8, 4, 4)], 100, text_tokens=torch.randn(2, 6, 12))
    tokens = torch.zeros(1, 6, dtype=torch.bool)
    tokens[0, 1:3] = True
    targets = [{"boxes": torch.tensor([[0.4, 0.5, 0.2, 0.3]]), "tokens": tokens}, {"boxes": torch.zeros(0, 4)}]
    losses = RECLoss()(out, targets)
    expected = rec_loss(out.rec_logits, out.boxes, targets, out.rec_embeds, out.token_embeds)
    for key in expected:
        torch.testing.assert_close(losses[key], expected[key])
    losses["loss"].backward()
    for module in (adapter.box_head, adapter.class_head, adapter.align_query, adapter.align_token):
        grads = [p.grad for p in module.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads) and any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(l1_weight=-5.0), r"`l1_weight` is -5.0; weights and temperatures must be >= 0"),
        (dict(giou_weight=float("nan")), "`giou_weight` is nan; pass a finite number"),
        (dict(ce_weight="1"), "`ce_weight` is '1'; pass a finite number"),
        (dict(ce_weight=0, l1_weight=0, giou_weight=0, align_weight=0), "are 0, so the loss is constant"),
        (dict(no_object_weight=0.0), "`no_object_weight` is 0"),
        (dict(temperature=0.0), "`temperature` is 0, which divides by zero"),
        (dict(match_giou_weight=-1.0), "`match_giou_weight` is -1.0"),
    ],
)
def test_rec_config_rejects(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RECLossConfig(**kwargs)


def test_rec_loss_input_checks():
    logits, boxes, targets, rec_embeds, token_embeds, token_mask = rec_inputs(dtype=torch.float32, seed=7)

    def call(targets=targets, rec_embeds=rec_embeds, token_embeds=token_embeds, **kwargs):
        return rec_loss(logits, boxes, targets, rec_embeds, token_embeds, **kwargs)

    def with_tokens(b, tokens):
        return [dict(t, tokens=tokens) if i == b else t for i, t in enumerate(targets)]

    with pytest.raises(ValueError, match=r"run the adapter with `text_tokens=`.*or set `align_weight=0`"):
        call(token_embeds=None)
    with pytest.raises(ValueError, match=r"`rec_embeds` is \(2, 3, 3\); pass \(2, 4, A\)"):
        call(rec_embeds=rec_embeds[:, :3])
    with pytest.raises(ValueError, match=r"`token_embeds` is \(2, 5, 2\) and `rec_embeds` \(2, 4, 3\)"):
        call(token_embeds=token_embeds[..., :2])
    with pytest.raises(ValueError, match=r"`token_mask` is \(2, 4\) torch.bool; pass a \(2, 5\) bool mask"):
        call(token_mask=token_mask[:, :4])
    with pytest.raises(ValueError, match="`token_mask` has a sample with no valid token"):
        call(token_mask=torch.zeros_like(token_mask))
    with pytest.raises(ValueError, match=r"`targets\[1\]\['tokens'\]` is None; the alignment loss needs a \(1, 5\)"):
        call(targets=[targets[0], {"boxes": targets[1]["boxes"]}])
    with pytest.raises(ValueError, match=r"`targets\[0\]\['tokens'\]` is \(2, 5\) torch.int64"):
        call(targets=with_tokens(0, targets[0]["tokens"].long()))
    with pytest.raises(ValueError, match=r"`targets\[0\]\['tokens'\]` has a box with no phrase token \(rows \[1\]\)"):
        call(targets=with_tokens(0, torch.tensor([[True] + [False] * 4, [False] * 5])))
    with pytest.raises(ValueError, match=r"marks tokens that `token_mask\[1\]` says are padding"):
        call(targets=with_tokens(1, torch.tensor([[False] * 4 + [True]])), token_mask=token_mask)
    with pytest.raises(ValueError, match=r"`indices` does not match `targets` \(boxes per sample \[2, 1\]\)"):
        call(indices=[(torch.tensor([0]), torch.tensor([0]))] * 2)
    with pytest.raises(ValueError, match="`num_boxes` is 0; pass the"):
        call(num_boxes=0)
    with pytest.raises(ValueError, match="`config` is a dict; pass a RECLossConfig"):
        call(config={"ce_weight": 1.0})
    with pytest.raises(ValueError, match="`config` is a dict; pass a RECLossConfig"):
        RECLoss({"ce_weight": 1.0})
    with pytest.raises(ValueError, match=r"`boxes` is \(2, 4, 2\) but `logits` is \(2, 4, 2\)"):
        rec_loss(logits, boxes[..., :2], targets, rec_embeds, token_embeds)


# ---------------------------------------------------------------------------------------------------------------
# ITM losses


def test_itm_loss_matches_reference():
    g = torch.Generator().manual_seed(0)
    text = torch.randn(3, 3, generator=g, dtype=torch.float64) * 3
    image = torch.randn(3, 4, generator=g, dtype=torch.float64) * 3
    batch = torch.randn(3, 3, generator=g, dtype=torch.float64) * 3
    ref_text = sum(ref_ce_towards(row, 0) for row in text.tolist()) / 3
    ref_image = sum(ref_ce_towards(row, 0) for row in image.tolist()) / 3
    rows, cols = batch.tolist(), batch.T.tolist()
    ref_batch = sum(ref_ce_towards(rows[i], i) for i in range(3)) + sum(ref_ce_towards(cols[j], j) for j in range(3))
    ref_batch /= 6
    losses = itm_loss(text, image, batch, text_weight=2.0, image_weight=1.0, batch_weight=0.5)
    assert losses["loss_text"].item() == pytest.approx(ref_text, rel=1e-12)
    assert losses["loss_image"].item() == pytest.approx(ref_image, rel=1e-12)
    assert losses["loss_batch"].item() == pytest.approx(ref_batch, rel=1e-12)
    assert losses["loss"].item() == pytest.approx((2 * ref_text + ref_image + 0.5 * ref_batch) / 3.5, rel=1e-12)
    assert multiple_choice_loss(text).item() == pytest.approx(ref_text, rel=1e-12)
    assert in_batch_loss(batch).item() == pytest.approx(ref_batch, rel=1e-12)
    # one table alone; a zero weight turns a term off
    assert itm_loss(image_scores=image)["loss"].item() == pytest.approx(ref_image, rel=1e-12)
    assert set(itm_loss(image_scores=image)) == {"loss_image", "loss"}
    assert itm_loss(text, image, image_weight=0.0)["loss"].item() == pytest.approx(ref_text, rel=1e-12)


def test_itm_loss_padding_with_minus_inf():
    scores = torch.tensor([[2.0, 1.0, float("-inf")], [0.5, 1.5, -1.0]], dtype=torch.float64)
    expected = (ref_ce_towards([2.0, 1.0], 0) + ref_ce_towards([0.5, 1.5, -1.0], 0)) / 2
    assert multiple_choice_loss(scores).item() == pytest.approx(expected, rel=1e-12)
    assert multiple_choice_accuracy(scores).tolist() == [True, False]


def test_accuracies():
    scores = torch.tensor([[3.0, 1.0, 2.0], [1.0, 1.0, 0.0], [0.0, 2.0, -1.0], [5.0, float("-inf"), 4.0]])
    assert multiple_choice_accuracy(scores).tolist() == [True, False, False, True]  # a tie is a miss
    batch = torch.tensor([[3.0, 1.0, 0.0], [2.0, 1.0, 0.5], [0.0, 0.0, 2.0]])
    image_to_text, text_to_image = in_batch_accuracy(batch)
    assert image_to_text.tolist() == [True, False, True]  # row 1: image 1 scores text 0 (2.0) above text 1 (1.0)
    assert text_to_image.tolist() == [True, False, True]  # column 1: images 0 and 1 tie on text 1 (1.0): a miss


def test_itm_loss_bf16_autocast_and_gradients():
    g = torch.Generator().manual_seed(1)
    text = torch.randn(4, 3, generator=g).bfloat16().requires_grad_()
    batch = torch.randn(4, 4, generator=g).bfloat16().requires_grad_()
    losses = itm_loss(text, batch_scores=batch)
    assert all(v.dtype == torch.float32 for v in losses.values())
    ref = itm_loss(text.detach().float(), batch_scores=batch.detach().float())
    torch.testing.assert_close(losses["loss"], ref["loss"], rtol=0, atol=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = itm_loss(text.detach().float(), batch_scores=batch.detach().float())
    assert inside["loss"].dtype == torch.float32
    torch.testing.assert_close(inside["loss"], ref["loss"])
    losses["loss"].backward()
    for leaf in (text, batch):
        assert torch.isfinite(leaf.grad.float()).all() and leaf.grad.abs().sum() > 0
    # the positive is pushed up, the negatives down
    assert (text.grad[:, 0] < 0).all() and (text.grad[:, 1:] > 0).all()


def test_itm_input_checks():
    good = torch.randn(3, 2)
    with pytest.raises(ValueError, match="No scores given; pass at least one of"):
        itm_loss()
    with pytest.raises(ValueError, match=r"`text_weight` is -1.0; pass a finite weight >= 0"):
        itm_loss(good, text_weight=-1.0)
    with pytest.raises(ValueError, match=r"The weights of the scores given \(\['image_weight'\]\) are all 0"):
        itm_loss(image_scores=good, image_weight=0)
    with pytest.raises(ValueError, match=r"`text_scores` is \(3,\); pass a \(B, 1 \+ k\) tensor"):
        itm_loss(torch.randn(3))
    with pytest.raises(ValueError, match=r"`image_scores` is \(3, 1\); .* k >= 1 negatives"):
        itm_loss(image_scores=torch.randn(3, 1))
    with pytest.raises(ValueError, match="`text_scores` has dtype torch.int64; pass floating-point scores"):
        itm_loss(torch.ones(3, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"`text_scores\[:, 0\]` \(the positives\) is not finite in rows \[1\]"):
        itm_loss(torch.tensor([[1.0, 0.0], [float("-inf"), 0.0]]))
    with pytest.raises(ValueError, match=r"`batch_scores` is \(3, 2\); pass a square \(B, B\) matrix"):
        itm_loss(batch_scores=good)
    with pytest.raises(ValueError, match="in-batch negatives need a batch of at least 2"):
        in_batch_loss(torch.ones(1, 1))
    with pytest.raises(ValueError, match=r"`batch_scores` has non-finite positives \(diagonal\) at \[0\]"):
        itm_loss(batch_scores=torch.tensor([[float("nan"), 0.0], [0.0, 1.0]]))
    with pytest.raises(ValueError, match=r"different batch sizes \{'text_scores': 3, 'image_scores': 2\}"):
        itm_loss(good, good[:2])
    with pytest.raises(ValueError, match=r"`scores` is \(2, 3\); pass a square"):
        in_batch_accuracy(torch.randn(2, 3))
    with pytest.raises(ValueError, match=r"`scores` is \(2, 1\); pass a \(B, 1 \+ k\)"):
        multiple_choice_accuracy(torch.randn(2, 1))


# ---------------------------------------------------------------------------------------------------------------
# denoising loss


def schedule(prediction_type="epsilon", abar=None):
    if abar is None:
        return DDPMScheduler(num_train_timesteps=1000, prediction_type=prediction_type)
    return SimpleNamespace(
        alphas_cumprod=torch.tensor(abar, dtype=torch.float32), config=SimpleNamespace(prediction_type=prediction_type)
    )


def denoise_inputs(dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    shape = (3, 2, 2, 2)
    pred, x0, noise = (torch.randn(shape, generator=g, dtype=dtype) for _ in range(3))
    return pred, x0, noise, torch.tensor([5, 400, 990])


def test_targets_match_formulas():
    pred, x0, noise, t = denoise_inputs()
    assert torch.equal(denoising_target(x0, noise, t, schedule("epsilon")), noise)
    assert torch.equal(denoising_target(x0, noise, t, schedule("sample")), x0)
    scheduler = schedule("v_prediction")
    v = denoising_target(x0, noise, t, scheduler)
    for b in range(3):
        abar = float(scheduler.alphas_cumprod[t[b]])
        for idx in itertools.product(range(2), range(2), range(2)):
            expected = math.sqrt(abar) * noise[b][idx].item() - math.sqrt(1 - abar) * x0[b][idx].item()
            assert v[b][idx].item() == pytest.approx(expected, rel=1e-12, abs=1e-12)
    torch.testing.assert_close(v.float(), scheduler.get_velocity(x0.float(), noise.float(), t))  # diffusers agrees
    # the override wins over the scheduler's config
    assert torch.equal(denoising_target(x0, noise, t, scheduler, prediction_type="epsilon"), noise)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_denoising_loss_matches_reference(prediction_type):
    pred, x0, noise, t = denoise_inputs(seed=1)
    scheduler = schedule(prediction_type)
    target = denoising_target(x0, noise, t, scheduler)
    mse = [
        sum((p - q) ** 2 for p, q in zip(pred[b].flatten().tolist(), target[b].flatten().tolist())) / 8
        for b in range(3)
    ]
    assert denoising_loss(pred, x0, noise, t, scheduler).item() == pytest.approx(sum(mse) / 3, rel=1e-12)
    gamma = 5.0
    weights = []
    for b in range(3):
        abar = float(scheduler.alphas_cumprod[t[b]])
        s = abar / (1 - abar)
        weights.append(
            {"epsilon": min(s, gamma) / s, "v_prediction": min(s, gamma) / (s + 1), "sample": min(s, gamma)}[
                prediction_type
            ]
        )
    assert snr(scheduler, t).tolist() == pytest.approx(
        [float(scheduler.alphas_cumprod[i]) / (1 - float(scheduler.alphas_cumprod[i])) for i in t], rel=1e-12
    )
    assert min_snr_weights(snr(scheduler, t), gamma, prediction_type).tolist() == pytest.approx(weights, rel=1e-12)
    expected = sum(w * m for w, m in zip(weights, mse)) / 3
    assert denoising_loss(pred, x0, noise, t, scheduler, snr_gamma=gamma).item() == pytest.approx(expected, rel=1e-12)


def test_denoising_errors_are_the_per_sample_loss():
    pred, x0, noise, t = denoise_inputs(seed=3)
    scheduler = schedule("v_prediction")
    errors = denoising_errors(pred, x0, noise, t, scheduler)
    assert errors.shape == (3,)
    expected = (pred - denoising_target(x0, noise, t, scheduler)).pow(2).flatten(1).mean(1)
    torch.testing.assert_close(errors, expected, rtol=1e-12, atol=0)
    assert denoising_loss(pred, x0, noise, t, scheduler).item() == pytest.approx(errors.mean().item(), rel=1e-12)


def test_denoising_contrast_loss_matches_reference_and_pushes_the_negatives_up():
    errors = torch.tensor([[0.50, 0.60, 0.40], [0.20, 0.25, math.inf]], dtype=torch.float64, requires_grad=True)
    tau = 0.05
    expected = []
    for row in errors.tolist():
        weights = [e ** (-1 / tau) for e in row]  # softmax of -log(E) / tau, pads weigh 0
        expected.append(-math.log(weights[0] / sum(weights)))
    loss = denoising_contrast_loss(errors, tau)
    assert loss.item() == pytest.approx(sum(expected) / 2, rel=1e-10)
    loss.backward()
    grad = errors.grad
    assert grad[0, 0] > 0 and grad[1, 0] > 0  # the caption's error goes down
    assert grad[0, 1] < 0 and grad[0, 2] < 0 and grad[1, 1] < 0  # the negatives' go up
    assert grad[1, 2] == 0  # the pad takes no part
    # a caption that explains the noise far better than its negatives costs almost nothing
    assert denoising_contrast_loss(torch.tensor([[0.1, 1.0, 2.0]]), tau).item() < 1e-12


def test_denoising_contrast_loss_input_checks():
    with pytest.raises(ValueError, match=r"`errors` is \(3,\); pass a \(B, 1 \+ k\) table"):
        denoising_contrast_loss(torch.ones(3), 0.05)
    with pytest.raises(ValueError, match=r"`errors` is \(2, 1\)"):
        denoising_contrast_loss(torch.ones(2, 1), 0.05)
    with pytest.raises(ValueError, match=r"`temperature` is 0; pass a number > 0"):
        denoising_contrast_loss(torch.ones(2, 3), 0)


def test_min_snr_weights_at_extreme_snr():
    # abar = 0 (zero terminal SNR) and abar = 1 (no noise): finite weights, the limits of the formulas
    scheduler = schedule("epsilon", abar=[1.0, 0.5, 0.0])
    s = snr(scheduler, torch.tensor([0, 1, 2]))
    assert s.tolist() == [math.inf, 1.0, 0.0]
    assert min_snr_weights(s, 5.0, "epsilon").tolist() == [0.0, 1.0, 1.0]
    assert min_snr_weights(s, 5.0, "v_prediction").tolist() == [0.0, 0.5, 0.0]
    assert min_snr_weights(s, 5.0, "sample").tolist() == [5.0, 1.0, 0.0]
    pred = torch.randn(3, 4, requires_grad=True)
    loss = denoising_loss(pred, torch.randn(3, 4), torch.randn(3, 4), torch.tensor([0, 1, 2]), scheduler, snr_gamma=5)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(pred.grad).all()


def test_denoising_loss_bf16_and_gradients():
    pred, x0, noise, t = denoise_inputs(dtype=torch.float32, seed=2)
    pred = pred.bfloat16().requires_grad_()
    scheduler = schedule("v_prediction")
    loss = denoising_loss(pred, x0.bfloat16(), noise.bfloat16(), t, scheduler, snr_gamma=5.0)
    assert loss.dtype == torch.float32
    ref = denoising_loss(
        pred.detach().float(), x0.bfloat16().float(), noise.bfloat16().float(), t, scheduler, snr_gamma=5.0
    )
    torch.testing.assert_close(loss, ref, rtol=0, atol=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = denoising_loss(pred.detach().float(), x0, noise, t, scheduler)
    assert inside.dtype == torch.float32
    loss.backward()
    assert torch.isfinite(pred.grad.float()).all() and pred.grad.abs().sum() > 0


def test_denoising_input_checks():
    pred, x0, noise, t = denoise_inputs(dtype=torch.float32)
    scheduler = schedule()
    with pytest.raises(ValueError, match=r"`prediction_type` is 'flow'; the denoising loss knows \['epsilon'"):
        denoising_loss(pred, x0, noise, t, schedule("flow", abar=[0.5, 0.4]))
    with pytest.raises(ValueError, match="`prediction_type` is 'x0'"):
        denoising_target(x0, noise, t, scheduler, prediction_type="x0")
    with pytest.raises(ValueError, match="`prediction_type` is 'eps'"):
        min_snr_weights(torch.ones(3), 5.0, "eps")
    with pytest.raises(ValueError, match="SimpleNamespace has no `alphas_cumprod` tensor"):
        denoising_loss(pred, x0, noise, t, SimpleNamespace(config=SimpleNamespace(prediction_type="epsilon")))
    with pytest.raises(ValueError, match="SimpleNamespace has no `alphas_cumprod` tensor"):
        snr(SimpleNamespace(), t)
    with pytest.raises(ValueError, match=r"`timesteps` ranges over \[5, 1000\], outside the scheduler's 0..999"):
        denoising_loss(pred, x0, noise, torch.tensor([5, 400, 1000]), scheduler)
    with pytest.raises(ValueError, match="`timesteps` has dtype torch.float32; pass integer training timesteps"):
        denoising_loss(pred, x0, noise, t.float(), scheduler)
    with pytest.raises(ValueError, match=r"`timesteps` is \(2,\); pass a \(3,\) tensor"):
        denoising_loss(pred, x0, noise, t[:2], scheduler)
    with pytest.raises(ValueError, match=r"`model_pred`, `sample`, `noise` have shapes .*'model_pred': \(3, 2, 2\)"):
        denoising_loss(pred[..., 0], x0, noise, t, scheduler)
    with pytest.raises(ValueError, match=r"`snr_gamma` is 0.0; pass a finite value > 0"):
        denoising_loss(pred, x0, noise, t, scheduler, snr_gamma=0.0)
