"""ShapeWorld as training items (`discadapt.worlds.shapes.adapter_data`): format, edited negative images, splits."""

import json

import numpy as np
import pytest
import torch

from discadapt.train.data import check_item
from discadapt.worlds.shapes import check, evaluate, held_out, make_dataset, parse
from discadapt.worlds.shapes.adapter_data import ShapeWorldItems, edited_scene
from discadapt.worlds.shapes.semantics import SAFETY_MARGIN


def test_items_are_the_examples_of_make_dataset_in_the_training_format():
    items = ShapeWorldItems(10, split="test_id", seed=4)
    examples = make_dataset(10, split="test_id", seed=4, image_size=32)
    for i, example in enumerate(examples):
        item = check_item(items[i], i)
        assert item["caption"] == example.caption.text and item["category"] == example.caption.category
        assert item["neg_captions"] == [n.caption.text for n in example.negatives]
        assert np.array_equal(np.asarray(item["image"]), np.asarray(items[i]["image"]))  # deterministic
        if example.referent is not None:
            assert item["phrase"] == example.caption.text
            assert torch.allclose(item["boxes"], torch.tensor([example.referent.cxcywh]))
        else:
            assert len(item["boxes"]) == 0
    assert items.categories == ("single", "two_objects", "counting", "spatial", "referring")
    assert items.fingerprint["split"] == "test_id"


def test_phrase_negatives_add_each_phrase_alone_to_two_object_and_spatial_captions():
    plain, phrases = ShapeWorldItems(10, seed=2), ShapeWorldItems(10, seed=2, phrase_negatives=True)
    for i in range(10):
        item, more = plain[i], phrases[i]
        example = plain.example(i)
        added = more["neg_captions"][len(item["neg_captions"]) :]
        assert more["neg_captions"][: len(item["neg_captions"])] == item["neg_captions"]
        if example.caption.category in ("two_objects", "spatial"):
            assert added == [f"a {p.color} {p.shape}" for p in example.caption.phrases]
            assert all(check(np.asarray(more["image"]), parse(text)).ok for text in added)  # true, one object short
        else:
            assert added == []
        assert len(more["neg_images"]) == len(item["neg_images"])  # no image side for them
    assert "phrase_negatives" not in plain.fingerprint and phrases.fingerprint["phrase_negatives"] is True


def test_tune_world_takes_phrase_negatives_and_records_them(tmp_path):
    from discadapt.cli import main as cli

    args = ["tune", "--world", "--steps", "1", "--batch-size", "2", "--shapes", "8", "--eval-shapes", "0"]
    args += ["--lora-rank", "2", "--contrast-weight", "1", "--shapes-phrase-negatives", "--no-progress"]
    assert cli([*args, "--out", str(tmp_path / "run")]) == 0
    record = json.loads((tmp_path / "run" / "train_config.json").read_text())
    assert record["run"]["dataset"]["fingerprint"]["phrase_negatives"] is True


@pytest.mark.parametrize("split", ["train", "test_ood"])
def test_edited_negative_images_show_the_negative_not_the_caption(split):
    items = ShapeWorldItems(40, split=split, seed=1)
    held = held_out()
    made = total = 0
    for i in range(len(items)):
        example = items.example(i)
        for k, negative in enumerate(example.negatives):
            scene = edited_scene(example, negative, held, rng=(1, i, k))
            total += 1
            if scene is None:
                continue
            made += 1
            assert evaluate(scene.objects, negative.caption, SAFETY_MARGIN).ok
            assert not evaluate(scene.objects, example.caption, -SAFETY_MARGIN).ok
            if split == "train":
                assert not any(o.kind in held.pairs for o in scene.objects)
        for image in items[i]["neg_images"]:  # the oracle, from pixels, agrees that the caption is false
            assert not check(np.asarray(image), example.caption).ok
    assert made > 0.6 * total


def test_bad_arguments_name_the_fix():
    with pytest.raises(ValueError, match="`num_examples` is 0; pass an int >= 1"):
        ShapeWorldItems(0)
    with pytest.raises(ValueError, match="`split` is 'val'"):
        ShapeWorldItems(3, split="val")
    with pytest.raises(ValueError, match="`categories` is empty"):
        ShapeWorldItems(3, categories=[])
