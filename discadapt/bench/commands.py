"""`discadapt bench`: the bundled benchmark evaluations from the command line.

    discadapt bench run --suite ../shared/data/prompts/t2i-compbench/color_val.txt --pipeline /models/sd15 \
        --metric clip=/models/clip-vit-large-patch14 --metric blip-vqa=/models/blip-vqa-base --limit 50 --out bench-out
    discadapt bench run --suite shapes [demo options]     the shapes world's demo (`discadapt demo`), same numbers
    accelerate launch --num_processes 2 -m discadapt bench run ...   the prompts' batches shared by 2 processes
    discadapt bench compare A/results.json B/results.json  paired differences of the methods two runs share
    discadapt bench discriminate --pipeline DIR --adapter DIR DATA --out DIR   ITM / REC accuracy (discriminate.py)

`--suite` takes prompt-list files or folders of them (T2I-CompBench `<category>_val.txt`, CC-500, ABC-6K: one
category per file), a COCO captions JSON, or a suite a plug-in registered with its own methods ("shapes", whose
options are `discadapt demo`'s). `--methods` lists what is compared, the first being the baseline: `base`,
`tuned` (`--lora DIR`), `self-correction` (`--adapter DIR`, `--correction-*`), `tuned+self-correction`.

`--metric` names an evaluator, once per metric, built before the pipeline loads so that missing weights fail
before any image is drawn (`metric_specs.py` lists the names). The run resumes in `--out`: images, verdicts and
scores are kept per batch, and a rerun draws only what is missing. A job sized for a GPU on a machine without one
is refused with the suggestion `--device cpu --limit N`.
"""

from __future__ import annotations

import os
import time

from ..arguments import int_at_least, number_at_least
from ..plugins import add_pipeline_arguments, pipeline_from_args, registry, source_name
from .discriminate import add_command as add_discriminate_command

__all__ = ["METHODS", "add_commands", "compare", "gpu_sized"]

METHODS = ("base", "tuned", "self-correction", "tuned+self-correction")
CPU_IMAGES = 64  # images a CPU run draws without `--limit` before a large UNet counts as sized for a GPU
LARGE_UNET = 200e6  # parameters: SD 1.5's UNet has 860M, the shapes world's 4M
DEFAULTS = {"steps": 50, "guidance": 7.5, "seed": 0, "batch_size": 8, "images_per_prompt": 1}
GPU_FIX = "this run is sized for a GPU: run it on one, or try it here with `--device cpu --limit N` (N prompts each)"


def gpu_sized(unet_parameters: int, n_images: int, device: str) -> str | None:
    """Why a job is too large for this device (None if it is not): a UNet of `LARGE_UNET` parameters or more
    drawing more than `CPU_IMAGES` images on the CPU."""
    if device.split(":")[0] != "cpu" or unet_parameters < LARGE_UNET or n_images <= CPU_IMAGES:
        return None
    return (
        f"the run draws {n_images} images with a {unet_parameters / 1e6:.0f}M-parameter UNet on the CPU (minutes per "
        f"image); {GPU_FIX}, e.g. --limit {max(1, CPU_IMAGES // 8)}"
    )


def _methods(args) -> list[str]:
    names = [m.strip() for m in args.methods.split(",") if m.strip()]
    for name in names:
        if name not in METHODS:
            raise ValueError(f"`--methods` names {name!r}; pick from {', '.join(METHODS)} (comma-separated).")
    if len(set(names)) != len(names) or not names:
        raise ValueError(f"`--methods` is {args.methods!r}; name each method once, e.g. base,self-correction.")
    if any("tuned" in n for n in names) and not args.lora:
        raise ValueError("`--methods` includes a tuned method; pass its LoRA with --lora DIR.")
    if any("self-correction" in n for n in names) and not args.adapter:
        raise ValueError("`--methods` includes self-correction; pass the adapter with --adapter DIR.")
    return names


def _suite(args, metrics):
    from .suites import coco_suite, prompt_list_suite

    options = dict(metrics=metrics, images_per_prompt=args.images_per_prompt, seed=args.seed, limit=args.limit)
    if len(args.suite) == 1 and str(args.suite[0]).endswith(".json"):
        return coco_suite(args.suite[0], **options)
    return prompt_list_suite(args.suite, **options)


