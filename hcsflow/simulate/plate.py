"""A simulated plate folder: images, masks, plate map and ground truth."""

from __future__ import annotations

import functools
import json
import os
import time
import zlib
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hcsflow import __version__
from hcsflow import wells as _wells
from hcsflow.io import atomic_path
from hcsflow.simulate.design import (
    _validate_platemap,
    compound_parameters,
    default_platemap,
    effect_fraction,
    well_names,
)
from hcsflow.simulate.field import simulate_field
from hcsflow.simulate.illumination import background_level, make_illumination
from hcsflow.simulate.params import (
    _ZLIB_LEVEL,
    ACTIVE_THRESHOLD,
    CELLS_PER_MM2,
    CHANNELS,
    DEFAULT_APPEARANCE,
    MOA_PROFILES,
    PHENOTYPE_KEYS,
    VIGNETTING,
    WELL_NOISE,
    SimulatedPlate,
    check_batch_appearance,
)
from hcsflow.simulate.textures import _child


def _well_rc(well: str) -> tuple[int, int]:
    return _wells.well_index(well)


@functools.lru_cache(maxsize=2)
def _load_illumination(path: str) -> tuple[np.ndarray, np.ndarray]:
    """Flat-field and dark-field of a simulated plate (cached per worker process)."""
    with np.load(path) as z:
        return z["flatfield"], z["darkfield"]


def _field_task(task: dict[str, Any]) -> dict[str, Any]:
    """Simulate one field and write its images and masks (runs in a worker process)."""
    t0 = time.process_time()
    ss = np.random.SeedSequence(task["entropy"])
    g = _child(ss, 30)
    oof = bool(g.random() < task["out_of_focus_fraction"])
    flat, dark = _load_illumination(task["illumination"])
    app = dict(task["appearance"])
    app["background"] *= background_level(ss, task["background_jitter"], stream=31)
    f = simulate_field(
        ss,
        (task["size"], task["size"]),
        task["image_mpp"],
        density=task["density"],
        phenotype=task["phenotype"],
        appearance=app,
        flatfield=flat,
        darkfield=dark,
        out_of_focus=oof,
    )
    import tifffile

    images_dir = Path(task["images_dir"])
    for c in range(len(CHANNELS)):
        path = images_dir / f"{task['plate']}_{task['well']}_s{task['site']}_w{c + 1}.tif"
        with atomic_path(path) as tmp:
            tifffile.imwrite(
                tmp,
                f.image[c],
                compression="zlib",
                predictor=True,
                compressionargs={"level": _ZLIB_LEVEL},
            )
    mpath = Path(task["masks_dir"]) / f"{task['well']}_s{task['site']}.npz"
    with atomic_path(mpath) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, nuclei=f.nuclei, cells=f.cells)
    row = {"well": task["well"], "site": task["site"], **f.info}
    row["cpu_seconds"] = round(time.process_time() - t0, 3)
    return row


