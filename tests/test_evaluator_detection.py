"""GenEval-style detection checks: the prompt parser, the checks on known boxes (a stub detector), and real tiny
transformers detectors (OWLv2, OWL-ViT, DETR) saved to a folder and loaded back, against their own post-processing."""

from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from discadapt.evaluators.detection import DetectionScorer, box_iou, dedupe, pixel_colour, relative_position
from discadapt.evaluators.detection_spec import ObjectSpec, PromptSpec, object_spec, plural, singular
from discadapt.evaluators.detector import Detection, TransformersDetector
from discadapt.scorers import FunctionScorer, Judge, Judgement, Scorer
from discadapt.testing import tiny_owlv2_folder, tiny_owlvit_folder

COMPBENCH = Path(__file__).resolve().parents[2] / "shared" / "data" / "prompts" / "t2i-compbench"
Obj = ObjectSpec


# ---- parser ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "prompt, objects, relation",
    [
        ("a photo of a dog", [Obj("dog")], None),
        ("a photo of two dogs", [Obj("dog", 2)], None),
        ("a photo of 3 benches", [Obj("bench", 3)], None),
        ("a photo of a red car", [Obj("car", None, "red")], None),
        ("a photo of a red car and a blue bench", [Obj("car", None, "red"), Obj("bench", None, "blue")], None),
        ("a photo of a dog left of a cat", [Obj("dog"), Obj("cat")], "left of"),
        (
            "a photo of a teddy bear below a grey tv remote",
            [Obj("teddy bear"), Obj("tv remote", None, "gray")],
            "below",
        ),
        ("A photo of four wine glasses.", [Obj("wine glass", 4)], None),
        ("a red book on the left of a yellow cup", [Obj("book", None, "red"), Obj("cup", None, "yellow")], "left of"),
        ("three cats", [Obj("cat", 3)], None),
        ("four tents, two boats and one pig", [Obj("tent", 4), Obj("boat", 2), Obj("pig", 1)], None),
        ("a red orange and a brown sheep", [Obj("orange", None, "red"), Obj("sheep", None, "brown")], None),
        ("seven women", [Obj("woman", 7)], None),
        ("puppies", [Obj("puppy")], None),
    ],
)
def test_object_spec_reads_geneval_and_compbench_forms(prompt, objects, relation):
    assert object_spec(prompt) == PromptSpec(tuple(objects), relation)


@pytest.mark.skipif(not COMPBENCH.is_dir(), reason="the shared T2I-CompBench prompt files are not here")
def test_object_spec_on_t2i_compbench_files():
    def head(name, n=5):
        return [line.strip() for line in (COMPBENCH / f"{name}_val.txt").read_text().splitlines()[:n]]

    assert [object_spec(p) for p in head("spatial")] == [
        PromptSpec((Obj("giraffe"), Obj("lamp")), None),  # "next to": no direction
        PromptSpec((Obj("girl"), Obj("frog")), "above"),  # "on the top of"
        PromptSpec((Obj("mouse"), Obj("key")), None),  # "on side of"
        PromptSpec((Obj("bee"), Obj("refrigerator")), "right of"),
        PromptSpec((Obj("balloon"), Obj("person")), "right of"),
    ]
    assert [object_spec(p).objects for p in head("color", 2)] == [
        (Obj("bench", None, "green"), Obj("bowl", None, "blue")),
        (Obj("bench", None, "blue"), Obj("bowl", None, "green")),
    ]
    assert [object_spec(p).objects for p in head("numeracy")] == [
        (Obj("boy", 2),),
        (Obj("airplane", 6),),
        (Obj("drum", 5),),
        (Obj("turtle", 1),),
        (Obj("woman", 7),),
    ]
    assert all(object_spec(p).objects for p in head("spatial", 400) if p)  # every spatial prompt reads


