import json
import os
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from discadapt import encode_images
from discadapt.data import (
    CaptionedFolder,
    CocoCaptions,
    LazyImages,
    ReferringExpressions,
    load_prompts,
    normalize_box,
)
from discadapt.testing import tiny_sd_pipeline
from discadapt.train import LatentCache

PROMPTS_DIR = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "prompts"


def _png(path: Path, value: int, size=(8, 6), mode="RGB") -> Path:
    """A solid image whose first channel is `value`, so items can be told apart by pixel."""
    path.parent.mkdir(parents=True, exist_ok=True)
    color = value if mode == "L" else (value, 0, 255 - value)
    PIL.Image.new(mode, size, color).save(path)
    return path


def _json(path: Path, data) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


# ---------------------------------------------------------------- COCO captions with negatives


@pytest.fixture
def coco(tmp_path):
    for k, name in enumerate(["a.png", "b.png", "c.png"]):
        _png(tmp_path / "img" / name, 10 * (k + 1), mode="L" if k == 1 else "RGB")
    data = {
        "images": [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "b.png"}, {"id": 3, "file_name": "c.png"}],
        "annotations": [
            {"id": 11, "image_id": 1, "caption": "a red cube"},
            {"id": 12, "image_id": 2, "caption": "a blue ball"},
            {"id": 13, "image_id": 1, "caption": "a cube that is red"},
        ],
    }
    negatives = {"11": {"neg_captions": ["a blue cube", "a red ball"], "neg_image_ids": [3, 2]}}
    return tmp_path, _json(tmp_path / "captions.json", data), _json(tmp_path / "neg.json", negatives), data


def test_coco_items_and_negatives(coco):
    root, captions, negatives, _ = coco
    data = CocoCaptions(captions, root / "img", negatives=negatives)
    assert len(data) == 3
    item = data[0]
    assert item["caption"] == "a red cube" and item["image_id"] == 1 and item["annotation_id"] == 11
    assert item["image"].mode == "RGB" and item["image"].getpixel((0, 0)) == (10, 0, 245)
    assert item["neg_captions"] == ["a blue cube", "a red ball"]
    assert isinstance(item["neg_images"], LazyImages) and len(item["neg_images"]) == 2
    assert [im.getpixel((0, 0)) for im in item["neg_images"]] == [(30, 0, 225), (20, 20, 20)]  # b.png is L -> RGB
    assert data[1]["caption"] == "a blue ball" and data[1]["image"].mode == "RGB"
    assert data[2]["neg_captions"] == [] and len(data[2]["neg_images"]) == 0
    assert CocoCaptions(captions, root / "img")[0]["neg_captions"] == []


def test_coco_keys_by_position_without_ids(coco):
    root, _, _, data = coco
    for ann in data["annotations"]:
        del ann["id"]
    path = _json(root / "noid.json", data)
    items = CocoCaptions(path, root / "img", negatives={"2": {"neg_captions": ["a green cube"]}})
    assert items[2]["annotation_id"] == 2 and items[2]["neg_captions"] == ["a green cube"]
    assert items[0]["neg_captions"] == []