# Over 80 lines only through its 18 keyword parameters and the settings it records; the body
# is the plate's steps, one call each.
def simulate_plate(
    out_dir: str | os.PathLike[str],
    *,
    plate: str = "SIM-P1",
    n_wells: int = 96,
    sites: int = 4,
    size: int = 1080,
    image_mpp: float = 0.65,
    seed: int = 0,
    platemap: pd.DataFrame | None = None,
    vignetting: str = "radial",
    dark_offset: bool = True,
    density: float = 1.0,
    out_of_focus_fraction: float = 0.02,
    plate_effects: bool = True,
    background_cv: float = 0.0,
    background_jitter: float = 0.0,
    appearance: Mapping[str, Any] | None = None,
    n_workers: int | None = None,
) -> SimulatedPlate:
    """Simulate a Cell Painting plate folder with its plate map and ground truth.

    Writes ``images/{plate}_{well}_s{site}_w{n}.tif`` (uint16, zlib), ``platemap.csv`` and
    ``truth/`` (``masks/{well}_s{site}.npz``, ``illumination.npz``, ``fields.csv``,
    ``compounds.csv``, ``treatments.csv``, ``simulation.json``).

    Parameters
    ----------
    out_dir : path
        Output folder (created).
    plate : str
        Plate name used in the file names; also seeds the plate's randomness.
    n_wells : {96, 384}
    sites : int
        Fields per well.
    size : int
        Field side in pixels.
    image_mpp : float
        Micrometres per pixel.
    seed : int
        Seed; two seeds with one plate map give replicate plates.
    platemap : DataFrame, optional
        Columns ``well``, ``compound``, ``dose_um``, ``role`` and optionally ``moa``,
        ``target``; default :func:`default_platemap`. MoAs outside :data:`MOA_PROFILES`
        have no phenotype.
    vignetting : str
        Flat-field kind (:func:`make_illumination`).
    dark_offset : bool
        Camera offset on or off.
    density : float
        Cell density relative to :data:`CELLS_PER_MM2`.
    out_of_focus_fraction : float
        Probability that a field is out of focus.
    plate_effects : bool
        Row/column intensity gradients and edge-well effects (fewer, brighter cells).
    background_cv : float
        Well-to-well coefficient of variation (log-normal, mean 1) of the background
        fluorescence level (medium and compound autofluorescence); 0 (default) gives every
        well the same level.
    background_jitter : float
        Field-to-field coefficient of variation of the background level within a well.
    appearance : mapping, optional
        The plate's staining and camera, for simulating imaging batches of one screen: keys
        of :data:`~hcsflow.simulate.params.BATCH_APPEARANCE_KEYS` (e.g. drawn by
        :func:`~hcsflow.simulate.params.batch_appearance`). ``channel_brightness`` and
        ``background`` multiply the wells' own plate effects and background levels; the others
        replace the defaults of :data:`DEFAULT_APPEARANCE`. Default: the default appearance.
    n_workers : int, optional
        Worker processes (default: number of CPUs). Results do not depend on it.

    Returns
    -------
    SimulatedPlate
    """
    _check_plate_args(
        sites, size, out_of_focus_fraction, vignetting, background_cv, background_jitter
    )
    plate_app = check_batch_appearance(appearance)
    t_start = time.perf_counter()
    out = Path(out_dir)
    images_dir, truth_dir = out / "images", out / "truth"
    masks_dir = truth_dir / "masks"
    pm = _validate_platemap(default_platemap(n_wells) if platemap is None else platemap, n_wells)
    for d in (images_dir, masks_dir):
        d.mkdir(parents=True, exist_ok=True)
    compounds, treat = _compounds_and_treatments(pm)
    illum_path = _write_illumination(truth_dir, size, vignetting, dark_offset, seed)
    common = {
        "size": int(size),
        "image_mpp": float(image_mpp),
        "out_of_focus_fraction": float(out_of_focus_fraction),
        "background_jitter": float(background_jitter),
        "illumination": str(illum_path),
        "images_dir": str(images_dir),
        "masks_dir": str(masks_dir),
    }
    tasks = _field_tasks(
        pm,
        compounds.set_index("compound"),
        plate=plate,
        n_wells=n_wells,
        sites=sites,
        seed=seed,
        density=density,
        plate_effects=plate_effects,
        background_cv=background_cv,
        common=common,
        appearance=plate_app,
    )
    n_workers = (os.cpu_count() or 1) if n_workers is None else int(n_workers)
    fields = pd.DataFrame(_run_tasks(tasks, n_workers))
    field_seconds = fields.pop("cpu_seconds")

    settings = {
        "plate": plate,
        "n_wells": n_wells,
        "sites": sites,
        "size": size,
        "image_mpp": image_mpp,
        "seed": seed,
        "vignetting": vignetting,
        "dark_offset": dark_offset,
        "density": density,
        "out_of_focus_fraction": out_of_focus_fraction,
        "plate_effects": plate_effects,
        "background_cv": background_cv,
        "background_jitter": background_jitter,
        "plate_appearance": plate_app,
    }
    _write_truth(truth_dir, fields, compounds, treat, settings)
    # the plate map comes last: its presence marks a complete plate folder
    pm_path = _write_platemap(out, pm)
    elapsed = time.perf_counter() - t_start
    print(
        f"simulated plate {plate}: {len(tasks)} fields of {size}x{size} in {elapsed:.1f} s "
        f"({field_seconds.mean():.2f} s CPU per field, {n_workers} workers); "
        f"{int(fields['n_cells'].sum())} cells -> {out}"
    )
    return SimulatedPlate(
        plate=plate, out_dir=out, images_dir=images_dir, platemap=pm_path, truth_dir=truth_dir
    )


def _write_illumination(
    truth_dir: Path, size: int, vignetting: str, dark_offset: bool, seed: int
) -> Path:
    """Make the plate's flat-field and dark-field, shape (size, size), and write them with the
    channel names to ``truth/illumination.npz``; return its path."""
    flat, dark = make_illumination(
        (size, size), vignetting=vignetting, dark_offset=dark_offset, seed=seed
    )
    illum_path = truth_dir / "illumination.npz"
    with atomic_path(illum_path) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, flatfield=flat, darkfield=dark, channels=np.array(CHANNELS))
    return illum_path


