"""Can the enhancement LoRA learn what a round kept? Train it on a finished round's data, then judge new images of
the round's own (training) prompts with the oracle.

A diagnostic of `benchmarks/augment_shapes.py`'s round 1 (training prompts only, never the demo's): for each data
choice and objective, one LoRA on the bundled pipeline, then `--images` new images per prompt (seeds unused by the
loop) from the base model and from each LoRA, fused. Data choices: `kept` (the critic's picks, as the loop keeps
them), `random` (each prompt's first candidate: no selection), `oracle` (a candidate the oracle accepts, where one
exists: the best data a critic could pick). With `dpo` the rejected image of a pair is the critic's worst.

    python benchmarks/enhance_probe.py --round runs/augment-clip/round-01 \
        --runs kept:denoising:1e-4 random:denoising:1e-4 oracle:denoising:1e-4 kept:dpo:1e-3
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from augment_shapes import train_prompts  # noqa: E402

from discadapt.bench.methods import pipeline_method  # noqa: E402
from discadapt.interaction.dataset import RoundData, rejected_for  # noqa: E402
from discadapt.interaction.enhance import EnhanceConfig, fuse_enhancements, train_enhancement  # noqa: E402
from discadapt.sampling.seeds import image_seed  # noqa: E402
from discadapt.worlds.shapes import load_pipeline  # noqa: E402
from discadapt.worlds.shapes.captions import parse  # noqa: E402
from discadapt.worlds.shapes.oracle import check  # noqa: E402


def _ok(data: RoundData, c) -> bool:
    return check(np.asarray(Image.open(data.folder / c.file).convert("RGB")), parse(c.prompt)).ok


def choose(data: RoundData, how: str) -> list:
    """The (kept) candidates of data choice `how`."""
    if how == "kept":
        return data.kept()
    by_prompt: dict[str, list] = {}
    for c in data.candidates():
        if c.source == "sample":
            by_prompt.setdefault(c.prompt, []).append(c)
    if how == "random":
        return [group[0] for group in by_prompt.values()]
    return [next(c for c in group if _ok(data, c)) for group in by_prompt.values() if any(_ok(data, c) for c in group)]


def accuracy(pipe, prompts: list[str], category_of: dict[str, str], images: int, seed: int) -> dict:
    """Oracle accuracy per category (and "all") of `images` new images per prompt."""
    method = pipeline_method(pipe, 25, 4.0)
    todo = [(p, image_seed(seed, p, k)) for p in prompts for k in range(images)]
    hits: dict[str, list[bool]] = {}
    for start in range(0, len(todo), 64):
        batch = todo[start : start + 64]
        for image, (p, _) in zip(method([p for p, _ in batch], [s for _, s in batch]), batch):
            hits.setdefault(category_of[p], []).append(check(image, parse(p)).ok)
    row = {k: float(np.mean(v)) for k, v in sorted(hits.items())}
    row["all"] = float(np.mean([x for v in hits.values() for x in v]))
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--round", required=True, help="a finished round folder of augment_shapes.py")
    p.add_argument("--runs", nargs="+", default=["kept:denoising:1e-4"], help="data:objective:lr[:steps]")
    p.add_argument("--prompts-per-category", type=int, default=60, help="as the augment_shapes.py run")
    p.add_argument("--images", type=int, default=4, help="new images per prompt")
    p.add_argument("--out", default="runs/enhance-probe")
    args = p.parse_args(argv)

    data, category_of = RoundData(Path(args.round)), train_prompts(args.prompts_per_category)
    prompts = sorted({c.prompt for c in data.kept()})
    base = load_pipeline()
    base.set_progress_bar_config(disable=True)
    rows = {"base": accuracy(base, prompts, category_of, args.images, seed=7)}
    for spec in args.runs:
        how, objective, lr, *steps = spec.split(":")
        chosen = choose(data, how)
        rejected = rejected_for(data.candidates(), chosen) if objective == "dpo" else None
        load = lambda cs: [Image.open(data.folder / c.file).convert("RGB") for c in cs]  # noqa: E731
        config = EnhanceConfig(steps=int(steps[0]) if steps else 300, lr=float(lr), objective=objective)
        pipe = load_pipeline()
        pipe.set_progress_bar_config(disable=True)
        result = train_enhancement(
            pipe, load(chosen), [c.prompt for c in chosen], Path(args.out) / spec.replace(":", "-"), config,
            rejected=None if rejected is None else load(rejected), progress=False,
        )  # fmt: skip
        fuse_enhancements(pipe, [result["lora"]])
        rows[spec] = accuracy(pipe, prompts, category_of, args.images, seed=7)
    for name, row in rows.items():
        print(f"{name:28s} " + "  ".join(f"{k} {v:.3f}" for k, v in row.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
