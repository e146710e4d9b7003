"""Issue 12: how alike are stage-2 runs' LoRA updates? The cosine between whole updates (every module's
(alpha / r) B A, flattened and joined) for each pair of the LoRAs given, and each update's norm. `bundled` names
the shapes world's bundled LoRA (`weights/lora`, the mean of runs the demo's tuned rows use).

    python benchmarks/lora_geometry.py runs/tune-sweep/c-s1/lora-2000 runs/tune-sweep/c-s2/lora-2000 \
        runs/tune-sweep/c-ema-s1/lora-2000 bundled [--json out.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from discadapt.interaction import lora_update
from discadapt.train.tune import LORA_WEIGHTS
from discadapt.worlds.shapes.bundle import read_bundle


def _update(folder: str) -> dict[str, torch.Tensor]:
    """`lora_update` of a LoRA folder, or of the world's bundled LoRA for "bundled"."""
    if folder != "bundled":
        return lora_update(folder)
    manifest, components = read_bundle("lora")
    with tempfile.TemporaryDirectory() as tmp:  # the bundle as a diffusers LoRA folder: its tensors and metadata
        save_file(components["lora"], Path(tmp) / LORA_WEIGHTS, metadata=manifest["metadata"])
        return lora_update(tmp)


def geometry(folders: list[str]) -> dict:
    """`{"norms": {folder: norm}, "cosines": [[a, b, cosine], ...]}` of the LoRAs in `folders` (same modules)."""
    updates = {folder: _update(folder) for folder in folders}
    modules = sorted(updates[folders[0]])
    for folder, update in updates.items():
        if sorted(update) != modules:
            raise ValueError(f"the LoRA in {folder} is on other modules than {folders[0]}; compare LoRAs of one UNet.")
    vectors = {f: torch.cat([u[m].flatten() for m in modules]) for f, u in updates.items()}
    cosines = [
        [a, b, torch.nn.functional.cosine_similarity(vectors[a], vectors[b], dim=0).item()]
        for a, b in itertools.combinations(folders, 2)
    ]
    return {"norms": {f: v.norm().item() for f, v in vectors.items()}, "cosines": cosines}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("loras", nargs="+", help="LoRA folders (diffusers' format) or `bundled`, at least 2")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    if len(args.loras) < 2:
        parser.error(f"`loras` has {len(args.loras)} folder; pass at least 2 to compare.")
    result = geometry(args.loras)
    for folder, norm in result["norms"].items():
        print(f"norm {norm:9.4f}  {folder}")
    for a, b, cosine in result["cosines"]:
        print(f"cosine {cosine:+.3f}  {a}  {b}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
