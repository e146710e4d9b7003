"""Synthetic worlds: small domains where every image comes with exact ground truth and a referee.

`discadapt.worlds.shapes` is the default one. A world is a user of the library, not part of its core: nothing
in `discadapt` outside this package imports it.
"""

__all__ = ["shapes"]
