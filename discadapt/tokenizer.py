"""A real CLIP tokenizer built offline from the BPE vocabulary that open_clip_torch ships.

Stable Diffusion pipelines use OpenAI's CLIP tokenizer. Its vocabulary is normally downloaded from the
Hugging Face hub; here we build the identical `transformers.CLIPTokenizer` from the file
`bpe_simple_vocab_16e6.txt.gz` inside the installed `open_clip` package, located without importing
open_clip (whose import needs torchvision).

Example:
    >>> from discadapt import clip_tokenizer
    >>> clip_tokenizer()("a photo of a cat").input_ids
    [49406, 320, 1125, 539, 320, 2368, 49407]
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
from pathlib import Path

from transformers import CLIPTokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode

__all__ = ["clip_tokenizer", "clip_bpe_path"]

_BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
# CLIP keeps the first 49152 - 256 - 2 merges of the file (the rest are unused).
_NUM_MERGES = 49152 - 256 - 2


def clip_bpe_path() -> Path:
    """Path of CLIP's BPE merges file inside the installed open_clip_torch package.

    Raises:
        ImportError: open_clip_torch is not installed (its files are needed, not its code).
    """
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "clip_tokenizer() reads CLIP's vocabulary from the open_clip_torch package, which is not installed. "
            "Install its files without its dependencies: `pip install --no-deps open_clip_torch`."
        )
    path = Path(spec.submodule_search_locations[0]) / _BPE_FILE
    if not path.is_file():
        raise ImportError(f"open_clip_torch is installed but {path} is missing; reinstall open_clip_torch.")
    return path


@functools.lru_cache(maxsize=1)
def _vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    lines = gzip.open(clip_bpe_path(), "rt", encoding="utf-8").read().split("\n")
    merges = [tuple(line.split()) for line in lines[1 : _NUM_MERGES + 1]]
    # Vocabulary order of CLIP: 256 byte symbols, the same with the end-of-word mark, one entry per merge,
    # then the two special tokens.
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {token: i for i, token in enumerate(tokens)}, merges


def clip_tokenizer(model_max_length: int = 77) -> CLIPTokenizer:
    """Build OpenAI CLIP's tokenizer (49,408 tokens) offline.

    Args:
        model_max_length (`int`, defaults to 77): sequence length the pipeline pads and truncates to;
            Stable Diffusion text encoders have 77 positions.

    Returns:
        `transformers.CLIPTokenizer` giving the same ids as `openai/clip-vit-large-patch14`'s tokenizer.
    """
    vocab, merges = _vocab_and_merges()
    return CLIPTokenizer(vocab=dict(vocab), merges=list(merges), model_max_length=model_max_length)