def test_singular_and_plural():
    words = ["dogs", "benches", "boxes", "cherries", "people", "mice", "glass", "bus", "buses", "tennis", "shoes"]
    assert [singular(w) for w in words] == [
        "dog",
        "bench",
        "box",
        "cherry",
        "person",
        "mouse",
        "glass",
        "bus",
        "bus",
        "tennis",
        "shoe",
    ]
    assert [plural(n, 2) for n in ["dog", "bench", "cherry", "person", "wine glass"]] == [
        "dogs",
        "benches",
        "cherries",
        "people",
        "wine glasses",
    ]
    assert plural("dog", 1) == "dog" and plural("dog", 0) == "dogs"


def test_object_spec_errors():
    with pytest.raises(ValueError, match="Cannot read 'eight cats lounged in the sun' in the prompt"):
        object_spec("eight cats lounged in the sun")
    with pytest.raises(ValueError, match="Cannot read 'two dogs barked'"):
        object_spec("two dogs barked")
    with pytest.raises(ValueError, match="Cannot read 'a red' .* 'a red and white bus'"):
        object_spec("a red and white bus")
    with pytest.raises(ValueError, match="relates 3 objects with 'left of'"):
        object_spec("a dog and a cat left of a bird")
    with pytest.raises(ValueError, match="`prompt` is a int"):
        object_spec(3)


# ---- box rules -------------------------------------------------------------------------------------------------------
def test_box_iou_and_dedupe():
    boxes = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 5], [20, 0, 30, 10], [1, 0, 11, 10]])
    torch.testing.assert_close(box_iou(boxes[:1], boxes), torch.tensor([[1.0, 0.5, 0.0, 90 / 110]]))
    # 3 (0.9) drops 0 (IoU 0.82); 1 overlaps 3 by 45/105 <= 0.5 and is kept; 2 is apart.
    assert dedupe(boxes, torch.tensor([0.5, 0.4, 0.3, 0.9])).tolist() == [3, 1, 2]
    assert dedupe(boxes, torch.tensor([0.5, 0.4, 0.3, 0.9]), iou=0.4).tolist() == [3, 2]
    assert dedupe(torch.zeros(0, 4), torch.zeros(0)).tolist() == []


def test_relative_position_follows_geneval():
    a = [0, 0, 10, 10]
    assert relative_position(a, [30, 2, 40, 12]) == {"left of"}
    assert relative_position([30, 2, 40, 12], a) == {"right of"}
    assert relative_position(a, [0, 30, 10, 40]) == {"above"}
    assert relative_position([0, 30, 10, 40], a) == {"below"}
    assert relative_position(a, [30, 30, 40, 40]) == {"left of", "above"}  # diagonal: 28 / 42.4 > 0.5 on each axis
    assert relative_position(a, [30, 12, 40, 22]) == {"left of"}  # dy: (12 - 2) / 33.5 < 0.5
    assert relative_position(a, [1, 1, 11, 11]) == set()  # offset 1 < 0.1 * (10 + 10): overlapping
    assert relative_position(a, [5, 0, 15, 10]) == {"left of"} and not relative_position(a, [1, 0, 11, 10])


@pytest.mark.parametrize(
    "rgb, name",
    [
        ((220, 20, 20), "red"),
        ((240, 140, 20), "orange"),
        ((240, 230, 30), "yellow"),
        ((30, 180, 40), "green"),
        ((30, 60, 220), "blue"),
        ((130, 40, 200), "purple"),
        ((250, 150, 200), "pink"),
        ((255, 170, 170), "pink"),  # a light red
        ((120, 70, 20), "brown"),
        ((10, 10, 10), "black"),
        ((245, 245, 245), "white"),
        ((128, 128, 128), "gray"),
    ],
)
def test_pixel_colour_names_solid_colours(rgb, name):
    assert pixel_colour(PIL.Image.new("RGB", (12, 8), rgb)) == name


