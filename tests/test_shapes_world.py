"""The shapes world: scenes, rendering, captions, hard negatives, splits, and the oracle that referees them."""

import collections
import doctest
import importlib
import itertools
import json

import numpy as np
import PIL.Image
import pytest
from scipy import ndimage

from discadapt.worlds import shapes
from discadapt.worlds.shapes import (
    CATEGORIES,
    COLORS,
    KINDS,
    SHAPES,
    Caption,
    Example,
    Obj,
    Phrase,
    Scene,
    check,
    check_all,
    detect,
    evaluate,
    hard_negatives,
    held_out,
    make_dataset,
    make_example,
    parse,
    place_objects,
    random_scene,
    referring_expressions,
    render,
    shape_mask,
)
from discadapt.worlds.shapes.captions import NUMBERS, POSITIONS, RELATIONS
from discadapt.worlds.shapes.palette import BACKGROUND, side_pixels
from discadapt.worlds.shapes.scenes import GAP
from discadapt.worlds.shapes.semantics import SAFETY_MARGIN, in_relation
from discadapt.worlds.shapes.splits import canonical_triple, caption_combinations

MODULES = [
    "palette",
    "scenes",
    "render",
    "captions",
    "semantics",
    "referring",
    "negatives",
    "splits",
    "dataset",
    "pixels",
    "oracle",
    "render_soft",
]


def _blur(image, sigma):
    return np.clip(np.round(ndimage.gaussian_filter(image.astype(float), (sigma, sigma, 0))), 0, 255).astype(np.uint8)


def _noise(image, sigma, seed):
    noisy = image + np.random.default_rng(seed).normal(0, sigma, image.shape)
    return np.clip(np.round(noisy), 0, 255).astype(np.uint8)


def _obj(color, shape, size, x, y, image_size=64):
    side = side_pixels(size, image_size)
    return Obj(color, shape, size, (x, y, x + side, y + side), image_size)


# --- palette, scenes, rendering ---------------------------------------------------------------------------------


def test_docstring_examples():
    for name in MODULES:
        module = importlib.import_module(f"discadapt.worlds.shapes.{name}")
        assert doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE).failed == 0, name
    assert doctest.testmod(shapes).failed == 0


def test_palette_is_well_separated():
    directions = np.array(list(COLORS.values()), float) - BACKGROUND  # seen from the background
    unit = directions / np.linalg.norm(directions, axis=1, keepdims=True)
    angles = np.degrees(np.arccos(np.clip(unit @ unit.T, -1, 1)))[np.triu_indices(len(COLORS), 1)]
    assert len(COLORS) >= 6 and angles.min() > 30
    assert np.linalg.norm(directions, axis=1).min() > 150  # every color far from the background
    assert [side_pixels(s, n) for n in (32, 64) for s in ("small", "large")] == [8, 12, 16, 24]


@pytest.mark.parametrize("shape", SHAPES)
def test_shape_masks_touch_their_box_and_approach_the_ideal_area(shape):
    for side in range(1, 41):
        mask = shape_mask(shape, side)
        assert mask.shape == (side, side)
        assert mask[0].any() and mask[-1].any() and mask[:, 0].any() and mask[:, -1].any()
        assert np.array_equal(mask, mask[:, ::-1])  # symmetric left to right
    ideal = {"circle": np.pi / 4, "square": 1.0, "triangle": 0.5}[shape]
    assert shape_mask(shape, 400).mean() == pytest.approx(ideal, abs=0.003)


def test_same_seed_same_scene_and_image():
    for seed in range(20):
        for size, background in [(64, "plain"), (32, "textured")]:
            a = random_scene(seed, image_size=size, background=background)
            assert a == random_scene(seed, image_size=size, background=background)
            assert np.array_equal(render(a), render(a))
    assert random_scene(0) != random_scene(1)
    textured = random_scene(3, background="textured")
    image = render(textured).astype(int)
    background = image[~np.any([np.all(image == c, -1) for c in COLORS.values()], axis=0)]  # (N, 3)
    assert 0 < np.abs(background - BACKGROUND).max() <= 6  # light texture, seeded by texture_seed
    first = [e.to_dict() for e in make_dataset(25, seed=3)]
    assert first == [e.to_dict() for e in make_dataset(25, seed=3)]
    assert first != [e.to_dict() for e in make_dataset(25, seed=4)]
    assert first != [e.to_dict() for e in make_dataset(25, split="test_id", seed=3)]


