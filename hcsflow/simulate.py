"""A synthetic Cell Painting screen with complete ground truth.

The simulator renders five-channel fields (DNA, ER, RNA, AGP, Mito) of touching, clustered,
irregular cells with one nucleus each, as a camera behind a vignetting microscope records
them, together with the truth a benchmark needs: nucleus and whole-cell label images, the
flat-field and dark-field of every channel, and the mechanism of action (MoA) and dose response
of every compound on the plate.

Geometry
    Nuclei are placed by a clustered (Thomas) point process with hard-core rejection, so cells
    form colonies and leave free space. Each cell has a Fourier-perturbed elliptic shape; cell
    territories are grown from the nuclei by a marker watershed over the normalised distance to
    the nearest cell centre plus smooth noise (an anisotropic, weighted Voronoi tessellation
    limited to each cell's own outline), so neighbours share irregular borders.
Channels
    DNA: domed nuclei with band-passed chromatin texture and darker nucleoli; condensed bright
    mitotic figures; fragmented apoptotic nuclei. ER: reticular network (zero crossings of
    band-passed noise) decaying away from the nucleus, with a bright nuclear envelope. RNA:
    nucleoli, weak nucleoplasm and cytoplasmic texture. AGP: cell borders, actin stress fibres
    along the cell axis and a perinuclear Golgi blob. Mito: tubular and punctate organelles
    spread in the cytoplasm. Debris: small bright blobs that belong to no cell.
Camera
    ``raw = g * Poisson(flat * signal / g) + dark + N(0, read_noise)``, optical blur by a
    Gaussian point spread function, a few out-of-focus fields (strong Gaussian blur).
Plate
    Row/column and edge-well effects, replicate noise per well, Hill dose responses of
    compounds grouped in MoA classes that shift different measurable properties.

Every random draw of a field comes from ``np.random.SeedSequence((seed, crc32(plate), well
index, site))``, so a plate is byte-identical with any number of worker processes.
"""

from __future__ import annotations

import functools
import json
import math
import os
import time
import zlib
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage as ndi

from hcsflow import __version__
from hcsflow import wells as _wells
from hcsflow.io import atomic_path

__all__ = [
    "CHANNELS",
    "MOA_PROFILES",
    "PHENOTYPE_KEYS",
    "VIGNETTING",
    "SimulatedField",
    "SimulatedPlate",
    "background_level",
    "default_platemap",
    "make_illumination",
    "random_appearance",
    "random_optics",
    "simulate_field",
    "simulate_illumination_stack",
    "simulate_plate",
    "truth_cell_table",
    "well_names",
]

#: Channel names in file order: ``w1`` .. ``w5``.
CHANNELS = ("DNA", "ER", "RNA", "AGP", "Mito")

#: Accepted vignetting kinds of :func:`make_illumination`.
VIGNETTING = ("radial", "offcenter", "tilted", "elliptic", "none")

#: Mean number of cells per mm^2 at ``density=1`` (about 60 cells in a 540 x 540 field at
#: 0.65 um/px, 240 in a 1080 x 1080 field): a sub-confluent Cell Painting well.
CELLS_PER_MM2 = 450.0

#: An effect fraction (Hill response times maximal effect) at or above this value is called
#: truly active in ``truth/treatments.csv``. Measured on the default 96-well plate (540 px,
#: 4 sites; ``benchmarks/simulate_stats.py``), wells at effect 0.25-0.5 move their MoA's own
#: features by 2.6-7.4 standard deviations of the DMSO well medians, wells below 0.1 by < 2.
ACTIVE_THRESHOLD = 0.25

#: Phenotype keys understood by :func:`simulate_field`; every value is 0 in DMSO. Log-scale
#: keys multiply a quantity by ``exp(value)``; the others add to it.
PHENOTYPE_KEYS = {
    "nucleus_size": "log factor on nucleus radius",
    "nucleus_elongation": "added to nuclear aspect ratio",
    "dna_intensity": "log factor on DNA stain intensity",
    "dna_texture": "log factor on chromatin texture contrast",
    "cell_size": "log factor on cell radius",
    "cell_elongation": "added to cell aspect ratio",
    "cell_irregularity": "added to cell outline perturbation amplitude",
    "er_intensity": "log factor on ER stain intensity",
    "er_texture": "log factor on ER network scale (coarser, swollen ER)",
    "rna_intensity": "log factor on cytoplasmic and nucleoplasmic RNA stain",
    "nucleoli": "log factor on nucleolar size and brightness",
    "agp_intensity": "log factor on AGP stain intensity (membrane and cytoplasm)",
    "actin_fibres": "log factor on stress-fibre brightness",
    "mito_intensity": "log factor on mitochondrial stain intensity",
    "mito_spread": "log factor on mitochondrial decay length (negative: perinuclear)",
    "toxicity": "fraction of cells lost (0..1); raises the apoptotic fraction",
    "mitotic_arrest": "added fraction of cells arrested in mitosis",
}

#: MoA classes of the default plate: the phenotype at full effect and the features it moves.
MOA_PROFILES: dict[str, dict[str, Any]] = {
    "topoisomerase inhibitor": {
        "code": "TOPO",
        "target": "TOP2A",
        "phenotype": {"nucleus_size": 0.30, "dna_intensity": 0.25, "cell_size": 0.20},
        "features": "Nuclei_AreaShape_Area;Nuclei_Intensity_MeanIntensity_DNA;Cells_AreaShape_Area",
    },
    "tubulin polymerization inhibitor": {
        "code": "TUB",
        "target": "TUBB",
        "phenotype": {"mitotic_arrest": 0.45, "cell_elongation": -0.3},
        "features": "Cells_AreaShape_Eccentricity;Cells_AreaShape_Area;"
        "Nuclei_Intensity_MeanIntensity_DNA",
    },
    "actin polymerization inhibitor": {
        "code": "ACT",
        "target": "ACTB",
        "phenotype": {"actin_fibres": -1.6, "agp_intensity": -0.45, "cell_irregularity": 0.22},
        "features": "Cells_Intensity_MeanIntensity_AGP;Cells_Intensity_StdIntensity_AGP;"
        "Cells_AreaShape_Solidity",
    },
    "mitochondrial complex I inhibitor": {
        "code": "MITO",
        "target": "NDUFS2",
        "phenotype": {"mito_intensity": -0.6, "mito_spread": -0.7},
        "features": "Cytoplasm_Intensity_MeanIntensity_Mito;Cells_Intensity_StdIntensity_Mito",
    },
    "SERCA inhibitor": {
        "code": "ERS",
        "target": "ATP2A2",
        "phenotype": {"er_intensity": 0.6, "er_texture": 0.5, "cell_size": 0.08},
        "features": "Cytoplasm_Intensity_MeanIntensity_ER;Cells_Intensity_StdIntensity_ER",
    },
    "RNA polymerase inhibitor": {
        "code": "RNAP",
        "target": "POLR2A",
        "phenotype": {"rna_intensity": -0.55, "nucleoli": -0.9},
        "features": "Nuclei_Intensity_MeanIntensity_RNA;Cytoplasm_Intensity_MeanIntensity_RNA",
    },
    "proteasome inhibitor": {
        "code": "PROT",
        "target": "PSMB5",
        "phenotype": {"toxicity": 0.7, "nucleus_size": -0.12, "nucleus_elongation": 0.25},
        "features": "Count_Cells;Nuclei_AreaShape_Area;Nuclei_AreaShape_Eccentricity",
    },
}

#: Standard deviation of the random per-well shift of each phenotype key (replicate noise).
WELL_NOISE = {
    "nucleus_size": 0.025,
    "dna_intensity": 0.04,
    "dna_texture": 0.05,
    "cell_size": 0.035,
    "cell_elongation": 0.05,
    "cell_irregularity": 0.01,
    "er_intensity": 0.05,
    "er_texture": 0.04,
    "rna_intensity": 0.05,
    "nucleoli": 0.06,
    "agp_intensity": 0.05,
    "actin_fibres": 0.08,
    "mito_intensity": 0.05,
    "mito_spread": 0.05,
    "mitotic_arrest": 0.005,
}

#: MoA label of compounds without any phenotype.
INACTIVE_MOA = "inactive"

_ZLIB_LEVEL = 1