def test_pixel_colour_reads_the_central_region():
    x = np.full((16, 16, 3), 255, np.uint8)  # white border
    x[4:12, 4:12] = (30, 60, 220)  # blue middle half
    assert pixel_colour(PIL.Image.fromarray(x)) == "blue"
    assert pixel_colour(PIL.Image.new("RGB", (1, 1), (30, 180, 40))) == "green"


# ---- checks on known boxes -------------------------------------------------------------------------------------------
RED, BLUE, GREEN = (4, 20, 20, 36), (40, 20, 56, 36), (24, 44, 40, 60)  # xyxy patches of IMAGE


def _image() -> np.ndarray:
    x = np.full((64, 64, 3), 255, np.uint8)
    for (x0, y0, x1, y1), rgb in ((RED, (220, 20, 20)), (BLUE, (30, 60, 220)), (GREEN, (30, 180, 40))):
        x[y0:y1, x0:x1] = rgb
    return x  # (64, 64, 3)


class StubDetector:
    """Returns the given (noun, score, box) detections above the threshold, for the nouns asked."""

    model = "stub"

    def __init__(self, detections):
        self.detections, self.calls = detections, []

    def detect(self, images, nouns, threshold):
        self.calls.append((len(images), nouns, threshold))
        return [[Detection(*d) for d in self.detections if d[0] in n and d[1] > threshold] for n in nouns]


def _judge(detections, prompt, **kwargs) -> Judgement:
    return DetectionScorer(StubDetector(detections), **kwargs).judge([PIL.Image.fromarray(_image())], [prompt])[0]


def test_presence_and_count():
    car = ("car", 0.9, RED)
    assert _judge([car], "a photo of a car") == Judgement(True, "found 1 car")
    assert _judge([car], "a photo of a dog") == Judgement(False, "found 0 dogs, expected at least 1")
    duplicate, weak = ("car", 0.8, (5, 20, 21, 36)), ("car", 0.2, BLUE)  # IoU 0.88; below the 0.3 threshold
    assert _judge([car, duplicate, weak], "a photo of two cars") == Judgement(False, "found 1 car, expected 2")
    assert _judge([car, weak], "a photo of two cars", threshold=0.1).ok
    assert _judge([car, ("car", 0.7, BLUE)], "a photo of one car") == Judgement(False, "found 2 cars, expected 1")
    assert _judge([car, ("car", 0.7, BLUE)], "two cars") == Judgement(True, "found 2 cars")


def test_colour_of_the_most_confident_boxes():
    red_car, blue_car = ("car", 0.9, RED), ("car", 0.7, BLUE)
    assert _judge([red_car, blue_car], "a photo of a red car").ok
    assert _judge([red_car, blue_car], "a photo of a blue car") == Judgement(False, "expected blue car, found red")
    assert _judge([red_car, blue_car], "two red cars") == Judgement(False, "expected red car, found red, blue")
    both = [red_car, ("bench", 0.5, GREEN)]
    assert _judge(both, "a red car and a green bench") == Judgement(True, "found 1 car, 1 bench")
    assert _judge(both, "a red car and a blue bench") == Judgement(False, "expected blue bench, found green")


def test_colour_scorer_picks_the_best_colour_prompt():
    seen = []

    def fn(images, prompts):
        seen.append((len(images), images[0].size, list(prompts)))
        return torch.tensor([float("purple" in p) for p in prompts])

    clip = FunctionScorer("stub CLIP", fn)
    detections = [("car", 0.9, RED)]
    assert _judge(detections, "a purple car", colour_scorer=clip).ok
    assert _judge(detections, "a red car", colour_scorer=clip) == Judgement(False, "expected red car, found purple")
    assert seen[0][:2] == (11, (16, 16))  # one 16 x 16 crop against the 11 colours
    assert seen[0][2][:2] == ["a photo of a red car", "a photo of a orange car"]


