import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a missing local file fails at once instead of waiting on the network

import pytest  # noqa: E402
import torch  # noqa: E402

# Without a CUDA device, tests/test_kernels.py runs the Triton kernels in the interpreter, which must be switched on
# before anything imports triton (diffusers does, below).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from discadapt.testing import tiny_sd_pipeline, tiny_sdxl_pipeline  # noqa: E402


@pytest.fixture(scope="session")
def sd_pipe():
    """Shared tiny SD pipeline; tests must not modify it (build their own with tiny_sd_pipeline() to do so)."""
    return tiny_sd_pipeline(seed=0)


@pytest.fixture(scope="session")
def sdxl_pipe():
    return tiny_sdxl_pipeline(seed=0)


@pytest.fixture
def latents():
    return torch.randn(3, 4, 16, 16, generator=torch.Generator().manual_seed(1))