# --------------------------------------------------------------------------------------------
# data classes
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SimulatedField:
    """One simulated field of view and its ground truth.

    Attributes
    ----------
    image : ndarray of shape (5, H, W), uint16
        Raw camera image per channel (flat-field, dark-field and noise applied).
    nuclei : ndarray of shape (H, W), uint32
        Nucleus label image, 0 = background, labels 1..n.
    cells : ndarray of shape (H, W), uint32
        Whole-cell label image; cell ``k`` contains nucleus ``k``.
    flatfield : ndarray of shape (5, H, W), float32
        Multiplicative illumination profile per channel, mean 1.
    darkfield : ndarray of shape (5, H, W), float32
        Additive camera offset per channel, in raw intensity units.
    info : dict
        Summary of the field (``n_cells``, ``out_of_focus``, ``n_mitotic``, ``n_apoptotic``,
        ``n_debris``, ``blur_sigma_px``, ``confluence``, ``touching_fraction``, ...).
    """

    image: np.ndarray
    nuclei: np.ndarray
    cells: np.ndarray
    flatfield: np.ndarray
    darkfield: np.ndarray
    info: dict = field(default_factory=dict)


@dataclass(frozen=True)
class SimulatedPlate:
    """Paths of a simulated plate folder.

    Attributes
    ----------
    plate : str
        Plate name used in the file names.
    out_dir : Path
        Root folder.
    images_dir : Path
        Folder of ``{plate}_{well}_s{site}_w{n}.tif`` images (ImageXpress layout).
    platemap : Path
        Plate map CSV (well, compound, dose_um, role, moa, target).
    truth_dir : Path
        Ground truth: masks, illumination, fields, compounds, treatments, simulation.json.
    """

    plate: str
    out_dir: Path
    images_dir: Path
    platemap: Path
    truth_dir: Path


# --------------------------------------------------------------------------------------------
# appearance
# --------------------------------------------------------------------------------------------

#: Appearance of the default plate; :func:`random_appearance` varies every key.
DEFAULT_APPEARANCE: dict[str, Any] = {
    "cell_scale": 1.0,  # multiplies nucleus and cell radii
    "brightness": 1.0,  # multiplies every stain
    "channel_brightness": (1.0, 1.0, 1.0, 1.0, 1.0),
    "gain": 2.0,  # raw units per photo-electron: larger = noisier (lower SNR)
    "read_noise": 4.0,  # raw units, Gaussian
    "blur_um": 0.5,  # point spread function sigma in micrometres
    "texture": 1.0,  # contrast of every texture
    "membrane": 1.0,  # AGP cell-border strength
    "cytoplasm": 1.0,  # AGP/ER/Mito cytoplasm fill strength
    "background": 1.0,  # nonspecific background fluorescence
    "clustering": 0.7,  # fraction of cells born in colonies
}


def random_appearance(rng: np.random.Generator) -> dict:
    """Draw varied appearance settings for training a segmentation model.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of randomness.

    Returns
    -------
    dict
        Keys of :data:`DEFAULT_APPEARANCE`: cell size scale, brightness (overall and per
        channel), gain (SNR), read noise, blur, texture contrast, membrane versus cytoplasm
        stain strength, background and clustering.
    """

    def logu(lo: float, hi: float) -> float:
        return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))

    return {
        "cell_scale": logu(0.7, 1.4),
        "brightness": logu(0.3, 2.5),
        "channel_brightness": tuple(logu(0.6, 1.6) for _ in CHANNELS),
        "gain": logu(0.5, 10.0),
        "read_noise": logu(1.0, 12.0),
        "blur_um": logu(0.3, 1.4),
        "texture": logu(0.4, 1.8),
        "membrane": logu(0.25, 2.0),
        "cytoplasm": logu(0.4, 2.5),
        "background": logu(0.3, 4.0),
        "clustering": float(rng.uniform(0.2, 0.95)),
    }


def _check_appearance(appearance: Mapping[str, Any] | None) -> dict:
    app = dict(DEFAULT_APPEARANCE)
    if appearance is not None:
        unknown = set(appearance) - set(app)
        if unknown:
            raise ValueError(f"unknown appearance key(s) {sorted(unknown)}; expected {sorted(app)}")
        app.update(appearance)
    if len(app["channel_brightness"]) != len(CHANNELS):
        raise ValueError("appearance['channel_brightness'] needs one value per channel")
    return app


def _check_phenotype(phenotype: Mapping[str, float] | None) -> dict:
    ph = dict.fromkeys(PHENOTYPE_KEYS, 0.0)
    if phenotype is not None:
        unknown = set(phenotype) - set(ph)
        if unknown:
            raise ValueError(
                f"unknown phenotype key(s) {sorted(unknown)}; expected {sorted(PHENOTYPE_KEYS)}"
            )
        ph.update({k: float(v) for k, v in phenotype.items()})
    if not 0.0 <= ph["toxicity"] < 1.0:
        raise ValueError(f"phenotype['toxicity'] must be in [0, 1), got {ph['toxicity']}")
    return ph


# --------------------------------------------------------------------------------------------
# illumination
# --------------------------------------------------------------------------------------------


