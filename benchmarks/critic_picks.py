"""Which critic picks the right image? Oracle accuracy of the image each critic picks among a prompt's candidates.

Reads a finished round of the interaction loop on the shapes world (`benchmarks/augment_shapes.py`, training-split
prompts only): its sampled candidates (`--candidates` per prompt, no suggestions). For each critic, per category:
the oracle's accuracy of the candidate the critic scores highest in each prompt group; beside it a random candidate
(the mean over the group) and the best possible (any candidate right). The oracle judges; it never picks. Two more
rows give what the loop itself trained on: its kept images (sampled or regenerated from a suggestion) and their
Diffusion-DPO rejected images (each prompt's lowest-scored candidate).

    python benchmarks/critic_picks.py --round runs/augment-clip-dpo/round-01 --critics clip,locate,denoising

Critics: `clip` (the world CLIP), `locate` (`LocatingCritic`: the planned layout checked by the pipeline's own
denoising, the world CLIP for prompts without a relation), `denoising` (relative denoising error, 10 timesteps),
`adapter` (the bundled stage-1 adapter's ITM logit, t=250), `ensemble` (world CLIP and the adapter ranked together);
all but `denoising` as `augment_shapes.py` builds them. Writes ROUND/critic_picks.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import set_threads  # noqa: E402
from augment_shapes import MULTI  # noqa: E402
from augment_shapes import make_critic as loop_critic  # noqa: E402

from discadapt.interaction.dataset import RoundData, rejected_for  # noqa: E402
from discadapt.worlds.shapes.captions import parse  # noqa: E402
from discadapt.worlds.shapes.oracle import check  # noqa: E402


def make_critic(name: str, pipe):
    """`denoising` (relative denoising error, 10 timesteps), else the loop's critic of that name."""
    if name == "denoising":
        from discadapt.interaction.critics import DenoisingCritic

        return DenoisingCritic(pipe, num_timesteps=10, batch_size=256)
    if name not in ("clip", "locate", "adapter", "ensemble"):
        raise ValueError(f"`--critics` holds {name!r}; pick from clip, locate, denoising, adapter, ensemble.")
    return loop_critic(name, pipe)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--round", required=True, help="a finished round folder of the loop on the shapes world")
    p.add_argument(
        "--critics", default="clip,locate", help="comma-separated: clip, locate, denoising, adapter, ensemble"
    )
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    set_threads(args.threads)
    from discadapt.worlds.shapes import load_pipeline

    data = RoundData(Path(args.round))
    candidates = [c for c in data.candidates() if c.source == "sample"]
    if not candidates:
        raise SystemExit(f"{args.round} holds no sampled candidates; pass a round folder of the loop.")
    images = np.stack([np.asarray(Image.open(data.folder / c.file).convert("RGB")) for c in candidates])
    prompts = [c.prompt for c in candidates]
    category = [parse(p).category for p in prompts]
    right = np.array([check(image, parse(prompt)).ok for image, prompt in zip(images, prompts)])
    groups: dict[str, list[int]] = {}
    for i, prompt in enumerate(prompts):
        groups.setdefault(prompt, []).append(i)

    pipe = load_pipeline()
    pipe.set_progress_bar_config(disable=True)
    columns = {"random": {g: float(right[m].mean()) for g, m in groups.items()}}
    for name in [n for n in args.critics.split(",") if n]:
        with torch.no_grad():
            scores = make_critic(name, pipe).score(images, prompts).float().numpy()
        columns[name] = {g: float(right[m][int(np.argmax(scores[m]))]) for g, m in groups.items()}
    columns["best possible"] = {g: float(right[m].any()) for g, m in groups.items()}
    kept = data.kept() or []
    for column, chosen in (("the loop's kept", kept), ("the loop's rejected", rejected_for(data.candidates(), kept))):
        columns[column] = {
            c.prompt: float(check(np.asarray(Image.open(data.folder / c.file).convert("RGB")), parse(c.prompt)).ok)
            for c in chosen
            if c.prompt in groups
        }

    table = {}
    cat_of = {prompts[m[0]]: category[m[0]] for m in groups.values()}
    for column, per_group in columns.items():
        row = {}
        for cat in dict.fromkeys(cat_of.values()):
            row[cat] = float(np.mean([v for g, v in per_group.items() if cat_of[g] == cat]))
        row["multi"] = float(np.mean([row[c] for c in MULTI if c in row]))
        row["all"] = float(np.mean(list(per_group.values())))
        table[column] = row
    counts = {cat: sum(1 for c in cat_of.values() if c == cat) for cat in dict.fromkeys(cat_of.values())}
    (data.folder / "critic_picks.json").write_text(json.dumps({"prompts": counts, "table": table}, indent=1))
    cats = list(counts) + ["multi", "all"]
    print("| pick | " + " | ".join(f"{c} ({counts[c]})" if c in counts else c for c in cats) + " |")
    print("|---" * (len(cats) + 1) + "|")
    for column, row in table.items():
        print(f"| {column} | " + " | ".join(f"{row[c]:.3f}" for c in cats) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
