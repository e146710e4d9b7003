"""The shapes world's trained models, shipped inside the package and loaded offline.

Layout of `discadapt/worlds/shapes/weights/<name>/` (one folder per bundled model, `name` "world" for the
text-to-image pipeline):

- `manifest.json`: what the model is (`kind`), its training config (`WorldTrainConfig.to_dict()`), the training
  step, extra fields (the VAE `scaling_factor`), and the sha256 of every weight file, so that a corrupt file is
  named as such rather than loading as noise.
- `<component>.safetensors`: float16 weights of each component (VAE, text encoder, UNet); loaded as float32.

The text encoder's token embedding holds the full 49,408-token CLIP vocabulary, but the world uses about fifty of
those tokens. Training leaves the other rows at their seeded initial values (no gradient, no weight decay), so the
bundle stores only the used rows (`token_embedding.ids`, `token_embedding.rows`) and `load_pipeline` rebuilds the
rest from the training seed: the loaded text encoder equals the trained one, in about 1 MB instead of 12.

Rebuilding: `discadapt world train --out RUN` retrains the models from their seed; `discadapt world bundle RUN`
writes them here (from the finished run's `RUN/world/pipeline` and `RUN/clip/model`). The loaders build the models
with `models.py` (and `clip.model`), never with the trainers.

Example:
    >>> from discadapt.worlds.shapes import load_pipeline
    >>> pipe = load_pipeline()  # doctest: +SKIP
    >>> pipe("a red circle to the left of a blue square", num_inference_steps=25).images[0]  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ...io import replace_dir

__all__ = [
    "WEIGHTS_DIR",
    "BundleError",
    "bundle_adapter",
    "bundle_clip",
    "bundle_interaction",
    "bundle_lora",
    "bundle_world",
    "load_adapter",
    "load_clip",
    "load_interaction",
    "load_lora",
    "load_pipeline",
    "read_bundle",
    "write_bundle",
]

WEIGHTS_DIR = Path(__file__).parent / "weights"
_REBUILD = "discadapt world train --out RUN && discadapt world bundle RUN"
REBUILD = {
    "world": _REBUILD,
    "clip": _REBUILD,
    "adapter": "discadapt probe --world --out RUN && discadapt world bundle --probe RUN",
    "lora": (
        "discadapt tune --world --out RUN && discadapt world bundle --tune RUN (then `discadapt world bundle --stack "
        "LORA` for each LoRA its manifest's `stack` names)"
    ),
    "tuned_adapter": (
        "python benchmarks/probe_curve.py --tuned --unstacked --out RUN --at 1500 && discadapt world bundle "
        "--tuned-adapter RUN/adapter-1500"
    ),
    "interaction": "python benchmarks/augment_shapes.py --out RUN ... && discadapt world bundle --augment RUN",
}
_LORA_FILE = "pytorch_lora_weights.safetensors"  # diffusers' default LoRA weight name
_EMBEDDING = "embeddings.token_embedding.weight"  # CLIPTextModel state-dict key of the token embedding
_CLIP_EMBEDDING = "text_model." + _EMBEDDING  # CLIPModel's


class BundleError(FileNotFoundError):
    """A bundled weight file is missing or corrupt; the message names the file and the command that rebuilds it."""


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_bundle(
    dest: str | os.PathLike, manifest: dict, components: dict[str, dict[str, torch.Tensor]], half: bool = True
) -> Path:
    """Write `components` (name -> state dict) as safetensors plus `manifest.json` with their sha256, atomically:
    a reader sees the old bundle or the new one, never a mix.

    Args:
        dest (str | PathLike): bundle folder (replaced).
        manifest (dict): JSON-ready description; `files` is added.
        components (dict[str, dict[str, Tensor]]): state dicts.
        half (bool): store floating tensors as float16 (others as they are). Default True.
    """

    def write(folder: Path) -> None:
        files = {}
        for name, state in components.items():
            stored = {
                k: (v.half() if half and v.is_floating_point() else v).contiguous().cpu() for k, v in state.items()
            }
            save_file(stored, folder / f"{name}.safetensors")
            files[name] = _sha256(folder / f"{name}.safetensors")
        (folder / "manifest.json").write_text(json.dumps({**manifest, "files": files}, indent=1))

    return replace_dir(dest, write)  # permissions 0o755 / 0o644, as the files of a pip install


def read_bundle(name: str, root: str | os.PathLike | None = None) -> tuple[dict, dict[str, dict[str, torch.Tensor]]]:
    """The manifest and float32 state dicts of bundle `name`, every file checked against its sha256.

    Raises:
        BundleError: a missing manifest or weight file, or one whose content does not match (names the file and
            the command that rebuilds it).
    """
    folder = Path(WEIGHTS_DIR if root is None else root) / name
    rebuild = REBUILD.get(name, "the command that trained it")
    manifest_path = folder / "manifest.json"
    if not manifest_path.is_file():
        raise BundleError(f"{manifest_path} is missing: the '{name}' models are not bundled; rebuild with `{rebuild}`.")
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise BundleError(f"{manifest_path} is corrupt ({err}); rebuild with `{rebuild}`.") from None
    components = {}
    for component, digest in files.items():
        path = folder / f"{component}.safetensors"
        if not path.is_file():
            raise BundleError(f"{path} is missing; rebuild with `{rebuild}`.")
        if _sha256(path) != digest:
            raise BundleError(f"{path} is corrupt (sha256 differs from {manifest_path}); rebuild with `{rebuild}`.")
        try:
            state = load_file(path)
        except SafetensorError as err:  # pragma: no cover - the checksum catches corruption first
            raise BundleError(f"{path} is corrupt ({err}); rebuild with `{rebuild}`.") from None
        components[component] = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    return manifest, components


def _sparse_embedding(state: dict, initial: torch.Tensor, key: str = _EMBEDDING) -> dict[str, torch.Tensor]:
    """`state` with the token embedding `key` replaced by the rows that differ from `initial` (ids and rows)."""
    weight = state[key]  # (V, D)
    ids = (weight != initial).any(dim=1).nonzero().flatten()  # (U,)
    rest = {k: v for k, v in state.items() if k != key}
    return {**rest, "token_embedding.ids": ids, "token_embedding.rows": weight[ids]}


def _dense_embedding(state: dict, initial: torch.Tensor, key: str = _EMBEDDING) -> dict[str, torch.Tensor]:
    """Inverse of `_sparse_embedding`."""
    state = dict(state)
    ids, rows = state.pop("token_embedding.ids"), state.pop("token_embedding.rows")
    weight = initial.clone()
    weight[ids] = rows.to(weight.dtype)
    return {**state, key: weight}


def _run_output(run_dir: Path, name: str, trainer: str) -> tuple[dict, dict]:
    """The training config (the run's record) and the step marker of the finished output `name` of a run folder."""
    record, marker = run_dir / "train_config.json", run_dir / name / "train_step.json"
    if not (record.is_file() and marker.is_file()):
        raise FileNotFoundError(
            f"{run_dir / name} is missing: {run_dir} is not a finished `{trainer}` run; finish it (or export an "
            "unfinished one), then bundle. Nothing was bundled."
        )
    return json.loads(record.read_text())["config"], json.loads(marker.read_text())


def bundle_world(run_dir: str | os.PathLike, dest: str | os.PathLike | None = None) -> Path:
    """Bundle the pipeline of a finished world training run (`run_dir/pipeline`: EMA UNet weights) as
    `weights/world`.

    Args:
        run_dir (str | PathLike): a finished `train_world` run folder.
        dest (str | PathLike | None): bundle folder. Default `WEIGHTS_DIR / "world"`.

    Raises:
        FileNotFoundError: `run_dir` holds no finished pipeline.
    """
    from diffusers import StableDiffusionPipeline

    from .models import ModelSizes, initial_models, split_sizes

    run_dir = Path(run_dir)
    config, marker = _run_output(run_dir, "pipeline", "discadapt world train")
    pipe = StableDiffusionPipeline.from_pretrained(run_dir / "pipeline", local_files_only=True, use_safetensors=True)
    sizes, rest = split_sizes(config)
    initial = initial_models(ModelSizes(**sizes), rest["seed"])[1].get_input_embeddings().weight.detach()
    manifest = {
        "kind": "world",
        "train_config": config,
        "step": marker["step"],
        "unet_steps": marker["unet_steps"],
        "scaling_factor": pipe.vae.config.scaling_factor,
    }
    components = {
        "vae": pipe.vae.state_dict(),
        "text_encoder": _sparse_embedding(pipe.text_encoder.state_dict(), initial),
        "unet": pipe.unet.state_dict(),
    }
    return write_bundle(WEIGHTS_DIR / "world" if dest is None else dest, manifest, components)


def load_pipeline(device: str | torch.device = "cpu", torch_dtype: torch.dtype = torch.float32, root=None):
    """The bundled shapes-world `StableDiffusionPipeline` (32 x 32 images), offline.

    Args:
        device (str | torch.device): where to put it. Default "cpu".
        torch_dtype (torch.dtype): parameter dtype. Default float32.
        root (str | PathLike | None): folder holding the `world` bundle. Default the package's `weights/`.

    Returns:
        StableDiffusionPipeline: VAE, CLIP text encoder and tokenizer, UNet, DDIM scheduler; progress bar off.

    Raises:
        BundleError: a missing or corrupt weight file (names it, and the command that rebuilds it).
    """
    from .models import ModelSizes, assemble_pipeline, initial_models, split_sizes

    manifest, components = read_bundle("world", root)
    sizes, rest = split_sizes(manifest["train_config"])
    vae, text_encoder, unet = initial_models(ModelSizes(**sizes), rest["seed"])
    initial = text_encoder.get_input_embeddings().weight.detach()
    vae.load_state_dict(components["vae"])
    text_encoder.load_state_dict(_dense_embedding(components["text_encoder"], initial))
    unet.load_state_dict(components["unet"])
    pipe = assemble_pipeline(vae, text_encoder, unet, manifest["scaling_factor"])
    if torch_dtype != torch.float32:
        pipe.to(dtype=torch_dtype)
    return pipe.to(device)


def bundle_clip(run_dir: str | os.PathLike, dest: str | os.PathLike | None = None) -> Path:
    """Bundle the world CLIP of a finished `train_world_clip` run (`run_dir/model`) as `weights/clip`.

    Args:
        run_dir (str | PathLike): a finished `train_world_clip` run folder.
        dest (str | PathLike | None): bundle folder. Default `WEIGHTS_DIR / "clip"`.

    Raises:
        FileNotFoundError: `run_dir` holds no finished model.
    """
    from transformers import CLIPModel

    from .clip import WorldClipConfig, make_world_clip

    run_dir = Path(run_dir)
    data, marker = _run_output(run_dir, "model", "discadapt world train")
    config = WorldClipConfig.from_dict(data)
    model = CLIPModel.from_pretrained(run_dir / "model", local_files_only=True, use_safetensors=True)
    initial = make_world_clip(config, config.seed).state_dict()[_CLIP_EMBEDDING]
    manifest = {"kind": "clip", "train_config": config.to_dict(), "step": marker["step"]}
    components = {"clip": _sparse_embedding(model.state_dict(), initial, _CLIP_EMBEDDING)}
    return write_bundle(WEIGHTS_DIR / "clip" if dest is None else dest, manifest, components)


def load_clip(device: str | torch.device = "cpu", root: str | os.PathLike | None = None):
    """The bundled world CLIP (`transformers.CLIPModel`, eval mode), offline; score with
    `discadapt.worlds.shapes.clip.clip_scores` / `clip_logits`.

    Raises:
        BundleError: a missing or corrupt weight file (names it, and the command that rebuilds it).
    """
    from .clip import WorldClipConfig, make_world_clip

    manifest, components = read_bundle("clip", root)
    config = WorldClipConfig.from_dict(manifest["train_config"])
    model = make_world_clip(config, config.seed)
    initial = model.state_dict()[_CLIP_EMBEDDING]
    model.load_state_dict(_dense_embedding(components["clip"], initial, _CLIP_EMBEDDING))
    return model.to(device).eval()


def bundle_adapter(
    adapter_dir: str | os.PathLike, dest: str | os.PathLike | None = None, name: str = "adapter"
) -> Path:
    """Bundle a discriminative adapter trained on the bundled world (`save_pretrained` folder, e.g. the `adapter/`
    of a `discadapt probe --world` run) as `weights/<name>`, recording the world bundle's step it was trained on.
    `name` is "adapter" for the stage-1 adapter, "tuned_adapter" for the one trained with the stage-2 LoRA."""
    from ...adapter import DiscriminativeAdapter

    adapter = DiscriminativeAdapter.from_pretrained(adapter_dir)
    config = {k: v for k, v in adapter.config.items() if not k.startswith("_")}  # not _name_or_path etc.
    manifest = {"kind": "adapter", "config": config, "world_step": _world_step(dest)}
    return write_bundle(WEIGHTS_DIR / name if dest is None else dest, manifest, {"adapter": adapter.state_dict()})


def load_adapter(device: str | torch.device = "cpu", root: str | os.PathLike | None = None, name: str = "adapter"):
    """The bundled discriminative adapter of the world pipeline (`DiscriminativeAdapter`, eval mode), offline:
    bundle `name`, "adapter" (stage 1, reads the base UNet) or "tuned_adapter" (stage 2, reads the tuned UNet).

    Raises:
        BundleError: a missing or corrupt weight file (names it, and the command that rebuilds it).
    """
    from ...adapter import DiscriminativeAdapter

    manifest, components = read_bundle(name, root)
    config = {k: v for k, v in manifest["config"].items() if not k.startswith("_")}
    adapter = DiscriminativeAdapter(**config)
    adapter.load_state_dict(components["adapter"])
    return adapter.to(device).eval()


def _read_lora(lora_dir: str | os.PathLike) -> tuple[dict, dict[str, torch.Tensor]]:
    """`(metadata, tensors)` of the LoRA a `save_lora_weights` folder holds (diffusers' default file name)."""
    from safetensors import safe_open

    path = Path(lora_dir) / _LORA_FILE
    if not path.is_file():
        raise FileNotFoundError(f"No LoRA at {path}; pass the `lora` folder of a finished run.")
    with safe_open(path, framework="pt") as f:
        return f.metadata() or {}, {k: f.get_tensor(k) for k in f.keys()}


def _write_lora(folder: Path, tensors: dict, metadata: dict) -> Path:
    """`folder` (created) holding `tensors` as a `save_lora_weights` file with its diffusers `metadata`."""
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, folder / _LORA_FILE, metadata=metadata)
    return folder