def make_illumination(
    shape: tuple[int, int],
    *,
    vignetting: str = "radial",
    dark_offset: bool = True,
    seed: int = 0,
    n_channels: int = 5,
    corner: float | None = None,
    offset: float | None = None,
    dark_gradient: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Smooth per-channel flat-field and dark-field of a widefield microscope.

    Parameters
    ----------
    shape : tuple of int
        Field shape ``(H, W)``.
    vignetting : {"radial", "offcenter", "tilted", "elliptic", "none"}
        Centred radial fall-off; radial fall-off around an off-centre optical axis; a radial
        fall-off times a linear (tilted) plane; an elliptic, rotated fall-off; or uniform.
    dark_offset : bool
        If true, a camera offset of about 100 raw units with a weak smooth pattern; else zero.
    seed : int
        Seed of the per-channel strengths, centres and tilts.
    n_channels : int
        Number of channels.
    corner : float, optional
        Depth of the vignetting: the radial fall-off at the field point farthest from the
        optical axis, relative to the axis (in (0, 1]; 0.45 is a deep vignetting). Default:
        drawn per channel (about 0.6-0.8 at the corners of a square field).
    offset : float, optional
        Mean camera offset in raw units (with ``dark_offset``); default drawn per channel in
        90-130.
    dark_gradient : float, optional
        With ``dark_offset``: the dark-field is ``offset`` plus a linear gradient rising by
        this many raw units from the top row to the bottom row (mean 0), instead of the
        default weak tilted-plane-plus-blob pattern.

    The optional arguments replace values after they are drawn, so every other draw (and the
    default fields, with all three left at ``None``) stays the same.

    Returns
    -------
    flatfield : ndarray of shape (n_channels, H, W), float32
        Mean 1 per channel; for the radial kinds the corners of a square field fall to
        about 60-80 % of the brightest point.
    darkfield : ndarray of shape (n_channels, H, W), float32
        Additive offset in raw units.
    """
    if vignetting not in VIGNETTING:
        raise ValueError(f"unknown vignetting {vignetting!r}; expected one of {VIGNETTING}")
    h, w = (int(s) for s in shape)
    if h < 2 or w < 2:
        raise ValueError(f"illumination shape must be at least 2 x 2, got {shape}")
    if corner is not None and not 0.0 < corner <= 1.0:
        raise ValueError(f"corner must be in (0, 1], got {corner}")
    if offset is not None and not offset >= 0:
        raise ValueError(f"offset must be >= 0, got {offset}")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x1110]))
    half = max(h, w) / 2.0
    y = ((np.arange(h) - (h - 1) / 2.0) / half)[:, None]
    x = ((np.arange(w) - (w - 1) / 2.0) / half)[None, :]
    flats = np.empty((n_channels, h, w), np.float32)
    darks = np.zeros((n_channels, h, w), np.float32)
    for c in range(n_channels):
        strength = rng.uniform(0.06, 0.15)
        cy, cx = 0.0, 0.0
        if vignetting in ("offcenter", "tilted"):
            ang = rng.uniform(0, 2 * np.pi)
            rad = rng.uniform(0.15, 0.35) if vignetting == "offcenter" else rng.uniform(0, 0.1)
            cy, cx = rad * np.sin(ang), rad * np.cos(ang)
        if vignetting == "elliptic":
            theta = rng.uniform(0, np.pi)
            ratio = rng.uniform(1.5, 2.2)
            u = (x - cx) * np.cos(theta) + (y - cy) * np.sin(theta)
            v = -(x - cx) * np.sin(theta) + (y - cy) * np.cos(theta)
            r2 = (u / np.sqrt(ratio)) ** 2 + (v * np.sqrt(ratio)) ** 2
        else:
            r2 = (x - cx) ** 2 + (y - cy) ** 2
        if corner is not None:
            # (1 + s r2max)^-2 = corner at the point farthest from the axis
            strength = (corner**-0.5 - 1.0) / float(np.max(r2))
        if vignetting == "none":
            f = np.ones((h, w))
        else:
            f = (1.0 + strength * r2) ** -2.0
        if vignetting == "tilted":
            ang = rng.uniform(0, 2 * np.pi)
            f = f * (1.0 + rng.uniform(0.12, 0.22) * (np.cos(ang) * x + np.sin(ang) * y))
        f = np.broadcast_to(f, (h, w))
        flats[c] = f / f.mean()
        if dark_offset:
            ang = rng.uniform(0, 2 * np.pi)
            pattern = rng.uniform(2, 6) * (np.cos(ang) * x + np.sin(ang) * y) + rng.uniform(
                1, 4
            ) * np.exp(-((x - 0.3) ** 2 + (y + 0.2) ** 2) / 0.5)
            level = rng.uniform(90, 130)
            if offset is not None:
                level = float(offset)
            if dark_gradient is not None:
                rows = np.arange(h, dtype=np.float64)[:, None] / max(h - 1, 1) - 0.5
                pattern = float(dark_gradient) * rows
            darks[c] = level + np.broadcast_to(pattern, (h, w))
    return flats, darks


# --------------------------------------------------------------------------------------------
# noise textures
# --------------------------------------------------------------------------------------------


def _normalise(a: np.ndarray) -> np.ndarray:
    a = a - a.mean()
    s = a.std()
    return (a / s if s > 0 else a).astype(np.float32)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian-filtered white noise with unit variance; coarse grid for large ``sigma``."""
    h, w = shape
    f = max(1, int(sigma // 3))
    ch, cw = -(-h // f) + 2, -(-w // f) + 2
    coarse = ndi.gaussian_filter(rng.standard_normal((ch, cw)).astype(np.float32), sigma / f)
    if f > 1:
        coarse = ndi.zoom(coarse, f, order=1, grid_mode=False)
    return _normalise(coarse[1 : h + 1, 1 : w + 1] if f > 1 else coarse[:h, :w])


def _bandpass(rng: np.random.Generator, shape: tuple[int, int], s1: float, s2: float) -> np.ndarray:
    """Band-passed white noise (difference of Gaussians), unit variance."""
    n = rng.standard_normal(shape).astype(np.float32)
    a = ndi.gaussian_filter(n, s1, truncate=3.0)
    b = ndi.gaussian_filter(a, math.sqrt(max(s2**2 - s1**2, 1e-6)), truncate=3.0)
    return _normalise(a - b)


# --------------------------------------------------------------------------------------------
# geometry
# --------------------------------------------------------------------------------------------


def _place_centres(
    rng: np.random.Generator,
    shape: tuple[int, int],
    n: int,
    sep: np.ndarray,
    cluster_sigma: float,
    clustering: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Clustered points (Thomas process) with a pairwise hard core.

    Candidate ``i`` carries the hard-core radius ``sep[i]``; two accepted points are at least
    ``sep_i + sep_j`` apart. Candidates are visited in random order until ``n`` are accepted.

    Returns
    -------
    pos : ndarray of shape (m, 2)
        Accepted (row, column) positions, ``m <= n``.
    idx : ndarray of shape (m,)
        Index of each accepted candidate into ``sep``.
    """
    h, w = shape
    n_cand = len(sep)
    if n == 0 or n_cand == 0:
        return np.zeros((0, 2)), np.zeros(0, int)
    n_cl = int(round(n_cand * clustering))
    n_par = max(1, int(round(n_cl / 14)))
    parents = rng.uniform((0, 0), (h, w), size=(n_par, 2))
    off = parents[rng.integers(0, n_par, n_cl)] + rng.normal(0, cluster_sigma, (n_cl, 2))
    uni = rng.uniform((0, 0), (h, w), size=(n_cand - n_cl, 2))
    cand = np.concatenate([off, uni])[rng.permutation(n_cand)]
    inside = (cand[:, 0] >= 0) & (cand[:, 0] < h) & (cand[:, 1] >= 0) & (cand[:, 1] < w)
    acc_pos = np.empty((n, 2))
    acc_sep = np.empty(n)
    acc_idx = np.empty(n, int)
    m = 0
    for i in np.flatnonzero(inside):
        if m:
            d2 = ((acc_pos[:m] - cand[i]) ** 2).sum(1)
            if np.any(d2 < (acc_sep[:m] + sep[i]) ** 2):
                continue
        acc_pos[m], acc_sep[m], acc_idx[m] = cand[i], sep[i], i
        m += 1
        if m == n:
            break
    return acc_pos[:m], acc_idx[:m]


def _fourier_radius(rng: np.random.Generator, amp: float, modes: int) -> np.ndarray:
    """Random Fourier coefficients (m, amplitude, phase) of a star-shaped outline."""
    ms = np.arange(2, modes + 1)
    a = np.abs(rng.normal(0, amp, len(ms))) / (ms - 1.0) ** 0.9
    p = rng.uniform(0, 2 * np.pi, len(ms))
    return np.stack([ms, a, p], 1)


def _shape_r(u: np.ndarray, v: np.ndarray, a: float, b: float, coef: np.ndarray) -> np.ndarray:
    """Normalised radius of points (u, v) in an ellipse (a, b) with a Fourier outline.

    ``coef`` rows are (m, amplitude, phase) for consecutive modes m = 2, 3, ...; the outline is
    ``1 + sum_m amplitude cos(m phi + phase)``, evaluated with the angle-addition recurrence.
    """
    un, vn = u / a, v / b
    rho = np.sqrt(un * un + vn * vn)
    inv = 1.0 / np.maximum(rho, 1e-6)
    c1, s1 = un * inv, vn * inv  # cos(phi), sin(phi)
    cm, sm = c1 * c1 - s1 * s1, 2 * c1 * s1  # m = 2
    rad = np.ones_like(rho)
    for m_idx in range(len(coef)):
        if m_idx:
            cm, sm = cm * c1 - sm * s1, sm * c1 + cm * s1
        amp, ph = float(coef[m_idx, 1]), float(coef[m_idx, 2])
        rad += amp * (math.cos(ph) * cm - math.sin(ph) * sm)
    return rho / np.maximum(rad, 0.3)


def _touching(cells: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Boolean border map (pixel differs from a 4-neighbour) and the set of touching labels."""
    border = np.zeros(cells.shape, bool)
    touch: list[np.ndarray] = []
    for a, b, sl_a, sl_b in (
        (
            cells[1:, :],
            cells[:-1, :],
            (slice(1, None), slice(None)),
            (slice(None, -1), slice(None)),
        ),
        (
            cells[:, 1:],
            cells[:, :-1],
            (slice(None), slice(1, None)),
            (slice(None), slice(None, -1)),
        ),
    ):
        diff = a != b
        border[sl_a] |= diff
        border[sl_b] |= diff
        both = diff & (a > 0) & (b > 0)
        touch.append(a[both])
        touch.append(b[both])
    return border, np.unique(np.concatenate(touch)) if touch else np.zeros(0, cells.dtype)


# --------------------------------------------------------------------------------------------
# one field
# --------------------------------------------------------------------------------------------


def _child(ss: np.random.SeedSequence, i: int) -> np.random.Generator:
    """Generator of the ``i``-th independent stream of ``ss`` (stateless, unlike ``spawn``)."""
    return np.random.default_rng(
        np.random.SeedSequence(ss.entropy, spawn_key=(*ss.spawn_key, int(i)))
    )


def _seed_sequence(seed: int | Sequence[int] | np.random.SeedSequence) -> np.random.SeedSequence:
    if isinstance(seed, np.random.SeedSequence):
        return seed
    if isinstance(seed, (int, np.integer)):
        return np.random.SeedSequence(int(seed))
    return np.random.SeedSequence([int(s) for s in seed])


def simulate_field(
    seed: int | Sequence[int] | np.random.SeedSequence,
    shape: tuple[int, int] = (1080, 1080),
    image_mpp: float = 0.65,
    *,
    density: float = 1.0,
    phenotype: Mapping[str, float] | None = None,
    appearance: Mapping[str, Any] | None = None,
    flatfield: np.ndarray | None = None,
    darkfield: np.ndarray | None = None,
    out_of_focus: bool = False,
) -> SimulatedField:
    """Simulate one five-channel Cell Painting field with its ground truth.

    Parameters
    ----------
    seed : int, sequence of int or numpy.random.SeedSequence
        Seed of every random draw of the field.
    shape : tuple of int
        Field shape ``(H, W)`` in pixels.
    image_mpp : float
        Micrometres per pixel; cell sizes are set in micrometres and scale with it.
    density : float
        Cell density relative to :data:`CELLS_PER_MM2` (0 gives a field without cells).
    phenotype : mapping, optional
        Shifts of :data:`PHENOTYPE_KEYS` (all 0 for a DMSO well).
    appearance : mapping, optional
        Overrides of :data:`DEFAULT_APPEARANCE` (see :func:`random_appearance`).
    flatfield : ndarray of shape (5, H, W), optional
        Flat-field per channel; default: ``make_illumination(shape)``.
    darkfield : ndarray of shape (5, H, W), optional
        Dark-field per channel; default: ``make_illumination(shape)``.
    out_of_focus : bool
        Blur the field strongly (Gaussian, sigma 2.5-4.5 um) as a focus failure does.

    Returns
    -------
    SimulatedField
    """
    return _simulate(
        _seed_sequence(seed),
        shape,
        image_mpp,
        density=density,
        phenotype=phenotype,
        appearance=appearance,
        flatfield=flatfield,
        darkfield=darkfield,
        out_of_focus=out_of_focus,
        channels=tuple(range(len(CHANNELS))),
    )


def _simulate(
    ss: np.random.SeedSequence,
    shape: tuple[int, int],
    image_mpp: float,
    *,
    density: float,
    phenotype: Mapping[str, float] | None,
    appearance: Mapping[str, Any] | None,
    flatfield: np.ndarray | None,
    darkfield: np.ndarray | None,
    out_of_focus: bool,
    channels: tuple[int, ...],
) -> SimulatedField:
    h, w = (int(s) for s in shape)
    if h < 16 or w < 16:
        raise ValueError(f"field shape must be at least 16 x 16, got {shape}")
    if not image_mpp > 0:
        raise ValueError(f"image_mpp must be positive, got {image_mpp}")
    if density < 0:
        raise ValueError(f"density must be >= 0, got {density}")
    ph = _check_phenotype(phenotype)
    app = _check_appearance(appearance)
    if flatfield is None or darkfield is None:
        f0, d0 = make_illumination((h, w))
        flatfield = f0 if flatfield is None else flatfield
        darkfield = d0 if darkfield is None else darkfield
    nc = len(CHANNELS)
    for name, arr in (("flatfield", flatfield), ("darkfield", darkfield)):
        if arr.shape != (nc, h, w):
            raise ValueError(f"{name} has shape {arr.shape}; expected {(nc, h, w)}")

    g_geo, g_tex, g_cam = (_child(ss, i) for i in range(3))
    px = 1.0 / image_mpp  # pixels per micrometre
    scale = float(app["cell_scale"])

    # ---- cell population ----------------------------------------------------------------
    area_mm2 = h * w * (image_mpp * 1e-3) ** 2
    lam = CELLS_PER_MM2 * density * area_mm2 * (1.0 - ph["toxicity"]) / scale**1.5
    n_target = int(g_geo.poisson(lam)) if lam > 0 else 0
    # properties for a pool of candidates; the point process keeps n_target of them
    n = 4 * n_target + 20 if n_target else 0
    p_mit = min(0.9, 0.025 + ph["mitotic_arrest"])
    p_apo = min(0.9, 0.012 + 0.15 * ph["toxicity"])
    u = g_geo.random(n)
    state = np.where(u < p_mit, 1, np.where(u < p_mit + p_apo, 2, 0))  # 0 inter, 1 mit, 2 apo
    r_nuc = 6.5 * scale * np.exp(ph["nucleus_size"] + g_geo.normal(0, 0.13, n)) * px
    r_cell = 17.5 * scale * np.exp(ph["cell_size"] + g_geo.normal(0, 0.2, n)) * px
    asp_nuc = 1.0 + np.abs(g_geo.normal(0.22, 0.12, n)) + ph["nucleus_elongation"]
    asp_cell = 1.0 + g_geo.gamma(2.0, 0.25, n) + ph["cell_elongation"]
    mit = state == 1
    apo = state == 2
    metaphase = mit & (g_geo.random(n) < 0.5)
    # interphase cells in G2 carry twice the DNA in a larger nucleus
    g2 = (state == 0) & (g_geo.random(n) < 0.3)
    r_nuc[g2] *= 1.19
    r_nuc[mit] *= 0.72
    asp_nuc[mit] = np.where(metaphase[mit], 2.3, 1.1)
    r_cell[mit] = np.maximum(r_nuc[mit] * 1.9, 9.0 * scale * px)
    asp_cell[mit] = 1.05
    r_nuc[apo] *= 0.6
    asp_nuc[apo] = 1.1
    r_cell[apo] = r_nuc[apo] * 1.8
    asp_nuc = np.clip(asp_nuc, 1.0, 4.0)
    asp_cell = np.clip(asp_cell, 1.0, 4.5)
    r_cell = np.maximum(r_cell, r_nuc * 1.35)
    a_nuc = r_nuc * np.sqrt(asp_nuc)
    sep = a_nuc * 0.95 + 0.5  # nuclei in colonies may touch
    pos, idx = _place_centres(
        g_geo,
        (h, w),
        n_target,
        sep,
        cluster_sigma=1.4 * 17.5 * scale * px,
        clustering=app["clustering"],
    )
    sel = lambda a: a[idx]  # noqa: E731
    state, r_nuc, r_cell, asp_nuc, asp_cell, metaphase, g2 = map(
        sel, (state, r_nuc, r_cell, asp_nuc, asp_cell, metaphase, g2)
    )
    n = len(pos)
    theta_c = g_geo.uniform(0, np.pi, n)
    theta_n = theta_c + g_geo.normal(0, 0.35, n)
    off_ang = theta_c + np.where(g_geo.random(n) < 0.5, 0, np.pi) + g_geo.normal(0, 0.4, n)
    off_mag = g_geo.uniform(0, 0.35, n) * (r_cell * np.sqrt(asp_cell) - r_nuc)
    off_mag[state != 0] *= 0.2
    cpos = pos + np.stack([np.sin(off_ang), np.cos(off_ang)], 1) * off_mag[:, None]
    irr = 0.14 + ph["cell_irregularity"]

    # outline coefficients, drawn per cell in a fixed order
    coefs, coefs_n = [], []
    for k in range(n):
        coefs.append(_fourier_radius(g_geo, irr if state[k] == 0 else 0.04, 7))
        coefs_n.append(_fourier_radius(g_geo, 0.05 if state[k] == 0 else 0.02, 4))

    nuclei = np.zeros((h, w), np.int32)
    rho_n = np.ones((h, w), np.float32)  # normalised radius inside nuclei (dome profile)
    for k in range(n):
        an = r_nuc[k] * np.sqrt(asp_nuc[k])
        bn = r_nuc[k] / np.sqrt(asp_nuc[k])
        coef_n = coefs_n[k]
        ext = an * (1.0 + coef_n[:, 1].sum()) + 2
        ny, nx = pos[k]
        y0, y1 = max(0, int(ny - ext)), min(h, int(ny + ext) + 1)
        x0, x1 = max(0, int(nx - ext)), min(w, int(nx + ext) + 1)
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        dy, dx = yy - ny, xx - nx
        ct, st = np.cos(theta_n[k]), np.sin(theta_n[k])
        r = _shape_r(dx * ct + dy * st, -dx * st + dy * ct, an, bn, coef_n)
        sub = nuclei[y0:y1, x0:x1]
        put = (r < 1.0) & (sub == 0)
        sub[put] = k + 1
        rho_n[y0:y1, x0:x1][put] = r[put]

    # drop nuclei mostly hidden by earlier ones or by the image border, relabel 1..n
    expected = np.pi * r_nuc**2
    counts = np.bincount(nuclei.ravel(), minlength=n + 1)[1:]
    keep = counts >= np.maximum(0.5 * expected, 4)
    lut = np.zeros(n + 1, np.int32)
    lut[1:][keep] = np.arange(1, keep.sum() + 1)
    nuclei = lut[nuclei]
    kept = np.flatnonzero(keep)

    # cell outlines of the kept cells (normalised distance; < 1 inside)
    rmin = np.full((h, w), np.inf, np.float32)
    for k in kept:
        ac = r_cell[k] * np.sqrt(asp_cell[k])
        bc = r_cell[k] / np.sqrt(asp_cell[k])
        coef = coefs[k]
        ext = ac * (1.0 + coef[:, 1].sum()) * 1.25 + 3
        cy, cx = cpos[k]
        y0, y1 = max(0, int(cy - ext)), min(h, int(cy + ext) + 1)
        x0, x1 = max(0, int(cx - ext)), min(w, int(cx + ext) + 1)
        if y1 > y0 and x1 > x0:
            yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
            dy, dx = yy - cy, xx - cx
            ct, st = np.cos(theta_c[k]), np.sin(theta_c[k])
            r = _shape_r(dx * ct + dy * st, -dx * st + dy * ct, ac, bc, coef)
            sub = rmin[y0:y1, x0:x1]
            np.minimum(sub, r, out=sub)

    state, r_nuc, r_cell, theta_c, pos, asp_cell = (
        a[kept] for a in (state, r_nuc, r_cell, theta_c, pos, asp_cell)
    )
    metaphase, g2 = metaphase[kept], g2[kept]
    n = len(kept)

    # cell territories: watershed from the nuclei over the normalised distance + noise
    warp = _smooth_noise(g_geo, (h, w), 2.5 * px)
    edge = 0.08 * _smooth_noise(g_geo, (h, w), 2.0 * px)
    edge += 0.035 * _smooth_noise(g_geo, (h, w), 0.7 * px)
    fg = (rmin + edge < 1.0) | (nuclei > 0)
    if n:
        from skimage.segmentation import watershed

        elev = np.where(np.isfinite(rmin), rmin, 10.0) + 0.08 * warp
        cells = watershed(elev, markers=nuclei, mask=fg).astype(np.int32)
    else:
        cells = np.zeros((h, w), np.int32)
    nuc_mask = nuclei > 0
    cell_mask = cells > 0
    cyto = cell_mask & ~nuc_mask
    border, touching = _touching(cells)
    border &= cell_mask
    # widefield projection: cytoplasmic organelles above and below the nucleus
    over = (cyto + 0.3 * nuc_mask).astype(np.float32)

    # per-cell levels (index 0 = background)
    def per_cell(sigma: float) -> np.ndarray:
        v = np.ones(n + 1, np.float32)
        v[1:] = np.exp(g_tex.normal(0, sigma, n))
        return v

    st_full = np.concatenate([[0], state])
    mit_l = st_full == 1
    apo_l = st_full == 2

    # distances
    d_nuc = ndi.distance_transform_edt(~nuc_mask).astype(np.float32) if n else None
    rc_l = np.ones(n + 1, np.float32)
    rc_l[1:] = r_cell
    tex_gain = float(app["texture"])
    bright = float(app["brightness"])
    cb = app["channel_brightness"]
    bg = float(app["background"])
    signal = np.zeros((len(channels), h, w), np.float32)
    cell_r = rc_l[cells]

    # nucleoli impulses (shared by DNA and RNA)
    nucleoli = np.zeros((h, w), np.float32)
    if n:
        nn = g_tex.integers(1, 5, n)
        nn[state != 0] = 0
        owner = np.repeat(np.arange(n), nn)
        ang = g_tex.uniform(0, 2 * np.pi, len(owner))
        rad = np.sqrt(g_tex.uniform(0, 1, len(owner))) * 0.5 * r_nuc[owner]
        yy = np.clip(np.round(pos[owner, 0] + rad * np.sin(ang)).astype(int), 0, h - 1)
        xx = np.clip(np.round(pos[owner, 1] + rad * np.cos(ang)).astype(int), 0, w - 1)
        np.add.at(nucleoli, (yy, xx), g_tex.uniform(0.6, 1.0, len(owner)).astype(np.float32))
        s_nl = 0.8 * px * math.exp(0.4 * ph["nucleoli"]) * scale
        nucleoli = ndi.gaussian_filter(nucleoli, s_nl, truncate=3.0) * (2 * np.pi * s_nl**2)
        nucleoli = np.clip(nucleoli, 0, 1.2) * nuc_mask

    debris, n_debris = _debris_image(ss, (h, w), cells, px)
    for ci, c in enumerate(channels):
        name = CHANNELS[c]
        gch = _child(ss, 10 + c)
        s = np.zeros((h, w), np.float32)
        if n:
            if name == "DNA":
                lvl = per_cell(0.18) * math.exp(ph["dna_intensity"])
                lvl[1:][g2] *= 1.4
                lvl[mit_l] *= 2.2
                lvl[apo_l] *= 2.6
                chrom = _bandpass(gch, (h, w), 0.35 * px, 1.5 * px)
                tcon = 0.22 * tex_gain * math.exp(ph["dna_texture"])
                tex = 1.0 + tcon * chrom
                tex = np.where(mit_l[cells], 1.0 + 0.5 * tex_gain * chrom, tex)
                dome = 1.0 - 0.35 * rho_n**2
                s = 1800.0 * lvl[nuclei] * dome * np.clip(tex, 0.2, None) * nuc_mask
                s *= 1.0 - 0.45 * nucleoli
                # apoptotic fragmentation: bright clumps inside a dim nucleus
                if apo_l.any():
                    frag = np.clip(_bandpass(gch, (h, w), 0.6 * px, 2.0 * px) - 0.4, 0, None)
                    s = np.where(apo_l[nuclei], s * (0.25 + 1.6 * frag), s)
            elif name == "ER":
                scale_er = math.exp(ph["er_texture"])
                net = _bandpass(gch, (h, w), 0.45 * px * scale_er, 1.6 * px * scale_er)
                reticulum = np.exp(-((net / (0.45 * tex_gain)) ** 2))
                lam_er = 0.45 * cell_r
                prof = np.exp(-d_nuc / np.maximum(lam_er, 1.0))
                envelope = np.exp(-((d_nuc / (0.6 * px)) ** 2)) * cyto
                lvl = per_cell(0.2) * math.exp(ph["er_intensity"])
                lvl[mit_l] *= 0.7
                fill = float(app["cytoplasm"])
                s = (
                    700.0
                    * lvl[cells]
                    * (over * prof * (0.25 * fill + 0.9 * reticulum) + 0.6 * envelope)
                    + 70.0 * lvl[cells] * nuc_mask
                )
            elif name == "RNA":
                lvl = per_cell(0.2) * math.exp(ph["rna_intensity"])
                tex = 1.0 + 0.35 * tex_gain * _bandpass(gch, (h, w), 0.5 * px, 2.0 * px)
                prof = np.exp(-d_nuc / np.maximum(0.6 * cell_r, 1.0))
                nl = 1400.0 * math.exp(0.6 * ph["nucleoli"]) * nucleoli
                s = lvl[cells] * (
                    cyto * 420.0 * prof * np.clip(tex, 0.1, None) + nuc_mask * (220.0 + nl)
                )
                s[mit_l[cells]] *= 0.6
            elif name == "AGP":
                lvl = per_cell(0.2) * math.exp(ph["agp_intensity"])
                lvl[mit_l] *= 1.4
                memb = ndi.gaussian_filter(border.astype(np.float32), 0.45 * px)
                memb = memb / max(float(memb.max()), 1e-6)
                d_b = ndi.distance_transform_edt(~border).astype(np.float32)
                cortex = np.exp(-d_b / (1.2 * px))
                fib = _fibres(gch, cells, n, theta_c, r_cell, asp_cell, state, px)
                fib *= 0.9 * math.exp(ph["actin_fibres"]) * tex_gain
                tex = 1.0 + 0.3 * tex_gain * _bandpass(gch, (h, w), 0.5 * px, 2.0 * px)
                golgi = _golgi(gch, (h, w), pos, r_nuc, state, px) * cyto
                s = lvl[cells] * (
                    float(app["membrane"]) * (900.0 * memb + 250.0 * cortex) * cell_mask
                    + 180.0 * float(app["cytoplasm"]) * cell_mask * np.clip(tex, 0.1, None)
                    + 600.0 * fib
                    + 500.0 * golgi
                )
            elif name == "Mito":
                lvl = per_cell(0.22) * math.exp(ph["mito_intensity"])
                tub = _bandpass(gch, (h, w), 0.4 * px, 1.4 * px)
                gate = _bandpass(gch, (h, w), 0.8 * px, 3.0 * px)
                organelles = np.exp(-((tub / (0.5 * tex_gain)) ** 2)) * (gate > -0.2)
                puncta = np.clip(tub - 1.3, 0, None)
                lam_m = 0.5 * math.exp(ph["mito_spread"]) * cell_r
                prof = np.exp(-d_nuc / np.maximum(lam_m, 1.0))
                fill = float(app["cytoplasm"])
                s = (
                    1100.0
                    * lvl[cells]
                    * over
                    * prof
                    * (0.12 * fill + 0.9 * organelles + 0.8 * puncta)
                )
        # debris and background
        s += debris * _DEBRIS_LEVEL[name]
        bgl = np.float32(45.0 * bg)
        s += bgl * (1.0 + 0.15 * _smooth_noise(gch, (h, w), 20 * px))
        signal[ci] = s * (bright * cb[c])

    # optics: PSF blur, out of focus
    blur_px = float(app["blur_um"]) * px * float(np.exp(g_cam.normal(0, 0.12)))  # focus jitter
    if out_of_focus:
        blur_px = float(g_cam.uniform(2.5, 4.5)) * px
    for ci, c in enumerate(channels):  # longer wavelengths blur a little more
        signal[ci] = ndi.gaussian_filter(signal[ci], blur_px * (1.0 + 0.08 * c), truncate=3.0)

    # camera
    gain = float(app["gain"])
    image = np.empty((len(channels), h, w), np.uint16)
    for ci, c in enumerate(channels):
        mu = np.maximum(flatfield[c] * signal[ci], 0) / gain
        cnt = g_cam.poisson(mu).astype(np.float32) * gain
        cnt += darkfield[c] + g_cam.normal(0, float(app["read_noise"]), (h, w)).astype(np.float32)
        image[ci] = np.clip(np.rint(cnt), 0, 65535).astype(np.uint16)

    nuc_area = np.bincount(nuclei.ravel(), minlength=n + 1)[1:]
    cell_area = np.bincount(cells.ravel(), minlength=n + 1)[1:]
    info = {
        "n_cells": int(n),
        "out_of_focus": bool(out_of_focus),
        "blur_sigma_px": round(blur_px, 4),
        "n_mitotic": int((state == 1).sum()),
        "n_apoptotic": int((state == 2).sum()),
        "n_debris": int(n_debris),
        "confluence": round(float(cell_mask.mean()), 4),
        "touching_fraction": round(float(len(touching) / n) if n else 0.0, 4),
        "mean_nucleus_diameter_um": round(
            float(2 * np.sqrt(nuc_area / np.pi).mean() * image_mpp) if n else 0.0, 3
        ),
        "mean_cell_diameter_um": round(
            float(2 * np.sqrt(cell_area / np.pi).mean() * image_mpp) if n else 0.0, 3
        ),
    }
    full_flat = np.asarray(flatfield, np.float32)
    full_dark = np.asarray(darkfield, np.float32)
    return SimulatedField(
        image=image,
        nuclei=nuclei.astype(np.uint32),
        cells=cells.astype(np.uint32),
        flatfield=full_flat,
        darkfield=full_dark,
        info=info,
    )


def _fibres(
    rng: np.random.Generator,
    cells: np.ndarray,
    n: int,
    theta: np.ndarray,
    r_cell: np.ndarray,
    asp: np.ndarray,
    state: np.ndarray,
    px: float,
) -> np.ndarray:
    """Actin stress fibres: straight lines roughly along each cell's long axis, kept inside it."""
    from skimage.draw import line

    h, w = cells.shape
    canvas = np.zeros((h, w), np.float32)
    owner = np.zeros((h, w), np.int32)
    idx = ndi.find_objects(cells)
    for k in range(n):
        if state[k] != 0 or k >= len(idx) or idx[k] is None:
            continue
        sl = idx[k]
        cy = (sl[0].start + sl[0].stop) / 2
        cx = (sl[1].start + sl[1].stop) / 2
        length = r_cell[k] * np.sqrt(asp[k]) * 2.2
        for _ in range(int(rng.integers(2, 7))):
            t = theta[k] + rng.normal(0, 0.3)
            o = rng.uniform(-0.8, 0.8) * r_cell[k] / np.sqrt(asp[k])
            my, mx = cy + o * np.cos(t), cx - o * np.sin(t)
            half = length * rng.uniform(0.15, 0.5)
            y0, x0 = my - half * np.sin(t), mx - half * np.cos(t)
            y1, x1 = my + half * np.sin(t), mx + half * np.cos(t)
            rr, cc = line(int(round(y0)), int(round(x0)), int(round(y1)), int(round(x1)))
            ok = (rr >= 0) & (rr < h) & (cc >= 0) & (cc < w)
            rr, cc = rr[ok], cc[ok]
            canvas[rr, cc] = rng.uniform(0.2, 1.0)
            owner[rr, cc] = k + 1
    canvas *= owner == cells
    return ndi.gaussian_filter(canvas, 0.35 * px, truncate=3.0) * (2.0 * 0.35 * px)


def _golgi(
    rng: np.random.Generator,
    shape: tuple[int, int],
    pos: np.ndarray,
    r_nuc: np.ndarray,
    state: np.ndarray,
    px: float,
) -> np.ndarray:
    """A compact perinuclear Golgi blob on one side of each interphase nucleus."""
    h, w = shape
    img = np.zeros((h, w), np.float32)
    k = np.flatnonzero(state == 0)
    if len(k) == 0:
        return img
    ang = rng.uniform(0, 2 * np.pi, len(k))
    d = r_nuc[k] + 1.5 * px
    yy = np.clip(np.round(pos[k, 0] + d * np.sin(ang)).astype(int), 0, h - 1)
    xx = np.clip(np.round(pos[k, 1] + d * np.cos(ang)).astype(int), 0, w - 1)
    np.add.at(img, (yy, xx), 1.0)
    s = 1.3 * px
    return np.clip(ndi.gaussian_filter(img, s, truncate=3.0) * (2 * np.pi * s * s), 0, 1.5)


def _debris_points(
    ss: np.random.SeedSequence, shape: tuple[int, int], cells: np.ndarray, px: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Positions, sizes and brightness of debris (outside cells), identical for every channel."""
    rng = _child(ss, 20)
    h, w = shape
    n = int(rng.poisson(12.0 * h * w / 1080**2))
    yy = rng.integers(0, h, n)
    xx = rng.integers(0, w, n)
    size = rng.uniform(0.5, 1.8, n) * px
    amp = rng.uniform(0.5, 2.0, n)
    keep = cells[yy, xx] == 0
    return np.stack([yy[keep], xx[keep]], 1), size[keep], amp[keep]


_DEBRIS_LEVEL = {"DNA": 2500.0, "ER": 300.0, "RNA": 500.0, "AGP": 400.0, "Mito": 200.0}


def _debris_image(
    ss: np.random.SeedSequence, shape: tuple[int, int], cells: np.ndarray, px: float
) -> tuple[np.ndarray, int]:
    """Debris blobs of unit brightness (scaled per channel by ``_DEBRIS_LEVEL``) and their count."""
    pts, size, amp = _debris_points(ss, shape, cells, px)
    img = np.zeros(shape, np.float32)
    # two size classes keep it to two filters
    small = size < px
    for m, s in ((small, 0.7 * px), (~small, 1.4 * px)):
        if m.any():
            tmp = np.zeros(shape, np.float32)
            np.add.at(tmp, (pts[m, 0], pts[m, 1]), amp[m].astype(np.float32))
            img += ndi.gaussian_filter(tmp, s, truncate=3.0) * (2 * np.pi * s * s)
    return img, len(pts)


# --------------------------------------------------------------------------------------------
# illumination benchmark stack
# --------------------------------------------------------------------------------------------


def background_level(
    seed: int | Sequence[int] | np.random.SeedSequence, cv: float, *, stream: int = 0
) -> float:
    """A log-normal background-level factor with mean 1 and coefficient of variation ``cv``.

    Parameters
    ----------
    seed : int, sequence of int or numpy.random.SeedSequence
        Seed of the draw (a well's or a field's).
    cv : float
        Coefficient of variation (>= 0); 0 gives exactly 1 without drawing.
    stream : int
        Independent stream of ``seed`` to draw from.

    Returns
    -------
    float
    """
    if cv <= 0:
        return 1.0
    sigma = math.sqrt(math.log1p(cv * cv))
    g = _child(_seed_sequence(seed), stream)
    return float(math.exp(g.normal(-0.5 * sigma * sigma, sigma)))


def simulate_illumination_stack(
    n_fields: int,
    shape: tuple[int, int] = (256, 256),
    *,
    vignetting: str = "radial",
    dark_offset: bool = True,
    density: float = 1.0,
    seed: int = 0,
    channel: str = "DNA",
    background_cv: float = 0.25,
    background_jitter: float = 0.05,
    sites: int = 4,
    image_mpp: float = 0.65,
    corner: float | None = None,
    offset: float | None = None,
    dark_gradient: float | None = None,
    background: float | None = None,
    gain: float | None = None,
    read_noise: float | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Many raw fields of one channel under one known flat-field and dark-field.

    Parameters
    ----------
    n_fields : int
        Number of fields.
    shape : tuple of int
        Field shape ``(H, W)``.
    vignetting : str
        Kind passed to :func:`make_illumination`.
    dark_offset : bool
        Whether the camera adds an offset.
    density : float
        Mean cell density (0.2 mimics sparse wells, where most pixels are background); each
        field varies around it (15 % SD), and so does its brightness (10 % SD).
    seed : int
        Seed of the illumination and of every field.
    channel : str
        One of :data:`CHANNELS`.
    background_cv : float
        Coefficient of variation of the background fluorescence level (medium and compound
        autofluorescence, out-of-focus haze) from well to well: consecutive groups of ``sites``
        fields share a well, whose background level is drawn log-normal with mean 1 and this
        CV. 0 gives every well the same background level.
    background_jitter : float
        Coefficient of variation (log-normal, mean 1) of each field's background level around
        its well's (focus and lamp drift).
    sites : int
        Fields per well.
    image_mpp : float
        Micrometres per pixel. A larger value simulates a field of the same pixel count
        covering more specimen, as a large camera field binned down does (2.6 with 256 x 256
        pixels covers the area of a 1024 x 1024 field at 0.65).
    corner, offset, dark_gradient : float, optional
        Vignetting depth, camera offset and top-to-bottom dark gradient (raw units), passed to
        :func:`make_illumination`; default drawn there.
    background : float, optional
        Mean specimen background above the camera offset, in raw units at the flat-field's
        mean (before the well and field variation); default about 45 (DNA channel).
    gain, read_noise : float, optional
        Camera gain (raw units per photo-electron) and Gaussian read noise (raw units);
        default those of :data:`DEFAULT_APPEARANCE`.

    With every optional camera and optics argument left at ``None`` the stack is the one
    simulated before they existed, byte for byte; :func:`random_optics` draws them from wide
    ranges.

    Returns
    -------
    stack : ndarray of shape (n_fields, H, W), uint16
    flatfield : ndarray of shape (H, W), float32
        Mean 1.
    darkfield : ndarray of shape (H, W), float32
    """
    if channel not in CHANNELS:
        raise ValueError(f"unknown channel {channel!r}; expected one of {CHANNELS}")
    if n_fields < 1:
        raise ValueError(f"n_fields must be >= 1, got {n_fields}")
    if sites < 1:
        raise ValueError(f"sites must be >= 1, got {sites}")
    if background_cv < 0 or background_jitter < 0:
        raise ValueError(
            f"background_cv and background_jitter must be >= 0, got {background_cv}, "
            f"{background_jitter}"
        )
    for name, value in (("background", background), ("gain", gain)):
        if value is not None and not value > 0:
            raise ValueError(f"{name} must be positive, got {value}")
    if read_noise is not None and not read_noise >= 0:
        raise ValueError(f"read_noise must be >= 0, got {read_noise}")
    c = CHANNELS.index(channel)
    flat, dark = make_illumination(
        shape,
        vignetting=vignetting,
        dark_offset=dark_offset,
        seed=seed,
        corner=corner,
        offset=offset,
        dark_gradient=dark_gradient,
    )
    # the background level of the default appearance, in raw units (45 x background factor)
    bg_unit = 1.0 if background is None else float(background) / 45.0
    stack = np.empty((n_fields, *shape), np.uint16)
    for i in range(n_fields):
        ss = np.random.SeedSequence([int(seed), 0x57AC, i])
        # fields differ in brightness and density from well to well, as on a plate
        g = _child(ss, 40)
        app = dict(DEFAULT_APPEARANCE)
        app["brightness"] = float(np.exp(g.normal(0, 0.1)))
        app["background"] = background_level(
            [int(seed), 0xB6, i // sites], background_cv
        ) * background_level(ss, background_jitter, stream=41)
        if background is not None:
            app["background"] *= bg_unit
        if gain is not None:
            app["gain"] = float(gain)
        if read_noise is not None:
            app["read_noise"] = float(read_noise)
        f = _simulate(
            ss,
            shape,
            image_mpp,
            density=density * float(np.exp(g.normal(0, 0.15))),
            phenotype=None,
            appearance=app,
            flatfield=flat,
            darkfield=dark,
            out_of_focus=False,
            channels=(c,),
        )
        stack[i] = f.image[0]
    return stack, flat[c].copy(), dark[c].copy()


def random_optics(rng: np.random.Generator) -> dict[str, Any]:
    """Draw a plate's optics and camera from wide ranges, for :func:`simulate_illumination_stack`.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of randomness.

    Returns
    -------
    dict
        Keyword arguments of :func:`simulate_illumination_stack`: ``vignetting`` (any kind of
        :data:`VIGNETTING`), ``corner`` (vignetting depth, uniform 0.45-0.95), ``offset``
        (camera offset, uniform 0-500 raw units), ``dark_gradient`` (top-to-bottom, uniform
        0-20 raw units, either sign), ``background`` (specimen background above the offset,
        log-uniform 5-2,000 raw units), ``gain`` (log-uniform 0.5-10 raw units per
        photo-electron), ``read_noise`` (log-uniform 1-12 raw units), ``background_cv``
        (well-to-well, uniform 0.05-0.4) and ``density`` (cells, log-uniform 0.2-1.5).
    """

    def logu(lo: float, hi: float) -> float:
        return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))

    return {
        "vignetting": str(VIGNETTING[int(rng.integers(len(VIGNETTING)))]),
        "corner": float(rng.uniform(0.45, 0.95)),
        "offset": float(rng.uniform(0.0, 500.0)),
        "dark_gradient": float(rng.uniform(-20.0, 20.0)),
        "background": logu(5.0, 2000.0),
        "gain": logu(0.5, 10.0),
        "read_noise": logu(1.0, 12.0),
        "background_cv": float(rng.uniform(0.05, 0.4)),
        "density": logu(0.2, 1.5),
    }


# --------------------------------------------------------------------------------------------
# plate design
# --------------------------------------------------------------------------------------------


def well_names(n_wells: int) -> list[str]:
    """Well names of a 96- or 384-well plate in row-major order (``A01``, ``A02``, ...)."""
    if n_wells not in (96, 384):
        raise ValueError(f"n_wells must be 96 or 384, got {n_wells}")
    return _wells.well_names(n_wells)


def default_platemap(n_wells: int = 96, seed: int = 0) -> pd.DataFrame:
    """The default screen layout: DMSO, a positive control and compounds of seven MoAs.

    96 wells: 7 MoAs x 3 compounds + 3 inactive compounds, 3 doses (0.1, 1, 10 uM), one well
    each (72), 20 DMSO and 4 positive-control wells. 384 wells: 7 x 4 + 4 inactive compounds,
    5 doses (0.1-10 uM), two replicate wells each (320), 48 DMSO, 16 positive-control wells.
    Wells are shuffled with ``seed`` (controls included, so some sit on the edge).

    Parameters
    ----------
    n_wells : {96, 384}
    seed : int
        Seed of the well shuffle.

    Returns
    -------
    DataFrame
        Columns ``well``, ``compound``, ``dose_um``, ``role``, ``moa``, ``target``, one row per
        well in row-major order.
    """
    wells = well_names(n_wells)
    if n_wells == 96:
        per_moa, n_inactive, doses, reps, n_neg, n_pos = 3, 3, (0.1, 1.0, 10.0), 1, 20, 4
    else:
        per_moa, n_inactive, doses, reps, n_neg, n_pos = 4, 4, (0.1, 0.3, 1.0, 3.0, 10.0), 2, 48, 16
    rows: list[dict[str, Any]] = []
    for moa, prof in MOA_PROFILES.items():
        for j in range(per_moa):
            for d in doses:
                for _ in range(reps):
                    rows.append(
                        {
                            "compound": f"{prof['code']}-{j + 1}",
                            "dose_um": d,
                            "role": "trt",
                            "moa": moa,
                            "target": prof["target"],
                        }
                    )
    for j in range(n_inactive):
        for d in doses:
            for _ in range(reps):
                rows.append(
                    {
                        "compound": f"INACT-{j + 1}",
                        "dose_um": d,
                        "role": "trt",
                        "moa": INACTIVE_MOA,
                        "target": "none",
                    }
                )
    for _ in range(n_pos):
        rows.append(
            {
                "compound": "POSCON-TOPO",
                "dose_um": 10.0,
                "role": "poscon",
                "moa": "topoisomerase inhibitor",
                "target": "TOP2A",
            }
        )
    for _ in range(n_neg):
        rows.append(
            {
                "compound": "DMSO",
                "dose_um": 0.0,
                "role": "negcon",
                "moa": "control",
                "target": "none",
            }
        )
    while len(rows) < n_wells:
        rows.append({"compound": "", "dose_um": 0.0, "role": "empty", "moa": "", "target": ""})
    assert len(rows) == n_wells, (len(rows), n_wells)
    order = np.random.default_rng(np.random.SeedSequence([int(seed), 0x9A7E])).permutation(n_wells)
    df = pd.DataFrame([rows[i] for i in order])
    df.insert(0, "well", wells)
    return df


def compound_parameters(compound: str, moa: str) -> dict[str, Any]:
    """Dose-response parameters of a compound, derived from its name only.

    Plates simulated with different seeds but one plate map therefore share every compound's
    EC50, Hill slope and maximal effect and are true replicates.
    """
    rng = np.random.default_rng(np.random.SeedSequence([zlib.crc32(compound.encode()), 0xEC50]))
    ec50 = float(np.exp(rng.uniform(np.log(0.15), np.log(4.0))))
    hill = float(rng.uniform(0.8, 2.5))
    max_effect = float(rng.uniform(0.6, 1.0))
    if compound.startswith("POSCON"):
        ec50, hill, max_effect = 0.3, 1.5, 1.0
    active = moa in MOA_PROFILES
    if not active:
        max_effect = 0.0
    return {
        "compound": compound,
        "moa": moa,
        "ec50_um": round(ec50, 4),
        "hill": round(hill, 3),
        "max_effect": round(max_effect, 3),
        "phenotype": json.dumps(MOA_PROFILES[moa]["phenotype"], sort_keys=True) if active else "{}",
        "features": MOA_PROFILES[moa]["features"] if active else "",
    }


def effect_fraction(dose_um: float, ec50_um: float, hill: float, max_effect: float) -> float:
    """Hill response ``max_effect * d^h / (d^h + EC50^h)`` (0 at dose 0)."""
    if dose_um <= 0 or max_effect == 0:
        return 0.0
    return float(max_effect * dose_um**hill / (dose_um**hill + ec50_um**hill))


def _validate_platemap(pm: pd.DataFrame, n_wells: int) -> pd.DataFrame:
    """The plate map checked as any plate map is, plus: every well is on the plate."""
    from hcsflow.platemap import validate_platemap

    pm = validate_platemap(pm, "simulated plate map")
    bad = sorted(set(pm["well"]) - set(well_names(n_wells)))
    if bad:
        raise ValueError(
            f"simulated plate map: wells {bad[:5]} are not wells of a {n_wells}-well plate"
        )
    return pm


# --------------------------------------------------------------------------------------------
# plate
# --------------------------------------------------------------------------------------------


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
    n_workers : int, optional
        Worker processes (default: number of CPUs). Results do not depend on it.

    Returns
    -------
    SimulatedPlate
    """
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
    t_start = time.perf_counter()
    out = Path(out_dir)
    images_dir, truth_dir = out / "images", out / "truth"
    masks_dir = truth_dir / "masks"
    pm = _validate_platemap(default_platemap(n_wells) if platemap is None else platemap, n_wells)
    for d in (images_dir, masks_dir):
        d.mkdir(parents=True, exist_ok=True)
    wells = well_names(n_wells)
    n_rows, n_cols = (8, 12) if n_wells == 96 else (16, 24)
    plate_key = zlib.crc32(plate.encode())

    # compounds and treatments
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

    # plate effects
    prng = np.random.default_rng(np.random.SeedSequence([int(seed), plate_key, 0x91A7]))
    row_eff = prng.normal(0, 0.04, (n_rows, len(CHANNELS)))
    col_eff = prng.normal(0, 0.03, (n_cols, len(CHANNELS)))
    col_grad = np.linspace(-0.05, 0.05, n_cols)[:, None] * prng.choice([-1, 1])

    flat, dark = make_illumination(
        (size, size), vignetting=vignetting, dark_offset=dark_offset, seed=seed
    )
    illum_path = truth_dir / "illumination.npz"
    with atomic_path(illum_path) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, flatfield=flat, darkfield=dark, channels=np.array(CHANNELS))

    tasks = []
    for r in pm.itertuples():
        wi = wells.index(r.well)
        ri, cj = _well_rc(r.well)
        wrng = np.random.default_rng(np.random.SeedSequence([int(seed), plate_key, wi, 0]))
        if r.role == "empty":
            dens, ph = 0.0, {}
        else:
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
        cbr = np.exp(wrng.normal(0, 0.03, len(CHANNELS)))
        if plate_effects:
            cbr = cbr * np.exp(row_eff[ri] + col_eff[cj] + col_grad[cj])
            edge = ri in (0, n_rows - 1) or cj in (0, n_cols - 1)
            if edge:
                cbr = cbr * 1.08
                dens *= 0.8
        app = dict(DEFAULT_APPEARANCE)
        app["channel_brightness"] = tuple(float(x) for x in cbr)
        app["background"] = background_level([int(seed), plate_key, wi, 0xB6], background_cv)
        for site in range(1, sites + 1):
            tasks.append(
                {
                    "entropy": [int(seed), plate_key, wi, site],
                    "plate": plate,
                    "well": r.well,
                    "site": site,
                    "size": int(size),
                    "image_mpp": float(image_mpp),
                    "density": float(dens),
                    "phenotype": ph,
                    "appearance": app,
                    "out_of_focus_fraction": float(out_of_focus_fraction),
                    "background_jitter": float(background_jitter),
                    "illumination": str(illum_path),
                    "images_dir": str(images_dir),
                    "masks_dir": str(masks_dir),
                }
            )

    n_workers = (os.cpu_count() or 1) if n_workers is None else int(n_workers)
    if n_workers <= 1 or len(tasks) == 1:
        rows = [_field_task(t) for t in tasks]
    else:
        with ProcessPoolExecutor(max_workers=n_workers) as ex:
            rows = list(ex.map(_field_task, tasks, chunksize=max(1, len(tasks) // (8 * n_workers))))
    fields = pd.DataFrame(rows)
    field_seconds = fields.pop("cpu_seconds")

    for df, name in (
        (fields, "fields.csv"),
        (compounds, "compounds.csv"),
        (treat, "treatments.csv"),
    ):
        with atomic_path(truth_dir / name) as tmp:
            df.to_csv(tmp, index=False)
    params = {
        "hcsflow_version": __version__,
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
    with atomic_path(truth_dir / "simulation.json") as tmp:
        tmp.write_text(json.dumps(params, indent=2, sort_keys=True, default=list) + "\n")
    # the plate map comes last: its presence marks a complete plate folder
    pm_path = out / "platemap.csv"
    with atomic_path(pm_path) as tmp:
        pm[["well", "compound", "dose_um", "role", "moa", "target"]].to_csv(tmp, index=False)
    elapsed = time.perf_counter() - t_start
    print(
        f"simulated plate {plate}: {len(tasks)} fields of {size}x{size} in {elapsed:.1f} s "
        f"({field_seconds.mean():.2f} s CPU per field, {n_workers} workers); "
        f"{int(fields['n_cells'].sum())} cells -> {out}"
    )
    return SimulatedPlate(
        plate=plate, out_dir=out, images_dir=images_dir, platemap=pm_path, truth_dir=truth_dir
    )


# --------------------------------------------------------------------------------------------
# truth table
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------


def add_arguments(parser) -> None:
    """Arguments of ``hcsflow simulate``."""
    parser.add_argument("out_dir", help="output folder (images/, platemap.csv, truth/)")
    parser.add_argument("--plate", default="SIM-P1", help="plate name (default SIM-P1)")
    parser.add_argument("--wells", type=int, choices=(96, 384), default=96, help="plate format")
    parser.add_argument("--sites", type=int, default=4, help="fields per well (default 4)")
    parser.add_argument(
        "--size", type=int, default=1080, help="field side in pixels (default 1080)"
    )
    parser.add_argument(
        "--mpp", type=float, default=0.65, help="micrometres per pixel (default 0.65)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--workers", type=int, default=None, help="worker processes (default: all CPUs)"
    )
    parser.add_argument(
        "--platemap", default=None, help="plate map CSV to use instead of the default design"
    )
    parser.add_argument(
        "--vignetting", choices=VIGNETTING, default="radial", help="flat-field kind"
    )
    parser.add_argument("--no-dark-offset", action="store_true", help="camera without offset")
    parser.add_argument(
        "--density", type=float, default=1.0, help="relative cell density (default 1)"
    )
    parser.add_argument(
        "--out-of-focus-fraction",
        type=float,
        default=0.02,
        help="share of blurred fields (default 0.02)",
    )
    parser.add_argument(
        "--no-plate-effects", action="store_true", help="no row/column/edge effects"
    )
    parser.add_argument(
        "--background-cv",
        type=float,
        default=0.0,
        help="well-to-well CV of the background fluorescence level (default 0)",
    )
    parser.add_argument(
        "--background-jitter",
        type=float,
        default=0.0,
        help="field-to-field CV of the background level within a well (default 0)",
    )
    parser.add_argument(
        "--cell-table",
        action="store_true",
        help="also write truth/cells.parquet (per-cell features measured in the true masks)",
    )


def run(args) -> int:
    """Run ``hcsflow simulate``; a bad argument or plate map raises ``ValueError``."""
    pm = None
    if args.platemap:
        if not Path(args.platemap).exists():
            raise ValueError(f"plate map {args.platemap} does not exist")
        pm = pd.read_csv(args.platemap, dtype={"well": str}, keep_default_na=False)
    res = simulate_plate(
        args.out_dir,
        plate=args.plate,
        n_wells=args.wells,
        sites=args.sites,
        size=args.size,
        image_mpp=args.mpp,
        seed=args.seed,
        platemap=pm,
        vignetting=args.vignetting,
        dark_offset=not args.no_dark_offset,
        density=args.density,
        out_of_focus_fraction=args.out_of_focus_fraction,
        plate_effects=not args.no_plate_effects,
        background_cv=args.background_cv,
        background_jitter=args.background_jitter,
        n_workers=args.workers,
    )
    if args.cell_table:
        from hcsflow.io import make_provenance, write_table

        t0 = time.perf_counter()
        df = truth_cell_table(res.out_dir, n_workers=args.workers or os.cpu_count() or 1)
        write_table(
            df,
            res.truth_dir / "cells.parquet",
            make_provenance("simulate-truth", config=vars(args)),
        )
        print(f"truth cell table: {len(df)} cells in {time.perf_counter() - t0:.1f} s")
    return 0
