"""Per-cell features of a simulated plate measured inside its true masks."""

from __future__ import annotations

import json
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hcsflow.simulate.params import CHANNELS
from hcsflow.simulate.plate import _load_illumination


def _measure_field(args: tuple[str, str, str, int]) -> pd.DataFrame:
    import tifffile
    from skimage.measure import regionprops_table

    plate_dir, plate, well, site = args
    root = Path(plate_dir)
    flat, dark = _load_illumination(str(root / "truth" / "illumination.npz"))
    masks = np.load(root / "truth" / "masks" / f"{well}_s{site}.npz")
    nuclei, cells = masks["nuclei"], masks["cells"]
    n = int(cells.max())
    if n == 0:
        return pd.DataFrame()
    props = ("label", "area", "eccentricity", "solidity", "perimeter")
    out: dict[str, Any] = {"Metadata_ObjectNumber": np.arange(1, n + 1)}
    cp = regionprops_table(cells.astype(np.int32), properties=(*props, "centroid"))
    npp = regionprops_table(nuclei.astype(np.int32), properties=(*props, "centroid"))
    if not (
        np.array_equal(cp["label"], out["Metadata_ObjectNumber"])
        and np.array_equal(npp["label"], cp["label"])
    ):
        raise ValueError(
            f"masks of well {well} site {site} are not labelled 1..{n} with one nucleus per cell"
        )
    out["Nuclei_Location_Center_X"] = npp["centroid-1"]
    out["Nuclei_Location_Center_Y"] = npp["centroid-0"]
    out["Cells_Location_Center_X"] = cp["centroid-1"]
    out["Cells_Location_Center_Y"] = cp["centroid-0"]
    for comp, p in (("Cells", cp), ("Nuclei", npp)):
        out[f"{comp}_AreaShape_Area"] = p["area"]
        out[f"{comp}_AreaShape_Eccentricity"] = p["eccentricity"]
        out[f"{comp}_AreaShape_Solidity"] = p["solidity"]
        out[f"{comp}_AreaShape_Perimeter"] = p["perimeter"]
    cyto = np.where(nuclei > 0, 0, cells).ravel()
    cl, nl = cells.ravel(), nuclei.ravel()
    cnt_c = np.bincount(cl, minlength=n + 1)[1:]
    cnt_n = np.bincount(nl, minlength=n + 1)[1:]
    cnt_y = np.bincount(cyto, minlength=n + 1)[1:]
    for c, ch in enumerate(CHANNELS):
        raw = tifffile.imread(root / "images" / f"{plate}_{well}_s{site}_w{c + 1}.tif")
        img = ((raw.astype(np.float32) - dark[c]) / flat[c]).ravel().astype(np.float64)
        sc = np.bincount(cl, img, minlength=n + 1)[1:]
        sc2 = np.bincount(cl, img * img, minlength=n + 1)[1:]
        mc = sc / cnt_c
        out[f"Cells_Intensity_MeanIntensity_{ch}"] = mc
        out[f"Cells_Intensity_StdIntensity_{ch}"] = np.sqrt(np.maximum(sc2 / cnt_c - mc * mc, 0))
        out[f"Nuclei_Intensity_MeanIntensity_{ch}"] = (
            np.bincount(nl, img, minlength=n + 1)[1:] / cnt_n
        )
        with np.errstate(invalid="ignore", divide="ignore"):
            out[f"Cytoplasm_Intensity_MeanIntensity_{ch}"] = (
                np.bincount(cyto, img, minlength=n + 1)[1:] / cnt_y
            )
    df = pd.DataFrame(out)
    df.insert(0, "Metadata_Site", site)
    df.insert(0, "Metadata_Well", well)
    df.insert(0, "Metadata_Plate", plate)
    return df


def truth_cell_table(plate_dir: str | os.PathLike[str], n_workers: int = 1) -> pd.DataFrame:
    """Per-cell features measured on a simulated plate inside its true masks.

    Images are corrected with the true flat-field and dark-field (``(raw - dark) / flat``)
    and measured inside the true nucleus, cell and cytoplasm (cell minus nucleus) masks.

    Parameters
    ----------
    plate_dir : path
        Folder written by :func:`simulate_plate`.
    n_workers : int
        Worker processes.

    Returns
    -------
    DataFrame
        One row per true cell: ``Metadata_Plate``, ``Metadata_Well``, ``Metadata_Site``,
        ``Metadata_ObjectNumber``, ``Metadata_Compound``, ``Metadata_Dose``,
        ``Metadata_Role``, ``Metadata_MoA``, ``Metadata_Target``, nucleus and cell centres,
        ``{Cells,Nuclei}_AreaShape_{Area,Eccentricity,Solidity,Perimeter}``,
        ``{Cells,Nuclei,Cytoplasm}_Intensity_MeanIntensity_<ch>`` and
        ``Cells_Intensity_StdIntensity_<ch>`` for the five channels (Cytoplasm is NaN for a
        cell without cytoplasm).
    """
    root = Path(plate_dir)
    sim_json = root / "truth" / "simulation.json"
    if not sim_json.exists():
        raise ValueError(f"{root} is not a simulated plate: {sim_json} is missing")
    params = json.loads(sim_json.read_text())
    plate = params["plate"]
    fields = pd.read_csv(root / "truth" / "fields.csv", dtype={"well": str})
    jobs = [
        (str(root), plate, w, int(s)) for w, s in zip(fields["well"], fields["site"], strict=True)
    ]
    if n_workers > 1:
        with ProcessPoolExecutor(max_workers=n_workers) as ex:
            parts = list(ex.map(_measure_field, jobs))
    else:
        parts = [_measure_field(j) for j in jobs]
    parts = [p for p in parts if len(p)]
    df = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    from hcsflow.platemap import read_platemap

    df = df.merge(read_platemap(root / "platemap.csv"), on="Metadata_Well", how="left")
    front = [
        "Metadata_Plate",
        "Metadata_Well",
        "Metadata_Site",
        "Metadata_ObjectNumber",
        "Metadata_Compound",
        "Metadata_Dose",
        "Metadata_Role",
        "Metadata_MoA",
        "Metadata_Target",
    ]
    return df[front + [c for c in df.columns if c not in front]]