@pytest.mark.parametrize("image_size", [32, 64])
@pytest.mark.parametrize("touching", [False, True])
def test_boxes_are_exact(image_size, touching):
    """The pixels of each object's color form one component whose bounding box is the object's box."""
    for seed in range(60):
        scene = random_scene(seed, image_size=image_size, touching=touching, background="textured")
        image = render(scene)
        for obj in scene.objects:
            components, _ = ndimage.label(np.all(image == COLORS[obj.color], -1), np.ones((3, 3)))
            x0, y0, x1, y1 = obj.box
            ids = set(np.unique(components[y0:y1, x0:x1])) - {0}
            assert len(ids) == 1
            ys, xs = ndimage.find_objects(components)[ids.pop() - 1]
            assert (xs.start, ys.start, xs.stop, ys.stop) == obj.box
            assert (components[ys, xs] > 0).sum() == shape_mask(obj.shape, x1 - x0).sum()
            cx, cy, w, h = obj.cxcywh
            assert (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2) == tuple(v / image_size for v in obj.box)


def test_layout_rules():
    gaps = []
    for seed in range(300):
        scene = random_scene(seed, image_size=32, touching=True)
        for a, b in itertools.combinations(scene.objects, 2):
            gap = max(b.box[0] - a.box[2], a.box[0] - b.box[2], b.box[1] - a.box[3], a.box[1] - b.box[3])
            assert gap >= (GAP if a.color == b.color else 0)
            gaps.append(gap)
    assert np.mean(np.array(gaps) == 0) > 0.3  # touching scenes do touch
    for seed in range(100):
        for a, b in itertools.combinations(random_scene(seed, image_size=32, num_objects=4).objects, 2):
            assert max(b.box[0] - a.box[2], a.box[0] - b.box[2], b.box[1] - a.box[3], a.box[1] - b.box[3]) >= GAP


def test_scene_and_example_round_trip_through_json():
    for example in make_dataset(40, seed=1, image_size=32, background="textured"):
        data = json.loads(json.dumps(example.to_dict()))
        assert Example.from_dict(data) == example
        assert Scene.from_dict(data["scene"]) == example.scene


# --- captions ---------------------------------------------------------------------------------------------------


def _every_caption():
    kinds = [(c, s) for c in COLORS for s in SHAPES]
    for color, shape in kinds:
        yield Caption("single", (Phrase(shape, color),))
        for n in range(1, 5):
            yield Caption("counting", (Phrase(shape, color),), count=n)
    for a, b in itertools.permutations(kinds, 2):
        yield Caption("two_objects", (Phrase(a[1], a[0]), Phrase(b[1], b[0])))
        for relation in RELATIONS:
            yield Caption("spatial", (Phrase(a[1], a[0]), Phrase(b[1], b[0])), relation=relation)
    for shape, color, size, position in itertools.product(
        SHAPES, [None, *COLORS], [None, "small", "large"], [None, *POSITIONS]
    ):
        yield Caption("referring", (Phrase(shape, color, size),), position=position)


def test_every_caption_of_the_grammar_round_trips():
    captions = list(_every_caption())
    assert len(captions) == 21 + 84 + 420 + 1680 + 3 * 8 * 3 * 5
    texts = [c.text for c in captions]
    assert len(set(texts)) == len(texts)
    for caption, text in zip(captions, texts):
        assert parse(text) == caption