def test_relation_of_the_most_confident_boxes():
    dets = [("car", 0.9, RED), ("dog", 0.8, BLUE), ("dog", 0.4, (0, 0, 3, 3)), ("bird", 0.6, GREEN)]
    assert _judge(dets, "a photo of a car left of a dog") == Judgement(True, "found 1 car, 2 dogs; car left of dog")
    assert _judge(dets, "a photo of a car right of a dog") == Judgement(
        False, "expected car right of dog, found left of"
    )
    assert _judge(dets, "a bird below a car").ok and _judge(dets, "a dog above a bird").ok
    assert _judge(dets, "a bird next to a car") == Judgement(True, "found 1 bird, 1 car")  # no direction to check
    assert _judge(dets, "a car left of a dog", margin=0.9) == Judgement(
        False, "expected car left of dog, found overlapping"
    )


def test_scorer_is_a_scorer_and_a_judge_over_image_forms():
    stub = StubDetector([("car", 0.9, RED), ("dog", 0.8, BLUE)])
    scorer = DetectionScorer(stub)
    assert isinstance(scorer, Scorer) and isinstance(scorer, Judge) and scorer.model == "stub"
    prompts = ["a photo of a red car", "a photo of two dogs", "a car and a car"]
    images = np.stack([_image()] * 3)  # (3, 64, 64, 3) uint8
    expected = torch.tensor([1.0, 0.0, 1.0])
    torch.testing.assert_close(scorer.score(images, prompts), expected)
    floats = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255  # (3, 3, 64, 64)
    torch.testing.assert_close(scorer.score(floats, prompts), expected)
    assert stub.calls[0] == (3, [["car"], ["dog"], ["car"]], 0.3)  # each noun queried once


def test_scorer_errors():
    stub = StubDetector([])
    with pytest.raises(ValueError, match="`detector` is a str; pass an object with detect"):
        DetectionScorer("owlv2")
    with pytest.raises(ValueError, match=r"`threshold` is 1.5; pass a number in \[0, 1\)"):
        DetectionScorer(stub, threshold=1.5)
    with pytest.raises(ValueError, match="`iou` is True"):
        DetectionScorer(stub, iou=True)
    with pytest.raises(ValueError, match="`colour_scorer` is a str; pass an object with score"):
        DetectionScorer(stub, colour_scorer="clip")
    with pytest.raises(ValueError, match="Got 1 images but 2 prompts"):
        DetectionScorer(stub).judge(_image()[None], ["a dog", "a cat"])
    with pytest.raises(ValueError, match="Cannot read 'two dogs barked'"):
        DetectionScorer(stub).score(_image()[None], ["two dogs barked"])
    assert stub.calls == []  # prompts are read before the detector runs


def test_missing_folder_names_it_and_how_to_download(tmp_path):
    missing = tmp_path / "owlv2"
    with pytest.raises(FileNotFoundError, match=f"No model at {missing}.*huggingface-cli download google/owlv2"):
        DetectionScorer.from_pretrained(missing)
    with pytest.raises(ValueError, match=r"model_type 'clip'\); pass a zero-shot detector"):
        _clip_detector()


def _clip_detector():
    from transformers import CLIPConfig, CLIPModel

    config = CLIPConfig(
        text_config=dict(hidden_size=8, intermediate_size=8, num_hidden_layers=1, num_attention_heads=1),
        vision_config=dict(hidden_size=8, intermediate_size=8, num_hidden_layers=1, num_attention_heads=1),
    )
    return TransformersDetector(CLIPModel(config), None)


# ---- real tiny detectors ---------------------------------------------------------------------------------------------
IMAGES = [PIL.Image.fromarray(np.random.RandomState(i).randint(0, 256, (48, 64, 3), np.uint8)) for i in range(2)]


def _detr(folder: Path) -> Path:
    from transformers import DetrConfig, DetrForObjectDetection, ResNetConfig
    from transformers.models.detr.image_processing_pil_detr import DetrImageProcessorPil

    backbone = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], out_features=["stage2"])
    labels = {0: "dog", 1: "cat", 2: "potted plant"}
    config = DetrConfig(
        backbone_config=backbone,
        use_pretrained_backbone=False,
        d_model=32,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        num_queries=12,
        id2label=labels,
        label2id={v: k for k, v in labels.items()},
    )
    torch.manual_seed(0)
    DetrForObjectDetection(config).save_pretrained(folder)
    DetrImageProcessorPil(size={"shortest_edge": 32, "longest_edge": 64}).save_pretrained(folder)
    return folder


