"""Issue 12, hypothesis 3: can a layout term for self-correction read where the phrases of a spatial prompt are, at
the noise levels where the correction acts? Measured on rendered ShapeWorld spatial scenes ("A RELATION B"),
each noised once at timestep t, as a sampler's latent is; for each readout, the fraction of scenes where the
phrases' read positions satisfy the caption's relation (chance about 0.5; what a correction term needs to push the
right way):

- `rec`: the adapter's REC head, the UNet conditioned on each phrase as a referring expression ("the red circle"),
  the most confident query's box; also how often that box finds the phrase's object (IoU >= 0.5);
- `rec soft`: the same, each query's box centre weighted by its p(object) (the differentiable form);
- `influence`: no adapter: where each phrase changes the UNet's noise prediction, ||eps(x_t, p) - eps(x_t, "")||^2
  per latent pixel, its share in the phrase's planned half (`scorers.LayoutScorer`, what the layout term of
  `layout_correction.py` ascends: a sampler can read it, no clean image is needed), right when the caption's
  layout scores above the swapped relation's.

    python benchmarks/layout_probe.py --adapter runs/probe-curve/adapter-6000 --split train --n 200 --t 250 500 750

Settings chosen from this are chosen on the train split; `--split test_id` / `test_ood` report held-out scenes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import set_threads  # noqa: E402


def holds(relation: str, first, second) -> bool:
    """Whether centres `first` and `second` (x, y in image fractions) satisfy `relation`."""
    axis, sign = {"left of": (0, -1), "right of": (0, 1), "above": (1, -1), "below": (1, 1)}[relation]
    return bool(sign * (first[axis] - second[axis]) > 0)


FLIP = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


@torch.no_grad()
def measure(pipe, adapter, examples, t: int, seed: int = 0, batch: int = 100) -> dict:
    from discadapt.losses import box_cxcywh_to_xyxy, box_iou
    from discadapt.probe import FeatureProbe
    from discadapt.scorers import LayoutScorer
    from discadapt.scoring import add_noise, encode_images
    from discadapt.text import encode_text, get_unet, unet_text_kwargs
    from discadapt.worlds.shapes.captions import Caption
    from discadapt.worlds.shapes.render import render

    unet = get_unet(pipe)
    influence = LayoutScorer(pipe, t=t)
    found = {"influence": [], "rec": [], "rec soft": [], "rec iou": []}
    generator = torch.Generator().manual_seed(seed)
    for start in range(0, len(examples), batch):
        part = examples[start : start + batch]
        captions = [e.caption for e in part]
        images = np.stack([render(e.scene) for e in part])
        # the layout term's readout: the caption's planned halves against the swapped relation's
        swapped = [Caption("spatial", c.phrases, relation=FLIP[c.relation]).text for c in captions]
        right = influence.score(images, [c.text for c in captions]) > influence.score(images, swapped)
        found["influence"] += right.tolist()
        if adapter is None:
            continue
        # the adapter's REC head, the UNet conditioned on each phrase as a referring expression
        x0 = encode_images(pipe, torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255)
        n = len(part)
        ts = torch.full((2 * n,), t, dtype=torch.long)
        noise = torch.randn(x0.shape, generator=generator).to(x0)
        xt = add_noise(pipe.scheduler.alphas_cumprod, torch.cat([x0, x0]), torch.cat([noise, noise]), ts)
        texts = encode_text(pipe, [f"the {c.phrases[k].words()}" for k in (0, 1) for c in captions])
        probe = FeatureProbe(unet, adapter.config.layers, detach=True, early_exit=True)
        feats = probe(xt, ts, texts.encoder_hidden_states, **unet_text_kwargs(pipe, texts, xt))
        out = adapter(feats, ts, text_tokens=texts.encoder_hidden_states)
        prob = out.rec_logits.float().softmax(-1)[..., 0]  # (2n, Q) p(object)
        best = out.boxes[torch.arange(2 * n), prob.argmax(1)].float()  # (2n, 4) cxcywh
        soft = (prob[..., None] * out.boxes[..., :2].float()).sum(1) / prob.sum(1, keepdim=True)
        for k, c in enumerate(captions):
            found["rec"].append(holds(c.relation, best[k, :2], best[n + k, :2]))
            found["rec soft"].append(holds(c.relation, soft[k], soft[n + k]))
            for j, phrase in enumerate(c.phrases):
                target = next(o for o in part[k].scene.objects if (o.shape, o.color) == (phrase.shape, phrase.color))
                box = torch.tensor(target.box, dtype=torch.float32)[None] / target.image_size
                found["rec iou"].append(bool(box_iou(box_cxcywh_to_xyxy(best[j * n + k][None]), box)[0, 0] >= 0.5))
    return {name: float(np.mean(v)) for name, v in found.items() if v}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--adapter", default=None, help="adapter folder (default: the bundled stage-1 adapter)")
    p.add_argument("--no-adapter", action="store_true", help="only the influence readout")
    p.add_argument("--split", default="train")
    p.add_argument("--n", type=int, default=200, help="spatial scenes")
    p.add_argument("--t", type=int, nargs="+", default=[250, 500, 750])
    p.add_argument("--json", default=None)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    set_threads(args.threads)
    from discadapt import DiscriminativeAdapter
    from discadapt.worlds.shapes import load_pipeline
    from discadapt.worlds.shapes.dataset import make_dataset
    from discadapt.worlds.shapes.rows import bundled_adapter

    pipe = load_pipeline()
    adapter = None
    if not args.no_adapter:
        adapter = DiscriminativeAdapter.from_pretrained(args.adapter) if args.adapter else bundled_adapter()
        adapter.eval()
    examples = make_dataset(args.n, split=args.split, categories=["spatial"])
    results = {t: measure(pipe, adapter, examples, t) for t in args.t}
    which = "no adapter" if adapter is None else f"adapter {args.adapter or 'bundled'}"
    print(f"{args.n} {args.split} spatial scenes; {which}")
    for t, row in results.items():
        print(f"t={t}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items()))
    if args.json:
        Path(args.json).write_text(json.dumps({str(t): r for t, r in results.items()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
