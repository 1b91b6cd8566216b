"""Tests of the segmentation network, its preprocessing, targets, training and shipped weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from hcsflow.segmentation import preprocess, targets  # noqa: E402
from hcsflow.segmentation.model import (  # noqa: E402
    HEADS,
    SegNet,
    load_checkpoint,
    save_checkpoint,
)

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "hcsflow" / "models" / "segmenter_v5.pt"
TINY = {"in_channels": 2, "widths": (4, 8, 8), "blocks": (1, 1, 1)}


def disks(shape=(64, 80), centres=((20, 20), (40, 50), (20, 60)), radii=(8, 10, 6)):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    lab = np.zeros(shape, np.int32)
    for i, ((cy, cx), r) in enumerate(zip(centres, radii, strict=True), start=1):
        lab[(yy - cy) ** 2 + (xx - cx) ** 2 <= r**2] = i
    return lab


# -- preprocessing ------------------------------------------------------------------------------


def test_normalize_range_and_input_untouched():
    rng = np.random.default_rng(0)
    img = rng.integers(100, 4000, (32, 40)).astype(np.uint16)
    before = img.copy()
    out = preprocess.normalize(img)
    assert out.dtype == np.float32 and out.shape == img.shape
    assert out.min() == 0.0 and out.max() == 1.0
    np.testing.assert_array_equal(img, before)
    # a brighter copy (gain and offset) normalizes to the same image
    np.testing.assert_allclose(preprocess.normalize(img * 3.0 + 50), out, atol=1e-5)


def test_normalize_blank_and_sparse():
    assert not preprocess.normalize(np.full((16, 16), 7.0)).any()
    sparse = np.zeros((50, 50))
    sparse[10, 10] = 5.0  # fewer bright pixels than the upper percentile
    out = preprocess.normalize(sparse)
    assert out[10, 10] == 1.0 and out.sum() == 1.0
    with pytest.raises(ValueError):
        preprocess.normalize(np.zeros((2, 3, 4)))


def test_prepare_input_and_combine():
    a = np.arange(100, dtype=float).reshape(10, 10)
    x = preprocess.prepare_input(a, None)
    assert x.shape == (2, 10, 10) and x.dtype == np.float32
    assert not x[1].any()
    y = preprocess.prepare_input(a, a.T)
    np.testing.assert_allclose(y[1], x[0].T, atol=1e-6)
    c = preprocess.combine_channels([a, a], weights=[1, 3])
    np.testing.assert_allclose(c, preprocess.normalize(a), atol=1e-6)
    with pytest.raises(ValueError):
        preprocess.prepare_input(a, a[:5])
    with pytest.raises(ValueError):
        preprocess.combine_channels([a, a], weights=[1])


# -- targets -----------------------------------------------------------------------------------


def test_targets_from_known_masks():
    lab = disks()
    t = targets.make_targets(lab, lab)
    assert t.shape == (6, *lab.shape) and t.dtype == np.float32
    for base in (0, 3):
        inner, outer, fg = t[base], t[base + 1], t[base + 2]
        np.testing.assert_array_equal(fg, lab > 0)
        assert not inner[lab == 0].any() and not outer[lab == 0].any()
        assert inner.max() <= 1.0 and (inner[lab > 0] > 0).all()
        for (cy, cx), i in zip(((20, 20), (40, 50), (20, 60)), (1, 2, 3), strict=True):
            # the inner distance peaks (value 1) at the disk's centre
            assert inner[cy, cx] == pytest.approx(1.0)
            assert np.unravel_index(np.argmax(np.where(lab == i, inner, -1)), lab.shape) == (cy, cx)
    # outer distance is not normalized: the larger disk reaches a higher value
    assert t[1][lab == 2].max() > t[1][lab == 3].max()


def test_targets_touching_objects_and_nuclei_only():
    lab = np.zeros((20, 30), np.int32)
    lab[5:15, 3:15] = 1
    lab[5:15, 15:27] = 2  # touches object 1
    t = targets.make_targets(lab, None)
    # the border between two touching objects has low inner distance on both sides
    assert t[0][10, 14] < 0.3 and t[0][10, 15] < 0.3
    assert np.isnan(t[3:]).all() and not np.isnan(t[:3]).any()
    np.testing.assert_array_equal(targets.supervised_heads(t), [True] * 3 + [False] * 3)
    with pytest.raises(ValueError):
        targets.make_targets(lab.astype(float), None)


# -- model and checkpoint ------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(33, 47), (64, 64), (17, 100)])
def test_model_output_shape(shape):
    torch.manual_seed(0)
    model = SegNet(**TINY).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 2, *shape))
    assert out.shape == (2, len(HEADS), *shape)
    assert torch.isfinite(out).all()


def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(1)
    model = SegNet(**TINY)
    # move batch-norm statistics away from their defaults so that they matter
    model.train()
    with torch.no_grad():
        model(torch.rand(4, 2, 32, 32) * 3)
    model.eval()
    meta = {"model_mpp": 0.65, "normalization": {"low": 1.0}, "card": {"name": "t"}}
    path = tmp_path / "m.pt"
    save_checkpoint(path, model, meta)
    loaded, meta2 = load_checkpoint(path)
    x = torch.rand(1, 2, 40, 24)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert meta2["model_mpp"] == 0.65 and tuple(meta2["heads"]) == HEADS
    with pytest.raises(ValueError):
        save_checkpoint(tmp_path / "bad.pt", model, {"model_mpp": 1.0})
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")


# -- training ------------------------------------------------------------------------------------


def _tiny_fields():
    from hcsflow.segmentation.train import Field

    rng = np.random.default_rng(3)
    fields = []
    for k in range(2):
        lab = disks(shape=(48, 48), centres=((12, 12), (30, 34)), radii=(6 + k, 8))
        img = (lab > 0) * 0.8 + rng.normal(0, 0.05, lab.shape)
        fields.append(
            Field(img.astype(np.float32), img[None].astype(np.float32), lab, lab, "t", str(k))
        )
    return {"t": fields}


def test_training_is_deterministic():
    from hcsflow.segmentation.train import train_model

    kw = dict(seed=5, batch=2, size=32, arch=TINY)
    m1, h1 = train_model(_tiny_fields(), 2, **kw)
    m2, h2 = train_model(_tiny_fields(), 2, **kw)
    m3, _ = train_model(_tiny_fields(), 2, **{**kw, "seed": 6})
    assert h1 == h2
    s1, s2, s3 = m1.state_dict(), m2.state_dict(), m3.state_dict()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert not all(torch.equal(s1[k], s3[k]) for k in s1)
    # the weights moved away from their initialisation
    torch.manual_seed(5)
    s0 = SegNet(**TINY).state_dict()
    assert not torch.equal(s0["stem.0.weight"], s1["stem.0.weight"])


def test_samples_supervise_cells_only_with_cytoplasm():
    from hcsflow.segmentation.train import make_sample

    field = _tiny_fields()["t"][0]
    seen = set()
    for s in range(20):
        x, y = make_sample(field, 32, np.random.default_rng(s), p_no_cyto=0.5)
        assert x.shape == (2, 32, 32) and y.shape == (6, 32, 32)
        cyto = bool(x[1].any())
        assert bool(targets.supervised_heads(y)[3]) == cyto
        seen.add(cyto)
    assert seen == {True, False}


# -- the shipped model -------------------------------------------------------------------------


def _disk_field(seed=0, shape=(160, 160)):
    """Bright textured disks (nuclei, ~16 px across) on a dim noisy background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    lab = np.zeros(shape, np.int32)
    k = 0
    for _ in range(200):
        cy, cx = rng.uniform(12, shape[0] - 12), rng.uniform(12, shape[1] - 12)
        r = rng.uniform(6.5, 9.5)
        disk = (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
        if (lab[disk] > 0).any() or (
            lab[(yy - cy) ** 2 + (xx - cx) ** 2 <= (r + 3) ** 2] > 0
        ).any():
            continue
        k += 1
        lab[disk] = k
    from scipy.ndimage import gaussian_filter

    img = gaussian_filter((lab > 0) * rng.uniform(0.6, 1.0, shape), 1.0)
    img = img * 1000 + 100 + rng.normal(0, 15, shape)
    return img, lab


@pytest.mark.skipif(not SHIPPED.exists(), reason="no shipped checkpoint")
def test_shipped_checkpoint_finds_nuclei():
    torch.set_num_threads(1)
    model, meta = load_checkpoint(SHIPPED)
    assert meta["model_mpp"] > 0 and tuple(meta["heads"]) == HEADS
    assert SHIPPED.stat().st_size < 10 * 2**20
    img, lab = _disk_field()
    x = preprocess.prepare_input(img, None, **meta["normalization"])
    with torch.no_grad():
        out = model(torch.from_numpy(x)[None])[0].numpy()
    fg = out[HEADS.index("nuc_fg")] > 0
    iou = (fg & (lab > 0)).sum() / (fg | (lab > 0)).sum()
    assert iou > 0.7, iou
    # the inner distance is higher at nuclear centres than at nuclear rims
    inner = out[HEADS.index("nuc_inner")]
    from scipy import ndimage as ndi

    rim = (lab > 0) & ~ndi.binary_erosion(lab > 0, iterations=2)
    core = ndi.binary_erosion(lab > 0, iterations=5)
    assert inner[core].mean() > inner[rim].mean() + 0.3


def _tiny_checkpoint(path, seed, **meta_extra):
    torch.manual_seed(seed)
    model = SegNet(**TINY)
    model.train()
    with torch.no_grad():
        model(torch.rand(4, 2, 32, 32) * (1 + seed))
    meta = {"model_mpp": 0.65, "nuclear_diameter_px": 18.0, "normalization": {"low": 1.0}}
    meta["card"] = {"name": f"m{seed}"}
    meta.update(meta_extra)
    save_checkpoint(path, model.eval(), meta)
    return model


def test_average_checkpoints(tmp_path, capsys):
    """The soup's every floating tensor is the mean of the ingredients'; mismatches are named."""
    from hcsflow.cli import main
    from hcsflow.segmentation.model import average_checkpoints

    a = _tiny_checkpoint(tmp_path / "a.pt", 1, postprocess={"min_distance": 4})
    b = _tiny_checkpoint(tmp_path / "b.pt", 2, postprocess={"min_distance": 6})
    soup, metas = average_checkpoints([tmp_path / "a.pt", tmp_path / "b.pt"])
    sa, sb, ss = a.state_dict(), b.state_dict(), soup.state_dict()
    assert not torch.equal(sa["stem.0.weight"], sb["stem.0.weight"])
    for k, v in ss.items():
        if v.is_floating_point():
            expected = ((sa[k].double() + sb[k].double()) / 2).to(v.dtype)
            assert torch.allclose(v, expected, rtol=0, atol=1e-7), k
        else:
            assert torch.equal(v, sa[k]), k
    assert [m["card"]["name"] for m in metas] == ["m1", "m2"]
    # averaging one network with itself gives it back
    same, _ = average_checkpoints([tmp_path / "a.pt", tmp_path / "a.pt"])
    x = torch.rand(1, 2, 24, 24)
    with torch.no_grad():
        assert torch.allclose(same(x), a.eval()(x), atol=1e-6)
    # the command writes a checkpoint with the chosen post-processing and a card
    out = tmp_path / "soup.pt"
    argv = ["average-segmenters", "--out", str(out), str(tmp_path / "a.pt")]
    argv += [str(tmp_path / "b.pt"), "--postprocess-from", str(tmp_path / "b.pt")]
    assert main(argv) == 0
    loaded, meta = load_checkpoint(out)
    with torch.no_grad():
        assert torch.allclose(loaded(x), soup(x), atol=1e-6)
    assert meta["postprocess"] == {"min_distance": 6}
    assert [i["name"] for i in meta["card"]["training"]["average_of"]] == ["m1", "m2"]
    assert "average-segmenters" in out.with_suffix(".md").read_text()
    with pytest.raises(ValueError, match="at least two"):
        average_checkpoints([tmp_path / "a.pt"])
    # the command reports a bad checkpoint by name, without a traceback
    missing = tmp_path / "missing.pt"
    assert (
        main(["average-segmenters", "--out", str(out), str(tmp_path / "a.pt"), str(missing)]) == 2
    )
    assert "missing.pt" in capsys.readouterr().err
    _tiny_checkpoint(tmp_path / "c.pt", 3, model_mpp=0.325)
    with pytest.raises(ValueError, match=r"c\.pt has model_mpp"):
        average_checkpoints([tmp_path / "a.pt", tmp_path / "c.pt"])


def test_set_postprocess_copies_weights_with_new_settings(tmp_path, capsys):
    """``hcsflow set-postprocess``: same weights, updated settings, a card that says so; bad
    settings are named and nothing is written."""
    from hcsflow.cli import main

    a = _tiny_checkpoint(tmp_path / "a.pt", 1, postprocess={"min_distance": 8})
    out = tmp_path / "b.pt"
    argv = ["set-postprocess", str(tmp_path / "a.pt"), "--out", str(out), "--name", "mb"]
    argv += ["--set", "min_distance=3", "merge_dynamic=0.075", "--note", "why"]
    assert main(argv) == 0
    loaded, meta = load_checkpoint(out)
    x = torch.rand(1, 2, 24, 24)
    with torch.no_grad():
        assert torch.equal(loaded(x), a.eval()(x))
    assert meta["postprocess"] == {"min_distance": 3, "merge_dynamic": 0.075}
    assert isinstance(meta["postprocess"]["min_distance"], int)
    assert meta["card"]["name"] == "mb" and "why" in meta["card"]["notes"]
    card = out.with_suffix(".md").read_text()
    assert "set-postprocess" in card and "--note why" in card and '"merge_dynamic": 0.075' in card
    for bad, named in (("min_dist=3", "min_dist"), ("merge_dynamic=2", "merge_dynamic")):
        target = tmp_path / "bad.pt"
        argv = ["set-postprocess", str(tmp_path / "a.pt"), "--out", str(target), "--set", bad]
        assert main(argv) == 2
        assert named in capsys.readouterr().err
        assert not target.exists()


def test_train_cli_on_user_folder(tmp_path, capsys):
    """``hcsflow train-segmenter`` on a folder of npz pairs writes a loadable checkpoint + card."""
    from hcsflow.cli import main

    rng = np.random.default_rng(0)
    data = tmp_path / "annotated"
    data.mkdir()
    for k in range(2):
        lab = disks(shape=(40, 48), centres=((12, 12), (26, 30)), radii=(5, 7 + k))
        img = (lab > 0) * 500.0 + rng.normal(100, 10, lab.shape)
        np.savez(data / f"f{k}.npz", nuclear=img, cytoplasm=img, nuclei=lab, cells=lab, mpp=0.65)
    out = tmp_path / "m.pt"
    args = ["train-segmenter", "--out", str(out), "--user", str(data), "--steps", "2"]
    args += ["--batch", "2", "--size", "32", "--widths", "4", "8", "8", "--blocks", "1", "1", "1"]
    args += ["--snapshot-every", "1"]
    assert main(args) == 0
    model, meta = load_checkpoint(out)
    assert meta["arch"]["widths"] == [4, 8, 8] and meta["model_mpp"] == 0.65
    assert meta["card"]["training"]["steps"] == 2
    assert "train-segmenter" in meta["card"]["command"]
    card = out.with_suffix(".md").read_text()
    assert "BSD-3-Clause" in card and "--user" in card
    assert (tmp_path / "m.step2.pt").exists()
    bad = tmp_path / "empty"
    bad.mkdir()
    before = out.read_bytes()
    code = main(["train-segmenter", "--out", str(out), "--user", str(bad), "--steps", "1"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("hcsflow train-segmenter: error:") and "empty" in err
    assert str(bad) in err and "Traceback" not in err
    assert out.read_bytes() == before  # the earlier checkpoint is not touched


def test_options_from_config():
    from hcsflow.segmentation.commands import add_arguments, options_from_config

    opts = options_from_config({"dsb": "d", "steps": 7, "user": ["a", "b"]}, 0.5)
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--out", "m.pt", *opts])
    assert args.dsb == "d" and args.steps == 7 and args.user == ["a", "b"]
    assert args.sim_mpp == 0.5 and args.sim == 48 and args.device == "cpu"
    assert "--dsb" not in options_from_config(None, 0.65)
    with pytest.raises(ValueError, match="stepz"):
        options_from_config({"stepz": 3}, 0.65)
