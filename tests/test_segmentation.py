"""Segmentation: metrics, deep-watershed post-processing, classical method, Segmenter, masks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import ndimage as ndi
from skimage.segmentation import find_boundaries

from hcsflow.io import MaskWriter, read_masks, write_masks
from hcsflow.segmentation import Segmenter
from hcsflow.segmentation.classical import segment_classical
from hcsflow.segmentation.metrics import (
    average_precision,
    dsb_score,
    f1_at,
    iou_matrix,
    match,
    pooled_counts,
    subset_counts,
    touching_labels,
)
from hcsflow.segmentation.postprocess import (
    PostprocessParams,
    deep_watershed,
    grow_labels,
    merge_shallow_basins,
    nuclei_from_maps,
    nuclei_only,
)
from hcsflow.segmentation.segmenter import (
    estimate_nuclear_diameter,
    field_flags,
    pair_labels,
    resize_labels,
    tile_layout,
)
from hcsflow.simulate import simulate_field

# --------------------------------------------------------------------------------------------
# helpers


def inner_distance(labels: np.ndarray) -> np.ndarray:
    """Per-object normalised distance to the object's boundary (1 at its innermost pixel)."""
    inside = (labels > 0) & ~find_boundaries(labels, mode="inner")
    d = ndi.distance_transform_edt(inside) + (labels > 0)
    top = np.asarray(ndi.maximum(d, labels, index=np.arange(labels.max() + 1)))
    top[top == 0] = 1
    return (d / top[labels]).astype(np.float32)


def maps_from_masks(nuclei: np.ndarray, cells: np.ndarray) -> np.ndarray:
    """The six network maps an ideal network would predict for these masks."""
    z = np.zeros(nuclei.shape, np.float32)
    return np.stack(
        [
            inner_distance(nuclei),
            z,
            (nuclei > 0).astype(np.float32),
            inner_distance(cells),
            z,
            (cells > 0).astype(np.float32),
        ]
    )


