"""The oracle on soft edges: anti-aliased renders at random sub-pixel positions, as a VAE decoder draws them, and
the marginal-verdict flag."""

import collections

import numpy as np
import pytest
from scipy import ndimage

from discadapt.worlds.shapes import CATEGORIES, COLORS, Obj, Scene, check, detect, evaluate, make_dataset
from discadapt.worlds.shapes.oracle import MAX_SKEW, MIN_SQUARENESS, SHAPE_BAND, _shape, shape_scores
from discadapt.worlds.shapes.palette import BACKGROUND
from discadapt.worlds.shapes.pixels import color_coverage
from discadapt.worlds.shapes.render_soft import coverage, render_soft


def _disk(size, cx, cy, d, color=(240, 240, 240), ss=16):
    """The issue's reproduction: a disk of diameter `d` centred at (cx, cy), anti-aliased by supersampling."""
    y, x = (np.mgrid[0 : size * ss, 0 : size * ss] + 0.5) / ss
    cov = (((x - cx) ** 2 + (y - cy) ** 2) <= (d / 2) ** 2).reshape(size, ss, size, ss).mean((1, 3))[..., None]
    return np.round(np.asarray(BACKGROUND) * (1 - cov) + np.asarray(color) * cov).astype(np.uint8)


def test_small_antialiased_circle_reads_as_a_circle():
    image = _disk(32, 12.125, 14.5, 8.0)
    assert check(image, "a white circle").ok
    assert not check(image, "a white square").ok
    rng = np.random.default_rng(0)
    for cx, cy in rng.uniform(8, 24, size=(200, 2)):  # the issue measured 19 of 200 misread
        found = detect(_disk(32, cx, cy, 8.0, COLORS["red"]))
        assert [(o.color, o.shape, o.size) for o in found] == [("red", "circle", "small")], (cx, cy)


def test_renderer_coverage_is_exact_and_read_back_by_the_pixel_model():
    # a square on pixel edges covers whole pixels; a half-pixel shift halves the edge columns
    assert np.array_equal(coverage("square", 4, 4, 8, 32)[4:12, 4:12], np.ones((8, 8)))
    shifted = coverage("square", 4.5, 4, 8, 32)
    assert np.allclose(shifted[4:12, 4], 0.5) and np.allclose(shifted[4:12, 12], 0.5)
    assert coverage("circle", 4, 4, 8, 32).sum() == pytest.approx(np.pi * 16, rel=0.01)
    assert coverage("triangle", 4, 4, 8, 32).sum() == pytest.approx(32, rel=0.01)
    scene = Scene(32, (Obj("blue", "circle", "small", (10, 10, 18, 18), 32),))
    image = render_soft(scene, seed=3)
    labels, weights = color_coverage(image)
    k = list(COLORS).index("blue")
    truth = (image.astype(float) - BACKGROUND)[..., 2] / (COLORS["blue"][2] - BACKGROUND[2])  # blue channel
    assert np.abs(weights[..., k] - np.clip(truth, 0, 1)).max() < 0.02
    assert np.all(weights[labels >= 0].sum(-1) <= 1 + 1e-9)  # a pixel of one color covers no other
    assert render_soft(scene, seed=3).tobytes() == image.tobytes()  # seeded


def test_shape_scores_of_ideal_shapes():
    for side in (8, 12, 16, 24):
        skew, sq = shape_scores(coverage("square", 2.3, 2.6, side, side + 6))
        assert abs(skew) < 0.02 and sq == pytest.approx(1.0, abs=0.02)
        skew, sq = shape_scores(coverage("circle", 2.3, 2.6, side, side + 6))
        assert abs(skew) < 0.02 and sq == pytest.approx(2 / 3, abs=0.03)
        skew, sq = shape_scores(coverage("triangle", 2.3, 2.6, side, side + 6))
        assert skew == pytest.approx(-2 * np.sqrt(2) / 5, abs=0.04)  # an apex-up triangle's rows; pixels blur it
        assert sq == pytest.approx(0.8, abs=0.02)
    blurred = ndimage.gaussian_filter(coverage("square", 3, 3, 8, 14), 1.0)  # separable blur keeps squares at 1
    assert shape_scores(blurred)[1] == pytest.approx(1.0, abs=0.01)


def _blur(image, sigma):
    return np.clip(np.round(ndimage.gaussian_filter(image.astype(float), (sigma, sigma, 0))), 0, 255).astype(np.uint8)


