"""hcsflow.features.measure: pairing, compartments, row order, flags, schema, field quality."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from hcsflow.features import measure
from hcsflow.features.core import FAMILIES, MeasureParams, pair_nuclei
from hcsflow.features.quality import field_quality

CH = ["DNA", "Mito"]


def _disc(shape, cy, cx, r):
    yy, xx = np.indices(shape)
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def _scene(shape=(80, 96)):
    """Three cells: two with a nucleus, one (label 7) without; labels not consecutive."""
    cells = np.zeros(shape, np.uint32)
    nuclei = np.zeros(shape, np.uint32)
    cells[_disc(shape, 20, 20, 12)] = 3
    nuclei[_disc(shape, 20, 20, 5)] = 3
    cells[_disc(shape, 50, 60, 14)] = 5
    nuclei[_disc(shape, 52, 58, 6)] = 5
    cells[_disc(shape, 20, 75, 9)] = 7
    rng = np.random.default_rng(0)
    image = rng.uniform(0.01, 0.02, (2,) + shape).astype(np.float32)
    image[0][nuclei > 0] += 0.3
    image[1][cells > 0] += 0.1 * rng.random(int((cells > 0).sum()))
    return image, nuclei, cells


@pytest.fixture(scope="module")
def table():
    image, nuclei, cells = _scene()
    return measure(image, nuclei, cells, CH)


def test_rows_follow_cell_labels_and_flags(table):
    assert table["Metadata_ObjectNumber"].tolist() == [3, 5, 7]
    assert table["Metadata_Cells_NoNucleus"].tolist() == [False, False, True]
    assert not table["Metadata_Cells_TouchesBorder"].any()
    np.testing.assert_allclose(table["Metadata_Cells_Location_Center_X"], [20, 60, 75], atol=0.5)
    np.testing.assert_allclose(table["Metadata_Cells_Location_Center_Y"], [20, 50, 20], atol=0.5)


def test_every_family_and_compartment_present(table):
    cols = [c for c in table.columns if not c.startswith("Metadata_")]
    for comp in ("Cells", "Nuclei", "Cytoplasm"):
        assert any(c.startswith(f"{comp}_AreaShape_") for c in cols)
        assert f"{comp}_Intensity_MeanIntensity_DNA" in cols
        assert f"{comp}_Texture_Contrast_Mito_3_00_256" in cols
        assert f"{comp}_Granularity_1_DNA" in cols
        assert f"{comp}_RadialDistribution_FracAtD_DNA_1of4" in cols
        assert f"{comp}_Correlation_Correlation_DNA_Mito" in cols
    assert "Cells_Neighbors_NumberOfNeighbors_Adjacent" in cols
    assert all(table[c].dtype == np.float64 for c in cols)


def test_cell_without_nucleus(table):
    nuc = [c for c in table.columns if c.startswith("Nuclei_")]
    assert table.loc[2, nuc].isna().all()
    assert table.loc[:1, "Nuclei_AreaShape_Area"].notna().all()
    # its cytoplasm is the whole cell
    assert table.loc[2, "Cytoplasm_AreaShape_Area"] == table.loc[2, "Cells_AreaShape_Area"]
    # cell = nucleus + cytoplasm in area and integrated intensity
    for f in ("AreaShape_Area", "Intensity_IntegratedIntensity_DNA"):
        total = table.loc[:1, f"Nuclei_{f}"] + table.loc[:1, f"Cytoplasm_{f}"]
        np.testing.assert_allclose(total, table.loc[:1, f"Cells_{f}"], rtol=1e-5)


def test_relabelling_permutes_rows_only(table):
    image, nuclei, cells = _scene()
    perm = np.zeros(8, np.uint32)
    perm[[3, 5, 7]] = [9, 2, 4]  # new labels, new order: 5 -> 2, 7 -> 4, 3 -> 9
    nuc2 = np.zeros_like(nuclei)
    nuc2[nuclei == 3] = 40  # nuclear labels need not equal cell labels
    nuc2[nuclei == 5] = 11
    other = measure(image, nuc2, perm[cells], CH)
    assert other["Metadata_ObjectNumber"].tolist() == [2, 4, 9]
    back = other.iloc[[2, 0, 1]].reset_index(drop=True)
    feats = [c for c in table.columns if not c.startswith("Metadata_")]
    skip = ("Object_Number", "Neighbors_")  # the labels themselves, and neighbour labels
    feats = [c for c in feats if not any(s in c for s in skip)]
    pd.testing.assert_frame_equal(back[feats], table[feats], rtol=1e-9, atol=1e-12)


def test_empty_field_has_full_schema(table):
    image = np.zeros((2, 40, 40), np.float32)
    empty = measure(image, np.zeros((40, 40), np.uint32), np.zeros((40, 40), np.uint32), CH)
    assert len(empty) == 0
    assert list(empty.columns) == list(table.columns)


def test_pair_nuclei_by_overlap():
    cells = np.zeros((10, 10), np.uint16)
    cells[:, :5] = 4
    cells[:, 5:9] = 2  # column 9 is background
    nuclei = np.zeros((10, 10), np.uint16)
    nuclei[2:5, 1:4] = 1  # inside cell 4
    nuclei[6:9, 6:9] = 8  # inside cell 2
    nuclei[6:8, 3:6] = 9  # straddles both; in each cell the nucleus of largest overlap wins
    ck, nk, numbers = pair_nuclei(nuclei, cells)
    assert numbers.tolist() == [2, 4]
    assert set(np.unique(ck)) == {0, 1, 2}
    assert (nk[6:9, 6:9] == 1).all() and (nk[2:5, 1:4] == 2).all()
    assert (nk[6:8, 3:6] == 0).all()  # pieces of another nucleus are not this cell's nucleus
    assert (nk[:, 9] == 0).all()


def test_bad_inputs_named():
    image, nuclei, cells = _scene()
    with pytest.raises(ValueError, match="2 channels but 1 channel names"):
        measure(image, nuclei, cells, ["DNA"])
    with pytest.raises(ValueError, match="cells mask has shape"):
        measure(image, nuclei, cells[:10], CH)
    with pytest.raises(ValueError, match="unknown feature families"):
        MeasureParams(families=("shape", "colour"))


def test_families_subset():
    image, nuclei, cells = _scene()
    out = measure(image, nuclei, cells, CH, MeasureParams(families=("intensity",)))
    feats = [c for c in out.columns if not c.startswith("Metadata_")]
    assert feats and all("_Intensity_" in c or "_Location_" in c for c in feats)
    assert set(FAMILIES) >= {"shape", "intensity"}


def test_field_quality_focus_and_saturation():
    rng = np.random.default_rng(1)
    sharp = rng.integers(100, 2000, (1, 64, 64)).astype(np.uint16)
    from scipy import ndimage

    blurred = ndimage.gaussian_filter(sharp.astype(float), (0, 3, 3)).astype(np.uint16)
    q_sharp = field_quality(sharp, ["DNA"])
    q_blur = field_quality(blurred, ["DNA"])
    assert q_sharp["ImageQuality_FocusScore_DNA"] > 10 * q_blur["ImageQuality_FocusScore_DNA"]
    assert (
        q_blur["ImageQuality_PowerLogLogSlope_DNA"] < q_sharp["ImageQuality_PowerLogLogSlope_DNA"]
    )
    sat = sharp.copy()
    sat[0, :8, :] = 65535
    assert field_quality(sat, ["DNA"])["ImageQuality_PercentMaximal_DNA"] == pytest.approx(12.5)
