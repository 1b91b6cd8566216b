"""Per-cell crops and CNN embeddings (hcsflow.features.crops / embed / embed_train)."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from hcsflow.features.crops import cell_centres, crop_size_px, extract_crops
from hcsflow.features.embed import Embedder, feature_names
from hcsflow.features.embed_train import (
    read_samples,
    sample_crops,
    save_embedder,
    train_embedder,
    treatment_labels,
    treatment_name,
    write_sample,
)

TINY_ARCH = {"widths": [8, 16], "blocks": [1, 1], "dim": 16}


@pytest.fixture(autouse=True)
def _two_threads():
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(old)


def _square_cells(shape=(64, 80)):
    """Three square cells with square nuclei (odd sizes: integral centroids); cell 3 has none."""
    nuclei = np.zeros(shape, np.int32)
    cells = np.zeros(shape, np.int32)
    cells[10:31, 10:31] = 1
    nuclei[15:20, 12:17] = 1  # centroid (17, 14), off the cell's centre
    cells[5:26, 50:71] = 2
    nuclei[12:19, 58:65] = 2  # centroid (15, 61)
    cells[40:61, 30:51] = 3  # no nucleus: centroid (50, 40)
    return nuclei, cells


def _tiny_crops(n=64, c=3, s=20, seed=0):
    rng = np.random.default_rng(seed)
    crops = rng.gamma(2.0, 0.05, (n, c, s, s)).astype(np.float32)
    labels = np.arange(n) % 4
    crops[labels == 1, 0] *= 3.0
    crops[labels == 2, :, 5:15, 5:15] += 0.3
    return crops.astype(np.float16), labels


def _train(method, seed=1, crops=None, labels=None, **kw):
    if crops is None:
        crops, labels = _tiny_crops()
    opts = dict(
        method=method,
        steps=3,
        batch_size=16,
        seed=seed,
        threads=2,
        image_mpp=0.65,
        input_px=16,
        arch=TINY_ARCH,
        channel_names=["DNA", "ER", "Mito"][: crops.shape[1]],
    )
    opts.update(kw)
    return train_embedder(crops, labels, **opts)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A tiny weakly supervised checkpoint on disk."""
    torch.set_num_threads(2)
    path = tmp_path_factory.mktemp("emb") / "tiny.pt"
    save_embedder(_train("weakly_supervised"), path)
    return path


# --------------------------------------------------------------------------------------------
# crops


def test_crop_size_px():
    assert crop_size_px(62.4, 0.65) == 96
    assert crop_size_px(41.6, 0.65) == 64
    assert crop_size_px(0.1, 1.0) == 1
    with pytest.raises(ValueError, match="image_mpp"):
        crop_size_px(50.0, 0.0)
    with pytest.raises(ValueError, match="crop_um"):
        crop_size_px(-1.0, 0.65)


def test_cell_centres_nucleus_then_cell():
    nuclei, cells = _square_cells()
    cen = cell_centres(nuclei, cells, 4)
    np.testing.assert_allclose(cen[:3], [[17, 14], [15, 61], [50, 40]])
    assert np.isnan(cen[3]).all()  # label 4 has no pixels


