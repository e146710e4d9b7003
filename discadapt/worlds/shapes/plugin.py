"""The shapes world as a plug-in of discadapt (`discadapt.plugins`), named in setup.cfg's entry points.

It registers:
- the pipeline sources `--world`: the bundled world pipeline (`bundle.load_pipeline`), and `--world-tuned`: the same
  with the bundled stage-2 LoRA fused (`bundle.load_lora`), to tune on top of it;
- the commands `demo`, `world train` and `world bundle` (`commands.py`);
- training data of `discadapt probe` / `tune`: `--shapes N` train examples (`adapter_data.ShapeWorldItems`), by
  default `TRAIN_EXAMPLES` when `--world` is given without other data, and `--eval-shapes N` held-out examples
  per split evaluated at the end (default `EVAL_EXAMPLES` with `--world`);
- the scorer "world CLIP" (the bundled world CLIP's scaled cosine, `clip.clip_scores`), also a critic of the
  interaction loop through `interaction.critics.critic_from_name("world CLIP")`;
- the judge "shapes oracle" (`suite.OracleJudge`), for evaluation only;
- the suite "shapes" (`suite.shapes_suite`: held-out prompts per category, the oracle as judge), which `discadapt
  demo` runs, and its runner: `discadapt bench run --suite shapes [demo options]` is `discadapt demo`.
"""

from __future__ import annotations

from ...plugins import Registry, TrainingData

__all__ = ["EVAL_EXAMPLES", "TRAIN_EXAMPLES", "register"]

TRAIN_EXAMPLES = 100_000
EVAL_EXAMPLES = 200


def _load_pipeline():
    from .bundle import load_pipeline

    return load_pipeline()


def _add_arguments(group) -> None:
    from .captions import PHRASE_BOXES

    group.add_argument("--shapes", type=int, help="number of ShapeWorld train examples (ITM + REC)")
    group.add_argument("--shapes-size", type=int, default=32, help="ShapeWorld image size in pixels (default 32)")
    group.add_argument(
        "--shapes-phrase-negatives",
        action="store_true",
        help="add each phrase of a two-object or spatial caption alone to its negatives (for --contrast-weight)",
    )
    group.add_argument(
        "--shapes-phrase-boxes",
        nargs="?",
        const="objects",
        choices=PHRASE_BOXES,
        help="give every caption its objects' boxes and their words, not only referring ones; `planned`: spatial "
        "captions the halves their relation plans; `planned-second`: the second phrase's half only (for "
        "--grounding-weight)",
    )
    group.add_argument("--eval-shapes", type=int, help="ShapeWorld test_id/test_ood examples evaluated at the end")


def _load_tuned():
    from .bundle import load_lora, load_pipeline

    return load_lora(load_pipeline())


def _on_world(args) -> bool:
    return getattr(args, "world", False) or getattr(args, "world_tuned", False)


def _datasets(args, found: list) -> list:
    shapes = args.shapes
    if shapes is None and _on_world(args) and not found:
        shapes = TRAIN_EXAMPLES
    if not shapes:
        return []
    from .adapter_data import ShapeWorldItems

    options = {
        "phrase_negatives": getattr(args, "shapes_phrase_negatives", False),
        "phrase_boxes": getattr(args, "shapes_phrase_boxes", None),
    }
    return [ShapeWorldItems(shapes, split="train", seed=args.seed, image_size=args.shapes_size, **options)]


def _eval_datasets(args) -> dict:
    n = args.eval_shapes if args.eval_shapes is not None else (EVAL_EXAMPLES if _on_world(args) else 0)
    if not n:
        return {}
    from .adapter_data import ShapeWorldItems

    splits = ("test_id", "test_ood")
    return {split: ShapeWorldItems(n, split=split, seed=args.seed, image_size=args.shapes_size) for split in splits}


def _uint8_images(images):
    """The world CLIP's input, uint8 `(N, S, S, 3)` (or a list of PIL images / `(S, S, 3)` arrays, which it stacks),
    also from a float `(N, 3, S, S)` tensor in [0, 1], as a sampler or `interaction.critics` pass them."""
    import torch

    if isinstance(images, torch.Tensor) and images.is_floating_point() and images.ndim == 4 and images.shape[1] == 3:
        return (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu()
    return images


def _clip_scorer(root=None):
    """The bundled world CLIP as a `scorers.Scorer` of uint8 `(N, S, S, 3)` images, lists of PIL images or float
    `(N, 3, S, S)` tensors in [0, 1]; `interaction.critics.critic_from_name("world CLIP")` makes it a critic."""
    from ...scorers import FunctionScorer
    from .bundle import load_clip
    from .clip import clip_scores

    model = load_clip(root=root)
    return FunctionScorer("world CLIP", lambda images, prompts: clip_scores(model, _uint8_images(images), prompts))


def _oracle_judge():
    from .suite import OracleJudge

    return OracleJudge()


def _suite(**options):
    from .suite import shapes_suite

    return shapes_suite(**options)


def register(registry: Registry) -> None:
    """Register the shapes world (see the module docstring)."""
    from .commands import add_commands, run_bench

    registry.add_source("world", "the bundled shapes-world pipeline", _load_pipeline)
    registry.add_source("world-tuned", "the bundled shapes-world pipeline with its stage-2 LoRA fused", _load_tuned)
    registry.add_command(add_commands)
    registry.add_training_data(TrainingData(_add_arguments, _datasets, _eval_datasets))
    registry.add_scorer("world CLIP", _clip_scorer)
    registry.add_judge("shapes oracle", _oracle_judge)
    registry.add_suite("shapes", _suite)
    registry.add_runner("shapes", run_bench)