def _method_functions(pipe, names: list[str], args) -> dict:
    """name -> `(prompts, seeds) -> images` for each method, the LoRA switched on only for the tuned ones."""
    from ..adapter import DiscriminativeAdapter
    from ..loading import load_lora
    from ..sampling import SelfCorrectingPipeline
    from .methods import pipeline_method

    if args.lora:
        load_lora(pipe, args.lora, "--lora")
    corrected = None
    if args.adapter:
        adapter = DiscriminativeAdapter.from_pretrained(args.adapter).to(args.device)
        correction = dict(scale=args.correction_scale, mode=args.correction_mode, start=args.correction_start,
                          stop=args.correction_stop, normalize=args.correction_normalize)  # fmt: skip
        corrected = SelfCorrectingPipeline.from_pipe(pipe, adapter=adapter, correction=correction)
    out = {}
    for name in names:
        generate = pipeline_method(corrected if "self-correction" in name else pipe, args.steps, args.guidance)
        out[name] = _with_lora(pipe, generate, "tuned" in name) if args.lora else generate
    return out


def _with_lora(pipe, generate, enabled: bool):
    def method(prompts, seeds):
        (pipe.enable_lora if enabled else pipe.disable_lora)()
        return generate(prompts, seeds)

    return method


def _fid(args):
    """The FID table of `--fid-reference DIR --fid-weights FILE`, its weights and reference checked now."""
    from ..metrics import FID
    from .fid_table import fid_table, reference_images

    if not (args.fid_reference and args.fid_weights):
        raise ValueError("FID needs both --fid-reference DIR (real images) and --fid-weights FILE (Inception weights).")
    FID(args.fid_weights)  # the file and torch-fidelity, before any image is drawn
    return fid_table(lambda: FID(args.fid_weights), reference_images(args.fid_reference, args.fid_size))


def _plugin_run(args, rest: list[str]) -> int:
    """`--suite NAME` of a plug-in that runs its own suite (the shapes world: `discadapt demo`), with the options
    given here translated and the rest passed on."""
    given = {"--out": args.out, "--device": args.device, "--seed": args.seed, "--steps": args.steps,
             "--guidance": args.guidance, "--batch-size": args.batch_size,
             "--images-per-prompt": args.images_per_prompt, "--n-prompts": args.limit,
             "--pipeline": args.pipeline}  # fmt: skip
    argv = [str(v) for flag, value in given.items() if value is not None for v in (flag, value)]
    argv += ["--restart"] * args.restart + ["--no-progress"] * args.no_progress
    return registry().runners[args.suite[0]](argv + rest)


def run(args) -> int:
    """`discadapt bench run` (see the module docstring); `args.rest`: options the parser did not know, passed on to
    a plug-in's suite."""
    from .metric_specs import make_metrics

    rest = getattr(args, "rest", [])
    if len(args.suite) == 1 and args.suite[0] in registry().runners:
        return _plugin_run(args, rest)
    if rest:
        raise ValueError(f"unknown options {' '.join(rest)}; see `discadapt bench run --help`.")
    if not args.pipeline and source_name(args) is None:
        flags = ", ".join(f"--{n}" for n in ("tiny", *registry().sources))
        raise ValueError(f"`--suite {' '.join(args.suite)}` needs a pipeline; pass --pipeline DIR (or {flags}).")
    started = time.perf_counter()
    for name, default in DEFAULTS.items():  # the defaults of a run on a real pipeline (a plug-in has its own)
        setattr(args, name, default if getattr(args, name) is None else getattr(args, name))
    # 1. what runs and what scores, checked before anything loads: the methods, the metrics' weights, the suite
    names = _methods(args)
    from accelerate import PartialState

    state = PartialState(cpu=args.device == "cpu")  # the processes of `accelerate launch`; one without it
    if args.device == "cuda" and state.num_processes > 1:
        args.device = str(state.device)  # one GPU per process
    pipe = None
    metrics = make_metrics(args.metric or [], lambda: pipe, args.device)
    suite = _suite(args, metrics)
    image_tables = [_fid(args)] if args.fid_reference or args.fid_weights else []
    # 2. the pipeline, refused when it is sized for a GPU this machine lacks
    pipe = pipeline_from_args(args)
    parameters = sum(p.numel() for p in pipe.unet.parameters())
    too_large = None if args.limit else gpu_sized(parameters, len(suite.jobs()), args.device)
    if too_large:
        raise ValueError(too_large)
    pipe = pipe.to(args.device)
    pipe.set_progress_bar_config(disable=True)
    methods = _method_functions(pipe, names, args)
    # 3. the runner, sharded over the processes of `accelerate launch` (one process: a shard of one)
    from .runner import run_suite

    source = os.path.abspath(args.pipeline) if args.pipeline else source_name(args)
    settings = {"pipeline": source, "steps": args.steps, "guidance": args.guidance, "lora": args.lora,
                "adapter": args.adapter, "limit": args.limit}  # fmt: skip
    if args.adapter:  # a resumed run must correct as this one does
        settings["correction"] = {k: getattr(args, f"correction_{k}") for k in ("scale", "mode", "start", "stop",
                                                                               "normalize")}  # fmt: skip
    run_suite(suite, methods, args.out, batch_size=args.batch_size, settings=settings, resume=not args.restart,
              progress=not args.no_progress and state.is_local_main_process, started=started,
              shard=(state.process_index, state.num_processes), barrier=state.wait_for_everyone,
              image_tables=image_tables)  # fmt: skip
    return 0