def _attach_lora(pipe, tensors: dict, metadata: dict, name: str) -> None:
    """Attach a bundled LoRA to `pipe`'s UNet as adapter `name`, as `pipe.load_lora_weights` would (diffusers reads
    the adapter's rank and alpha from the file header, so it goes through a temporary file)."""
    with tempfile.TemporaryDirectory() as tmp:
        _write_lora(Path(tmp), tensors, metadata)
        pipe.unet.load_lora_adapter(tmp, prefix="unet", weight_name=_LORA_FILE, adapter_name=name)


def _world_step(dest) -> int | None:
    return json.loads((WEIGHTS_DIR / "world" / "manifest.json").read_text()).get("step") if dest is None else None


def _merged(folders: Sequence, scales: Sequence[float] | None = None) -> tuple[dict, dict[str, torch.Tensor]]:
    """`(metadata, tensors)` of `interaction.merge_loras(folders, scales)`: one LoRA of the weighted sum of updates."""
    from ...interaction import merge_loras

    with tempfile.TemporaryDirectory() as tmp:
        return _read_lora(merge_loras(folders, tmp, scales))


def bundle_lora(
    lora_dir: str | os.PathLike | None,
    dest: str | os.PathLike | None = None,
    soup: Sequence = (),
    stack: Sequence = (),
) -> Path:
    """Bundle a stage-2 LoRA of the world pipeline (a `save_lora_weights` folder, e.g. the `lora/` of a
    `discadapt tune --world` run) as `weights/lora`, in float32 with its diffusers metadata (rank, alpha). With `soup`
    (more such folders), the bundled LoRA is the mean of all their updates (`interaction.merge_loras`), its rank the
    sum of theirs, and the manifest names them.

    With `stack` (LoRAs trained on the tuned model, e.g. `benchmarks/reward_tuning.py`'s `lora-K`), the sum of their
    updates is bundled beside it, at full weight, as the `stack` component, which `load_lora` fuses on top.
    `lora_dir` None stacks them on the LoRA already bundled at `dest` (kept as it is, its stack included).

    Raises:
        ValueError: `lora_dir` None without `stack`.
        BundleError: stacking on a missing or corrupt bundle.
    """
    world_step = _world_step(dest)
    dest = WEIGHTS_DIR / "lora" if dest is None else Path(dest)
    stack, named = [Path(folder) for folder in stack], [str(Path(folder)) for folder in stack]
    with tempfile.TemporaryDirectory() as tmp:
        if lora_dir is None:
            if not stack:
                raise ValueError("`lora_dir` is None and `stack` is empty; pass a LoRA folder to bundle, or LoRAs "
                                 "to stack on the bundled one.")  # fmt: skip
            manifest, components = read_bundle(dest.name, dest.parent)
            manifest.pop("files")
            if "stack" in components:  # what is stacked already, first
                stack.insert(0, _write_lora(Path(tmp) / "stack", components["stack"], manifest["stack"]["metadata"]))
                named = manifest["stack"]["sources"] + named
            tensors = components["lora"]
        else:
            metadata, tensors = _merged([lora_dir, *soup]) if soup else _read_lora(lora_dir)
            manifest = {"kind": "lora", "metadata": metadata, "world_step": world_step}
            if soup:
                manifest["soup"] = [str(Path(folder)) for folder in (lora_dir, *soup)]
        components = {"lora": tensors}
        if stack:
            metadata, components["stack"] = _merged(stack, [1.0] * len(stack))
            manifest["stack"] = {"metadata": metadata, "sources": named}
    return write_bundle(dest, manifest, components, half=False)


