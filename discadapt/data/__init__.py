"""Readers of public data formats, as torch `Dataset`s of plain dicts (images as PIL RGB), one reader per file.

- `coco.py`: `CocoCaptions`, COCO captions JSON with optional NegCLIP-style hard-negative captions and images.
- `refcoco.py`: `ReferringExpressions`, MDETR/RefCOCO COCO-format JSON or a plain list; boxes as normalised cxcywh.
- `folder.py`: `CaptionedFolder`, a folder of images with a captions file (.jsonl, .txt/.tsv, .csv).
- `prompts.py`: `load_prompts`, one-prompt-a-line files (T2I-CompBench, CC-500, ABC-6K).

Every reader checks that its image files exist when it is built and opens an image only when an item is read. (The
VAE latent cache, which needs a pipeline, is `discadapt.train.LatentCache`.)

Example:
    >>> from discadapt.data import CocoCaptions
    >>> data = CocoCaptions("captions_train2017.json", "train2017")
"""

from ._files import LazyImages
from .coco import CocoCaptions
from .folder import CAPTION_FILES, CaptionedFolder
from .prompts import load_prompts
from .refcoco import ReferringExpressions, normalize_box

__all__ = [
    "CAPTION_FILES",
    "CaptionedFolder",
    "CocoCaptions",
    "LazyImages",
    "ReferringExpressions",
    "load_prompts",
    "normalize_box",
]
