"""Progress lines of long jobs: ``k of N fields`` at about every 10 % of a shard."""

from __future__ import annotations

import logging
import re

import numpy as np
import pandas as pd
import pytest
import tifffile

from hcsflow.logutil import Progress
from hcsflow.simulate import simulate_field


def test_progress_logs_every_tenth_and_the_end(caplog):
    now = [0.0]
    logger = logging.getLogger("hcsflow.test")
    progress = Progress(logger, 25, "segmented", clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="hcsflow.test"):
        for _ in range(25):
            now[0] += 4.0  # 4 s per field
            progress.advance()
    lines = [r.getMessage() for r in caplog.records]
    done = [int(re.match(r"segmented (\d+) of 25 fields", line).group(1)) for line in lines]
    assert done == [3, 5, 8, 10, 13, 15, 18, 20, 23, 25]
    assert lines[0] == "segmented 3 of 25 fields (12 %) in 12 s, about 88 s left"
    assert lines[-1] == "segmented 25 of 25 fields (100 %) in 2 min"


def test_progress_logs_each_item_of_a_short_list_and_checks_fraction(caplog):
    logger = logging.getLogger("hcsflow.test")
    progress = Progress(logger, 3, "measured", what="fields")
    with caplog.at_level(logging.INFO, logger="hcsflow.test"):
        for _ in range(3):
            progress.advance()
    assert [r.getMessage().split(" (")[0] for r in caplog.records] == [
        f"measured {k} of 3 fields" for k in (1, 2, 3)
    ]
    with pytest.raises(ValueError, match="fraction"):
        Progress(logger, 3, "x", fraction=0)


def test_segment_and_measure_jobs_log_progress(tmp_path, caplog):
    from hcsflow.features.core import MeasureParams
    from hcsflow.features.shard import measure_fields
    from hcsflow.io import write_masks
    from hcsflow.segmentation import Segmenter
    from hcsflow.segmentation.shard import segment_fields

    names = ("DNA", "ER", "AGP")
    rows = []
    for site in (1, 2, 3):
        image = simulate_field(site, (160, 160), 0.65).image
        for k, name in zip((0, 1, 3), names, strict=True):
            tifffile.imwrite(tmp_path / f"A01_s{site}_{name}.tif", image[k])
        rows.append(
            {
                "Metadata_Plate": "P1",
                "Metadata_Well": "A01",
                "Metadata_Site": site,
                **{f"PathName_{n}": str(tmp_path) for n in names},
                **{f"FileName_{n}": f"A01_s{site}_{n}.tif" for n in names},
            }
        )
    manifest = pd.DataFrame(rows)
    channels = [
        {"name": "DNA", "id": "w1", "role": "nuclear"},
        {"name": "ER", "id": "w2", "role": "cytoplasm"},
        {"name": "AGP", "id": "w4", "role": "membrane"},
    ]
    with caplog.at_level(logging.INFO, logger="hcsflow"):
        masks, _ = segment_fields(manifest, channels, Segmenter.load(method="classical"), 0.65)
        write_masks(tmp_path / "000.npz", masks)
        cells, _ = measure_fields(
            manifest, names, tmp_path / "000.npz", params=MeasureParams(families=("intensity",))
        )
    assert len(cells) > 0 and np.isfinite(cells.filter(like="Intensity").to_numpy()).any()
    lines = [r.getMessage() for r in caplog.records]
    for action in ("segmented", "measured"):
        got = [line.split(" (")[0] for line in lines if line.startswith(action)]
        assert got == [f"{action} {k} of 3 fields" for k in (1, 2, 3)], lines