@pytest.mark.parametrize("size", [9, 10, 16])
def test_bright_pixel_at_centre_lands_at_crop_centre(size):
    nuclei, cells = _square_cells()
    image = np.zeros((2, *cells.shape), np.float32)
    for y, x in ((17, 14), (15, 61), (50, 40)):
        image[1, y, x] = 1.0
    cen = cell_centres(nuclei, cells, 3)
    crops, border = extract_crops(image, cen, size)
    assert crops.shape == (3, 2, size, size) and crops.dtype == np.float32
    assert not border.any()
    for k in range(3):
        assert crops[k, 1, size // 2, size // 2] == 1.0
        assert crops[k, 1].sum() == 1.0 and crops[k, 0].sum() == 0.0


def test_border_cells_padded_and_flagged():
    rng = np.random.default_rng(0)
    image = rng.random((3, 40, 50)).astype(np.float32) + 1.0  # no zeros inside the image
    centres = np.array([[2.0, 3.0], [20.0, 25.0], [39.0, 49.0], [np.nan, 5.0], [-30.0, 10.0]])
    crops, border = extract_crops(image, centres, 12)
    assert border.tolist() == [True, False, True, True, True]
    assert crops.shape == (5, 3, 12, 12)
    # cell 0: rows/cols before the image are zero, the rest is the image
    assert (crops[0, :, :4, :] == 0).all() and (crops[0, :, :, :3] == 0).all()
    np.testing.assert_array_equal(crops[0, :, 4:, 3:], image[:, :8, :9])
    np.testing.assert_array_equal(crops[1], image[:, 14:26, 19:31])
    np.testing.assert_array_equal(crops[2, :, :7, :7], image[:, 33:, 43:])
    assert (crops[2, :, 7:, :] == 0).all()
    assert (crops[3] == 0).all() and (crops[4] == 0).all()


def test_extract_crops_matches_loop_and_keeps_input():
    rng = np.random.default_rng(1)
    image = rng.random((2, 30, 33)).astype(np.float32)
    before = image.copy()
    centres = rng.uniform(-5, 38, (25, 2))
    size = 7
    crops, _ = extract_crops(image, centres, size)
    np.testing.assert_array_equal(image, before)
    padded = np.pad(image, ((0, 0), (size, size), (size, size)))
    for i, (y, x) in enumerate(np.floor(centres + 0.5).astype(int)):
        t, lft = y - size // 2 + size, x - size // 2 + size
        t, lft = np.clip(t, 0, 30 + size), np.clip(lft, 0, 33 + size)
        np.testing.assert_array_equal(crops[i], padded[:, t : t + size, lft : lft + size])


# --------------------------------------------------------------------------------------------
# imagenet


@pytest.fixture(scope="module")
def imagenet():
    return Embedder.load("imagenet", batch_size=8)


@pytest.mark.parametrize("c", [1, 2, 5])
def test_imagenet_width(imagenet, c):
    crops = np.random.default_rng(c).random((3, c, 24, 24)).astype(np.float32)
    out = imagenet.embed_crops(crops)
    assert out.shape == (3, 1280 * c) and out.dtype == np.float32
    assert imagenet.output_dim(c) == 1280 * c
    # channel c's block only depends on channel c
    if c > 1:
        other = crops.copy()
        other[:, 1] = 0.5 * other[:, 1] ** 2
        out2 = imagenet.embed_crops(other)
        np.testing.assert_array_equal(out[:, :1280], out2[:, :1280])
        assert not np.allclose(out[:, 1280:2560], out2[:, 1280:2560])


def test_imagenet_dim_needs_channels(imagenet):
    with pytest.raises(ValueError, match="channels"):
        _ = imagenet.dim
    emb = Embedder.load("imagenet", channels=["DNA", "ER"])
    assert emb.dim == 2560 and emb.feature_names()[0] == "Cells_Embedding_0000"
    assert feature_names(3) == [
        "Cells_Embedding_0000",
        "Cells_Embedding_0001",
        "Cells_Embedding_0002",
    ]


def test_imagenet_network_matches_reference_package():
    """Our EfficientNet-lite0 (and its grey stem) reproduce efficientnet_lite_pytorch."""
    ref_pkg = pytest.importorskip("efficientnet_lite_pytorch")
    from hcsflow.features.embed import _grey_lite0
    from hcsflow.features.embed_nets import load_imagenet_lite0

    ours = load_imagenet_lite0()
    fused = ours.fuse()
    ref = ref_pkg.EfficientNet.from_name("efficientnet-lite0", image_size=None)
    ref.load_state_dict(ours.state_dict(), strict=False)
    ref.eval()
    grey = _grey_lite0(ours)
    g = torch.rand(2, 1, 34, 34) * 2 - 1  # even sizes: kernel-shift path
    with torch.inference_mode():
        x = torch.randn(1, 3, 33, 35)  # odd sizes: explicit TensorFlow padding
        want = ref.extract_features(x).mean(dim=(2, 3))
        torch.testing.assert_close(ours(x), want, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(fused(x), want, atol=1e-4, rtol=1e-4)
        want = ref.extract_features(g.expand(-1, 3, -1, -1)).mean(dim=(2, 3))
        torch.testing.assert_close(grey(g), want, atol=1e-4, rtol=1e-4)


# --------------------------------------------------------------------------------------------
# embed(): rows, determinism


@pytest.fixture(scope="module")
def field():
    from hcsflow.simulate import simulate_field

    f = simulate_field(3, shape=(160, 160))
    image = ((f.image - f.darkfield) / f.flatfield / 65535).astype(np.float32)
    return image, f.nuclei.astype(np.int32), f.cells.astype(np.int32)


def test_embed_rows_follow_labels(field, tiny_checkpoint):
    image, nuclei, cells = field
    n = int(cells.max())
    assert n >= 3
    emb = Embedder.load(tiny_checkpoint)
    base = emb.embed(image[:3], nuclei, cells, 0.65)
    assert base.shape == (n, 16) and np.isfinite(base).all()
    perm = np.random.default_rng(0).permutation(n) + 1  # old label k -> new label perm[k-1]
    lut = np.concatenate([[0], perm]).astype(np.int32)
    permuted = emb.embed(image[:3], lut[nuclei], lut[cells], 0.65)
    np.testing.assert_allclose(permuted[perm - 1], base, rtol=1e-5, atol=1e-6)
    # an absent label gets a NaN row; border flags come back on request
    out, border = emb.embed(image[:3], nuclei, cells, 0.65, n=n + 1, return_border=True)
    assert np.isnan(out[n]).all() and border[n] and out.shape == (n + 1, 16)
    np.testing.assert_allclose(out[:n], base, rtol=1e-5, atol=1e-6)


def test_embedders_are_deterministic(field, tiny_checkpoint, imagenet):
    image, nuclei, cells = field
    image, nuclei, cells = image[:3, :80, :80], nuclei[:80, :80], cells[:80, :80]
    for emb in (Embedder.load(tiny_checkpoint), imagenet):
        a = emb.embed(image, nuclei, cells, 0.65 * 2.5)
        b = emb.embed(image, nuclei, cells, 0.65 * 2.5)
        assert np.isfinite(a[np.unique(cells[cells > 0]) - 1]).all()
        assert a.tobytes() == b.tobytes()


def test_bf16_and_channels_last_stay_close(tiny_checkpoint):
    crops, _ = _tiny_crops(n=20)
    ref = Embedder.load(tiny_checkpoint).embed_crops(crops)
    for opts in ({"channels_last": True}, {"bf16": True}):
        out = Embedder.load(tiny_checkpoint, **opts).embed_crops(crops)
        cos = (out * ref).sum(1) / np.linalg.norm(out, axis=1) / np.linalg.norm(ref, axis=1)
        assert cos.min() > (0.9999 if "channels_last" in opts else 0.98)


# --------------------------------------------------------------------------------------------
# training


@pytest.mark.parametrize("method", ["weakly_supervised", "self_supervised"])
def test_training_is_deterministic_and_loadable(method, tmp_path):
    a = _train(method)
    b = _train(method)
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    cfg = a["config"]
    assert cfg["method"] == method and cfg["crop_px"] == 20 and cfg["input_px"] == 16
    assert np.isfinite(cfg["training"]["final_loss"]) and len(cfg["training"]["loss_history"]) == 3
    assert len(cfg["normalization"]["mean"]) == 3
    path = save_embedder(a, tmp_path / "m.pt")
    card = (tmp_path / "m.md").read_text()
    assert "BSD-3-Clause" in card and method.split("_")[0] in card
    emb = Embedder.load(path)
    assert emb.name == "m" and emb.dim == 16 and emb.crop_um == pytest.approx(13.0)
    assert emb.channel_names == ["DNA", "ER", "Mito"]
    crops, _ = _tiny_crops(n=5)
    out = emb.embed_crops(crops)
    assert out.shape == (5, 16) and np.isfinite(out).all()
    # a plain {"state_dict", "config"} dict from elsewhere loads too
    torch.save({"state_dict": a["state_dict"], "config": a["config"]}, tmp_path / "plain.pt")
    np.testing.assert_array_equal(Embedder.load(tmp_path / "plain.pt").embed_crops(crops), out)


def test_training_rejects_bad_input():
    crops, labels = _tiny_crops(n=8)
    with pytest.raises(ValueError, match="labels"):
        _train("weakly_supervised", crops=crops, labels=None)
    with pytest.raises(ValueError, match="method"):
        _train("supervised", crops=crops, labels=labels)


def test_torchscript_files_load(tmp_path, tiny_checkpoint):
    emb = Embedder.load(tiny_checkpoint)
    ts = emb.save_torchscript(tmp_path / "tiny_ts.pt")
    loaded = Embedder.load(ts)
    assert loaded.kind == "torchscript" and loaded.dim == 16 and loaded.crop_um == emb.crop_um
    crops, _ = _tiny_crops(n=6)
    np.testing.assert_allclose(loaded.embed_crops(crops), emb.embed_crops(crops), atol=1e-5)
    # a foreign TorchScript module: raw crops in, features out; crop_um given by the user
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        traced = torch.jit.trace(
            torch.nn.Sequential(net, torch.nn.Flatten()), torch.zeros(1, 3, 8, 8)
        )
        torch.jit.save(traced, str(tmp_path / "foreign.pt"))
    foreign = Embedder.load(tmp_path / "foreign.pt", crop_um=30.0)
    assert foreign.name == "foreign" and foreign.crop_um == 30.0
    assert foreign.embed_crops(crops).shape == (6, 4)


def test_shipped_names_resolve(tmp_path, monkeypatch, tiny_checkpoint):
    import shutil

    import hcsflow.features.embed as embed_mod

    monkeypatch.setattr(embed_mod, "models_dir", lambda: tmp_path)
    shutil.copy(tiny_checkpoint, tmp_path / "embedder_tiny.pt")
    assert embed_mod.available_models() == ["imagenet", "embedder_tiny"]
    emb = Embedder.load("embedder_tiny", channels=["DNA", "ER", "Mito"])
    assert emb.name == "tiny" and emb.dim == 16
    with pytest.raises(ValueError, match="channels"):
        Embedder.load("embedder_tiny", channels=5)


def test_bad_names_and_files(tmp_path):
    with pytest.raises(ValueError, match="no-such-model"):
        Embedder.load("no-such-model")
    with pytest.raises(ValueError, match="imagenet"):  # lists the known names
        Embedder.load(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pt"):
        Embedder.load(junk)
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="other.pt"):
        Embedder.load(tmp_path / "other.pt")
    with pytest.raises(ValueError, match="device"):
        Embedder.load("imagenet", device="tpu")


# --------------------------------------------------------------------------------------------
# samples and the command line


def test_sample_crops_and_files(field, tmp_path):
    image, nuclei, cells = field
    crops, objs = sample_crops(image, nuclei, cells, n_max=4, rng_seed=7, crop_px=20)
    crops2, objs2 = sample_crops(image, nuclei, cells, n_max=4, rng_seed=7, crop_px=20)
    assert crops.dtype == np.float16 and crops.shape == (4, 5, 20, 20)
    assert objs.tolist() == objs2.tolist() and crops.tobytes() == crops2.tobytes()
    assert (np.diff(objs) > 0).all() and objs.min() >= 1 and objs.max() <= cells.max()
    full, _ = extract_crops(image, cell_centres(nuclei, cells, int(cells.max())), 20)
    np.testing.assert_array_equal(crops, full[objs - 1].astype(np.float16))
    # all cells when n_max exceeds their number
    _, every = sample_crops(image, nuclei, cells, n_max=999, rng_seed=7, crop_px=20)
    assert every.tolist() == list(range(1, int(cells.max()) + 1))
    meta = pd.DataFrame(
        {
            "Metadata_Plate": "P1",
            "Metadata_Well": "A01",
            "Metadata_Site": 1,
            "Metadata_ObjectNumber": objs,
            "Metadata_Treatment": [treatment_name("DMSO", 0.0)] * 2 + ["X@1.5"] * 2,
            "Metadata_Role": ["negcon"] * 2 + ["trt"] * 2,
        }
    )
    names = ["DNA", "ER", "RNA", "AGP", "Mito"]
    write_sample(tmp_path / "a.npz", crops, meta, image_mpp=0.65, channel_names=names)
    write_sample(tmp_path / "b.npz", crops[:1], meta.iloc[:1], image_mpp=0.65, channel_names=names)
    got, gmeta = read_samples([tmp_path / "a.npz", tmp_path / "b.npz"])
    assert got.shape == (5, 5, 20, 20) and got.dtype == np.float16
    assert gmeta["Metadata_Treatment"].tolist() == ["DMSO@0", "DMSO@0", "X@1.5", "X@1.5", "DMSO@0"]
    assert gmeta.attrs["channel_names"] == names and gmeta.attrs["image_mpp"] == 0.65
    sub, smeta = read_samples([tmp_path / "a.npz", tmp_path / "b.npz"], max_crops=3, seed=1)
    assert sub.shape[0] == 3 and smeta.attrs["n_available"] == 5
    rows = [
        int(
            np.flatnonzero(
                (gmeta["Metadata_SampleFile"] == f) & (gmeta["Metadata_ObjectNumber"] == o)
            )[0]
        )
        for f, o in zip(smeta["Metadata_SampleFile"], smeta["Metadata_ObjectNumber"], strict=True)
    ]
    np.testing.assert_array_equal(sub, got[rows])
    labels, classes = treatment_labels(gmeta["Metadata_Treatment"])
    assert classes == ["DMSO@0", "X@1.5"] and labels.tolist() == [0, 0, 1, 1, 0]
    write_sample(tmp_path / "c.npz", crops[:, :, :10, :10], meta, image_mpp=0.65)
    with pytest.raises(ValueError, match="c.npz"):
        read_samples([tmp_path / "a.npz", tmp_path / "c.npz"])
    with pytest.raises(ValueError, match="lacks"):
        write_sample(tmp_path / "d.npz", crops, meta.drop(columns="Metadata_Role"))


def test_cli_train_embedder(tmp_path, capsys):
    from hcsflow.cli import main

    crops, labels = _tiny_crops(n=32)
    meta = pd.DataFrame(
        {
            "Metadata_Plate": "P1",
            "Metadata_Well": [f"A{i % 4 + 1:02d}" for i in range(32)],
            "Metadata_Site": 1,
            "Metadata_ObjectNumber": np.arange(1, 33),
            "Metadata_Treatment": [f"T{v}" for v in labels],
            "Metadata_Role": "trt",
        }
    )
    sample = write_sample(tmp_path / "s.npz", crops, meta, image_mpp=0.65)
    out = tmp_path / "model.pt"
    args = ["train-embedder", "--samples", str(sample), "--out", str(out), "--steps", "2"]
    args += ["--batch-size", "8", "--threads", "2", "--input-px", "16", "--widths", "8", "16"]
    args += ["--blocks", "1", "1", "--dim", "8", "--seed", "3"]
    assert main(args) == 0
    emb = Embedder.load(out)
    assert emb.dim == 8 and emb.meta["classes"] == ["T0", "T1", "T2", "T3"]
    assert "hcsflow train-embedder" in out.with_suffix(".md").read_text()
    assert main([*args[:2], str(tmp_path / "nope.npz"), *args[3:]]) == 2
    assert "nope.npz" in capsys.readouterr().err
    assert main([*args, "--steps", "0"]) == 2
