"""The vocabulary of the shapes world: colors with their RGB values, shapes and sizes.

Colors are chosen for the oracle (`oracle.py`), which reads a pixel as a mixture of the background and one
palette color: seen from the background, every pair of colors points in directions at least 30 degrees apart,
so a color stays recognisable when it is blurred into the background or darkened, and none is close to the
dark-grey background.

Sizes are fractions of the image side, so a scene keeps its layout at any resolution; sides are rounded to an
even number of pixels. At 32 pixels small objects are 8 pixels wide and large ones 12 (16 and 24 at 64). Six
pixels would be too small: a 6-pixel circle is a 6-pixel square less its four corner pixels, which is also what a
blur leaves of a square, and the oracle then accepted only 66-84% of the true captions of a category on clean
32-pixel images, against 100% with 8 pixels. Images smaller than 32 pixels are refused.

Example:
    >>> side_pixels("small", 64), side_pixels("large", 64), side_pixels("small", 32)
    (16, 24, 8)
"""

from __future__ import annotations

__all__ = [
    "BACKGROUND",
    "COLORS",
    "MIN_IMAGE_SIZE",
    "SHAPES",
    "SIZES",
    "check_choice",
    "check_image_size",
    "side_pixels",
    "size_of_side",
]

BACKGROUND: tuple[int, int, int] = (40, 40, 40)

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (225, 45, 45),
    "green": (45, 195, 65),
    "blue": (40, 70, 235),
    "yellow": (240, 220, 50),
    "purple": (180, 60, 220),
    "cyan": (40, 215, 215),
    "white": (240, 240, 240),
}

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")

# side of an object's (square) box as a fraction of the image side
SIZES: dict[str, float] = {"small": 0.25, "large": 0.375}

MIN_IMAGE_SIZE = 32


def check_choice(argument: str, value, choices) -> str:
    """Return `value` if it is one of `choices`, else raise a ValueError naming `argument` and the choices."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"`{argument}` is {value!r}; pick one of {', '.join(choices)}.")
    return value


def check_image_size(image_size) -> int:
    """Return `image_size` if it is an int >= `MIN_IMAGE_SIZE` (32), else raise a ValueError."""
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < MIN_IMAGE_SIZE:
        raise ValueError(
            f"`image_size` is {image_size!r}; pass an int >= {MIN_IMAGE_SIZE} (below that, small shapes are too few "
            "pixels to tell apart)."
        )
    return image_size


def side_pixels(size: str, image_size: int) -> int:
    """Side in pixels of the box of an object of `size` ("small" or "large") in an image `image_size` pixels wide:
    `SIZES[size] * image_size` rounded to an even number, so that every shape has a two-pixel tip or edge."""
    check_choice("size", size, SIZES)
    return 2 * round(SIZES[size] * check_image_size(image_size) / 2)


def size_of_side(side: int, image_size: int) -> str:
    """The size name whose side is nearest to `side` pixels: "large" from the midpoint of the two sides up."""
    threshold = (side_pixels("small", image_size) + side_pixels("large", image_size)) / 2
    return "large" if side >= threshold else "small"
