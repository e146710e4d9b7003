"""T2I-CompBench colour and spatial prompts on a local Stable Diffusion (1.5 or XL) pipeline, with and without
self-correction, scored by CLIP score, BLIP-VQA and GenEval-style detector checks, with paired intervals.

    python examples/compbench_self_correction.py --pipeline /models/stable-diffusion-v1-5 \
        --adapter runs/probe/adapter --clip /models/clip-vit-large-patch14 --blip /models/blip-vqa-base \
        --detector /models/owlv2-base-patch16-ensemble --limit 50 --device cuda --out compbench-out

Every path is a local folder (nothing is downloaded). Without evaluator folders the pipeline's own denoising score is
the only metric; `--tiny` runs the whole thing in seconds on the tiny random pipeline and an untrained adapter (a
smoke test of the API, not a result). The same run from the command line:

    discadapt bench run --suite ../shared/data/prompts/t2i-compbench/color_val.txt \
        ../shared/data/prompts/t2i-compbench/spatial_val.txt --pipeline DIR --methods base,self-correction \
        --adapter DIR --metric clip=DIR --metric blip-vqa=DIR --metric detector=DIR --limit 50 --out DIR
"""

import argparse
from pathlib import Path

from discadapt import DiscriminativeAdapter, SelfCorrectingPipeline
from discadapt.bench import pipeline_method, run_suite
from discadapt.bench.suites import prompt_list_suite
from discadapt.evaluators import BLIPVQAScorer, CLIPScorer, DetectionScorer
from discadapt.loading import load_pipeline
from discadapt.scorers import DenoisingScorer

PROMPTS = Path(__file__).resolve().parents[2] / "shared" / "data" / "prompts" / "t2i-compbench"

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--pipeline", help="local diffusers pipeline folder")
parser.add_argument("--tiny", action="store_true", help="the tiny random pipeline and an untrained adapter")
parser.add_argument("--adapter", help="a trained discriminative adapter folder (discadapt probe / tune)")
parser.add_argument("--clip", help="transformers CLIP folder (CLIP score)")
parser.add_argument("--blip", help="transformers BLIP VQA folder (BLIP-VQA)")
parser.add_argument("--detector", help="OWLv2 / OWL-ViT / Grounding DINO / DETR folder (object checks)")
parser.add_argument("--prompts", default=str(PROMPTS), help="folder of T2I-CompBench's <category>_val.txt")
parser.add_argument("--limit", type=int, default=50, help="prompts per category")
parser.add_argument("--steps", type=int, default=50)
parser.add_argument("--scale", type=float, default=0.5, help="self-correction step size")
parser.add_argument("--device", default="cpu")
parser.add_argument("--out", default="compbench-out")
args = parser.parse_args()

# 1. the pipeline and the adapter (an untrained one on the tiny pipeline)
if args.tiny:
    from discadapt.testing import tiny_sd_pipeline

    pipe = tiny_sd_pipeline(seed=0)
    adapter = DiscriminativeAdapter.for_pipeline(pipe, hidden_size=32, num_heads=2)
    args.steps, args.limit = min(args.steps, 4), min(args.limit, 2)
else:
    pipe = load_pipeline(args.pipeline)
    adapter = DiscriminativeAdapter.from_pretrained(args.adapter)
pipe = pipe.to(args.device)
pipe.set_progress_bar_config(disable=True)
corrected = SelfCorrectingPipeline.from_pipe(pipe, adapter=adapter.to(args.device),
                                             correction={"scale": args.scale, "stop": 0.6})  # fmt: skip

# 2. the metrics: evaluators from local folders, else the pipeline's own denoising score
metrics = []
if args.clip:
    metrics.append(CLIPScorer.from_pretrained(args.clip, device=args.device, scale=100.0, name="CLIP score"))
if args.blip:
    metrics.append(BLIPVQAScorer.from_pretrained(args.blip, device=args.device))
if args.detector:
    metrics.append(DetectionScorer.from_pretrained(args.detector, device=args.device))
metrics = metrics or [DenoisingScorer(pipe, name="denoising score")]

# 3. the suite (colour and spatial prompts, as they are in the public files) and the run: tables, report.html
folder = Path(args.prompts)
suite = prompt_list_suite([folder / "color_val.txt", folder / "spatial_val.txt"], metrics=metrics, limit=args.limit)
methods = {
    "base": pipeline_method(pipe, args.steps, 7.5),
    "self-correction": pipeline_method(corrected, args.steps, 7.5),
}
results = run_suite(suite, methods, args.out, batch_size=4, settings={"steps": args.steps, "scale": args.scale})
for name, found in results["methods"]["self-correction"]["metrics"].items():
    print(f"self-correction - base, {name}: {found['difference_to_base']['all']}")
