"""Confidence maps: bit-level agreement with MONAI's model (weights, seeds, system) and with its maps."""

from __future__ import annotations

import numpy as np
import pytest
from monai.data.ultrasound_confidence_map import UltrasoundConfidenceMap as MonaiConfMap
from PIL import Image

from ultramae_monai.confmap import confidence_map
from ultramae_monai.confmap.direct import nested_dissection
from ultramae_monai.confmap.graph import attenuation, edge_weights, normalize
from ultramae_monai.confmap.refine import matvec_9pt
from ultramae_monai.confmap.seeds import make_seeds
from ultramae_monai.confmap.stencil import stencil_9pt
from ultramae_monai.confmap.system import assemble_csr


def _monai_laplacian(img: np.ndarray, mode: str, mask: np.ndarray | None, gamma: float):
    cm = MonaiConfMap(2.0, 90.0, gamma, "B", mode)
    data = cm.normalize(img.astype(np.float64))
    seeds, labels = cm.get_seed_and_labels(data, mode, mask)
    att = data * cm.attenuation_weighting(data, 2.0)
    h, w = img.shape
    idx = np.arange(1, h * w + 1).reshape(w, h).T
    lap = cm.confidence_laplacian(np.pad(idx, 1), np.pad(att, 1), 90.0, gamma).toarray()
    return lap, seeds.astype(int), labels


@pytest.mark.parametrize(("mode", "shape"), [("all", (7, 9)), ("min", (12, 15)), ("mid", (10, 6)), ("mask", (9, 11))])
def test_system_equals_monai_laplacian(mode: str, shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, shape).astype(np.float64)
    mask = (rng.random(shape) > 0.8) if mode == "mask" else None
    lap, seeds, labels = _monai_laplacian(img, mode, mask, 0.05)
    d = normalize(img)
    ew = edge_weights(d * attenuation(shape[0], 2.0)[:, None], 90.0, 0.05)
    sd = make_seeds(d, mode, mask)
    mat, b, fixed = assemble_csr(ew, sd)
    # MONAI numbers nodes column-major (i + j * h); ours row-major (i * w + j)
    h, w = shape
    order = np.arange(h * w).reshape(h, w).T.ravel()  # monai index -> ours
    fixed_m = np.zeros(h * w, bool)
    fixed_m[seeds] = True
    assert np.array_equal(fixed[order], fixed_m)
    u = ~fixed_m
    ours = mat.toarray()[np.ix_(order, order)]
    np.testing.assert_allclose(ours[np.ix_(u, u)], lap[np.ix_(u, u)], rtol=0, atol=1e-15)
    off = ~np.eye(u.sum(), dtype=bool)
    assert np.array_equal(ours[np.ix_(u, u)][off], lap[np.ix_(u, u)][off])  # edge weights bit-exact
    m = np.zeros(h * w)
    m[seeds[labels == 1]] = 1
    np.testing.assert_allclose(b[order][u], -(lap[np.ix_(u, ~u)] @ m[~u]), rtol=0, atol=1e-15)
    # the 9-point stencil rows are the same operator
    coef, rhs = stencil_9pt(ew, sd)
    x = rng.random((1, h * w))
    np.testing.assert_allclose(matvec_9pt(coef[None], x, shape)[0], mat @ x[0], atol=1e-14)
    np.testing.assert_allclose(rhs, b, atol=1e-15)


def test_nested_dissection_is_a_permutation() -> None:
    for shape in [(5, 7), (64, 33), (9, 10, 11)]:
        p = nested_dissection(shape)
        assert np.array_equal(np.sort(p), np.arange(int(np.prod(shape))))


@pytest.mark.parametrize(("name", "gamma"), [("femur", 0.06), ("neck", 0.03)])
def test_matlab_references(shared_data, name: str, gamma: float) -> None:
    ref_dir = shared_data / "confmap_reference"
    img = np.asarray(Image.open(ref_dir / f"{name}_input.png"))
    ref = np.load(ref_dir / f"{name}_result.npy")
    out = confidence_map(img, alpha=2.0, beta=90.0, gamma=gamma, sink_mode="all")
    assert out.dtype == np.float32 and out.shape == ref.shape
    assert np.abs(out - ref).max() <= 1e-4


def _small_real(shared_data, which: str) -> np.ndarray:
    if which == "hc18":
        img = Image.open(shared_data / "hc18" / "images" / "010_HC.png").convert("L").resize((200, 136))
    else:
        img = Image.open(shared_data / "busi" / "malignant" / "malignant (10).png").convert("L").resize((120, 120))
    return np.asarray(img)


@pytest.mark.parametrize(
    ("which", "kwargs"),
    [
        ("hc18", {"sink_mode": "all", "gamma": 0.05}),
        ("hc18", {"sink_mode": "min", "gamma": 0.1, "beta": 50.0}),
        ("busi", {"sink_mode": "mid", "alpha": 1.5}),
        ("busi", {"sink_mode": "mask"}),
        ("busi", {"mode": "RF", "gamma": 0.03}),
    ],
)
def test_against_monai_on_real_images(shared_data, which: str, kwargs: dict) -> None:
    img = _small_real(shared_data, which)
    mask = None
    if kwargs.get("sink_mode") == "mask":
        mask = np.zeros(img.shape, bool)
        mask[-10:, 30:60] = True
    full = {"alpha": 2.0, "beta": 90.0, "gamma": 0.05, "mode": "B", "sink_mode": "all", **kwargs}
    ref = MonaiConfMap(full["alpha"], full["beta"], full["gamma"], full["mode"], full["sink_mode"])(img, mask)
    out = confidence_map(img, sink_mask=mask, **full)
    assert np.abs(out - ref).max() <= 1e-4


def test_beam_axis_and_tensor_roundtrip() -> None:
    import torch

    rng = np.random.default_rng(3)
    img = rng.random((20, 16))
    a = confidence_map(img)
    b = confidence_map(torch.from_numpy(img.T.copy()), beam_axis=1)
    assert isinstance(b, torch.Tensor)
    np.testing.assert_allclose(b.numpy().T, a, atol=1e-7)
    assert np.allclose(a[0], 1.0) and np.allclose(a[-1], 0.0)
    assert (a >= -1e-7).all() and (a <= 1 + 1e-7).all()
