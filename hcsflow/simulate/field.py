"""One simulated field: cell population, territories, staining, optics and camera.

:func:`_simulate` runs the stages in order; each stage draws from its own random stream of the
field's seed (geometry, texture, camera, one per channel), so the stages are independent of
each other's draws.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from hcsflow.simulate.geometry import _fourier_radius, _place_centres, _shape_r
from hcsflow.simulate.illumination import make_illumination
from hcsflow.simulate.params import (
    CELLS_PER_MM2,
    CHANNELS,
    SimulatedField,
    _check_appearance,
    _check_phenotype,
)
from hcsflow.simulate.staining import Scene, make_scene, stain
from hcsflow.simulate.textures import _child, _seed_sequence, _smooth_noise


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
    pop = _population(g_geo, (h, w), image_mpp, density, ph, app)
    nuclei, rho_n, kept = _draw_nuclei(pop, (h, w))
    cells, pop = _territories(g_geo, (h, w), px, nuclei, pop, kept)
    scene = make_scene(g_tex, nuclei, cells, rho_n, pop, px, scale, ph, app)
    signal, n_debris = stain(ss, scene, channels)
    blur_px = _optics(g_cam, signal, channels, app, px, out_of_focus)
    image = _camera(g_cam, signal, channels, flatfield, darkfield, app)
    return SimulatedField(
        image=image,
        nuclei=nuclei.astype(np.uint32),
        cells=cells.astype(np.uint32),
        flatfield=np.asarray(flatfield, np.float32),
        darkfield=np.asarray(darkfield, np.float32),
        info=_field_info(scene, n_debris, image_mpp, out_of_focus, blur_px),
    )


@dataclass
class Population:
    """Properties of a field's cells, one entry per cell.

    Attributes
    ----------
    state : ndarray of int
        0 interphase, 1 mitotic, 2 apoptotic.
    r_nuc, r_cell : ndarray of float
        Nucleus and cell radii, pixels.
    asp_nuc, asp_cell : ndarray of float
        Aspect ratios of nucleus and cell.
    metaphase, g2 : ndarray of bool
        Mitotic cells in metaphase; interphase cells in G2.
    pos : ndarray of shape (n, 2)
        Nucleus centres (row, column).
    theta_c, theta_n : ndarray of float
        Orientation of the cell and of the nucleus.
    cpos : ndarray of shape (n, 2)
        Cell centres.
    coefs, coefs_n : list of ndarray
        Fourier outline coefficients of the cell and of the nucleus.
    """

    state: np.ndarray
    r_nuc: np.ndarray
    r_cell: np.ndarray
    asp_nuc: np.ndarray
    asp_cell: np.ndarray
    metaphase: np.ndarray
    g2: np.ndarray
    pos: np.ndarray
    theta_c: np.ndarray
    theta_n: np.ndarray
    cpos: np.ndarray
    coefs: list[np.ndarray]
    coefs_n: list[np.ndarray]

    @property
    def n(self) -> int:
        """Number of cells."""
        return len(self.pos)

    def subset(self, index: np.ndarray) -> Population:
        """The cells ``index``, in that order."""
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = [v[i] for i in index] if isinstance(v, list) else v[index]
        return Population(**out)


def _population(
    g_geo: np.random.Generator,
    shape: tuple[int, int],
    image_mpp: float,
    density: float,
    ph: Mapping[str, float],
    app: Mapping[str, Any],
) -> Population:
    """The cell population: states, sizes and shapes, placed by a clustered point process.

    The steps draw from ``g_geo`` in a fixed order: the number of cells, the properties of a
    pool of candidates, the point process that keeps some of them, their orientations and
    offsets, and their outlines.
    """
    h, w = shape
    px = 1.0 / image_mpp  # pixels per micrometre
    scale = float(app["cell_scale"])
    n_target = _cell_count(g_geo, (h, w), image_mpp, density, ph["toxicity"], scale)
    # properties for a pool of candidates; the point process keeps n_target of them
    n = 4 * n_target + 20 if n_target else 0
    cells = _candidate_cells(g_geo, n, ph, scale, px)
    a_nuc = cells["r_nuc"] * np.sqrt(cells["asp_nuc"])
    sep = a_nuc * 0.95 + 0.5  # nuclei in colonies may touch
    pos, idx = _place_centres(
        g_geo,
        (h, w),
        n_target,
        sep,
        cluster_sigma=1.4 * 17.5 * scale * px,
        clustering=app["clustering"],
    )
    cells = {k: v[idx] for k, v in cells.items()}
    theta_c, theta_n, cpos = _orientations(g_geo, pos, cells)
    coefs, coefs_n = _outlines(g_geo, cells["state"], 0.14 + ph["cell_irregularity"])
    return Population(
        **cells,
        pos=pos,
        theta_c=theta_c,
        theta_n=theta_n,
        cpos=cpos,
        coefs=coefs,
        coefs_n=coefs_n,
    )


def _cell_count(
    g_geo: np.random.Generator,
    shape: tuple[int, int],
    image_mpp: float,
    density: float,
    toxicity: float,
    scale: float,
) -> int:
    """The number of cells of a field: Poisson around the density of the well, fewer with
    toxicity and with larger cells."""
    h, w = shape
    area_mm2 = h * w * (image_mpp * 1e-3) ** 2
    lam = CELLS_PER_MM2 * density * area_mm2 * (1.0 - toxicity) / scale**1.5
    return int(g_geo.poisson(lam)) if lam > 0 else 0


def _candidate_cells(
    g_geo: np.random.Generator, n: int, ph: Mapping[str, float], scale: float, px: float
) -> dict[str, np.ndarray]:
    """States, radii (pixels) and aspect ratios of ``n`` candidate cells.

    Returns
    -------
    dict
        ``state``, ``r_nuc``, ``r_cell``, ``asp_nuc``, ``asp_cell``, ``metaphase``, ``g2``:
        arrays of shape (n,), as in :class:`Population`. Mitotic cells are round with small
        condensed nuclei (elongated in metaphase), apoptotic cells shrunken.
    """
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
    return {
        "state": state,
        "r_nuc": r_nuc,
        "r_cell": np.maximum(r_cell, r_nuc * 1.35),
        "asp_nuc": np.clip(asp_nuc, 1.0, 4.0),
        "asp_cell": np.clip(asp_cell, 1.0, 4.5),
        "metaphase": metaphase,
        "g2": g2,
    }


def _orientations(
    g_geo: np.random.Generator, pos: np.ndarray, cells: Mapping[str, np.ndarray]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Orientations of the cells and of their nuclei, and the cell centres: offset from the
    nucleus (``pos``, shape (n, 2)) along the cell's axis, little for dividing or dying cells.

    Returns
    -------
    theta_c, theta_n : ndarray of shape (n,)
    cpos : ndarray of shape (n, 2)
    """
    state, r_nuc, r_cell, asp_cell = (cells[k] for k in ("state", "r_nuc", "r_cell", "asp_cell"))
    n = len(pos)
    theta_c = g_geo.uniform(0, np.pi, n)
    theta_n = theta_c + g_geo.normal(0, 0.35, n)
    off_ang = theta_c + np.where(g_geo.random(n) < 0.5, 0, np.pi) + g_geo.normal(0, 0.4, n)
    off_mag = g_geo.uniform(0, 0.35, n) * (r_cell * np.sqrt(asp_cell) - r_nuc)
    off_mag[state != 0] *= 0.2
    cpos = pos + np.stack([np.sin(off_ang), np.cos(off_ang)], 1) * off_mag[:, None]
    return theta_c, theta_n, cpos


