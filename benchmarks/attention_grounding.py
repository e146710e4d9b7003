"""Issue 12, hypothesis 3 in the weights: does the UNet's cross-attention put each phrase where its objects are?

On rendered ShapeWorld scenes of the multi-object categories (two objects, counting, spatial; each caption with its
objects' boxes and their words, `ShapeWorldItems(phrase_boxes="objects")`), each noised once at timestep t, the
share of each phrase's cross-attention inside its objects' boxes (`losses.attention_shares`; with `--boxes planned`,
spatial scenes only, inside the half of the image the caption's relation plans for the phrase; then also for the
first and the second phrase alone), averaged over phrases and layers, against the share a uniform map would give
(the boxes' area). Base, the bundled tuned model and any stage-2 variant of `tuned_variants.py`
(`bundled+runs/tune-sweep/t-g3-s1/lora-1000`, ...): what the grounding loss of `TuneConfig.grounding_weight` trains,
and whether it took.

    python benchmarks/attention_grounding.py --variants bundled runs/tune-sweep/c-g-s1/lora-2000 --n 200 \
        --t 100 300 500 700 900 [--split test_id] [--boxes planned]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import set_threads  # noqa: E402
from tuned_variants import pipelines, variant_name  # noqa: E402

from discadapt.cross_attention import CrossAttentionMaps  # noqa: E402
from discadapt.losses import attention_shares  # noqa: E402
from discadapt.losses.grounding import uniform_shares  # noqa: E402
from discadapt.scoring import add_noise, encode_images  # noqa: E402
from discadapt.text import encode_text  # noqa: E402
from discadapt.train.data import phrase_token_mask  # noqa: E402
from discadapt.worlds.shapes.adapter_data import ShapeWorldItems  # noqa: E402

CATEGORIES = ("two_objects", "counting", "spatial")


def shares(pipe, items: list[dict], timesteps, seed: int = 0) -> dict:
    """`{t: (share, uniform)}`: the mean share of the phrases' attention in their boxes, and a uniform map's."""
    latents = encode_images(pipe, [item["image"] for item in items])
    text = encode_text(pipe, [item["caption"] for item in items])
    length = text.encoder_hidden_states.shape[1]
    boxes = [torch.tensor(item["boxes"]) for item in items]
    words = [phrase_token_mask(pipe.tokenizer, item["phrase"], item["box_spans"], length) for item in items]
    found = {}
    for t in timesteps:
        noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(seed + t))
        steps = torch.full((len(items),), t)
        x_t = add_noise(pipe.scheduler.alphas_cumprod, latents, noise, steps)
        with CrossAttentionMaps(pipe.unet) as maps:
            pipe.unet(x_t, steps, text.encoder_hidden_states)
        grids = [CrossAttentionMaps.grid(m.shape[1], *latents.shape[-2:]) for m in maps]
        found[t] = (attention_shares(list(maps), grids, boxes, words).mean().item(),
                    uniform_shares(grids, boxes, words).mean().item())  # fmt: skip
    return found


def only_phrase(item: dict, k: int) -> dict:
    """`item` with phrase `k`'s boxes and words only (the first phrase of a spatial caption names the object before
    the relation's words, the second the one after)."""
    return {**item, "boxes": item["boxes"][k : k + 1], "box_spans": item["box_spans"][k : k + 1]}


def per_phrase(pipe, items: list[dict], timesteps) -> dict:
    """`{"first" | "second": {t: share}}`: `shares` of each spatial scene's first and second phrase alone."""
    return {
        name: {t: share for t, (share, _) in shares(pipe, [only_phrase(it, k) for it in items], timesteps).items()}
        for k, name in enumerate(("first", "second"))
    }


@torch.no_grad()
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", nargs="*", default=["bundled"], help="stage-2 variants, as tuned_variants.py's --runs")
    p.add_argument("--n", type=int, default=200, help="scenes (cycling through the three categories)")
    p.add_argument("--t", type=int, nargs="+", default=[100, 300, 500, 700, 900])
    p.add_argument("--boxes", choices=["objects", "planned"], default="objects",
                   help="the objects' boxes, or the halves a spatial caption plans (spatial scenes only)")  # fmt: skip
    p.add_argument("--split", default="train", help="train (to choose on), test_id or test_ood")
    p.add_argument("--threads", type=int)
    p.add_argument("--json")
    args = p.parse_args(argv)
    set_threads(args.threads)
    categories = CATEGORIES if args.boxes == "objects" else ("spatial",)
    data = ShapeWorldItems(
        args.n, split=args.split, categories=categories, negative_images=False, phrase_boxes=args.boxes
    )
    items = [data[i] for i in range(args.n)]
    pipes = pipelines({variant_name(v): v for v in args.variants})
    results = {name: shares(pipe, items, args.t) for name, pipe in pipes.items()}
    where = "its objects' boxes" if args.boxes == "objects" else "the half its relation plans"
    print(f"share of each phrase's cross-attention in {where}, {args.n} {args.split} scenes")
    print(f"{'':<40}" + "".join(f"{f't={t}':>9}" for t in args.t))
    print(f"{'uniform map':<40}" + "".join(f"{results['base'][t][1]:>9.3f}" for t in args.t))
    for name, found in results.items():
        print(f"{name:<40}" + "".join(f"{found[t][0]:>9.3f}" for t in args.t))
    if args.boxes == "planned":  # each phrase alone: the first's words cannot know the relation (causal text encoder)
        results = {name: {"both": found, **per_phrase(pipes[name], items, args.t)} for name, found in results.items()}
        for name, found in results.items():
            for phrase in ("first", "second"):
                print(f"{name + ' ' + phrase:<40}" + "".join(f"{found[phrase][t]:>9.3f}" for t in args.t))
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "shares": results}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
