"""Quickstart: probe a Stable Diffusion UNet, build a discriminative adapter, score image-text pairs.

Runs offline in seconds on the tiny random pipeline from `discadapt.testing`; replace it by your own
`StableDiffusionPipeline.from_pretrained(<local folder>)` to do the same on a real model. The adapter here is
untrained, so its scores are not meaningful yet (training is `discadapt probe` / `discadapt tune`); the
denoising-error score is the training-free DiffusionITM baseline.

    python examples/quickstart.py
"""

import tempfile

import torch

import discadapt
from discadapt.testing import tiny_sd_pipeline

pipe = tiny_sd_pipeline(seed=0)
layers = ["mid_block", "up_blocks.0"]

# 1. Which features can be probed, and what shape are they? (read from the model by a dry run)
probe = discadapt.FeatureProbe(pipe.unet, layers)
for name, info in probe.describe().items():
    print(f"{name:12s} {info.channels:4d} channels at {info.height}x{info.width} (stride {info.stride})")

# 2. An adapter sized for this pipeline; saved and reloaded as safetensors.
adapter = discadapt.DiscriminativeAdapter.for_pipeline(pipe, layers=layers, hidden_size=64, num_heads=4)
with tempfile.TemporaryDirectory() as folder:
    adapter.save_pretrained(folder)
    adapter = discadapt.DiscriminativeAdapter.from_pretrained(folder)

# 3. Generate an image, then score it against its caption and a hard negative (swapped colours).
prompts = ["a red circle left of a blue square", "a blue circle left of a red square"]
image = pipe(prompts[0], num_inference_steps=10, generator=torch.Generator().manual_seed(0)).images[0]
itm = discadapt.itm_score(pipe, adapter, [image, image], prompts, t=[250, 500, 750])
dn = discadapt.denoising_score(pipe, [image, image], prompts, num_timesteps=10)
for prompt, a, d in zip(prompts, itm.tolist(), dn.tolist()):
    print(f"{prompt!r:40}  adapter ITM {a:+.4f}   denoising score {d:+.6f}")
print("(random weights: the scores show the API, not understanding; train an adapter to make them meaningful)")
