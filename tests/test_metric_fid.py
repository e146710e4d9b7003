"""FID: torchmetrics' Fréchet distance through `metrics.fid.FID` on a tiny deterministic feature module against the
formula computed directly (numpy, `scipy.linalg.sqrtm`), the weights file checked before anything else, and
torch-fidelity's InceptionV3 on a local file where torch-fidelity imports."""

import sys

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn

from discadapt.metrics.fid import FID, INCEPTION_FILE


class ChannelStats(nn.Module):
    """Deterministic features of (N, 3, H, W) images: per-channel means and the standard deviation over pixels."""

    num_features = 4

    def forward(self, x):  # (N, 3, H, W) -> (N, 4)
        return torch.cat([x.mean(dim=(2, 3)), x.std(dim=(1, 2, 3))[:, None]], dim=1)


def _frechet(real: np.ndarray, fake: np.ndarray) -> float:
    """|mu_r - mu_g|^2 + tr(S_r + S_g - 2 (S_r S_g)^(1/2)) of (n, d) float64 features."""
    mu_r, mu_g = real.mean(0), fake.mean(0)
    s_r, s_g = np.cov(real, rowvar=False), np.cov(fake, rowvar=False)
    root = scipy.linalg.sqrtm(s_r @ s_g).real
    return float(((mu_r - mu_g) ** 2).sum() + np.trace(s_r + s_g - 2 * root))


def test_fid_of_a_feature_module_is_the_frechet_distance_of_its_features():
    generator = torch.Generator().manual_seed(0)
    real = torch.rand(60, 3, 8, 8, generator=generator)
    fake = torch.rand(45, 3, 8, 8, generator=generator) ** 2  # darker, narrower
    fid = FID(ChannelStats())
    assert fid.name == "FID" and fid.model == "ChannelStats (4 features)" and not fid.higher_is_better
    for part in (real[:25], real[25:]):  # several updates accumulate
        fid.update(part, real=True)
    fid.update(fake, real=False)
    with torch.no_grad():
        expected = _frechet(ChannelStats()(real).double().numpy(), ChannelStats()(fake).double().numpy())
    assert expected > 0.01
    assert float(fid.compute()) == pytest.approx(expected, rel=1e-5)
    same = FID(ChannelStats())
    same.update(real, real=True)
    same.update(real, real=False)
    assert abs(float(same.compute())) < 1e-4


def test_fid_keeps_real_statistics_when_asked():
    real, fake = torch.rand(20, 3, 4, 4), torch.rand(20, 3, 4, 4) ** 3
    fid = FID(ChannelStats(), reset_real_features=False)
    fid.update(real, real=True)
    fid.update(fake, real=False)
    first = fid.compute()
    fid.reset()
    fid.update(fake, real=False)
    torch.testing.assert_close(fid.compute(), first)


def test_missing_weights_fail_first_naming_the_file_and_where_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_fidelity", None)  # the path is checked before torch-fidelity is needed
    missing = tmp_path / INCEPTION_FILE
    pattern = rf"No Inception weights at .*{INCEPTION_FILE} \(no such file\); FID needs the file {INCEPTION_FILE}"
    with pytest.raises(FileNotFoundError, match=pattern + r" \(download it from https://github.com/mseitzer/pytorch"):
        FID(missing)
    with pytest.raises(FileNotFoundError, match=r"\(a folder\).*pip install torch-fidelity"):
        FID(str(tmp_path))
    missing.write_bytes(b"")
    with pytest.raises(
        ImportError, match="FID with Inception weights needs torch-fidelity.*pip install torch-fidelity"
    ):
        FID(missing)


def test_bad_extractors_name_the_argument_and_the_fix():
    with pytest.raises(ValueError, match=r"`extractor` is a int; pass the path of the Inception weights file"):
        FID(2048)
    with pytest.raises(ValueError, match=r"`extractor` is a Linear; .* torch.nn.Module with an int `num_features`"):
        FID(nn.Linear(3, 4))
    stats = ChannelStats()
    stats.num_features = 0
    with pytest.raises(ValueError, match=r"`extractor.num_features` is 0; set it to the width of the features"):
        FID(stats)


def test_fid_on_local_inception_weights(tmp_path, monkeypatch):
    pytest.importorskip("torch_fidelity")  # needs torchvision, absent on the project's CPU machines
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    torch.save({}, tmp_path / "empty.pth")
    with monkeypatch.context() as patch:  # random InceptionV3 weights: skip the load of the (empty) file once
        patch.setattr(FeatureExtractorInceptionV3, "load_state_dict", lambda self, state, strict=True: None)
        torch.manual_seed(0)
        state = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], str(tmp_path / "empty.pth")).state_dict()
    torch.save(state, tmp_path / INCEPTION_FILE)
    fid = FID(tmp_path / INCEPTION_FILE)
    assert fid.model == f"InceptionV3 pool features (torch-fidelity) at {tmp_path / INCEPTION_FILE}"
    loaded = fid.inception.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items() if k in loaded)
    generator = torch.Generator().manual_seed(1)
    fid.update(torch.rand(3, 3, 64, 64, generator=generator), real=True)  # floats in [0, 1] (normalize=True)
    fid.update(torch.rand(3, 3, 64, 64, generator=generator) ** 2, real=False)
    assert torch.isfinite(fid.compute())
    with pytest.raises(ValueError, match=r"does not load as FID InceptionV3 weights .*; pass pt_inception"):
        FID(tmp_path / "empty.pth")