def compare(args) -> int:
    """`discadapt bench compare A B [--pair A_METHOD:B_METHOD]`: B's differences to A per method the runs share, or
    per named pair (`bench.compare`)."""
    from .compare import compare_runs

    pairs = None
    if args.pair:
        pairs = [tuple(pair.split(":", 1)) for pair in args.pair]
        bad = [pair for pair, split in zip(args.pair, pairs) if len(split) != 2 or not all(split)]
        if bad:
            raise ValueError(f"`--pair` is {bad[0]!r}; pass A_METHOD:B_METHOD, e.g. --pair base:tuned.")
    for table in compare_runs(args.a, args.b, pairs):
        print(table.format(), end="\n\n")
    return 0


def add_commands(subparsers) -> None:
    """Register `bench run` and `bench compare` on the `discadapt` parser's subparsers."""
    bench = subparsers.add_parser("bench", help="benchmark evaluations: suites x methods x metrics, reports")
    commands = bench.add_subparsers(dest="bench_command", required=True)
    r = commands.add_parser("run", help="generate, score and report a suite for one or more methods (resumable)")
    r.add_argument("--suite", nargs="+", required=True, help="prompt files or folders, a COCO captions JSON, or shapes")
    add_pipeline_arguments(r, required=False)  # a plug-in's suite brings its own (the shapes world's)
    r.add_argument("--out", required=True, help="output folder: manifest.json, batches/, results.json, report.html")
    r.add_argument("--methods", default="base", help=f"comma-separated, the first the baseline: {', '.join(METHODS)}")
    r.add_argument("--metric", action="append", help="an evaluator, e.g. clip=DIR, blip-vqa=DIR, detector=DIR")
    r.add_argument("--limit", type=int_at_least(1), help="the first N prompts of each category (default all)")
    r.add_argument("--images-per-prompt", type=int_at_least(1), help="images per prompt (default 1)")
    r.add_argument("--steps", type=int_at_least(1), help="denoising steps (default 50)")
    r.add_argument("--guidance", type=number_at_least(0), help="classifier-free guidance (default 7.5)")
    r.add_argument("--seed", type=int_at_least(0), help="seed of the images' noise and the bootstrap (default 0)")
    r.add_argument("--batch-size", type=int_at_least(1), help="images per pipeline call (default 8)")
    r.add_argument("--fid-reference", help="folder of real images: each method's FID against them")
    r.add_argument("--fid-weights", help="FID Inception weights file (pt_inception-2015-12-05-6726825d.pth)")
    r.add_argument("--fid-size", type=int_at_least(1), default=299, help="side real images are resized to (299)")
    r.add_argument("--lora", help="LoRA folder of the tuned methods")
    r.add_argument("--adapter", help="discriminative adapter folder of the self-correction methods")
    r.add_argument("--correction-scale", type=number_at_least(0), default=0.5)
    r.add_argument("--correction-mode", choices=["plain", "reuse", "input"], default="plain")
    r.add_argument("--correction-start", type=float, default=0.0)
    r.add_argument("--correction-stop", type=float, default=0.6)
    r.add_argument("--correction-normalize", choices=["none", "unit", "clip"], default="none")
    r.add_argument("--device", default="cpu", help="torch device (default cpu)")
    r.add_argument("--restart", action="store_true", help="discard an earlier run in --out instead of continuing it")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    r.set_defaults(func=run, device_fix=GPU_FIX, extra_options=True)
    add_discriminate_command(commands)
    c = commands.add_parser("compare", help="paired differences between the methods of two runs' results.json")
    c.add_argument("a", help="the first run's results.json (the reference)")
    c.add_argument("b", help="the second run's results.json (or A again, to compare two of its methods)")
    c.add_argument(
        "--pair",
        action="append",
        metavar="A_METHOD:B_METHOD",
        help="a method of A and one of B to compare (repeatable; default each method both hold, with itself)",
    )
    c.set_defaults(func=compare)