def _raw(folder: Path, nouns, target_sizes) -> list[dict]:
    """The model's own post-processed detections, threshold 0, computed without discadapt."""
    from transformers import AutoModelForObjectDetection, AutoModelForZeroShotObjectDetection, AutoProcessor

    processor = AutoProcessor.from_pretrained(folder)
    with torch.no_grad():
        if nouns is None:
            model = AutoModelForObjectDetection.from_pretrained(folder).eval()
            outputs = model(**processor(images=IMAGES, return_tensors="pt"))
            return processor.post_process_object_detection(outputs, threshold=0.0, target_sizes=target_sizes)
        model = AutoModelForZeroShotObjectDetection.from_pretrained(folder).eval()
        outputs = model(**processor(text=[nouns] * len(IMAGES), images=IMAGES, return_tensors="pt"))
        return processor.post_process_grounded_object_detection(outputs, threshold=0.0, target_sizes=target_sizes)


def _check_against_raw(folder, raw, names, prompts):
    scores = torch.cat([r["scores"] for r in raw])
    threshold = float(scores.median())  # some boxes pass and some do not
    expected = []
    for r in raw:
        rows = zip(r["labels"].tolist(), r["scores"].tolist(), r["boxes"].tolist())
        expected.append([Detection(names[j], s, tuple(b)) for j, s, b in rows if s > threshold])
    scorer = DetectionScorer.from_pretrained(folder, threshold=threshold, batch_size=1)
    found = scorer.detector.detect(IMAGES, [list(names.values())] * len(IMAGES), threshold)
    assert [[d.noun for d in f] for f in found] == [[d.noun for d in e] for e in expected]
    for f, e in zip(found, expected):
        torch.testing.assert_close(torch.tensor([d.score for d in f]), torch.tensor([d.score for d in e]))
        torch.testing.assert_close(torch.tensor([d.box for d in f]), torch.tensor([d.box for d in e]))
    assert 0 < sum(map(len, found)) < len(scores)
    # The verdicts are those of the checks on the raw detections.
    stub = DetectionScorer(StubDetector([]), threshold=threshold)
    verdicts = [stub._check(i, object_spec(p), stub._group(e)) for i, p, e in zip(IMAGES, prompts, expected)]
    assert scorer.judge(IMAGES, prompts) == verdicts
    return scorer, verdicts


@pytest.mark.parametrize("kind", ["owlv2", "owlvit"])
def test_tiny_owl_end_to_end(kind, tmp_path):
    folder = (tiny_owlv2_folder if kind == "owlv2" else tiny_owlvit_folder)(tmp_path / kind, seed=0)
    square = [(64, 64)] * 2 if kind == "owlv2" else [(48, 64)] * 2  # OWLv2 pads to a square; OWL-ViT stretches
    raw = _raw(folder, ["dog", "cat"], square)
    scorer, verdicts = _check_against_raw(folder, raw, {0: "dog", 1: "cat"}, ["a dog and a cat", "two cats and a dog"])
    assert scorer.model == f"Owl{'v2' if kind == 'owlv2' else 'ViT'}ForObjectDetection at {folder}"
    assert scorer.detector.kind == "zero-shot" and all(v.reason.startswith("found") for v in verdicts)
    uneven = scorer.detector.detect(IMAGES, [["dog", "cat"], ["cat"]], 0.0)  # the second padded with a " " query
    assert {d.noun for d in uneven[1]} == {"cat"} and {d.noun for d in uneven[0]} == {"dog", "cat"}
    bf16 = DetectionScorer.from_pretrained(folder, dtype=torch.bfloat16).score(IMAGES, ["a dog", "a cat"])
    assert bf16.dtype == torch.float32 and bf16.shape == (2,)