def _write_platemap(out: Path, pm: pd.DataFrame) -> Path:
    """Write the plate map (``well``, ``compound``, ``dose_um``, ``role``, ``moa``,
    ``target``) to ``platemap.csv``; return its path."""
    pm_path = out / "platemap.csv"
    with atomic_path(pm_path) as tmp:
        pm[["well", "compound", "dose_um", "role", "moa", "target"]].to_csv(tmp, index=False)
    return pm_path


def _write_truth(
    truth_dir: Path,
    fields: pd.DataFrame,
    compounds: pd.DataFrame,
    treat: pd.DataFrame,
    settings: dict[str, Any],
) -> None:
    """Write ``fields.csv``, ``compounds.csv``, ``treatments.csv`` and ``simulation.json``."""
    for df, name in (
        (fields, "fields.csv"),
        (compounds, "compounds.csv"),
        (treat, "treatments.csv"),
    ):
        with atomic_path(truth_dir / name) as tmp:
            df.to_csv(tmp, index=False)
    with atomic_path(truth_dir / "simulation.json") as tmp:
        record = _simulation_record(settings)
        tmp.write_text(json.dumps(record, indent=2, sort_keys=True, default=list) + "\n")


def _check_plate_args(
    sites: int,
    size: int,
    out_of_focus_fraction: float,
    vignetting: str,
    background_cv: float,
    background_jitter: float,
) -> None:
    """Raise ``ValueError`` on a bad argument of :func:`simulate_plate`."""
    if sites < 1:
        raise ValueError(f"sites must be >= 1, got {sites}")
    if size < 16:
        raise ValueError(f"size must be >= 16 pixels, got {size}")
    if not 0 <= out_of_focus_fraction <= 1:
        raise ValueError(f"out_of_focus_fraction must be in [0, 1], got {out_of_focus_fraction}")
    if vignetting not in VIGNETTING:
        raise ValueError(f"unknown vignetting {vignetting!r}; expected one of {VIGNETTING}")
    if background_cv < 0 or background_jitter < 0:
        raise ValueError(
            f"background_cv and background_jitter must be >= 0, got {background_cv}, "
            f"{background_jitter}"
        )


