"""Names, phenotypes, MoA classes and appearance of the simulated screen, and its results."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

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


#: Keys of :data:`DEFAULT_APPEARANCE` that a plate-wide appearance (``simulate_plate``'s
#: ``appearance``) may set: what differs between imaging batches of one screen (stain lots
#: and staining protocol, camera, focus), not the biology (cell size, clustering).
BATCH_APPEARANCE_KEYS = (
    "brightness",
    "channel_brightness",
    "gain",
    "read_noise",
    "blur_um",
    "texture",
    "membrane",
    "cytoplasm",
    "background",
)


def batch_appearance(rng: np.random.Generator) -> dict:
    """Draw the staining and camera of one imaging batch, within what batches of one screen
    differ by.

    Narrower than :func:`random_appearance` (which spans many labs for training a segmenter):
    overall stain brightness 0.6-1.6x, each channel's stain 0.7-1.4x, membrane and
    cytoplasm staining 0.6-1.6x and 0.7-1.4x (the AGP border-to-fill ratio changes), texture
    contrast 0.75-1.3x, background 0.6-2x, blur 0.4-0.75 µm, gain 1.5-3.5 and read noise 3-6.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of randomness (e.g. seeded with the batch's number).

    Returns
    -------
    dict
        Keys :data:`BATCH_APPEARANCE_KEYS`; ``simulate_plate(..., appearance=...)`` applies
        it to every well of a plate.
    """

    def logu(lo: float, hi: float) -> float:
        return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))

    return {
        "brightness": logu(0.6, 1.6),
        "channel_brightness": tuple(logu(0.7, 1.4) for _ in CHANNELS),
        "gain": logu(1.5, 3.5),
        "read_noise": logu(3.0, 6.0),
        "blur_um": logu(0.4, 0.75),
        "texture": logu(0.75, 1.3),
        "membrane": logu(0.6, 1.6),
        "cytoplasm": logu(0.7, 1.4),
        "background": logu(0.6, 2.0),
    }


def check_batch_appearance(appearance: Mapping[str, Any] | None) -> dict:
    """Validate a plate-wide appearance; return it as a dict (empty for ``None``).

    Raises
    ------
    ValueError
        On a key outside :data:`BATCH_APPEARANCE_KEYS`, a value out of range (``read_noise``
        and ``background`` >= 0, the others > 0), or a
        ``channel_brightness`` without one value per channel.
    """
    out = dict(appearance or {})
    unknown = set(out) - set(BATCH_APPEARANCE_KEYS)
    if unknown:
        raise ValueError(
            f"appearance: unknown key(s) {sorted(unknown)}; a plate-wide appearance sets "
            f"{list(BATCH_APPEARANCE_KEYS)}"
        )
    if "channel_brightness" in out:
        cb = tuple(float(x) for x in out["channel_brightness"])
        if len(cb) != len(CHANNELS):
            raise ValueError(
                f"appearance['channel_brightness'] needs {len(CHANNELS)} values "
                f"({', '.join(CHANNELS)}), got {len(cb)}"
            )
        out["channel_brightness"] = cb
    for k, v in out.items():
        vals = np.asarray(v, dtype=np.float64)
        zero_ok = k in ("read_noise", "background")
        if not (np.isfinite(vals).all() and (vals >= 0 if zero_ok else vals > 0).all()):
            raise ValueError(f"appearance[{k!r}] must be {'>= 0' if zero_ok else '> 0'}, got {v}")
        if not isinstance(v, tuple):
            out[k] = float(v)
    return out


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
