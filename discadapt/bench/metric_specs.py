"""The metrics `discadapt bench run --metric` names, built from local paths before any image is drawn.

- `clip=DIR`: CLIP score, `100 * max(cos, 0)` (torchmetrics' convention), a transformers CLIP folder
  (`evaluators.CLIPScorer`);
- `open_clip=ARCH:FILE`: the same with an open_clip model and weights file (needs open_clip, which imports
  torchvision; `evaluators.OpenCLIPScorer`);
- `blip-vqa=DIR`: T2I-CompBench's BLIP-VQA, P(yes) of each noun phrase multiplied (`evaluators.BLIPVQAScorer`);
- `detector=DIR`: GenEval-style checks of objects, counts, colours and positions with a transformers detector, 1
  or 0 (`evaluators.DetectionScorer`);
- `aesthetic=CLIP_DIR:HEAD`: the LAION aesthetic predictor on CLIP image embeddings (`evaluators.AestheticScorer`);
- `adapter=DIR`: the discriminative adapter's ITM logit on the pipeline under test (`scorers.AdapterScorer`);
- `denoising`: minus the pipeline's own denoising error, DiffusionITM (`scorers.DenoisingScorer`);
- a registered name: a plug-in's scorer (the shapes world's "world CLIP").

Every folder or file is checked, and every evaluator model loaded, when `make_metrics` runs: the command calls it
before loading the pipeline, so a missing weight fails first, naming the path and where such weights come from.
The adapter and denoising metrics score with the pipeline under test, bound when the pipeline has loaded.

Example:
    >>> metrics = make_metrics(["clip=/models/clip-vit-large-patch14", "denoising"], lambda: pipe)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

__all__ = ["METRICS", "make_metrics"]

METRICS = ("clip=DIR", "open_clip=ARCH:FILE", "blip-vqa=DIR", "detector=DIR", "aesthetic=CLIP_DIR:HEAD", "adapter=DIR",
           "denoising")  # fmt: skip


class _OnPipeline:
    """A scorer that reads the pipeline under test, built on its first call (the pipeline loads after the metrics)."""

    def __init__(self, name: str, model: str, build: Callable[[object], object], pipe: Callable[[], object]):
        self.name, self.model, self._build, self._pipe, self._scorer = name, model, build, pipe, None

    def score(self, images, prompts):
        if self._scorer is None:
            self._scorer = self._build(self._pipe())
        return self._scorer.score(images, prompts)


def _two(path: str, spec: str, what: str) -> tuple[str, str]:
    first, sep, second = path.rpartition(":")
    if not sep or not first or not second:
        raise ValueError(f"`--metric` is {spec!r}; pass {what}.")
    return first, second


def _make(spec: str, pipe: Callable[[], object], device: str):
    from .. import evaluators
    from ..plugins import registry
    from ..scorers import AdapterScorer, DenoisingScorer

    kind, _, path = spec.partition("=")
    if kind == "clip" and path:
        return evaluators.CLIPScorer.from_pretrained(path, device=device, scale=100.0, name="CLIP score")
    if kind == "open_clip" and path:
        arch, weights = _two(path, spec, "open_clip=ARCH:FILE, e.g. open_clip=ViT-H-14:/models/open_clip_model.bin")
        return evaluators.OpenCLIPScorer(arch, weights, device=device, scale=100.0, name="CLIP score (open_clip)")
    if kind == "blip-vqa" and path:
        return evaluators.BLIPVQAScorer.from_pretrained(path, device=device)
    if kind == "detector" and path:
        return evaluators.DetectionScorer.from_pretrained(path, device=device)
    if kind == "aesthetic" and path:
        clip, head = _two(path, spec, "aesthetic=CLIP_DIR:HEAD_FILE (a CLIP ViT-L/14 folder and the LAION head)")
        return evaluators.AestheticScorer.from_pretrained(clip, device=device, head_path=head)
    if kind == "adapter" and path:
        from ..adapter import DiscriminativeAdapter

        adapter = DiscriminativeAdapter.from_pretrained(path).to(device)
        return _OnPipeline("adapter ITM", f"adapter at {path}", lambda p: AdapterScorer(p, adapter), pipe)
    if spec == "denoising":
        return _OnPipeline("denoising score", "the pipeline under test", DenoisingScorer, pipe)
    if spec in registry().scorers:
        return registry().scorers[spec]()
    raise ValueError(
        f"`--metric` is {spec!r}; pass one of {', '.join(METRICS)}, or a registered scorer "
        f"({', '.join(sorted(registry().scorers)) or 'none registered'})."
    )


def make_metrics(specs: Sequence[str], pipe: Callable[[], object], device: str = "cpu") -> list:
    """The scorers `specs` name (see the module docstring), each model loaded on `device`.

    Args:
        specs (Sequence[str]): `--metric` values, e.g. `["clip=/models/clip", "denoising"]`.
        pipe (Callable[[], object]): returns the pipeline under test, called when an adapter or denoising metric first
            scores.
        device (str): where the evaluators run. Default "cpu".

    Raises:
        ValueError: an unknown name or a malformed value. FileNotFoundError: missing weights (the path expected and
            where to get them).
    """
    return [_make(str(spec), pipe, device) for spec in specs]
