"""Scenes of the shapes world: `Obj` and `Scene` records, and seeded sampling of object layouts.

An object sits in a square pixel box `(x0, y0, x1, y1)` (end exclusive) whose side is given by its size
(`palette.side_pixels`); the renderer (`render.py`) fills the shape so that it touches all four edges of that
box, so the box is exact. Objects never overlap. By default boxes keep `GAP` (3) pixels apart; with
`touching=True` each object after the first is put flush against an earlier object of another color when it
fits there (boxes share an edge). Objects of the same color always keep `GAP` pixels apart: touching, they
would be one blob in the image.

A `Scene` round-trips through a JSON-ready dict (`to_dict` / `from_dict`), so datasets can be stored.

Example:
    >>> scene = random_scene(seed=0, image_size=64, num_objects=3)
    >>> Scene.from_dict(scene.to_dict()) == scene
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .palette import COLORS, SHAPES, SIZES, check_choice, check_image_size, side_pixels

__all__ = ["BACKGROUNDS", "GAP", "MAX_OBJECTS", "Obj", "Scene", "place_objects", "random_scene"]

GAP = 3  # pixels between the boxes of objects that may not touch
MAX_OBJECTS = 4
BACKGROUNDS = ("plain", "textured")


@dataclass(frozen=True)
class Obj:
    """One object of a scene (also what the oracle detects in an image).

    Args:
        color (str): a name of `palette.COLORS`.
        shape (str): one of `palette.SHAPES`.
        size (str): "small" or "large".
        box (tuple[int, int, int, int]): pixel box `(x0, y0, x1, y1)`, end exclusive, inside the image.
        image_size (int): side of the (square) image in pixels.
    """

    color: str
    shape: str
    size: str
    box: tuple[int, int, int, int]
    image_size: int

    def __post_init__(self):
        check_choice("color", self.color, COLORS)
        check_choice("shape", self.shape, SHAPES)
        check_choice("size", self.size, SIZES)
        check_image_size(self.image_size)
        box = tuple(int(v) for v in self.box)
        if len(box) != 4 or not (0 <= box[0] < box[2] <= self.image_size and 0 <= box[1] < box[3] <= self.image_size):
            raise ValueError(
                f"`box` is {self.box!r}; pass (x0, y0, x1, y1) with 0 <= x0 < x1 <= {self.image_size} and "
                f"0 <= y0 < y1 <= {self.image_size}."
            )
        object.__setattr__(self, "box", box)

    @property
    def kind(self) -> tuple[str, str]:
        """`(color, shape)`."""
        return self.color, self.shape

    @property
    def center(self) -> tuple[float, float]:
        """Box center `(cx, cy)` normalised to [0, 1]; y grows downwards."""
        x0, y0, x1, y1 = self.box
        return (x0 + x1) / 2 / self.image_size, (y0 + y1) / 2 / self.image_size

    @property
    def cxcywh(self) -> tuple[float, float, float, float]:
        """Box `(cx, cy, w, h)` normalised to [0, 1]."""
        x0, y0, x1, y1 = self.box
        return (*self.center, (x1 - x0) / self.image_size, (y1 - y0) / self.image_size)

    def to_dict(self) -> dict:
        """JSON-ready dict without `image_size` (the scene holds it)."""
        return {"color": self.color, "shape": self.shape, "size": self.size, "box": list(self.box)}


@dataclass(frozen=True)
class Scene:
    """Objects on a background.

    Args:
        image_size (int): side of the square image in pixels, >= 32.
        objects (tuple[Obj, ...]): 1 to 4 objects of this image size, each in a square box of its size's side
            (`palette.side_pixels`), boxes apart (see the module docstring).
        background (str): "plain" (uniform `palette.BACKGROUND`) or "textured" (the same grey with a smooth,
            seeded luminance texture of a few grey levels). Default "plain".
        texture_seed (int): seed of the texture. Default 0.
    """

    image_size: int
    objects: tuple[Obj, ...]
    background: str = "plain"
    texture_seed: int = 0

    def __post_init__(self):
        check_image_size(self.image_size)
        check_choice("background", self.background, BACKGROUNDS)
        object.__setattr__(self, "objects", tuple(self.objects))
        if not 1 <= len(self.objects) <= MAX_OBJECTS:
            raise ValueError(f"`objects` has {len(self.objects)} objects; a scene holds 1 to {MAX_OBJECTS}.")
        for obj in self.objects:
            if obj.image_size != self.image_size:
                raise ValueError(
                    f"`objects` holds an object placed in a {obj.image_size}-pixel image; this scene is "
                    f"{self.image_size} pixels: build every Obj with image_size={self.image_size}."
                )
            side = side_pixels(obj.size, self.image_size)
            x0, y0, x1, y1 = obj.box
            if x1 - x0 != side or y1 - y0 != side:
                raise ValueError(
                    f"`objects` holds a {obj.size} object with box {obj.box}; in a {self.image_size}-pixel image a "
                    f"{obj.size} object's box is a {side} x {side} square."
                )
        for i, a in enumerate(self.objects):
            for b in self.objects[:i]:
                if not _apart(a.box, b.box, _gap(a.color, b.color, touching=True)):
                    raise ValueError(
                        f"`objects` has boxes {b.box} ({b.color}) and {a.box} ({a.color}) closer than allowed: "
                        f"boxes may not overlap, and boxes of one color keep {GAP} pixels apart."
                    )

    def to_dict(self) -> dict:
        """JSON-ready dict; `Scene.from_dict` reads it back."""
        return {
            "image_size": self.image_size,
            "background": self.background,
            "texture_seed": self.texture_seed,
            "objects": [obj.to_dict() for obj in self.objects],
        }

    @classmethod
    def from_dict(cls, data: dict) -> Scene:
        """The scene written by `to_dict`."""
        size = data["image_size"]
        objects = tuple(Obj(o["color"], o["shape"], o["size"], tuple(o["box"]), size) for o in data["objects"])
        return cls(size, objects, data.get("background", "plain"), data.get("texture_seed", 0))


def _gap(color_a: str, color_b: str, touching: bool) -> int:
    return 0 if touching and color_a != color_b else GAP


def _apart(a: Sequence[int], b: Sequence[int], gap: int) -> bool:
    """Boxes at least `gap` pixels apart along x or along y (gap 0: they may share an edge, not overlap)."""
    return a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1]


def _flush_position(rng: np.random.Generator, other: Obj, side: int) -> tuple[int, int]:
    """Top-left corner of a `side`-pixel box sharing an edge with `other`'s box, at a random side and offset."""
    x0, y0, x1, y1 = other.box
    slide = int(rng.integers(-side + 1, (x1 - x0)))  # offset along the shared edge, some overlap guaranteed
    edge = int(rng.integers(4))
    if edge == 0:
        return x0 - side, y0 + slide  # left
    if edge == 1:
        return x1, y0 + slide  # right
    if edge == 2:
        return x0 + slide, y0 - side  # above
    return x0 + slide, y1  # below