def test_caption_texts_and_structures():
    expected = {
        "a red circle": Caption("single", (Phrase("circle", "red"),)),
        "a red circle and a blue square": Caption("two_objects", (Phrase("circle", "red"), Phrase("square", "blue"))),
        "one green triangle": Caption("counting", (Phrase("triangle", "green"),), count=1),
        "three green triangles": Caption("counting", (Phrase("triangle", "green"),), count=3),
        "a red circle to the left of a blue square": Caption(
            "spatial", (Phrase("circle", "red"), Phrase("square", "blue")), relation="left of"
        ),
        "a white square below a cyan circle": Caption(
            "spatial", (Phrase("square", "white"), Phrase("circle", "cyan")), relation="below"
        ),
        "the blue square": Caption("referring", (Phrase("square", "blue"),)),
        "the circle on the left": Caption("referring", (Phrase("circle"),), position="left"),
        "the large red circle": Caption("referring", (Phrase("circle", "red", "large"),)),
        "the small triangle at the top": Caption("referring", (Phrase("triangle", size="small"),), position="top"),
    }
    for text, caption in expected.items():
        assert parse(text) == caption and caption.text == text
    assert parse("  Three  GREEN triangles. ") == expected["three green triangles"]
    assert len(NUMBERS) == 4 and set(CATEGORIES) == {"single", "two_objects", "counting", "spatial", "referring"}


# --- meaning, referring expressions, hard negatives ---------------------------------------------------------------


def test_relation_rule_uses_the_dominant_axis_of_the_centres():
    a = _obj("red", "circle", "small", 4, 24)  # centre (12, 32)
    right = _obj("blue", "square", "small", 40, 30)  # centre (48, 38): mostly to the right
    below = _obj("blue", "square", "small", 10, 44)  # centre (18, 52): mostly below
    diagonal = _obj("blue", "square", "small", 24, 44)  # centre (32, 52): |dx| == |dy|
    assert [r for r in RELATIONS if in_relation(a, right, r)] == ["left of"]
    assert [r for r in RELATIONS if in_relation(right, a, r)] == ["right of"]
    assert [r for r in RELATIONS if in_relation(a, below, r)] == ["above"]
    assert [r for r in RELATIONS if in_relation(below, a, r)] == ["below"]
    assert [r for r in RELATIONS if in_relation(a, diagonal, r)] == []  # a tie is no relation
    # along - across = (36 - 6) / 64 = 0.469
    assert in_relation(a, right, "left of", margin=0.46) and not in_relation(a, right, "left of", margin=0.47)


def test_meaning_of_each_category():
    red1, red2 = _obj("red", "circle", "small", 2, 2), _obj("red", "circle", "large", 30, 4)
    blue = _obj("blue", "square", "small", 6, 40)
    objects = [red1, red2, blue]

    def ok(text):
        return evaluate(objects, parse(text)).ok

    assert ok("a red circle") and not ok("a red square") and not ok("a blue circle")
    assert ok("a red circle and a blue square") and not ok("a blue circle and a red square")
    assert ok("two red circles") and not ok("one red circle") and not ok("three red circles")
    assert ok("one blue square") and not ok("two blue squares")
    assert ok("a red circle above a blue square") and not ok("a red circle below a blue square")
    assert not ok("a red circle to the left of a blue square")  # |dx| < |dy| for both red circles
    assert ok("a blue square below a red circle")
    verdict = evaluate(objects, parse("the circle on the left"))
    assert verdict.ok and verdict.target == red1
    assert evaluate(objects, parse("the large circle")).target == red2
    assert evaluate(objects, parse("the blue square")).target == blue
    assert not ok("the circle") and not ok("the red circle")  # two of them: ambiguous
    assert not ok("the square on the left")  # a position needs two candidates
    # centres: red1 (10, 10), red2 (42, 16): red1 is the top one by 6 / 64 = 0.094
    assert evaluate(objects, parse("the circle at the top")).target == red1
    assert not evaluate(objects, parse("the circle at the top"), margin=0.2).ok
    assert "found 2 red circles, the caption says three" == evaluate(objects, parse("three red circles")).reason


def test_referring_expressions_pick_out_their_target():
    data = make_dataset(300, seed=2, categories=["referring"])
    forms = collections.Counter()
    for example in data:
        verdict = evaluate(example.scene.objects, example.caption, SAFETY_MARGIN)
        assert verdict.ok and verdict.target == example.referent
        phrase = example.caption.phrases[0]
        forms[(phrase.color is not None, phrase.size is not None, example.caption.position is not None)] += 1
        for other in referring_expressions(example.scene.objects, example.target):
            assert evaluate(example.scene.objects, other).target == example.referent
    assert len(forms) == 8  # every combination of color, size and position occurs