def _compounds_and_treatments(pm: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The compounds of a plate map with their dose-response parameters, and the treatments
    (compound x dose) with their effect fraction and whether they are truly active."""
    comp_rows = []
    for (cpd, moa), _ in pm[pm["role"].isin(["trt", "poscon"])].groupby(
        ["compound", "moa"], sort=True
    ):
        comp_rows.append(compound_parameters(cpd, moa))
    compounds = pd.DataFrame(
        comp_rows,
        columns=["compound", "moa", "ec50_um", "hill", "max_effect", "phenotype", "features"],
    )
    cpar = compounds.set_index("compound")
    treat = (
        pm[pm["role"].isin(["trt", "poscon", "negcon"])]
        .groupby(["compound", "dose_um", "role", "moa"], sort=True)
        .size()
        .rename("n_wells")
        .reset_index()
    )
    eff = []
    for r in treat.itertuples():
        if r.compound in cpar.index:
            p = cpar.loc[r.compound]
            eff.append(effect_fraction(r.dose_um, p["ec50_um"], p["hill"], p["max_effect"]))
        else:
            eff.append(0.0)
    treat["effect_fraction"] = np.round(eff, 4)
    treat["truly_active"] = treat["effect_fraction"] >= ACTIVE_THRESHOLD
    return compounds, treat


def _field_tasks(
    pm: pd.DataFrame,
    cpar: pd.DataFrame,
    *,
    plate: str,
    n_wells: int,
    sites: int,
    seed: int,
    density: float,
    plate_effects: bool,
    background_cv: float,
    common: dict[str, Any],
    appearance: Mapping[str, Any],
) -> list[dict[str, Any]]:
    """One task per field (:func:`_field_task`): the well's density, phenotype and appearance.

    Parameters
    ----------
    pm : DataFrame
        The validated plate map.
    cpar : DataFrame
        Compound parameters indexed by compound (:func:`_compounds_and_treatments`).
    common : dict
        Task entries shared by every field (size, paths, ...).
    appearance : mapping
        The plate-wide appearance (:func:`check_batch_appearance`; empty for the default).
    """
    wells = well_names(n_wells)
    n_rows, n_cols = (8, 12) if n_wells == 96 else (16, 24)
    plate_key = zlib.crc32(plate.encode())
    # plate effects
    prng = np.random.default_rng(np.random.SeedSequence([int(seed), plate_key, 0x91A7]))
    row_eff = prng.normal(0, 0.04, (n_rows, len(CHANNELS)))
    col_eff = prng.normal(0, 0.03, (n_cols, len(CHANNELS)))
    col_grad = np.linspace(-0.05, 0.05, n_cols)[:, None] * prng.choice([-1, 1])

    tasks = []
    for r in pm.itertuples():
        wi = wells.index(r.well)
        ri, cj = _well_rc(r.well)
        wrng = np.random.default_rng(np.random.SeedSequence([int(seed), plate_key, wi, 0]))
        dens, ph = _well_phenotype(r, wrng, cpar, density)
        cbr = np.exp(wrng.normal(0, 0.03, len(CHANNELS)))
        if plate_effects:
            cbr = cbr * np.exp(row_eff[ri] + col_eff[cj] + col_grad[cj])
            edge = ri in (0, n_rows - 1) or cj in (0, n_cols - 1)
            if edge:
                cbr = cbr * 1.08
                dens *= 0.8
        app = {**DEFAULT_APPEARANCE, **appearance}
        cbr = cbr * np.asarray(app["channel_brightness"], dtype=float)
        app["channel_brightness"] = tuple(float(x) for x in cbr)
        bg = background_level([int(seed), plate_key, wi, 0xB6], background_cv)
        app["background"] = float(app["background"]) * bg
        for site in range(1, sites + 1):
            tasks.append(
                {
                    "entropy": [int(seed), plate_key, wi, site],
                    "plate": plate,
                    "well": r.well,
                    "site": site,
                    "density": float(dens),
                    "phenotype": ph,
                    "appearance": app,
                    **common,
                }
            )
    return tasks


def _well_phenotype(
    r: Any, wrng: np.random.Generator, cpar: pd.DataFrame, density: float
) -> tuple[float, dict[str, float]]:
    """A well's cell density and phenotype: replicate noise plus its compound's effect.

    ``r`` is the well's plate-map row; ``wrng`` the well's generator.
    """
    if r.role == "empty":
        return 0.0, {}
    dens = density * float(np.exp(wrng.normal(0, 0.12)))
    # biological well-to-well variation, present in every well (DMSO included)
    ph = {k: float(wrng.normal(0, sd)) for k, sd in WELL_NOISE.items()}
    if r.moa in MOA_PROFILES and r.compound in cpar.index:
        p = cpar.loc[r.compound]
        f = effect_fraction(r.dose_um, p["ec50_um"], p["hill"], p["max_effect"])
        for k, v in MOA_PROFILES[r.moa]["phenotype"].items():
            ph[k] = ph.get(k, 0.0) + float(v * f * np.exp(wrng.normal(0, 0.1)))
    ph["toxicity"] = float(np.clip(ph.get("toxicity", 0.0), 0.0, 0.95))
    ph["mitotic_arrest"] = float(max(ph.get("mitotic_arrest", 0.0), -0.02))
    return dens, ph


def _run_tasks(tasks: list[dict[str, Any]], n_workers: int) -> list[dict[str, Any]]:
    """Run the field tasks, in worker processes when ``n_workers > 1``; rows in task order."""
    if n_workers <= 1 or len(tasks) == 1:
        return [_field_task(t) for t in tasks]
    with ProcessPoolExecutor(max_workers=n_workers) as ex:
        return list(ex.map(_field_task, tasks, chunksize=max(1, len(tasks) // (8 * n_workers))))


def _simulation_record(settings: dict[str, Any]) -> dict[str, Any]:
    """The content of ``truth/simulation.json``: the plate's settings and the model's constants."""
    return {
        "hcsflow_version": __version__,
        **settings,
        "channels": list(CHANNELS),
        "channel_files": {ch: f"w{i + 1}" for i, ch in enumerate(CHANNELS)},
        "layout": "imagexpress",
        "cells_per_mm2": CELLS_PER_MM2,
        "active_threshold": ACTIVE_THRESHOLD,
        "appearance": DEFAULT_APPEARANCE,
        "moa_profiles": MOA_PROFILES,
        "phenotype_keys": PHENOTYPE_KEYS,
        "well_noise": WELL_NOISE,
    }
