"""The shapes world: seeded scenes of colored circles, squares and triangles, captions from a small grammar
with hard negatives, held-out combinations for out-of-distribution tests, and an oracle that judges captions
from the image alone.

Modules, in dependency order: `palette` (colors, shapes, sizes), `scenes` (Obj, Scene, layouts), `render`
(numpy rasterizer), `captions` (grammar and parser), `semantics` (what a caption means in a scene),
`referring` (unambiguous referring expressions), `negatives` (hard negatives), `splits` (held-out
combinations), `dataset` (examples per category and split), `pixels` (pixel colors by a mixture model),
`oracle` (detection and checking). The trained models: `models`, `train`, `bundle` (`load_pipeline()`, the bundled
pipeline).

Example:
    >>> from discadapt.worlds.shapes import check, make_dataset, render
    >>> example = make_dataset(1, split="train", seed=0, categories=["spatial"])[0]
    >>> image = render(example.scene)
    >>> check(image, example.caption).ok, [check(image, n.caption).ok for n in example.negatives]
    (True, [False, False, False, False])
"""

from .bundle import load_pipeline
from .captions import CATEGORIES, Caption, Phrase, parse
from .dataset import Example, make_dataset, make_example
from .negatives import KINDS, Negative, hard_negatives, prompt_negatives
from .oracle import check, check_all, detect
from .palette import BACKGROUND, COLORS, SHAPES, SIZES
from .referring import referring_expressions
from .render import render, shape_mask
from .scenes import Obj, Scene, place_objects, random_scene
from .semantics import Verdict, evaluate
from .splits import SPLITS, HeldOut, held_out

__all__ = [
    "BACKGROUND",
    "CATEGORIES",
    "COLORS",
    "KINDS",
    "SHAPES",
    "SIZES",
    "SPLITS",
    "Caption",
    "Example",
    "HeldOut",
    "Negative",
    "Obj",
    "Phrase",
    "Scene",
    "Verdict",
    "check",
    "check_all",
    "detect",
    "evaluate",
    "hard_negatives",
    "prompt_negatives",
    "load_pipeline",
    "held_out",
    "make_dataset",
    "make_example",
    "parse",
    "place_objects",
    "random_scene",
    "referring_expressions",
    "render",
    "shape_mask",
]