def load_lora(pipe, root: str | os.PathLike | None = None, fuse: bool = True, scale: float = 1.0, stack: bool = True):
    """Load the bundled stage-2 LoRA into `pipe` (the bundled world pipeline) as `pipe.load_lora_weights` does, and
    by default fuse it into the UNet (its update times `scale`, 1 by default) and drop the LoRA layers, so generation
    costs what the base pipeline's does. The LoRAs stacked on it (`bundle_lora(stack=...)`) come with it, unless
    `stack` is False (the model they were trained on). Unfused, the adapters are `tuned` and `stacked`, both active
    at `scale`.

    Raises:
        BundleError: a missing or corrupt weight file (names it, and the command that rebuilds it).
    """
    manifest, components = read_bundle("lora", root)
    parts = [("tuned", components["lora"], manifest["metadata"])]  # the LoRA has no text-encoder part
    if stack and "stack" in components:
        parts.append(("stacked", components["stack"], manifest["stack"]["metadata"]))
    for name, tensors, metadata in parts:
        with warnings.catch_warnings():  # unfused, peft warns of the second adapter, which is what is meant here
            warnings.filterwarnings("ignore", message="Already found a `peft_config`", category=UserWarning)
            _attach_lora(pipe, tensors, metadata, name)
        if fuse:  # one at a time, as diffusers scales the active adapter only
            pipe.fuse_lora(components=["unet"], lora_scale=scale, adapter_names=[name])
            pipe.unload_lora_weights()
    if not fuse:
        pipe.set_adapters([name for name, _, _ in parts], [scale] * len(parts))
    return pipe