def disc_field(shape=(160, 160), touching=True):
    """Nuclei as discs on a grid, one pair touching when ``touching``; cells grown around."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    centres = [
        (cy, cx) for cy in range(20, shape[0] - 10, 40) for cx in range(20, shape[1] - 10, 40)
    ]
    if touching:
        centres[1] = (20, 34)  # touches the disc at (20, 20)
    nuclei = np.zeros(shape, np.int32)
    for k, (cy, cx) in enumerate(centres, start=1):
        nuclei[((yy - cy) ** 2 + (xx - cx) ** 2 <= 7**2) & (nuclei == 0)] = k
    cells = grow_labels(nuclei, 12)  # neighbouring cells touch
    return nuclei, cells


class PointwiseNet(torch.nn.Module):
    """A network without spatial context: the maps are functions of each pixel's input.

    Nuclear inner distance and foreground follow the normalized nuclear intensity (a domed
    nucleus peaks at its centre), the cell maps follow the cytoplasm channel. It makes the
    tiling and rescaling machinery testable exactly (tiled output == untiled output).
    """

    multiple = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nuc, cyto = x[:, 0], x[:, 1]
        cell = torch.maximum(nuc, cyto)
        return torch.stack([nuc, nuc, 20 * (nuc - 0.3), cell, cell, 20 * (cell - 0.15)], dim=1)


def deep_segmenter(**kw) -> Segmenter:
    return Segmenter(PointwiseNet(), {"model_mpp": 0.65}, **kw)


@pytest.fixture(scope="module")
def sim_field():
    return simulate_field(3, (320, 320), 0.65)


# --------------------------------------------------------------------------------------------
# metrics


def _two_squares():
    true = np.zeros((40, 40), np.int32)
    true[2:12, 2:12] = 1
    true[20:30, 20:30] = 2
    return true


def test_metrics_perfect_match():
    true = _two_squares()
    # relabelled prediction: labels need not agree
    pred = np.where(true == 1, 7, np.where(true == 2, 3, 0))
    assert f1_at(pred, true) == 1.0
    assert dsb_score(pred, true) == 1.0
    np.testing.assert_array_equal(average_precision(pred, true), np.ones(10))
    m = match(pred, true)
    assert (m.tp, m.fp, m.fn) == (2, 0, 0)
    assert sorted(zip(m.pred_ids.tolist(), m.true_ids.tolist(), strict=True)) == [(3, 2), (7, 1)]


def test_metrics_one_split():
    true = _two_squares()
    pred = true.copy()
    pred[20:30, 26:30] = 5  # object 2 split 60 % / 40 %
    m = match(pred, true, 0.5)
    assert (m.tp, m.fp, m.fn) == (2, 1, 0)
    assert f1_at(pred, true) == pytest.approx(4 / 5)
    ap = average_precision(pred, true, [0.5, 0.65])
    # IoU of the larger part is 0.6: a match at 0.5, not at 0.65
    np.testing.assert_allclose(ap, [2 / 3, 1 / 4])


def test_metrics_one_miss():
    true = _two_squares()
    pred = np.where(true == 1, 1, 0)
    assert f1_at(pred, true) == pytest.approx(2 / 3)
    assert dsb_score(pred, true) == pytest.approx(1 / 2)


def test_metrics_low_threshold_is_one_to_one():
    true = np.zeros((10, 30), np.int32)
    true[:, :10], true[:, 10:20] = 1, 2
    pred = np.zeros_like(true)
    pred[:, 5:15] = 1  # IoU 1/3 with both true objects
    m = match(pred, true, 0.3)
    assert m.tp == 1 and m.fn == 1 and m.fp == 0


def test_iou_matrix_matches_brute_force():
    rng = np.random.default_rng(0)
    pred = rng.integers(0, 5, (30, 30))
    true = rng.integers(0, 4, (30, 30))
    iou, pid, tid = iou_matrix(pred, true)
    for i, p in enumerate(pid):
        for j, t in enumerate(tid):
            a, b = pred == p, true == t
            assert iou[i, j] == pytest.approx((a & b).sum() / (a | b).sum())


def test_metrics_edge_cases():
    z = np.zeros((5, 5), np.int32)
    assert f1_at(z, z) == 1.0
    assert f1_at(_two_squares(), np.zeros((40, 40), int)) == 0.0
    with pytest.raises(ValueError, match="shape"):
        f1_at(z, np.zeros((4, 5), int))
    assert pooled_counts([match(z, z), match(_two_squares(), _two_squares())])["f1"] == 1.0


# --------------------------------------------------------------------------------------------
# post-processing


def test_deep_watershed_recovers_masks_from_ideal_maps():
    nuclei, cells = disc_field()
    pn, pc, stats = deep_watershed(maps_from_masks(nuclei, cells), PostprocessParams())
    assert stats.n_nuclei == stats.n_cells == len(np.unique(nuclei)) - 1
    for pred, true in ((pn, nuclei), (pc, cells)):
        m = match(pred, true, 0.9)
        assert m.fp == 0 and m.fn == 0, (m.tp, m.fp, m.fn)
    assert pn.dtype == np.uint32 and pc.dtype == np.uint32
    assert stats.nuclei_outside_cells == 0 and stats.cells_without_nucleus == 0


def test_deep_watershed_splits_touching_objects():
    yy, xx = np.mgrid[:60, :80]
    nuclei = np.zeros((60, 80), np.int32)
    nuclei[(yy - 30) ** 2 + (xx - 28) ** 2 <= 100] = 1
    nuclei[((yy - 30) ** 2 + (xx - 48) ** 2 <= 100) & (nuclei == 0)] = 2
    cells = grow_labels(nuclei, 6)
    maps = maps_from_masks(nuclei, cells)
    pn, pc, _ = deep_watershed(maps)
    assert f1_at(pn, nuclei, 0.8) == 1.0 and f1_at(pc, cells, 0.8) == 1.0


def _bumpy_nucleus_and_touching_pair():
    """Maps of one nucleus whose inner distance has two maxima over a shallow saddle (depth
    about 0.09), beside two touching discs (saddle near their rims), and the true labels."""
    yy, xx = np.mgrid[:60, :120]
    truth = np.zeros((60, 120), np.int32)
    truth[(yy - 30) ** 2 + (xx - 28) ** 2 <= 18**2] = 1
    truth[(yy - 30) ** 2 + (xx - 75) ** 2 <= 10**2] = 2
    truth[((yy - 30) ** 2 + (xx - 95) ** 2 <= 10**2) & (truth == 0)] = 3
    inner = inner_distance(truth)
    bumps = np.maximum(
        np.exp(-((yy - 30) ** 2 + (xx - 22) ** 2) / 18.0),
        np.exp(-((yy - 30) ** 2 + (xx - 34) ** 2) / 18.0),
    )
    inner[truth == 1] = (0.9 + 0.1 * bumps)[truth == 1]
    return inner, (truth > 0).astype(np.float32), truth


def test_shallow_secondary_maximum_is_merged_but_touching_nuclei_are_not():
    inner, fg, truth = _bumpy_nucleus_and_touching_pair()
    kw = dict(min_distance=3, seed_smoothing=0.0, min_nucleus_size=0)
    split, _ = nuclei_from_maps(inner, fg, PostprocessParams(**kw))
    assert split.max() == 4  # the two bumps are two seeds
    merged, _ = nuclei_from_maps(inner, fg, PostprocessParams(merge_dynamic=0.2, **kw))
    assert merged.max() == 3
    assert f1_at(merged, truth, 0.9) == 1.0
    # a threshold above the touching discs' saddle depth merges them as well
    over, _ = nuclei_from_maps(inner, fg, PostprocessParams(merge_dynamic=0.95, **kw))
    assert over.max() == 2


def test_merge_shallow_basins_joins_chains_and_numbers_in_order():
    height = np.array([[1.0, 0.95, 0.97, 0.5, 1.0, 0.96, 0.3, 0.0, 1.0]])
    labels = np.array([[1, 2, 3, 3, 4, 5, 5, 0, 6]])
    out = merge_shallow_basins(labels, height, 0.1)
    # 1-2 (saddle 0.95) and 2-3 (0.95) join; 3-4 meet at 0.5 and stay apart; 4-5 join;
    # 6 touches nothing; groups are numbered in the order of their first basin
    np.testing.assert_array_equal(out, [[1, 1, 1, 1, 2, 2, 2, 0, 3]])
    np.testing.assert_array_equal(merge_shallow_basins(labels, height, 0.0), labels)


def test_every_cell_carries_its_nucleus():
    nuclei, cells = disc_field()
    pn, pc, _ = deep_watershed(maps_from_masks(nuclei, cells))
    assert set(np.unique(pn)) == set(np.unique(pc))
    inside = pn > 0
    np.testing.assert_array_equal(pc[inside], pn[inside])
    assert np.array_equal(np.unique(pn), np.arange(pn.max() + 1))  # labels 1..N


def test_unmatched_objects_are_removed_and_counted():
    nuclei, cells = (np.pad(a, ((0, 0), (0, 40))) for a in disc_field(touching=False))
    maps = maps_from_masks(nuclei, cells)
    # nucleus 1 lies outside the cell foreground; a cell-like blob without nucleus appears
    maps[5][cells == 1] = 0.0
    maps[3][cells == 1] = 0.0
    yy, xx = np.mgrid[: cells.shape[0], : cells.shape[1]]
    blob = (yy - 80) ** 2 + (xx - 185) ** 2 <= 6**2
    assert not cells[blob].any()
    maps[5][blob] = 1.0
    maps[3][blob] = 0.5
    pn, pc, stats = deep_watershed(maps)
    assert stats.nuclei_outside_cells == 1
    assert stats.cells_without_nucleus == 1
    assert stats.n_cells == len(np.unique(nuclei)) - 2
    assert not pc[blob].any() and not pn[nuclei == 1].any()


def test_small_nuclei_removed_and_holes_filled():
    nuclei, cells = disc_field(touching=False)
    maps = maps_from_masks(nuclei, cells)
    maps[2][18:21, 18:21] = 0.0  # a hole inside nucleus 1
    maps[2][100:104, 118:122] = 1.0  # a 16-pixel speck
    maps[0][100:104, 118:122] = 1.0
    maps[5][100:104, 118:122] = 1.0
    pn, _, stats = deep_watershed(maps, PostprocessParams(min_nucleus_size=20))
    assert stats.small_nuclei == 1
    assert not pn[100:104, 118:122].any()
    assert pn[18:21, 18:21].all()


def test_postprocess_does_not_modify_input():
    nuclei, cells = disc_field()
    maps = maps_from_masks(nuclei, cells)
    before = maps.copy()
    deep_watershed(maps)
    np.testing.assert_array_equal(maps, before)


def test_nuclei_only_grows_cells():
    nuclei, cells = disc_field(touching=False)
    maps = maps_from_masks(nuclei, cells)
    pn, pc, stats = nuclei_only(maps[0], maps[2], PostprocessParams(), grow=5)
    assert stats.n_cells == stats.n_nuclei == len(np.unique(nuclei)) - 1
    area_n = np.bincount(pn.ravel())[1:]
    area_c = np.bincount(pc.ravel())[1:]
    assert np.all(area_c > area_n)
    np.testing.assert_array_equal(pc[pn > 0], pn[pn > 0])


def test_grow_labels_equals_expand_labels():
    from skimage.segmentation import expand_labels

    nuclei, _ = disc_field()
    np.testing.assert_array_equal(grow_labels(nuclei, 9), expand_labels(nuclei, 9))


# --------------------------------------------------------------------------------------------
# classical method


def test_classical_on_simulated_field(sim_field):
    f = sim_field
    cyto = f.image[3]  # AGP: cell borders
    n, c, stats = segment_classical(f.image[0], cyto, 0.65)
    assert f1_at(n, f.nuclei) >= 0.9
    assert f1_at(c, f.cells) >= 0.8
    np.testing.assert_array_equal(c[n > 0], n[n > 0])
    assert stats.n_cells == int(n.max())


def test_classical_nuclei_only_and_estimated_scale(sim_field):
    f = sim_field
    seg = Segmenter.load(method="classical", expand_um=4.0)
    res = seg.predict_with_qc(f.image[0], None, None)
    assert res.mpp_estimated and 0.65 / 1.3 < res.image_mpp < 0.65 * 1.3
    n, c = res.nuclei, res.cells
    assert n.shape == c.shape == f.image[0].shape and n.dtype == np.uint32
    assert f1_at(n, f.nuclei) >= 0.85
    np.testing.assert_array_equal(c[n > 0], n[n > 0])
    assert (c > 0).sum() > (n > 0).sum()


def test_nuclear_diameter_scales_with_pixel_size(sim_field):
    d1 = estimate_nuclear_diameter(sim_field.image[0])
    half = sim_field.image[0][::2, ::2]
    d2 = estimate_nuclear_diameter(half)
    assert d2 == pytest.approx(d1 / 2, rel=0.2)


# --------------------------------------------------------------------------------------------
# Segmenter: tiling, rescaling, QC flags


@pytest.mark.parametrize("size,tile,overlap", [(1080, 512, 64), (300, 1024, 64), (517, 256, 32)])
def test_tile_layout_covers_with_overlap(size, tile, overlap):
    length, starts = tile_layout(size, tile, overlap, multiple=16)
    assert length <= max(tile, size) and starts[0] == 0 and starts[-1] + length == size
    assert all(b - a <= length - overlap for a, b in zip(starts, starts[1:], strict=False))


def test_tiled_prediction_equals_untiled(sim_field):
    f = sim_field
    x = deep_segmenter()._model_input(f.image[0], f.image[3], 0.65)
    tiled = deep_segmenter(tile_size=128, tile_overlap=32, batch_size=3).predict_maps([x])[0]
    whole = deep_segmenter(tile_size=2048).predict_maps([x])[0]
    np.testing.assert_allclose(tiled, whole, atol=1e-5)
    n1, c1 = deep_segmenter(tile_size=128, tile_overlap=32).predict(f.image[0], f.image[3], 0.65)
    n2, c2 = deep_segmenter(tile_size=2048).predict(f.image[0], f.image[3], 0.65)
    # blended maps differ from the whole-field maps by float rounding only, which can move a
    # watershed tie by a pixel: the objects are the same
    for a, b in ((n1, n2), (c1, c2)):
        assert np.mean(a == b) > 0.995
        m = match(a, b, 0.95)
        assert m.fp == 0 and m.fn == 0
    assert n1.max() > 0


def test_batched_prediction_equals_single(sim_field):
    f = sim_field
    seg = deep_segmenter(tile_size=128, tile_overlap=16, batch_size=5)
    other = f.image[:, :200, :250]
    batch = seg.predict_batch([(f.image[0], f.image[3]), (other[0], other[3])], 0.65)
    single = seg.predict_with_qc(other[0], other[3], 0.65)
    np.testing.assert_array_equal(batch[1].cells, single.cells)
    assert batch[0].nuclei.shape == f.image[0].shape


@pytest.mark.parametrize("mpp", [0.325, 0.65, 1.1])
def test_rescaling_returns_input_shape(sim_field, mpp):
    img = sim_field.image[:, :301, :257]
    res = deep_segmenter().predict_with_qc(img[0], img[3], mpp)
    assert res.nuclei.shape == res.cells.shape == (301, 257)
    assert set(np.unique(res.nuclei)) == set(np.unique(res.cells))
    np.testing.assert_array_equal(res.cells[res.nuclei > 0], res.nuclei[res.nuclei > 0])


def test_resize_and_pair_labels():
    lab = np.arange(12, dtype=np.uint32).reshape(3, 4)
    up = resize_labels(lab, (6, 8))
    np.testing.assert_array_equal(up[::2, ::2], lab)
    np.testing.assert_array_equal(resize_labels(up, (3, 4)), lab)
    n = np.array([[1, 2, 0]], np.uint32)
    c = np.array([[1, 3, 3]], np.uint32)
    pn, pc, dropped = pair_labels(n, c)
    np.testing.assert_array_equal(pn, [[1, 0, 0]])
    np.testing.assert_array_equal(pc, [[1, 0, 0]])
    assert dropped == 2


@pytest.mark.parametrize("method", ["deep", "classical"])
def test_empty_blank_and_saturated_fields(method):
    seg = deep_segmenter() if method == "deep" else Segmenter.load(method="classical")
    rng = np.random.default_rng(0)
    empty = rng.poisson(100, (200, 200)).astype(np.uint16)
    blank = np.zeros((200, 200), np.uint16)
    saturated = empty.copy()
    saturated[50:150, 50:150] = 65535
    r_empty, r_blank, r_sat = seg.predict_batch(
        [(empty, empty), (blank, None), (saturated, empty)], [0.65, None, 0.65]
    )
    assert r_blank.flags == ("blank",) and r_blank.stats.n_cells == 0
    assert r_blank.nuclei.shape == (200, 200) and not r_blank.cells.any()
    assert "saturated" in r_sat.flags and "blank" not in r_sat.flags
    assert "blank" not in r_empty.flags and "saturated" not in r_empty.flags
    # noise alone gives no objects
    assert r_empty.stats.n_cells == 0 and r_empty.flags == ("no_objects",)
    assert field_flags(np.full((4, 4), 7.0)) == ["blank"]


def test_bad_inputs_raise():
    seg = deep_segmenter()
    with pytest.raises(ValueError, match="cytoplasm shape"):
        seg.predict(np.zeros((10, 10)), np.zeros((10, 11)), 0.65)
    with pytest.raises(ValueError, match="image_mpp"):
        seg.predict(np.zeros((10, 10)), None, -1.0)
    with pytest.raises(ValueError, match="method"):
        Segmenter.load(method="magic")
    with pytest.raises(FileNotFoundError):
        Segmenter.load("/nonexistent/model.pt")


# --------------------------------------------------------------------------------------------
# masks on disk


def test_read_masks_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    a = rng.integers(0, 2**20, (30, 40)).astype(np.uint32)
    b = rng.integers(0, 9, (30, 40)).astype(np.uint32)
    write_masks(tmp_path / "masks" / "P1" / "000.npz", {("A01", 1): (a, b), ("A01", 2): (b, a)})
    write_masks(tmp_path / "masks" / "P1" / "001.npz", {("C03", 4): (b, b)})
    n, c = read_masks(tmp_path, "P1", "A01", 2)
    np.testing.assert_array_equal(n, b)
    np.testing.assert_array_equal(c, a)
    n, c = read_masks(tmp_path, "P1", "C03", 4)
    assert n.dtype == np.uint32 and np.array_equal(c, b)
    with pytest.raises(KeyError, match="C03 site 5"):
        read_masks(tmp_path, "P1", "C03", 5)
    first = (tmp_path / "masks" / "P1" / "001.npz").read_bytes()
    write_masks(tmp_path / "masks" / "P1" / "001.npz", {("C03", 4): (b, b)})
    assert (tmp_path / "masks" / "P1" / "001.npz").read_bytes() == first


def test_mask_writer_streams_the_same_archive(tmp_path):
    """Field by field gives write_masks' bytes; wrong order or a failure leaves no file."""
    rng = np.random.default_rng(2)
    fields = {
        (w, s): (
            rng.integers(0, 50, (20, 24)).astype(np.uint32),
            rng.integers(0, 50, (20, 24)).astype(np.uint32),
        )
        for w in ("A01", "A02", "B01")
        for s in (1, 2, 10)
    }
    write_masks(tmp_path / "all.npz", fields)
    with MaskWriter(tmp_path / "stream.npz") as out:
        assert not (tmp_path / "stream.npz").exists()  # only the temporary file so far
        for (well, site), (n, c) in sorted(fields.items()):
            out.add(well, site, n, c)
    assert out.n_fields == 9
    assert (tmp_path / "stream.npz").read_bytes() == (tmp_path / "all.npz").read_bytes()
    with pytest.raises(ValueError, match="well A01 site 2 added after well A01 site 10"):
        with MaskWriter(tmp_path / "bad.npz") as out:
            out.add("A01", 10, *fields[("A01", 10)])
            out.add("A01", 2, *fields[("A01", 2)])
    with pytest.raises(ValueError, match=r"shape \(3, 20, 24\)"):
        with MaskWriter(tmp_path / "bad.npz") as out:
            out.add("A01", 1, np.zeros((3, 20, 24)), np.zeros((20, 24)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["all.npz", "stream.npz"]


def test_segment_fields_from_manifest(tmp_path, sim_field):
    import tifffile

    from hcsflow.segmentation.shard import segment_fields

    rows = []
    for well, img in (("A01", sim_field.image), ("B02", np.zeros_like(sim_field.image))):
        for ch, name in enumerate(("DNA", "ER", "AGP")):
            tifffile.imwrite(tmp_path / f"{well}_{name}.tif", img[(0, 1, 3)[ch]])
        rows.append(
            {
                "Metadata_Plate": "P1",
                "Metadata_Well": well,
                "Metadata_Site": 1,
                **{f"PathName_{n}": str(tmp_path) for n in ("DNA", "ER", "AGP")},
                **{f"FileName_{n}": f"{well}_{n}.tif" for n in ("DNA", "ER", "AGP")},
            }
        )
    channels = [
        {"name": "DNA", "id": "w1", "role": "nuclear"},
        {"name": "ER", "id": "w2", "role": "cytoplasm"},
        {"name": "AGP", "id": "w4", "role": "membrane"},
    ]
    seg = Segmenter.load(method="classical")
    masks, qc = segment_fields(pd.DataFrame(rows[::-1]), channels, seg, 0.65)
    with MaskWriter(tmp_path / "streamed.npz") as out:
        kept, qc2 = segment_fields(pd.DataFrame(rows), channels, seg, 0.65, masks_out=out)
    assert kept == {} and out.n_fields == 2
    pd.testing.assert_frame_equal(qc, qc2)
    write_masks(tmp_path / "kept.npz", masks)
    assert (tmp_path / "streamed.npz").read_bytes() == (tmp_path / "kept.npz").read_bytes()
    assert list(qc["Metadata_Well"]) == ["A01", "B02"]
    assert qc.loc[1, "flags"] == "blank" and qc.loc[1, "Count_Cells"] == 0
    assert qc.loc[0, "Count_Cells"] == masks[("A01", 1)][1].max() > 0
    assert qc.loc[0, "Count_Nuclei"] == masks[("A01", 1)][0].max()
    assert "n_cells" not in qc.columns and "n_nuclei" not in qc.columns
    assert f1_at(masks[("A01", 1)][1], sim_field.cells) >= 0.8
    with pytest.raises(ValueError, match="nuclear"):
        segment_fields(pd.DataFrame(rows), channels[1:], seg, 0.65)


def test_touching_subset_counts():
    true = np.zeros((20, 30), np.int32)
    true[2:8, 2:8] = 1
    true[2:8, 8:14] = 2  # touches 1
    true[12:18, 20:26] = 3  # alone
    np.testing.assert_array_equal(touching_labels(true), [1, 2])
    pred = np.zeros_like(true)
    pred[2:8, 2:14] = 1  # 1 and 2 merged: IoU 0.5 with each, no match
    pred[12:18, 20:26] = 2
    assert subset_counts(pred, true, touching_labels(true)) == {"tp": 0, "fp": 1, "fn": 2}
    assert subset_counts(pred, true, [3]) == {"tp": 1, "fp": 0, "fn": 0}


def test_inference_model_folds_batchnorm_without_changing_outputs():
    from hcsflow.segmentation.model import SegNet
    from hcsflow.segmentation.segmenter import inference_model

    torch.manual_seed(0)
    net = SegNet(widths=(4, 8, 8), blocks=(1, 1, 1))
    with torch.no_grad():  # non-trivial batch-norm statistics
        for mod in net.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.5, 0.5)
                mod.running_var.uniform_(0.5, 2.0)
    net.eval()
    fast = inference_model(net)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())  # input untouched
    x = torch.rand(2, 2, 37, 45)
    with torch.inference_mode():
        torch.testing.assert_close(fast(x), net(x), atol=1e-5, rtol=1e-4)