@pytest.mark.parametrize("split", ["train", "test_ood"])
def test_hard_negatives_are_false_and_positives_true(split):
    kinds = collections.defaultdict(collections.Counter)
    for image_size in (32, 64):
        for example in make_dataset(500, split=split, seed=5, image_size=image_size, touching=image_size == 32):
            objects, category = example.scene.objects, example.caption.category
            assert evaluate(objects, example.caption).ok and evaluate(objects, example.caption, SAFETY_MARGIN).ok
            assert example.negatives
            for negative in example.negatives:
                assert negative.caption != example.caption and negative.caption.category == category
                assert not evaluate(objects, negative.caption).ok
                assert not evaluate(objects, negative.caption, -SAFETY_MARGIN).ok
                kinds[category][negative.kind] += 1
    assert set(kinds) == set(CATEGORIES)
    assert set().union(*kinds.values()) == set(KINDS)
    assert set(kinds["spatial"]) == {"swap_attributes", "swap_relation", "wrong_color", "wrong_shape"}
    assert set(kinds["counting"]) == {"wrong_count", "wrong_color", "wrong_shape"}
    assert set(kinds["referring"]) == {"wrong_color", "wrong_shape", "wrong_size"}
    # swaps can come out true (a duplicate kind elsewhere in the scene) or name a held-out combination
    assert kinds["spatial"]["swap_relation"] >= 0.85 * 200 and kinds["counting"]["wrong_count"] == 200


def test_hard_negatives_prefer_colors_and_shapes_of_the_scene():
    scene = Scene(64, [_obj("red", "circle", "small", 2, 2), _obj("blue", "square", "large", 30, 30)])
    for seed in range(10):
        negatives = {n.kind: n.caption.text for n in hard_negatives(scene, parse("a red circle"), seed)}
        assert negatives == {"wrong_color": "a blue circle", "wrong_shape": "a red square"}


# --- splits -----------------------------------------------------------------------------------------------------


def test_held_out_combinations_are_as_documented():
    held = held_out()
    assert held.pairs == {("yellow", "square"), ("white", "circle"), ("cyan", "square"), ("red", "triangle")}
    assert len(held.triples) == 54
    train = held.train_kinds()
    assert {c for c, _ in train} == set(COLORS) and {s for _, s in train} == set(SHAPES)
    for triple in held.triples:
        assert triple[2] in ("left of", "above") and triple[:2] in train and triple[3:] in train
    converse = canonical_triple(("red", "circle"), "right of", ("blue", "square"))
    assert converse == ("blue", "square", "left of", "red", "circle")
    assert held_out(seed=1) != held and held_out(seed=1).pairs and held_out(num_pairs=0).pairs == frozenset()


def test_training_never_shows_a_held_out_combination_and_ood_always_names_one():
    held = held_out()
    for split in ("train", "test_id"):
        for example in make_dataset(1000, split=split, seed=7, image_size=32):
            assert not {o.kind for o in example.scene.objects} & held.pairs
            for caption in (example.caption, *(n.caption for n in example.negatives)):
                assert not held.names(caption), caption.text
    novel = collections.Counter()
    for example in make_dataset(1000, split="test_ood", seed=7, image_size=32):
        pairs, triples = caption_combinations(example.caption)
        assert pairs & held.pairs or triples & held.triples, example.caption.text
        novel["pair" if pairs & held.pairs else "triple"] += 1
    assert novel["triple"] >= 50  # spatial captions with a held-out triple of two training pairs


# --- the oracle -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("image_size", [32, 40, 48, 64, 96])
def test_oracle_finds_exactly_the_scene_on_rendered_images(image_size):
    for seed in range(100):
        scene = random_scene(seed, image_size=image_size, touching=seed % 2 == 1, background="textured")
        assert set(detect(render(scene))) == set(scene.objects)
    image = render(scene)
    assert detect(PIL.Image.fromarray(image)) == detect(image)


def _box_error(a, b):
    return max(abs(p - q) for p, q in zip(a.box, b.box))