def bundle_interaction(
    run_dir: str | os.PathLike, dest: str | os.PathLike | None = None, rounds: int | None = None
) -> Path:
    """Bundle the enhancement LoRAs of an interaction loop on the world pipeline (a `discadapt augment` or
    `benchmarks/augment_shapes.py` run folder) as `weights/interaction`: rounds 1..`rounds` (default: every accepted
    round), each trained on the model with the rounds before it fused, in float32 with their diffusers metadata.

    Raises:
        FileNotFoundError: a missing `augment.json` or round.
        ValueError: no accepted round; `rounds` below 1, or beyond the rounds the loop's stop test accepted.
    """
    run = Path(run_dir)
    if not (run / "augment.json").is_file():
        raise FileNotFoundError(f"{run / 'augment.json'} is missing: pass the folder of an interaction loop run.")
    done = sorted(run.glob("round-*/done.json"))
    accepted = [json.loads(p.read_text()) for p in done]
    accepted = accepted[: next((k for k, r in enumerate(accepted) if not r["accepted"]), len(accepted))]
    if not accepted:
        raise ValueError(f"{run} has no accepted round (none finished, or the stop test rejected round 1).")
    rounds = len(accepted) if rounds is None else rounds
    if not isinstance(rounds, int) or rounds < 1 or rounds > len(accepted):
        raise ValueError(f"`rounds` is {rounds!r}, but {run} has {len(accepted)} accepted round(s); pass 1 to that.")
    manifest = {
        "kind": "interaction",
        "critic": json.loads((run / "augment.json").read_text())["critic"],
        "rounds": [],
        "world_step": _world_step(dest),
    }
    components = {}
    for info in accepted[:rounds]:
        metadata, components[f"round-{info['round']:02d}"] = _read_lora(
            run / f"round-{info['round']:02d}" / "enhance" / "lora"
        )
        manifest["rounds"].append({"round": info["round"], "win_rate": info["win_rate"], "metadata": metadata})
    return write_bundle(WEIGHTS_DIR / "interaction" if dest is None else dest, manifest, components, half=False)


def load_interaction(pipe, root: str | os.PathLike | None = None):
    """Fuse the bundled interaction rounds into `pipe` (the bundled world pipeline), in order, as the loop did
    (`interaction.fuse_enhancements`), leaving plain weights: the enhanced model costs what the base one does.
    Returns `(pipe, manifest)`.

    Raises:
        BundleError: a missing or corrupt weight file (names it, and the command that rebuilds it).
    """
    from ...interaction.enhance import fuse_enhancements

    manifest, components = read_bundle("interaction", root)
    with tempfile.TemporaryDirectory() as tmp:
        folders = []
        for info in manifest["rounds"]:
            folders.append(Path(tmp) / f"round-{info['round']:02d}")
            folders[-1].mkdir()
            save_file(components[folders[-1].name], folders[-1] / _LORA_FILE, metadata=info["metadata"])
        fuse_enhancements(pipe, folders)
    return pipe, manifest