def _noise(image, sigma, seed):
    return np.clip(np.round(image + np.random.default_rng(seed).normal(0, sigma, image.shape)), 0, 255).astype(np.uint8)


SOFT_CONDITIONS = {
    # name: (number of examples, dataset arguments, blur sigma, noise sigma)
    "soft-32": (1600, dict(image_size=32), 0, 0),
    "soft-32-ood": (1600, dict(image_size=32, split="test_ood"), 0, 0),
    "soft-32-touching": (1600, dict(image_size=32, touching=True), 0, 0),
    "soft-32-blur0.6-noise5": (1600, dict(image_size=32, background="textured"), 0.6, 5),
    "soft-64": (500, dict(image_size=64), 0, 0),
}


@pytest.mark.parametrize("condition", SOFT_CONDITIONS)
def test_oracle_agrees_with_the_truth_on_antialiased_renders(condition):
    """Every true caption accepted and every hard negative rejected, per category, on scenes drawn with soft edges
    at random sub-pixel offsets and scales (at 32 pixels, at least 300 scenes per category)."""
    num_examples, dataset_args, blur, noise = SOFT_CONDITIONS[condition]
    accepted, rejected = collections.defaultdict(list), collections.defaultdict(list)
    for i, example in enumerate(make_dataset(num_examples, seed=17, **dataset_args)):
        image = render_soft(example.scene, seed=i)
        image = _blur(image, blur) if blur else image
        image = _noise(image, noise, i) if noise else image
        category = example.caption.category
        accepted[category].append(check(image, example.caption).ok)
        rejected[category] += [not check(image, n.caption).ok for n in example.negatives]
    report = {c: (np.mean(accepted[c]), len(accepted[c]), np.mean(rejected[c])) for c in CATEGORIES}
    if dataset_args["image_size"] == 32:
        assert all(n >= 300 for _, n, _ in report.values()), report
    if condition in ("soft-32", "soft-64"):  # measured: 1.000 everywhere, also with blur, noise and touching
        assert all(p == 1 and q == 1 for p, _, q in report.values()), report
    assert all(p >= 0.995 and q >= 0.995 for p, _, q in report.values()), report


def test_marginal_shapes_sizes_and_positions():
    # a shape score inside the band around its cut-off offers the other shape
    assert _shape(*shape_scores(coverage("circle", 2, 2, 12, 16))) == ("circle", None)
    assert _shape(*shape_scores(coverage("square", 2, 2, 12, 16))) == ("square", None)
    y, x = np.indices((16, 16)) + 0.5
    for p in np.linspace(2, 8, 61):  # superellipses run from disk (p = 2) to square (p -> inf)
        cov = ((np.abs(x - 8) / 6) ** p + (np.abs(y - 8) / 6) ** p <= 1).astype(float)
        squareness = shape_scores(cov)[1]
        shape, other = _shape(*shape_scores(cov))
        assert shape == ("square" if squareness > MIN_SQUARENESS else "circle")
        assert (other is not None) == (abs(squareness - MIN_SQUARENESS) < SHAPE_BAND)
    assert MAX_SKEW < 0

    # a side next to the size threshold (10 px at 32): the verdict on size is marginal
    image = np.full((32, 32, 3), BACKGROUND, np.uint8)
    image[4:14, 4:14] = COLORS["red"]  # a 10-pixel square
    verdict = check(image, "the large red square")
    assert verdict.ok and verdict.marginal
    assert not check(image, "a red square").marginal  # the size does not matter to this caption
    image[22:30, 8:16] = COLORS["blue"]  # 8 pixels: clearly small

    # relations: clear (centres 3 px apart across, 17 along), then within a pixel of the diagonal
    verdict = check(image, "a red square above a blue square")
    assert verdict.ok and not verdict.marginal
    image = np.full((32, 32, 3), BACKGROUND, np.uint8)
    image[2:10, 2:10] = COLORS["red"]
    image[13:21, 14:22] = COLORS["blue"]  # dx = 12, dy = 11: "left of" by one pixel
    verdict = check(image, "a red square to the left of a blue square")
    assert verdict.ok and verdict.marginal


def test_scene_verdicts_are_never_marginal():
    for example in make_dataset(50, seed=0):
        assert not evaluate(example.scene.objects, example.caption).marginal