def test_oracle_on_small_objects_at_32_pixels_under_blur_and_noise():
    """Four small (8-pixel) objects, some scenes touching, blurred (sigma 1) and noisy (sigma 10)."""
    rng = np.random.default_rng(0)
    correct, total, spurious = 0, 0, 0
    while total < 1000:
        specs = [(rng.choice(list(COLORS)), rng.choice(SHAPES), "small") for _ in range(4)]
        objects = place_objects(rng, specs, image_size=32, touching=total % 8 == 0)
        if objects is None:
            continue
        found = detect(_noise(_blur(render(Scene(32, objects)), 1.0), 10, total))
        for obj in objects:
            near = [d for d in found if _box_error(d, obj) <= 1]
            seen_as = (near[0].color, near[0].shape, near[0].size) if len(near) == 1 else None
            correct += seen_as == (obj.color, obj.shape, obj.size)
        total += len(objects)
        spurious += max(0, len(found) - len(objects))
    assert correct / total >= 0.995 and spurious <= 0.005 * total


CONDITIONS = {
    # name: (number of examples, dataset arguments, blur sigma, noise sigma)
    "clean-64": (2000, dict(image_size=64), 0, 0),
    "clean-32": (2000, dict(image_size=32), 0, 0),
    "noise20-64": (1000, dict(image_size=64), 0, 20),
    "noise20-32": (1000, dict(image_size=32), 0, 20),
    "blur1-64": (1000, dict(image_size=64), 1.0, 0),
    "blur1-32": (1000, dict(image_size=32), 1.0, 0),
    "blur1+noise10-32": (1000, dict(image_size=32), 1.0, 10),
    "touching-64": (1000, dict(image_size=64, touching=True), 0, 0),
    "touching+blur1-32": (1000, dict(image_size=32, touching=True), 1.0, 0),
    "textured+noise10-32": (1000, dict(image_size=32, background="textured"), 0, 10),
    "ood-64": (1000, dict(image_size=64, split="test_ood"), 0, 0),
}


def oracle_accuracy(num_examples, dataset_args, blur=0.0, noise=0.0, seed=11):
    """Per category: the fraction of true captions the oracle accepts (for referring captions, with the right
    referent: box within one pixel), and the fraction of hard negatives it rejects."""
    accepted, rejected = collections.defaultdict(list), collections.defaultdict(list)
    for i, example in enumerate(make_dataset(num_examples, seed=seed, **dataset_args)):
        image = render(example.scene)
        image = _blur(image, blur) if blur else image
        image = _noise(image, noise, i) if noise else image
        found = detect(image)
        verdict = evaluate(found, example.caption)
        ok = verdict.ok and (example.referent is None or _box_error(verdict.target, example.referent) <= 1)
        category = example.caption.category
        accepted[category].append(ok)
        rejected[category] += [not evaluate(found, n.caption).ok for n in example.negatives]
    return {c: (np.mean(accepted[c]), len(accepted[c]), np.mean(rejected[c]), len(rejected[c])) for c in CATEGORIES}


@pytest.mark.parametrize("condition", CONDITIONS)
def test_oracle_accuracy(condition):
    num_examples, dataset_args, blur, noise = CONDITIONS[condition]
    table = oracle_accuracy(num_examples, dataset_args, blur, noise)
    report = "; ".join(f"{c} {p:.3f} of {n} true, {q:.3f} of {m} negatives" for c, (p, n, q, m) in table.items())
    assert sum(n + m for _, n, _, m in table.values()) >= 2000
    assert all(p == 1 and q == 1 for p, _, q, _ in table.values()), report  # measured: every condition, 100%


def test_check_parses_text_and_returns_the_referent():
    example = make_dataset(1, seed=0, categories=["referring"])[0]
    image = render(example.scene)
    verdict = check(image, example.caption.text)
    assert verdict.ok and verdict.category == "referring" and verdict.target == example.referent
    verdicts = check_all(
        [image] * (1 + len(example.negatives)), [example.caption, *(n.caption.text for n in example.negatives)]
    )
    assert [v.ok for v in verdicts] == [True] + [False] * len(example.negatives)
    assert check_all([image], example.caption.text)[0].ok


