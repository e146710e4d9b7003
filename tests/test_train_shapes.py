"""ShapeWorld as training items (`discadapt.worlds.shapes.adapter_data`): format, edited negative images, splits."""

import numpy as np
import pytest
import torch

from discadapt.train.data import check_item
from discadapt.worlds.shapes import check, evaluate, held_out, make_dataset
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