def test_shipped_model_on_empty_and_simulated_fields(sim_field):
    from hcsflow.segmentation.segmenter import default_model_path

    assert default_model_path().exists()
    seg = Segmenter.load(threads=1)
    assert seg.model_mpp > 0 and seg.device in ("cpu", "cuda")
    rng = np.random.default_rng(5)
    empty = simulate_field(11, (256, 256), 0.65, density=0.0).image
    noise = rng.poisson(200, (256, 256)).astype(np.uint16)
    for nuc, cyto in ((empty[0], empty[1]), (noise, noise)):
        res = seg.predict_with_qc(nuc, cyto, 0.65)
        assert res.stats.n_cells == 0 and "no_objects" in res.flags
    f = sim_field
    nuclei, cells = seg.predict(f.image[0], f.image[3], 0.65)
    assert nuclei.shape == f.image[0].shape and cells.dtype == np.uint32
    np.testing.assert_array_equal(cells[nuclei > 0], nuclei[nuclei > 0])
    assert nuclei.max() > 0.5 * f.nuclei.max()


def test_shipped_model_tiled_equals_untiled(sim_field):
    f = sim_field
    tiled = Segmenter.load(threads=1, tile_size=160, tile_overlap=48)
    whole = Segmenter.load(threads=1, tile_size=2048)
    for a, b in zip(
        tiled.predict(f.image[0], f.image[3], 0.65),
        whole.predict(f.image[0], f.image[3], 0.65),
        strict=True,
    ):
        # the network sees different borders in a tile: maps differ slightly near tile edges
        assert np.mean(a == b) > 0.95
        assert match(a, b, 0.5).f1 >= 0.9


