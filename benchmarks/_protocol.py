"""Issue 12's protocol, shared by the benchmarks that choose a setting: a sweep on *train-split* prompts
(`augment_shapes.train_prompts`, none of them a demo prompt), the choice on the multi-object mean, then the demo's
held-out prompts (multi-object categories, `--held-out-prompts` per category x 5 images) once."""

from __future__ import annotations

import argparse

from augment_shapes import MULTI, train_prompts

from discadapt.worlds.shapes.suite import shapes_suite

STEPS = 25  # sampler steps of every row


def add_arguments(parser: argparse.ArgumentParser, prompts_per_category: int = 40) -> None:
    """The options every such benchmark takes: the train split's size, `--held-out`, threads."""
    parser.add_argument("--prompts-per-category", type=int, default=prompts_per_category)
    parser.add_argument("--images-per-prompt", type=int, default=2)
    parser.add_argument("--held-out", action="store_true")
    parser.add_argument("--held-out-prompts", type=int, default=40, help="demo prompts per category (default 40)")
    parser.add_argument("--threads", type=int)


def train_suite(args: argparse.Namespace):
    """The train-split prompts of the multi-object categories, `args.images_per_prompt` images each."""
    prompts = [p for p, c in train_prompts(args.prompts_per_category).items() if c in MULTI]
    return shapes_suite(prompts=prompts, images_per_prompt=args.images_per_prompt)


def held_out_suite(args: argparse.Namespace):
    """The demo's held-out prompts of the multi-object categories, 5 images each."""
    return shapes_suite(list(MULTI), n_prompts=args.held_out_prompts, images_per_prompt=5)


def multi_mean(found: dict) -> float:
    """The mean accuracy over the multi-object categories of one method's `run_suite` results."""
    return sum(found["categories"][c]["accuracy"] for c in MULTI) / len(MULTI)


def held_out_summary(found: dict) -> dict:
    """Per method of a held-out `run_suite` result: its multi-object mean, its paired difference to base (all
    categories pooled) and its time ratio."""
    return {
        name: {
            "multi_mean": multi_mean(m),
            "difference_to_base": m.get("difference_to_base", {}).get("all"),
            "time_ratio": m["time_ratio"],
        }
        for name, m in found["methods"].items()
    }
