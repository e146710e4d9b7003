"""Fréchet distance between the features of real and generated images: torchmetrics' `FrechetInceptionDistance`,
built from local weights only.

`FID(extractor)` takes either
- the path of the FID InceptionV3 weights file (`pt_inception-2015-12-05-6726825d.pth`, TensorFlow's 2015 Inception
  converted to PyTorch; torch-fidelity publishes the same weights as `weights-inception-2015-12-05-6726825d.pth`),
  run by torch-fidelity's `FeatureExtractorInceptionV3` (2048 pool features; `pip install torch-fidelity`, which
  needs torchvision), or
- any `torch.nn.Module` with an int `num_features` that maps a batch of images to `(N, num_features)` features.

The file (and torch-fidelity) are checked at construction, before anything loads: nothing is downloaded.

    FID = |mu_r - mu_g|^2 + tr(S_r + S_g - 2 (S_r S_g)^(1/2))

with mu, S the mean and covariance (n - 1 normalised) of the real (r) and generated (g) features.

Example:
    >>> fid = FID("/models/pt_inception-2015-12-05-6726825d.pth")  # images as floats in [0, 1]
    >>> fid.update(real_images, real=True)  # (N, 3, H, W), resized to 299 x 299 inside
    >>> fid.update(generated_images, real=False)
    >>> fid.compute()  # tensor(...), lower is better
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance

__all__ = ["FID", "INCEPTION_FILE", "INCEPTION_URL"]

INCEPTION_FILE = "pt_inception-2015-12-05-6726825d.pth"
INCEPTION_URL = f"https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{INCEPTION_FILE}"
_FIDELITY_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"
)


def _check_weights(path) -> Path:
    """`path` as a Path if it is a file; else FileNotFoundError naming it, the file expected and where it comes from."""
    file = Path(os.fspath(path))
    if not file.is_file():
        what = "a folder" if file.is_dir() else "no such file"
        raise FileNotFoundError(
            f"No Inception weights at {file} ({what}); FID needs the file {INCEPTION_FILE} (download it from "
            f"{INCEPTION_URL}, or the same weights as {_FIDELITY_URL}) and torch-fidelity (`pip install "
            "torch-fidelity`); pass the file's path."
        )
    return file


def _import_fidelity() -> None:
    try:
        import torch_fidelity.feature_extractor_inceptionv3  # noqa: F401
    except ImportError as err:
        raise ImportError(
            f"FID with Inception weights needs torch-fidelity, which failed to import ({err}); install it with `pip "
            "install torch-fidelity` (it imports torchvision: install one that matches your torch), or pass your own "
            "feature extractor module as `extractor`."
        ) from err


def _check_extractor(extractor) -> nn.Module:
    features = getattr(extractor, "num_features", None)
    if not isinstance(extractor, nn.Module) or isinstance(features, bool) or not isinstance(features, int):
        raise ValueError(
            f"`extractor` is a {type(extractor).__name__}; pass the path of the Inception weights file "
            f"({INCEPTION_FILE}) or a torch.nn.Module with an int `num_features` whose forward maps images to "
            "(N, num_features) features."
        )
    if features < 1:
        raise ValueError(f"`extractor.num_features` is {features}; set it to the width of the features (>= 1).")
    return extractor


class FID(FrechetInceptionDistance):
    """torchmetrics' `FrechetInceptionDistance` on local weights or a given feature extractor (module docstring).

    Args:
        extractor (str | PathLike | torch.nn.Module): the Inception weights file (`INCEPTION_FILE`), or a module with
            an int `num_features` mapping `update`'s images to `(N, num_features)` features.
        normalize (bool): Inception only: True for float images in [0, 1], False for uint8 in [0, 255]. A module
            receives the images as given. Default True.
        reset_real_features (bool): False keeps the real statistics over `reset()` (same reference set). Default True.
        antialias (bool): Inception only: resize to 299 x 299 with antialiasing (torchmetrics' default) or as
            TensorFlow 1 did (False). Default True.
        **kwargs: torchmetrics `Metric` options (e.g. `process_group`).

    Attributes:
        name (str): "FID". model (str): which features, e.g. "InceptionV3 pool features (torch-fidelity) at <path>".

    Raises:
        FileNotFoundError: no file at the path (names the file expected and where it comes from).
        ImportError: torch-fidelity does not import (says what to install).
        ValueError: `extractor` is neither a path nor a module with `num_features`, or the file is not Inception
            weights.

    Example:
        >>> import torch
        >>> class Means(torch.nn.Module):
        ...     num_features = 3
        ...     def forward(self, x):
        ...         return x.mean(dim=(2, 3))
        >>> fid = FID(Means())
        >>> fid.update(torch.rand(8, 3, 4, 4), real=True)
        >>> fid.update(torch.rand(8, 3, 4, 4) ** 2, real=False)
        >>> float(fid.compute()) > 0
        True
    """

    name = "FID"

    def __init__(
        self, extractor, normalize: bool = True, reset_real_features: bool = True, antialias: bool = True, **kwargs
    ):
        if isinstance(extractor, (str, os.PathLike)):
            path = _check_weights(extractor)  # 1. the file, before anything else
            _import_fidelity()  # 2. its runner
            try:  # 3. torchmetrics builds torch-fidelity's InceptionV3 on the file (2048 pool features)
                super().__init__(
                    feature=2048,
                    feature_extractor_weights_path=str(path),
                    normalize=normalize,
                    reset_real_features=reset_real_features,
                    antialias=antialias,
                    **kwargs,
                )
            except (RuntimeError, KeyError, EOFError, pickle.UnpicklingError) as err:
                raise ValueError(
                    f"{path} does not load as FID InceptionV3 weights ({str(err)[:200]}); pass {INCEPTION_FILE}."
                ) from err
            self.model = f"InceptionV3 pool features (torch-fidelity) at {path}"
        else:
            module = _check_extractor(extractor)
            super().__init__(feature=module, normalize=normalize, reset_real_features=reset_real_features, **kwargs)
            self.model = f"{type(module).__name__} ({module.num_features} features)"
