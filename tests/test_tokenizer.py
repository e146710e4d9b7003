import pytest

from discadapt import clip_tokenizer
from discadapt.tokenizer import clip_bpe_path


@pytest.mark.parametrize(
    "text, ids",
    [
        ("a photo of a cat", [49406, 320, 1125, 539, 320, 2368, 49407]),
        # lower-casing, punctuation and a plural, ids of openai/clip-vit-large-patch14's tokenizer
        ("A Photo of a CAT, hello world", [49406, 320, 1125, 539, 320, 2368, 267, 3306, 1002, 49407]),
        ("two dogs", [49406, 1237, 3255, 49407]),
    ],
)
def test_ids_equal_real_clip(text, ids):
    assert clip_tokenizer()(text).input_ids == ids


def test_vocabulary_and_length():
    tok = clip_tokenizer()
    assert len(tok) == 49408
    assert tok.model_max_length == 77
    assert tok.convert_ids_to_tokens([49406, 49407]) == ["<|startoftext|>", "<|endoftext|>"]
    padded = tok(["a", "a b c"], padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    assert padded.input_ids.shape == (2, 77)
    assert padded.input_ids[0, 2:].eq(49407).all()  # pads with end-of-text, as Stable Diffusion's tokenizer


def test_bpe_file_found_without_importing_open_clip():
    import sys

    assert clip_bpe_path().name == "bpe_simple_vocab_16e6.txt.gz"
    assert "open_clip" not in sys.modules


def test_missing_open_clip_is_explained(monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match="pip install --no-deps open_clip_torch"):
        clip_bpe_path()