def test_coco_errors(coco, tmp_path):
    root, captions, _, data = coco
    with pytest.raises(ValueError, match=r"`annotations` is '.*nope.json', which is not an existing file"):
        CocoCaptions(root / "nope.json", root / "img")
    (root / "bad.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match="is not valid UTF-8 JSON"):
        CocoCaptions(root / "bad.json", root / "img")
    with pytest.raises(ValueError, match="has no `images` list"):
        CocoCaptions(_json(root / "x.json", [1]), root / "img")
    with pytest.raises(ValueError, match=r"images\[0\] is .*needs an `id` and a `file_name`"):
        CocoCaptions(_json(root / "x.json", {"images": [{"id": 1}], "annotations": []}), root / "img")
    with pytest.raises(ValueError, match="has no captions"):
        CocoCaptions(_json(root / "x.json", {"images": data["images"], "annotations": []}), root / "img")
    bad = {"images": data["images"], "annotations": [{"image_id": 1}]}
    with pytest.raises(ValueError, match=r"annotations\[0\] is .*needs an `image_id` and a `caption`"):
        CocoCaptions(_json(root / "x.json", bad), root / "img")
    bad["annotations"] = [{"image_id": 7, "caption": "x"}]
    with pytest.raises(ValueError, match="has image_id 7, which is not the id of any entry of `images`"):
        CocoCaptions(_json(root / "x.json", bad), root / "img")
    bad["annotations"] = [{"id": 5, "image_id": 1, "caption": "x"}, {"id": 5, "image_id": 2, "caption": "y"}]
    with pytest.raises(ValueError, match="two annotations with id 5"):
        CocoCaptions(_json(root / "x.json", bad), root / "img")
    with pytest.raises(ValueError, match="`negatives` holds a list"):
        CocoCaptions(captions, root / "img", negatives=_json(root / "n.json", [1]))
    with pytest.raises(ValueError, match="has key '99', which is not an annotation id"):
        CocoCaptions(captions, root / "img", negatives={"99": {}})
    with pytest.raises(ValueError, match=r"`negatives`\['11'\] is 3; pass an object"):
        CocoCaptions(captions, root / "img", negatives={"11": 3})
    with pytest.raises(ValueError, match=r"\['neg_captions'\] is 'x'; pass a list of strings"):
        CocoCaptions(captions, root / "img", negatives={"11": {"neg_captions": "x"}})
    with pytest.raises(ValueError, match=r"\['neg_image_ids'\] is 3; pass a list of image ids"):
        CocoCaptions(captions, root / "img", negatives={"11": {"neg_image_ids": 3}})
    with pytest.raises(ValueError, match=r"\['neg_image_ids'\] is \[3, 8\]; \[8\] are not ids"):
        CocoCaptions(captions, root / "img", negatives={"11": {"neg_image_ids": [3, 8]}})


def test_missing_images_are_reported_up_front(coco):
    root, captions, negatives, data = coco
    os.remove(root / "img" / "c.png")  # used only as a negative
    CocoCaptions(captions, root / "img")  # not needed without negatives
    with pytest.raises(ValueError, match=r"1 image file\(s\) listed in `annotations` do not exist .*c\.png'; check"):
        CocoCaptions(captions, root / "img", negatives=negatives)
    data["images"] += [{"id": 10 + k, "file_name": f"m{k}.png"} for k in range(5)]
    data["annotations"] += [{"image_id": 10 + k, "caption": "x"} for k in range(5)]
    with pytest.raises(ValueError, match=r"5 image file\(s\) .*m0\.png', '.*m1\.png', '.*m2\.png', \.\.\.; check"):
        CocoCaptions(_json(root / "more.json", data), root / "img")


# ---------------------------------------------------------------- referring expressions


def test_normalize_box_by_hand():
    assert normalize_box([4, 2, 8, 6], 40, 20, "a") == [0.2, 0.25, 0.2, 0.3]  # cx = (4 + 4) / 40, cy = (2 + 3) / 20
    # within the 1-pixel tolerance: clipped to [0, 9.5] x [0, 20]
    assert normalize_box([-0.5, 0, 10, 20.5], 40, 20, "a") == [4.75 / 40, 0.5, 9.5 / 40, 1.0]
    assert normalize_box([39, 19, 2, 2], 40, 20, "a") == [39.5 / 40, 19.5 / 20, 1 / 40, 1 / 20]
    with pytest.raises(ValueError, match=r"ann 3 has zero-size bbox \[1, 1, 0, 5\]"):
        normalize_box([1, 1, 0, 5], 40, 20, "ann 3")
    with pytest.raises(ValueError, match=r"ann 3 has bbox \[30, 0, 12, 5\] .*beyond its 40x20 .*more than 1 pixel"):
        normalize_box([30, 0, 12, 5], 40, 20, "ann 3")
    with pytest.raises(ValueError, match=r"ann 3 has bbox \[-1.5, 0, 5, 5\] .*beyond its 40x20"):
        normalize_box([-1.5, 0, 5, 5], 40, 20, "ann 3")
    with pytest.raises(ValueError, match=r"ann 3 has bbox \[-1, 0, 0.5, 5\], which has zero size once clipped"):
        normalize_box([-1, 0, 0.5, 5], 40, 20, "ann 3")
    with pytest.raises(ValueError, match=r"ann 3 has bbox \[1, 2\]; pass \[x, y, w, h\]"):
        normalize_box([1, 2], 40, 20, "ann 3")


@pytest.fixture
def mdetr(tmp_path):
    _png(tmp_path / "img" / "p.png", 50, size=(40, 20))
    caption = "the red cube left of the ball"
    data = {
        "images": [
            {"id": 0, "file_name": "p.png", "height": 20, "width": 40, "caption": caption},
            {"id": 1, "file_name": "p.png", "height": 20, "width": 40, "caption": "unused"},
            {"id": 2, "file_name": "p.png", "height": 20, "width": 40, "caption": "the ball"},
        ],
        "annotations": [
            {"id": 7, "image_id": 0, "bbox": [4, 2, 8, 6], "category_id": 1, "tokens_positive": [[0, 12]]},
            {"id": 8, "image_id": 2, "bbox": [20, 0, 20, 20], "category_id": 2},
            {"id": 9, "image_id": 0, "bbox": [-0.5, 0, 10, 20.5], "category_id": 1, "tokens_positive": [[0, 12]]},
        ],
    }
    return tmp_path, data


def test_mdetr_items(mdetr):
    root, data = mdetr
    items = ReferringExpressions(_json(root / "refs.json", data), root / "img")
    assert len(items) == 2  # image 1 has no annotation
    item = items[0]
    assert item["phrase"] == "the red cube left of the ball" and item["image"].size == (40, 20)
    assert item["image"].getpixel((0, 0)) == (50, 0, 205)
    expected = torch.tensor([[0.2, 0.25, 0.2, 0.3], [4.75 / 40, 0.5, 9.5 / 40, 1.0]])
    assert item["boxes"].dtype == torch.float32 and torch.equal(item["boxes"], expected)
    assert item["phrase_spans"] == [(0, 12)] and item["box_spans"] == [[(0, 12)], [(0, 12)]]
    assert item["phrase"][0:12] == "the red cube"
    assert torch.equal(items[1]["boxes"], torch.tensor([[0.75, 0.5, 0.5, 1.0]]))
    assert items[1]["phrase_spans"] == [(0, 8)]  # no tokens_positive: the whole caption


def test_mdetr_errors(mdetr):
    root, data = mdetr
    data["annotations"][2]["bbox"] = [30, 0, 12, 5]
    with pytest.raises(ValueError, match=r"annotations\[2\] \(id 9, image 'p.png'\) has bbox .*beyond its 40x20"):
        ReferringExpressions(_json(root / "r.json", data), root / "img")
    data["annotations"][2]["bbox"] = [1, 1, 5, 0]
    with pytest.raises(ValueError, match=r"annotations\[2\] \(id 9, image 'p.png'\) has zero-size bbox"):
        ReferringExpressions(_json(root / "r.json", data), root / "img")
    data["annotations"][2]["bbox"] = [1, 1, 5, 5]
    data["annotations"][2]["tokens_positive"] = [[5, 99]]
    with pytest.raises(ValueError, match=r"has tokens_positive \[\[5, 99\]\]; .*0 <= start < end <= 29"):
        ReferringExpressions(_json(root / "r.json", data), root / "img")
    del data["images"][0]["caption"]
    with pytest.raises(ValueError, match=r"images\[0\] is .*needs `file_name`, `width`, `height` and .*`caption`"):
        ReferringExpressions(_json(root / "r.json", data), root / "img")
    with pytest.raises(ValueError, match=r"annotations\[0\] is 3; each needs an `image_id`"):
        ReferringExpressions(_json(root / "r.json", {"images": [], "annotations": [3]}), root / "img")
    with pytest.raises(ValueError, match="has no expressions with boxes; the dataset is empty"):
        ReferringExpressions(_json(root / "r.json", {"images": [], "annotations": []}), root / "img")
    with pytest.raises(ValueError, match="is neither COCO format"):
        ReferringExpressions(_json(root / "r.json", {"a": 1}), root / "img")
    with pytest.raises(ValueError, match=r"1 image file\(s\) listed in `annotations` do not exist"):
        ReferringExpressions(_json(root / "r.json", [{"image": "q.png", "phrase": "x", "bbox": [0, 0, 1, 1]}]), root)


def test_plain_list_items_and_errors(mdetr):
    root, _ = mdetr
    refs = [
        {"image": "p.png", "phrase": "the cube", "bbox": [4, 2, 8, 6]},
        {"image": "p.png", "sentence": "both", "bbox": [[4, 2, 8, 6], [20, 0, 20, 20]], "width": 40, "height": 20},
        {"image": "p.png", "phrase": "too wide", "bbox": [30, 0, 12, 5]},  # no size: checked when read
    ]
    items = ReferringExpressions(_json(root / "l.json", refs), root / "img")
    assert items[0]["phrase"] == "the cube" and items[0]["phrase_spans"] == [(0, 8)]
    assert torch.equal(items[0]["boxes"], torch.tensor([[0.2, 0.25, 0.2, 0.3]]))
    assert items[1]["phrase"] == "both" and items[1]["box_spans"] == [[(0, 4)], [(0, 4)]]
    assert torch.equal(items[1]["boxes"], torch.tensor([[0.2, 0.25, 0.2, 0.3], [0.75, 0.5, 0.5, 1.0]]))
    with pytest.raises(ValueError, match=r"`annotations`\[2\] \(image 'p.png'\) has bbox .*beyond its 40x20"):
        items[2]
    refs[2] = {"image": "p.png", "phrase": "x", "bbox": [30, 0, 12, 5], "width": 40, "height": 20}
    with pytest.raises(ValueError, match=r"`annotations`\[2\] \(image 'p.png'\) has bbox .*beyond its 40x20"):
        ReferringExpressions(_json(root / "l.json", refs), root / "img")
    refs[2] = {"image": "p.png", "phrase": "x", "bbox": [3, 0, 12, 5], "width": 40}
    with pytest.raises(ValueError, match=r"has width, height \(40, None\); give both as positive pixels, or neither"):
        ReferringExpressions(_json(root / "l.json", refs), root / "img")
    refs[2] = {"image": "p.png", "bbox": [3, 0, 12, 5]}
    with pytest.raises(ValueError, match=r"`annotations`\[2\] is .*needs `image`, `phrase` \(or `sentence`\)"):
        ReferringExpressions(_json(root / "l.json", refs), root / "img")


# ---------------------------------------------------------------- captioned folder


def test_folder_formats(tmp_path):
    for k, name in enumerate(["a.png", "sub/b.png"]):
        _png(tmp_path / name, 60 + k)
    (tmp_path / "captions.jsonl").write_text(
        '{"file_name": "a.png", "caption": "a red cube"}\n\n{"file_name": "sub/b.png", "caption": "ball, blue"}\n',
        encoding="utf-8",
    )
    data = CaptionedFolder(tmp_path)
    assert [data[i]["caption"] for i in range(2)] == ["a red cube", "ball, blue"]
    assert data[1]["file_name"] == "sub/b.png" and data[1]["image"].getpixel((0, 0)) == (61, 0, 194)
    tsv = tmp_path / "other" / "captions.txt"
    tsv.parent.mkdir()
    tsv.write_text("a.png\ta red cube  \nsub/b.png\ttab\tinside\n\n", encoding="utf-8")
    assert [r["caption"] for r in CaptionedFolder(tmp_path, captions=tsv)] == ["a red cube", "tab\tinside"]
    csv_path = tmp_path / "other" / "metadata.csv"
    csv_path.write_text('file_name,text\na.png,"cube, red"\nsub/b.png,ball\n', encoding="utf-8")
    data = CaptionedFolder(tmp_path, captions=csv_path, caption_column="text")
    assert [(r["file_name"], r["caption"]) for r in data] == [("a.png", "cube, red"), ("sub/b.png", "ball")]


def test_folder_errors(tmp_path):
    _png(tmp_path / "a.png", 1)
    with pytest.raises(ValueError, match="`root` is '.*nowhere', which is not a folder"):
        CaptionedFolder(tmp_path / "nowhere")
    with pytest.raises(ValueError, match=r"holds none of the captions files \['captions.jsonl'"):
        CaptionedFolder(tmp_path)
    (tmp_path / "captions.jsonl").write_text('{"file_name": "a.png", "text": "x"}\n', encoding="utf-8")
    (tmp_path / "captions.txt").write_text("a.png\tx\n", encoding="utf-8")
    with pytest.raises(ValueError, match="holds captions.jsonl, captions.txt of the captions files"):
        CaptionedFolder(tmp_path)
    with pytest.raises(ValueError, match=r'line 1 is .*JSON object with string "file_name" and "caption"'):
        CaptionedFolder(tmp_path, captions=tmp_path / "captions.jsonl")
    (tmp_path / "bad.txt").write_text("\n\na.png x\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"line 3 is 'a.png x'; write `file_name<TAB>caption`"):
        CaptionedFolder(tmp_path, captions=tmp_path / "bad.txt")
    (tmp_path / "bad.csv").write_text("name,caption\na.png,x\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"has header \['name', 'caption'\]; it needs the columns 'file_name'"):
        CaptionedFolder(tmp_path, captions=tmp_path / "bad.csv")
    (tmp_path / "c.json").write_text("{}", encoding="utf-8")
    with pytest.raises(ValueError, match=r"its suffix must be .jsonl, .txt, .tsv or .csv"):
        CaptionedFolder(tmp_path, captions=tmp_path / "c.json")
    (tmp_path / "empty.txt").write_text("\n", encoding="utf-8")
    with pytest.raises(ValueError, match="lists no images; the dataset is empty"):
        CaptionedFolder(tmp_path, captions=tmp_path / "empty.txt")
    (tmp_path / "gone.txt").write_text("a.png\tx\nb.png\ty\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"1 image file\(s\) listed in `captions` do not exist .*b\.png'"):
        CaptionedFolder(tmp_path, captions=tmp_path / "gone.txt")


# ---------------------------------------------------------------- prompts


def test_load_prompts(tmp_path):
    path = tmp_path / "p.txt"
    path.write_bytes("\ufeffa red cube  \n\n  \n a café\t\r\nlast".encode())
    assert load_prompts(path) == ["a red cube", " a café", "last"]
    with pytest.raises(ValueError, match="`path` is '.*missing.txt', which is not an existing file"):
        load_prompts(tmp_path / "missing.txt")
    (tmp_path / "blank.txt").write_text("\n  \n", encoding="utf-8")
    with pytest.raises(ValueError, match="has no prompts"):
        load_prompts(tmp_path / "blank.txt")
    (tmp_path / "latin.txt").write_bytes("café".encode("latin-1"))
    with pytest.raises(ValueError, match="is not UTF-8 text"):
        load_prompts(tmp_path / "latin.txt")


@pytest.mark.parametrize("name", ["t2i-compbench/color_val.txt", "structure-diffusion/CC-500.txt"])
def test_load_real_prompt_files(name):
    path = PROMPTS_DIR / name
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    lines = path.read_text(encoding="utf-8").splitlines()
    prompts = load_prompts(path)
    assert len(prompts) == sum(1 for line in lines if line.strip())
    assert prompts[0] == lines[0].rstrip() and all(p == p.rstrip() and p for p in prompts)


# ---------------------------------------------------------------- latent cache


def _images(n: int) -> list[PIL.Image.Image]:
    rng = np.random.default_rng(0)
    return [PIL.Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(n)]


class _Counting(torch.utils.data.Dataset):
    """Dict items with an "image", counting reads."""

    def __init__(self, images):
        self.images, self.reads = images, 0

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        self.reads += 1
        return {"image": self.images[i], "caption": "x"}


def test_latent_cache_matches_encode_images_and_resumes(sd_pipe, tmp_path):
    images = _images(7)
    data = _Counting(images)
    cache = LatentCache.build(sd_pipe, data, tmp_path / "c", batch_size=2, shard_size=3)
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == [
        "index.json",
        "latents-00000.safetensors",
        "latents-00001.safetensors",
        "latents-00002.safetensors",
    ]
    assert len(cache) == 7 and data.reads == 7
    with torch.no_grad():
        batches = [(0, 2), (2, 3), (3, 5), (5, 6), (6, 7)]  # batches of 2 within shards of 3
        expected = torch.cat([encode_images(sd_pipe, images[a:b]) for a, b in batches])
    assert expected.shape == (7, 4, 16, 16)
    assert all(torch.equal(cache[i], expected[i]) for i in range(7)) and torch.equal(cache[-1], expected[6])
    torch.testing.assert_close(torch.stack([cache[i] for i in range(7)]), encode_images(sd_pipe, images))  # one batch
    assert cache.index["items"][4] == [1, 1] and cache.vae["scaling_factor"] == sd_pipe.vae.config.scaling_factor

    os.remove(tmp_path / "c" / "latents-00002.safetensors")
    with pytest.raises(ValueError, match=r"1 shard\(s\) of the cache .* are missing: \['latents-00002.safetensors'\]"):
        LatentCache(tmp_path / "c")
    data.reads = 0
    again = LatentCache.build(sd_pipe, data, tmp_path / "c", batch_size=2, shard_size=3)
    assert data.reads == 1  # only the deleted shard's one item was encoded again
    assert all(torch.equal(again[i], expected[i]) for i in range(7))
    assert len(LatentCache.build(sd_pipe, images, tmp_path / "c", batch_size=3, shard_size=3)) == 7  # plain images
    with pytest.raises(IndexError, match="index 7 is out of range for a latent cache of 7 items"):
        cache[7]


def test_latent_cache_refuses_another_vae(sd_pipe, tmp_path):
    images = _images(2)
    LatentCache.build(sd_pipe, images, tmp_path / "c", batch_size=2, shard_size=1)
    other = tiny_sd_pipeline(seed=1)  # same VAE config, other weights
    assert LatentCache(tmp_path / "c", pipe=sd_pipe)[1].shape == (4, 16, 16)
    with pytest.raises(ValueError, match=r"the cache in '.*c' was built with another VAE .*use another `out_dir`"):
        LatentCache(tmp_path / "c", pipe=other)
    with pytest.raises(ValueError, match=r"the cache in '.*c' was built with another VAE"):
        LatentCache.build(other, images, tmp_path / "c", batch_size=2, shard_size=1)
    os.remove(tmp_path / "c" / "index.json")  # an unfinished build: its shards are checked one by one
    with pytest.raises(ValueError, match=r"shard '.*latents-00000.safetensors' was built with another VAE"):
        LatentCache.build(other, images, tmp_path / "c", batch_size=2, shard_size=1)


def test_latent_cache_errors(sd_pipe, tmp_path):
    images = _images(3)
    with pytest.raises(ValueError, match="`batch_size` is 0; pass a positive integer"):
        LatentCache.build(sd_pipe, images, tmp_path / "c", batch_size=0)
    with pytest.raises(ValueError, match="`shard_size` is 2.5; pass a positive integer"):
        LatentCache.build(sd_pipe, images, tmp_path / "c", shard_size=2.5)
    with pytest.raises(ValueError, match="`dataset_or_images` is empty"):
        LatentCache.build(sd_pipe, [], tmp_path / "c")
    with pytest.raises(ValueError, match=r"item 1 of `dataset_or_images` is a str; pass PIL images"):
        LatentCache.build(sd_pipe, [images[0], "x.png"], tmp_path / "c")
    mixed = [images[0], images[1].resize((16, 16))]
    with pytest.raises(ValueError, match=r"items 0..1 .* have sizes \[\(16, 16\), \(32, 32\)\]; a batch must share"):
        LatentCache.build(sd_pipe, mixed, tmp_path / "c")
    with pytest.raises(ValueError, match="has no index.json: it is not a latent cache"):
        LatentCache(tmp_path / "empty")
    LatentCache.build(sd_pipe, images, tmp_path / "d", batch_size=3, shard_size=3)
    with pytest.raises(ValueError, match="holds 3 items in shards of 3, but this build has 2 items in shards of 3"):
        LatentCache.build(sd_pipe, images[:2], tmp_path / "d", batch_size=3, shard_size=3)
    (tmp_path / "e").mkdir()
    _json(tmp_path / "e" / "index.json", {"x": 1})
    with pytest.raises(ValueError, match="is not a discadapt latent cache index"):
        LatentCache(tmp_path / "e")