# --- errors -----------------------------------------------------------------------------------------------------


def test_bad_objects_and_scenes():
    with pytest.raises(ValueError, match=r"`color` is 'pink'; pick one of red, green, blue"):
        Obj("pink", "circle", "small", (0, 0, 16, 16), 64)
    with pytest.raises(ValueError, match=r"`shape` is 'hexagon'; pick one of circle, square, triangle"):
        Obj("red", "hexagon", "small", (0, 0, 16, 16), 64)
    with pytest.raises(ValueError, match=r"`size` is 'medium'; pick one of small, large"):
        Obj("red", "circle", "medium", (0, 0, 16, 16), 64)
    with pytest.raises(ValueError, match=r"`box` is \(0, 0, 70, 16\); pass \(x0, y0, x1, y1\) with 0 <= x0 < x1 <= 64"):
        Obj("red", "circle", "small", (0, 0, 70, 16), 64)
    with pytest.raises(ValueError, match=r"`image_size` is 16; pass an int >= 32"):
        Obj("red", "circle", "small", (0, 0, 8, 8), 16)
    with pytest.raises(ValueError, match=r"`objects` has 0 objects; a scene holds 1 to 4"):
        Scene(64, [])
    with pytest.raises(ValueError, match=r"placed in a 32-pixel image; this scene is 64 pixels"):
        Scene(64, [_obj("red", "circle", "small", 0, 0, image_size=32)])
    with pytest.raises(ValueError, match=r"boxes \(0, 0, 16, 16\) \(red\) and \(17, 0, 33, 16\) \(red\) closer than"):
        Scene(64, [_obj("red", "circle", "small", 0, 0), _obj("red", "square", "small", 17, 0)])
    Scene(64, [_obj("red", "circle", "small", 0, 0), _obj("blue", "square", "small", 16, 0)])  # touching: fine
    with pytest.raises(ValueError, match=r"a small object with box \(0, 0, 20, 16\); in a 64-pixel image a small"):
        Scene(64, [Obj("red", "circle", "small", (0, 0, 20, 16), 64)])
    with pytest.raises(ValueError, match=r"`background` is 'stripes'; pick one of plain, textured"):
        Scene(64, [_obj("red", "circle", "small", 0, 0)], background="stripes")
    with pytest.raises(ValueError, match=r"`num_objects` is 5; pass an int from 1 to 4, or None"):
        random_scene(0, num_objects=5)
    with pytest.raises(ValueError, match=r"`kinds` is empty"):
        random_scene(0, kinds=[])
    with pytest.raises(ValueError, match=r"`image_size` is 24; pass an int >= 32"):
        random_scene(0, image_size=24)
    with pytest.raises(ValueError, match=r"`shape` is 'star'"):
        shape_mask("star", 4)
    with pytest.raises(ValueError, match=r"`size` is 'huge'"):
        side_pixels("huge", 64)


def test_layout_failures_are_reported(monkeypatch):
    monkeypatch.setattr(shapes.scenes, "place_objects", lambda *args, **kwargs: None)
    with pytest.raises(RuntimeError, match=r"no room for 2 objects in a 64-pixel image after 1000 layouts"):
        random_scene(0, num_objects=2)
    monkeypatch.setattr(shapes.dataset, "_BUILDERS", {"single": lambda draw: (None, None, None)})
    with pytest.raises(RuntimeError, match=r"no single example found in 1000 draws for seed 3"):
        make_example(3, "single")