def test_tiny_detr_end_to_end(tmp_path):
    folder = _detr(tmp_path / "detr")
    raw = _raw(folder, None, [(48, 64)] * 2)
    names = {0: "dog", 1: "cat", 2: "potted plant"}
    scorer, _ = _check_against_raw(folder, raw, names, ["two dogs", "a cat and a potted plant"])
    assert scorer.detector.kind == "closed-set"
    assert scorer.detector.detect(IMAGES[:1], [["cats"]], 0.0)[0][0].noun == "cats"  # a plural finds its label
    with pytest.raises(ValueError, match="The noun 'giraffe' is not a label of the closed-set detector .*: cat, dog"):
        scorer.score(IMAGES, ["a dog", "a giraffe"])


def _grounding_dino(folder: Path) -> Path:
    from transformers import (
        BertConfig,
        BertTokenizer,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoProcessor,
        SwinConfig,
    )
    from transformers.models.grounding_dino.image_processing_pil_grounding_dino import GroundingDinoImageProcessorPil

    folder.mkdir()
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", "dog", "cat", "potted", "plant"]
    (folder / "vocab.txt").write_text("\n".join(vocab))
    backbone = SwinConfig(
        image_size=32, patch_size=4, embed_dim=8, depths=[1, 1], num_heads=[1, 1], window_size=2, out_indices=[1, 2]
    )
    text = BertConfig(
        vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
    )
    config = GroundingDinoConfig(
        backbone_config=backbone,
        text_config=text,
        use_pretrained_backbone=False,
        d_model=32,
        encoder_layers=1,
        decoder_layers=2,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        num_queries=10,
        num_feature_levels=2,
        encoder_n_points=1,
        decoder_n_points=1,
        max_text_len=32,
    )
    torch.manual_seed(0)
    GroundingDinoForObjectDetection(config).save_pretrained(folder)
    image_processor = GroundingDinoImageProcessorPil(size={"shortest_edge": 32, "longest_edge": 64})
    GroundingDinoProcessor(image_processor, BertTokenizer(str(folder / "vocab.txt"))).save_pretrained(folder)
    return folder


def test_tiny_grounding_dino_end_to_end(tmp_path):
    from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

    from discadapt.evaluators.detector import _noun_of

    assert _noun_of("dog", ["dog", "hot dog"]) == "dog" and _noun_of("a hot dog", ["dog", "hot dog"]) == "hot dog"
    assert _noun_of("", ["dog"]) is None
    folder = _grounding_dino(tmp_path / "gdino")
    nouns = [["dog", "cat"], ["potted plant"]]
    processor = AutoProcessor.from_pretrained(folder)
    model = AutoModelForZeroShotObjectDetection.from_pretrained(folder).eval()
    with torch.no_grad():
        inputs = processor(text=nouns, images=IMAGES, padding=True, return_tensors="pt")
        raw = processor.post_process_grounded_object_detection(
            model(**inputs), inputs["input_ids"], 0.3, 0.25, target_sizes=[(48, 64)] * 2
        )
    scorer = DetectionScorer.from_pretrained(folder)
    found = scorer.detector.detect(IMAGES, nouns, 0.3)
    for f, r, q in zip(found, raw, nouns):
        rows = [(_noun_of(t, q), s, b) for t, s, b in zip(r["text_labels"], r["scores"].tolist(), r["boxes"].tolist())]
        assert [(d.noun, d.score) for d in f] == [(n, s) for n, s, _ in rows if n is not None]
        torch.testing.assert_close(torch.tensor([d.box for d in f]), torch.tensor([b for n, _, b in rows if n]))
    assert all(len(f) > 0 for f in found) and scorer.detector.kind == "zero-shot"
    assert scorer.judge(IMAGES[:1], ["a dog and a cat"])[0].reason.startswith("found")
