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

Modules
-------
:mod:`~hcsflow.simulate.params` (channels, phenotypes, MoA classes, appearance),
:mod:`~hcsflow.simulate.field` (one field: population, territories, optics, camera),
:mod:`~hcsflow.simulate.staining` (the five stains, debris, background),
:mod:`~hcsflow.simulate.geometry` and :mod:`~hcsflow.simulate.textures` (shapes, noise),
:mod:`~hcsflow.simulate.illumination` (flat-field and dark-field),
:mod:`~hcsflow.simulate.stack` (illumination benchmark stacks),
:mod:`~hcsflow.simulate.design` (plate maps, dose responses),
:mod:`~hcsflow.simulate.plate` (a plate folder), :mod:`~hcsflow.simulate.truth` (the
per-cell truth table), :mod:`~hcsflow.simulate.commands` (``hcsflow simulate``). The names
below (``__all__``) are the public API.
"""

from hcsflow.simulate.design import (
    compound_parameters,
    default_platemap,
    effect_fraction,
    well_names,
)
from hcsflow.simulate.field import simulate_field
from hcsflow.simulate.illumination import background_level, make_illumination
from hcsflow.simulate.params import (
    ACTIVE_THRESHOLD,
    BATCH_APPEARANCE_KEYS,
    CELLS_PER_MM2,
    CHANNELS,
    DEFAULT_APPEARANCE,
    INACTIVE_MOA,
    MOA_PROFILES,
    PHENOTYPE_KEYS,
    VIGNETTING,
    WELL_NOISE,
    SimulatedField,
    SimulatedPlate,
    batch_appearance,
    random_appearance,
)
from hcsflow.simulate.plate import simulate_plate
from hcsflow.simulate.stack import random_optics, simulate_illumination_stack
from hcsflow.simulate.truth import truth_cell_table

__all__ = [
    "ACTIVE_THRESHOLD",
    "BATCH_APPEARANCE_KEYS",
    "CELLS_PER_MM2",
    "CHANNELS",
    "DEFAULT_APPEARANCE",
    "INACTIVE_MOA",
    "MOA_PROFILES",
    "PHENOTYPE_KEYS",
    "VIGNETTING",
    "WELL_NOISE",
    "SimulatedField",
    "SimulatedPlate",
    "background_level",
    "batch_appearance",
    "compound_parameters",
    "default_platemap",
    "effect_fraction",
    "make_illumination",
    "random_appearance",
    "random_optics",
    "simulate_field",
    "simulate_illumination_stack",
    "simulate_plate",
    "truth_cell_table",
    "well_names",
]
