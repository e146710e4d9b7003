"""Probing a local Stable Diffusion pipeline on COCO hard negatives: train a discriminative adapter on a frozen UNet
(stage 1, `discadapt probe`), then measure its image-text matching against NegCLIP-style hard negatives on held-out
captions (`discadapt bench discriminate`): how much the T2I model already "understands".

    python examples/probe_coco_negatives.py --pipeline /models/stable-diffusion-v1-5 \
        --train-captions coco/captions_train2017.json --train-images coco/train2017 \
        --val-captions coco/captions_val2017.json --val-images coco/val2017 --val-negatives negclip_val.json \
        --steps 5000 --device cuda --out runs/coco-probe

Nothing is downloaded: the pipeline and COCO are local folders; the negatives file maps annotation ids to
`neg_captions` / `neg_image_ids` (format in `discadapt.data.coco`). `--tiny` runs both steps in a minute on the
tiny random pipeline and a ShapeWorld sample (a smoke test, not a result).
"""

import argparse
import sys

from discadapt.cli import main

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--pipeline", help="local diffusers pipeline folder")
parser.add_argument("--tiny", action="store_true", help="the tiny random pipeline on ShapeWorld items")
parser.add_argument("--train-captions"), parser.add_argument("--train-images")
parser.add_argument("--val-captions"), parser.add_argument("--val-images"), parser.add_argument("--val-negatives")
parser.add_argument("--steps", type=int, default=5000)
parser.add_argument("--limit", type=int, default=1000, help="held-out items evaluated")
parser.add_argument("--device", default="cpu")
parser.add_argument("--out", default="runs/coco-probe")
args = parser.parse_args()

source = ["--tiny"] if args.tiny else ["--pipeline", args.pipeline]
train = ["--shapes", "16"] if args.tiny else ["--captions", args.train_captions, "--images", args.train_images]
held_out = ["--shapes", "8"] if args.tiny else ["--captions", args.val_captions, "--images", args.val_images,
                                                "--negatives", args.val_negatives]  # fmt: skip
steps = ["--steps", "2", "--batch-size", "4"] if args.tiny else ["--steps", str(args.steps)]
# 1. stage 1: the adapter learns on the frozen UNet (resumable: rerun to continue)
code = main(["probe", *source, *train, *steps, "--out", args.out])  # on the GPUs accelerate finds
# 2. its ITM accuracy against the hard negatives of held-out captions, with intervals
evaluate = ["--adapter", f"{args.out}/adapter", "--limit", str(args.limit), "--device", args.device]
code = code or main(["bench", "discriminate", *source, *held_out, *evaluate, "--out", f"{args.out}/discriminate"])
sys.exit(code)