def test_bad_captions():
    with pytest.raises(ValueError, match=r"`category` is 'colour'; pick one of single, two_objects"):
        Caption("colour", (Phrase("circle", "red"),))
    with pytest.raises(ValueError, match=r"`color` is 'pink'"):
        Phrase("circle", "pink")
    with pytest.raises(ValueError, match=r"a single caption takes 1 Phrase"):
        Caption("single", (Phrase("circle", "red"), Phrase("square", "red")))
    with pytest.raises(ValueError, match=r"single phrases name a color and no size"):
        Caption("single", (Phrase("circle"),))
    with pytest.raises(ValueError, match=r"`phrases` names red circle twice"):
        Caption("two_objects", (Phrase("circle", "red"), Phrase("circle", "red")))
    with pytest.raises(ValueError, match=r"`count` is 5; pass 1 to 4 for a counting caption"):
        Caption("counting", (Phrase("circle", "red"),), count=5)
    with pytest.raises(ValueError, match=r"`count` is 2; pass 1 to 4 for a counting caption, None otherwise"):
        Caption("single", (Phrase("circle", "red"),), count=2)
    with pytest.raises(ValueError, match=r"`relation` is None; pass one for a spatial caption"):
        Caption("spatial", (Phrase("circle", "red"), Phrase("square", "blue")))
    with pytest.raises(ValueError, match=r"`relation` is 'near'; pick one of left of, right of, above, below"):
        Caption("spatial", (Phrase("circle", "red"), Phrase("square", "blue")), relation="near")
    with pytest.raises(ValueError, match=r"`position` is 'left'; only a referring caption takes a position"):
        Caption("single", (Phrase("circle", "red"),), position="left")
    with pytest.raises(ValueError, match=r"`position` is 'middle'; pick one of left, right, top, bottom"):
        Caption("referring", (Phrase("circle"),), position="middle")
    for text in ["a pink circle", "two red circle", "one red circles", "a red circle and a red circle", "the red", ""]:
        with pytest.raises(ValueError, match=rf"caption '{text}' is not in the shapes grammar"):
            parse(text)
    with pytest.raises(ValueError, match=r"`text` is 3; pass a caption string"):
        parse(3)
    with pytest.raises(ValueError, match=r"`index` is 2; pass a position in `objects`, 0 to 0"):
        referring_expressions([_obj("red", "circle", "small", 0, 0)], 2)


def test_bad_dataset_arguments():
    with pytest.raises(ValueError, match=r"`category` is 'colour'"):
        make_example(0, "colour")
    with pytest.raises(ValueError, match=r"`split` is 'validation'; pick one of train, test_id, test_ood"):
        make_dataset(2, split="validation")
    with pytest.raises(ValueError, match=r"`num_examples` is 0; pass an int >= 1"):
        make_dataset(0)
    with pytest.raises(ValueError, match=r"`categories` is empty; pass one or more of single"):
        make_dataset(2, categories=[])
    with pytest.raises(ValueError, match=r"`category` is 'colour'"):
        make_dataset(2, categories=["single", "colour"])
    with pytest.raises(ValueError, match=r"`background` is 'stripes'"):
        make_example(0, "single", background="stripes")
    with pytest.raises(ValueError, match=r"`held` holds no \(color, shape\) pair; the test_ood split needs some"):
        make_example(0, "single", split="test_ood", held=held_out(num_pairs=0))
    with pytest.raises(ValueError, match=r"`num_pairs` is 8; pass an int from 0 to 7"):
        held_out(num_pairs=8)
    with pytest.raises(ValueError, match=r"`triple_fraction` is 1.0; pass a fraction in \[0, 1\)"):
        held_out(triple_fraction=1.0)


def test_bad_oracle_inputs():
    image = render(random_scene(0))
    with pytest.raises(ValueError, match=r"`image` is a float64 array; pass a PIL image or a uint8 \(H, W, 3\)"):
        detect(image / 255.0)
    with pytest.raises(ValueError, match=r"`image` is a list"):
        detect(image.tolist())
    for bad in (image[:, :48], image[..., 0], image[:16, :16], image[..., :2]):
        with pytest.raises(ValueError, match=rf"`image` has shape \({bad.shape[0]}, .*pass a square RGB image"):
            check(bad, "a red circle")
    with pytest.raises(ValueError, match=r"caption 'a red blob' is not in the shapes grammar"):
        check(image, "a red blob")
    with pytest.raises(ValueError, match=r"`captions` is empty; pass one caption per image"):
        check_all([], [])
    with pytest.raises(ValueError, match=r"`images` has 2 items and `captions` 1"):
        check_all([image, image], ["a red circle"])
    with pytest.raises(ValueError, match=r"caption 'a red blob' is not in the shapes grammar"):
        check_all([image, image], ["a red circle", "a red blob"])
