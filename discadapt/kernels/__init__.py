"""Fused Triton kernels for the feature-probing path, each op in one file with its PyTorch reference.

- `intake.py`: probed UNet maps -> adapter tokens (resize, 1x1 projection, bias, position and timestep embedding).
- `itm.py`: ITM logits (normalised dot products, max over queries, logit scale).

Each op has `<op>_ref` (PyTorch, autograd), `<op>_triton` (Triton forward and backward in a
`torch.autograd.Function`) and a dispatcher that `DiscriminativeAdapter` calls: `adapter_intake`, `itm_logits`.
The dispatcher takes the kernel for CUDA tensors when triton is installed (`pip install discadapt[kernels]`) and
the reference otherwise, so the CPU path and installs without triton compute exactly what they always did.
`DISCADAPT_KERNELS=0` forces the references. Importing this package never imports triton.
"""

from ._dispatch import ENV_VAR, compute_dtype, kernels_enabled
from .intake import adapter_intake, intake_ref, intake_triton
from .itm import itm_logits, itm_ref, itm_triton

__all__ = [
    "ENV_VAR",
    "adapter_intake",
    "compute_dtype",
    "intake_ref",
    "intake_triton",
    "itm_logits",
    "itm_ref",
    "itm_triton",
    "kernels_enabled",
]