# --------------------------------------------------------------------------------------------
# post-processing at the input's resolution, test-time augmentation


def domed_discs(shape=(300, 300), spacing=60, seed=0):
    """Fine-resolution image of separate discs (radius 15-22 px, a dome on a plateau, soft
    1-px edge) and their labels."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(np.float64)
    image = np.full(shape, 1000.0)
    labels = np.zeros(shape, np.int32)
    k = 0
    for cy in range(spacing // 2, shape[0] - spacing // 2 + 1, spacing):
        for cx in range(spacing // 2, shape[1] - spacing // 2 + 1, spacing):
            k += 1
            r0 = rng.uniform(15, 22)
            cy1, cx1 = cy + rng.uniform(-3, 3), cx + rng.uniform(-3, 3)
            r = np.hypot(yy - cy1, xx - cx1)
            edge = np.clip(r0 - r + 0.5, 0, 1)
            dome = np.sqrt(np.clip(1 - (r / r0) ** 2, 0, 1))
            image += 3000 * edge * (0.6 + 0.4 * dome)
            labels[r <= r0] = k
    return image.astype(np.float32), labels


def _mean_iou(pred, true):
    m = match(pred, true, 0.5)
    return float(m.iou.sum() / true.max())


@pytest.mark.parametrize("mpp", [0.26, 0.2])
def test_native_resolution_postprocessing_improves_boundaries(mpp):
    image, truth = domed_discs()
    native = deep_segmenter().predict_with_qc(image, None, mpp)
    coarse = deep_segmenter(native_resolution=False).predict_with_qc(image, None, mpp)
    assert native.nuclei.shape == native.cells.shape == truth.shape
    assert native.nuclei.dtype == np.uint32
    # the same objects either way
    assert native.stats.n_nuclei == coarse.stats.n_nuclei == truth.max()
    # the watershed at the input's pixels places boundaries better than labels resized from
    # the coarse working grid (2.5-3.25 input pixels per model pixel)
    iou_native, iou_coarse = _mean_iou(native.nuclei, truth), _mean_iou(coarse.nuclei, truth)
    assert iou_native > iou_coarse + 0.01
    assert iou_native > 0.9


def test_post_params_follow_pixel_size():
    meta = {"model_mpp": 0.65, "postprocess": {"min_distance": 8, "seed_threshold": 0.5}}
    seg = Segmenter(PointwiseNet(), meta, min_nucleus_area_um2=15.0)
    at_model = seg._post_params(0.65)
    finer = seg._post_params(0.325)
    assert (at_model.min_distance, finer.min_distance) == (8, 16)
    assert finer.seed_smoothing == pytest.approx(2 * at_model.seed_smoothing)
    assert finer.max_hole_size == 4 * at_model.max_hole_size
    assert finer.min_nucleus_size == round(15.0 / 0.325**2)
    assert finer.seed_threshold == at_model.seed_threshold == 0.5
    zoomed = Segmenter(PointwiseNet(), dict(meta, zoom=1.5))
    assert zoomed.zoom == 1.5 and zoomed.work_mpp == pytest.approx(0.65 / 1.5)
    assert zoomed.post_params.min_distance == 12
    with pytest.raises(ValueError, match="zoom"):
        Segmenter(PointwiseNet(), meta, zoom=0.0)


def test_tta_maps_are_invariant_to_flips_and_rotations():
    from hcsflow.segmentation.model import SegNet

    torch.manual_seed(0)
    net = SegNet(widths=(4, 8, 8), blocks=(1, 1, 1)).eval()
    x = np.random.default_rng(0).random((2, 48, 64)).astype(np.float32)
    plain = Segmenter(net, {"model_mpp": 0.65}, tile_size=256)
    tta = Segmenter(net, {"model_mpp": 0.65}, tile_size=256, tta=True)
    rot = np.ascontiguousarray(np.rot90(x, 1, axes=(1, 2)))
    flip = np.ascontiguousarray(x[:, ::-1])
    m, m_rot, m_flip = tta.predict_maps([x, rot, flip])
    np.testing.assert_allclose(np.rot90(m, 1, axes=(1, 2)), m_rot, atol=1e-5)
    np.testing.assert_allclose(m[:, ::-1], m_flip, atol=1e-5)
    # the plain network is not equivariant, so the test above has teeth
    p, p_rot = plain.predict_maps([x, rot])
    assert np.abs(np.rot90(p, 1, axes=(1, 2)) - p_rot).max() > 1e-3
    # a pointwise network is equivariant: TTA changes nothing
    pw = deep_segmenter(tta=True).predict_maps([x])[0]
    np.testing.assert_allclose(pw, deep_segmenter().predict_maps([x])[0], atol=1e-5)


def test_config_turns_on_tta():
    from hcsflow.segmentation.shard import segmenter_from_config

    assert segmenter_from_config({"tta": True, "threads": 1}).tta
    assert not segmenter_from_config({"threads": 1}).tta
    # the shipped checkpoint's own post-processing settings are used
    seg = segmenter_from_config({"threads": 1})
    assert seg.post_params.fg_threshold == 0.5 and seg.native_resolution