def place_objects(
    rng: np.random.Generator,
    specs: Sequence[tuple[str, str, str]],
    image_size: int = 64,
    touching: bool = False,
    tries: int = 100,
) -> tuple[Obj, ...] | None:
    """Place objects at random free positions, in order; None when one of them finds no room in `tries` draws.

    Args:
        rng (np.random.Generator): source of positions.
        specs (Sequence[tuple[str, str, str]]): `(color, shape, size)` of each object, 1 to 4 of them.
        image_size (int): image side in pixels. Default 64.
        touching (bool): put each object flush against an earlier one of another color when it fits.
            Default False (boxes keep `GAP` pixels apart).
        tries (int): position draws per object. Default 100.

    Returns:
        tuple[Obj, ...] | None: the objects in the order of `specs`.
    """
    placed: list[Obj] = []
    for color, shape, size in specs:
        side = side_pixels(size, image_size)
        neighbours = [o for o in placed if o.color != color] if touching else []
        for _ in range(tries):
            if neighbours:
                x, y = _flush_position(rng, neighbours[int(rng.integers(len(neighbours)))], side)
            else:
                x, y = (int(v) for v in rng.integers(0, image_size - side + 1, size=2))
            box = (x, y, x + side, y + side)
            inside = 0 <= x and 0 <= y and x + side <= image_size and y + side <= image_size
            if inside and all(_apart(box, o.box, _gap(color, o.color, touching)) for o in placed):
                placed.append(Obj(color, shape, size, box, image_size))
                break
        else:
            return None
    return tuple(placed)


def random_scene(
    seed: int | np.random.Generator,
    image_size: int = 64,
    num_objects: int | None = None,
    touching: bool = False,
    background: str = "plain",
    kinds: Sequence[tuple[str, str]] | None = None,
) -> Scene:
    """A seeded random scene: same seed and arguments, same scene.

    Args:
        seed (int | np.random.Generator): seed of every random choice.
        image_size (int): image side in pixels, >= 32. Default 64.
        num_objects (int | None): 1 to 4; None draws it uniformly. Default None.
        touching (bool): see `place_objects`. Default False.
        background (str): "plain" or "textured". Default "plain".
        kinds (Sequence[tuple[str, str]] | None): the `(color, shape)` pairs to draw from; None means all.

    Returns:
        Scene: objects of uniformly drawn kind and size at free positions.
    """
    rng = np.random.default_rng(seed)
    check_image_size(image_size)
    check_choice("background", background, BACKGROUNDS)
    if num_objects is not None and (not isinstance(num_objects, int) or not 1 <= num_objects <= MAX_OBJECTS):
        raise ValueError(f"`num_objects` is {num_objects!r}; pass an int from 1 to {MAX_OBJECTS}, or None.")
    kinds = [(c, s) for c in COLORS for s in SHAPES] if kinds is None else list(kinds)
    if not kinds:
        raise ValueError("`kinds` is empty; pass at least one (color, shape) pair, or None for all of them.")
    n = int(rng.integers(1, MAX_OBJECTS + 1)) if num_objects is None else num_objects
    for _ in range(1000):  # four large objects fit at any image size; this many failures would be a bug
        picks = rng.integers(len(kinds), size=n)
        specs = [(*kinds[i], str(rng.choice(list(SIZES)))) for i in picks]
        objects = place_objects(rng, specs, image_size, touching)
        if objects is not None:
            return Scene(image_size, objects, background, int(rng.integers(2**31)))
    raise RuntimeError(f"no room for {n} objects in a {image_size}-pixel image after 1000 layouts")