def _outlines(
    g_geo: np.random.Generator, state: np.ndarray, irregularity: float
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Fourier outline coefficients of each cell and of its nucleus, drawn per cell in a fixed
    order; interphase cells are the irregular ones (``irregularity``)."""
    coefs, coefs_n = [], []
    for k in range(len(state)):
        coefs.append(_fourier_radius(g_geo, irregularity if state[k] == 0 else 0.04, 7))
        coefs_n.append(_fourier_radius(g_geo, 0.05 if state[k] == 0 else 0.02, 4))
    return coefs, coefs_n


def _draw_nuclei(
    pop: Population, shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nucleus label image, relabelled ``1..n`` after dropping nuclei mostly hidden by earlier
    ones or by the image border.

    Returns
    -------
    nuclei : ndarray of shape (H, W), int32
    rho_n : ndarray of shape (H, W), float32
        Normalised radius inside nuclei (dome profile).
    kept : ndarray of int
        Index of the kept cells into ``pop``.
    """
    h, w = shape
    n = pop.n
    r_nuc, asp_nuc, coefs_n, pos, theta_n = (
        pop.r_nuc,
        pop.asp_nuc,
        pop.coefs_n,
        pop.pos,
        pop.theta_n,
    )
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
    return nuclei, rho_n, kept


def _territories(
    g_geo: np.random.Generator,
    shape: tuple[int, int],
    px: float,
    nuclei: np.ndarray,
    pop: Population,
    kept: np.ndarray,
) -> tuple[np.ndarray, Population]:
    """Cell territories: a watershed from the nuclei over the normalised distance to the cells'
    outlines plus noise, limited to each cell's own outline.

    Returns the cell label image (cell ``k`` holds nucleus ``k``) and the kept cells.
    """
    h, w = shape
    r_cell, asp_cell, coefs, cpos, theta_c = (
        pop.r_cell,
        pop.asp_cell,
        pop.coefs,
        pop.cpos,
        pop.theta_c,
    )
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
    pop = pop.subset(kept)
    n = pop.n

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
    return cells, pop


def _optics(
    g_cam: np.random.Generator,
    signal: np.ndarray,
    channels: tuple[int, ...],
    app: Mapping[str, Any],
    px: float,
    out_of_focus: bool,
) -> float:
    """Blur ``signal`` (in place) by the point spread function, or strongly when out of focus.

    Returns the blur's sigma in pixels (of the first channel; longer wavelengths blur more).
    """
    blur_px = float(app["blur_um"]) * px * float(np.exp(g_cam.normal(0, 0.12)))  # focus jitter
    if out_of_focus:
        blur_px = float(g_cam.uniform(2.5, 4.5)) * px
    for ci, c in enumerate(channels):  # longer wavelengths blur a little more
        signal[ci] = ndi.gaussian_filter(signal[ci], blur_px * (1.0 + 0.08 * c), truncate=3.0)
    return blur_px


def _camera(
    g_cam: np.random.Generator,
    signal: np.ndarray,
    channels: tuple[int, ...],
    flatfield: np.ndarray,
    darkfield: np.ndarray,
    app: Mapping[str, Any],
) -> np.ndarray:
    """The camera: ``g * Poisson(flat * signal / g) + dark + N(0, read_noise)``, as uint16."""
    h, w = signal.shape[-2:]
    gain = float(app["gain"])
    image = np.empty((len(channels), h, w), np.uint16)
    for ci, c in enumerate(channels):
        mu = np.maximum(flatfield[c] * signal[ci], 0) / gain
        cnt = g_cam.poisson(mu).astype(np.float32) * gain
        cnt += darkfield[c] + g_cam.normal(0, float(app["read_noise"]), (h, w)).astype(np.float32)
        image[ci] = np.clip(np.rint(cnt), 0, 65535).astype(np.uint16)
    return image


def _field_info(
    scene: Scene, n_debris: int, image_mpp: float, out_of_focus: bool, blur_px: float
) -> dict:
    """Summary of a simulated field (:attr:`SimulatedField.info`)."""
    n, nuclei, cells, state = scene.n, scene.nuclei, scene.cells, scene.state
    cell_mask, touching = scene.cell_mask, scene.touching
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
    return info
