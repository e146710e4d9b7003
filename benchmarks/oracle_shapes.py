"""The measurement behind the oracle's shape cut-offs (`discadapt/worlds/shapes/oracle.py`, step 3).

Random scenes are drawn hard (`render`) and anti-aliased at random sub-pixel offsets and scales (`render_soft`), at
32 and 64 pixels, clean, blurred, noisy, touching or not. For every object the oracle finds where the scene has it
(same color, box within a pixel), the script records the two shape scores (row skew, squareness) and prints, per
true shape, their range and 1st / 99th percentiles, then the errors of the cut-offs, and of the earlier rule
(corner fill of the thresholded mask, kept here for comparison), per condition.

    python benchmarks/oracle_shapes.py            # about 2 minutes on 2 CPU cores
    python benchmarks/oracle_shapes.py --scenes 50 --json out.json
"""

from __future__ import annotations

import argparse
import collections
import json

import numpy as np
from scipy import ndimage

from discadapt.worlds.shapes import SHAPES, random_scene, render
from discadapt.worlds.shapes import oracle as O
from discadapt.worlds.shapes.render_soft import render_soft


def _blur(image, sigma):
    return np.clip(np.round(ndimage.gaussian_filter(image.astype(float), (sigma, sigma, 0))), 0, 255).astype(np.uint8)


def _noise(image, sigma, seed):
    return np.clip(np.round(image + np.random.default_rng(seed).normal(0, sigma, image.shape)), 0, 255).astype(np.uint8)


CONDITIONS = {
    "hard": lambda scene, i: render(scene),
    "hard blur 1 + noise 10": lambda scene, i: _noise(_blur(render(scene), 1.0), 10, i),
    "soft": lambda scene, i: render_soft(scene, seed=i),
    "soft blur 0.7 + noise 5": lambda scene, i: _noise(_blur(render_soft(scene, seed=i), 0.7), 5, i),
    "soft blur 1": lambda scene, i: _blur(render_soft(scene, seed=i), 1.0),
    "soft noise 20": lambda scene, i: _noise(render_soft(scene, seed=i), 20, i),
}


def corner_fill_shape(mask: np.ndarray) -> str:
    """The earlier rule: triangle when the mask's top-bottom symmetry (IoU with its flip) is below 0.73, else
    square when the three fullest c x c corners (c = a fifth of the side, at least 2) are more than half full."""
    if (mask & mask[::-1]).sum() / (mask | mask[::-1]).sum() < 0.73:
        return "triangle"
    c = max(2, round(min(mask.shape) / 5))
    corners = sorted(float(mask[r, k].mean()) for r in (np.s_[:c], np.s_[-c:]) for k in (np.s_[:c], np.s_[-c:]))
    return "square" if np.mean(corners[1:]) > 0.5 else "circle"


def readings(image):
    """(object, skew, squareness, earlier rule's shape) for each object the oracle finds."""
    return [(r.obj, *r.scores, corner_fill_shape(r.mask)) for r in O._read(image)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scenes", type=int, default=200, help="scenes per condition, size and layout")
    parser.add_argument("--json", default=None, help="write the per-condition errors here")
    args = parser.parse_args()

    scores = collections.defaultdict(list)  # true shape -> [(skew, squareness)]
    errors = {}
    for size in (32, 64):
        for name, draw in CONDITIONS.items():
            for touching in (False, True):
                key = f"{name}, {size} px{', touching' if touching else ''}"
                new = old = n = 0
                for i in range(args.scenes):
                    scene = random_scene(i, image_size=size, touching=touching)
                    found = readings(draw(scene, i))
                    for obj in scene.objects:
                        near = [
                            f
                            for f in found
                            if f[0].color == obj.color and max(abs(a - b) for a, b in zip(f[0].box, obj.box)) <= 1
                        ]
                        if len(near) != 1:
                            continue
                        seen, skew, squareness, earlier = near[0]
                        scores[obj.shape].append((skew, squareness))
                        n, new, old = n + 1, new + (seen.shape != obj.shape), old + (earlier != obj.shape)
                errors[key] = {"objects": n, "errors": new, "errors_corner_fill": old}
                print(f"{key:38s} objects {n:4d}  errors: cut-offs {new:3d}, corner fill {old:3d}", flush=True)
    print(f"\ncut-offs: triangle when skew < {O.MAX_SKEW}, else square when squareness > {O.MIN_SQUARENESS}")
    for shape in SHAPES:
        values = np.array(scores[shape])
        for j, what in enumerate(("skew", "squareness")):
            v = values[:, j]
            print(
                f"{shape:8s} {what:10s} min {v.min():+.3f}  1% {np.percentile(v, 1):+.3f}  "
                f"99% {np.percentile(v, 99):+.3f}  max {v.max():+.3f}  ({len(v)} objects)"
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(errors, f, indent=2)


if __name__ == "__main__":
    main()
