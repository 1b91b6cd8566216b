"""Staining of a simulated field: the five Cell Painting channels, debris and background.

:func:`make_scene` gathers what the stains share (masks, distances, nucleoli);
:func:`stain` renders the noise-free signal of each channel, one function per stain.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import ndimage as ndi

from hcsflow.simulate.geometry import _touching
from hcsflow.simulate.params import CHANNELS
from hcsflow.simulate.textures import _bandpass, _child, _smooth_noise

if TYPE_CHECKING:
    from hcsflow.simulate.field import Population


@dataclass
class Scene:
    """What the stains of one field share. Per-cell arrays have index 0 for the background
    where named ``*_l``; the others hold one entry per cell.

    Attributes
    ----------
    n : int
        Number of cells.
    nuclei, cells : ndarray of shape (H, W), int32
        Label images.
    rho_n : ndarray of shape (H, W), float32
        Normalised radius inside nuclei.
    nuc_mask, cell_mask, cyto, border : ndarray of shape (H, W), bool
        Nuclei, cells, cytoplasm (cell minus nucleus), cell borders.
    touching : ndarray of int
        Labels of cells touching another cell.
    over : ndarray of shape (H, W), float32
        Widefield projection weight of cytoplasmic organelles.
    d_nuc : ndarray of shape (H, W), float32, or None
        Distance to the nearest nucleus (None without cells).
    cell_r : ndarray of shape (H, W), float32
        Radius of the cell each pixel belongs to.
    nucleoli : ndarray of shape (H, W), float32
        Nucleolar density (shared by DNA and RNA).
    mit_l, apo_l : ndarray of bool
        Mitotic and apoptotic labels (index 0: background).
    pop : Population
        The cells.
    px : float
        Pixels per micrometre.
    ph, app : dict
        Phenotype and appearance.
    g_tex : numpy.random.Generator
        The texture stream (per-cell levels).
    """

    n: int
    nuclei: np.ndarray
    cells: np.ndarray
    rho_n: np.ndarray
    nuc_mask: np.ndarray
    cell_mask: np.ndarray
    cyto: np.ndarray
    border: np.ndarray
    touching: np.ndarray
    over: np.ndarray
    d_nuc: np.ndarray | None
    cell_r: np.ndarray
    nucleoli: np.ndarray
    mit_l: np.ndarray
    apo_l: np.ndarray
    pop: Population
    px: float
    ph: Mapping[str, float]
    app: Mapping[str, Any]
    g_tex: np.random.Generator

    @property
    def shape(self) -> tuple[int, int]:
        """``(H, W)``."""
        return self.nuclei.shape

    @property
    def state(self) -> np.ndarray:
        """State of each cell: 0 interphase, 1 mitotic, 2 apoptotic."""
        return self.pop.state

    def per_cell(self, sigma: float) -> np.ndarray:
        """Log-normal per-cell levels (index 0 = background, level 1)."""
        v = np.ones(self.n + 1, np.float32)
        v[1:] = np.exp(self.g_tex.normal(0, sigma, self.n))
        return v


def make_scene(
    g_tex: np.random.Generator,
    nuclei: np.ndarray,
    cells: np.ndarray,
    rho_n: np.ndarray,
    pop: Population,
    px: float,
    scale: float,
    ph: Mapping[str, float],
    app: Mapping[str, Any],
) -> Scene:
    """Masks, distances and nucleoli of a field's cells (draws the nucleoli from ``g_tex``)."""
    h, w = nuclei.shape
    n = pop.n
    state, r_nuc, r_cell, pos = pop.state, pop.r_nuc, pop.r_cell, pop.pos
    nuc_mask = nuclei > 0
    cell_mask = cells > 0
    cyto = cell_mask & ~nuc_mask
    border, touching = _touching(cells)
    border &= cell_mask
    # widefield projection: cytoplasmic organelles above and below the nucleus
    over = (cyto + 0.3 * nuc_mask).astype(np.float32)
    st_full = np.concatenate([[0], state])
    mit_l = st_full == 1
    apo_l = st_full == 2

    # distances
    d_nuc = ndi.distance_transform_edt(~nuc_mask).astype(np.float32) if n else None
    rc_l = np.ones(n + 1, np.float32)
    rc_l[1:] = r_cell
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
    return Scene(
        n,
        nuclei,
        cells,
        rho_n,
        nuc_mask,
        cell_mask,
        cyto,
        border,
        touching,
        over,
        d_nuc,
        cell_r,
        nucleoli,
        mit_l,
        apo_l,
        pop,
        px,
        ph,
        app,
        g_tex,
    )


def stain(
    ss: np.random.SeedSequence, scene: Scene, channels: tuple[int, ...]
) -> tuple[np.ndarray, int]:
    """The noise-free signal of each channel: stain, debris and background fluorescence.

    Parameters
    ----------
    ss : numpy.random.SeedSequence
        The field's seed (channel ``c`` draws from its stream ``10 + c``, debris from 20).
    scene : Scene
    channels : tuple of int
        Indices into :data:`CHANNELS`.

    Returns
    -------
    signal : ndarray of shape (len(channels), H, W), float32
    n_debris : int
    """
    h, w = scene.shape
    px, app = scene.px, scene.app
    bright = float(app["brightness"])
    cb = app["channel_brightness"]
    bg = float(app["background"])
    signal = np.zeros((len(channels), h, w), np.float32)
    debris, n_debris = _debris_image(ss, (h, w), scene.cells, px)
    for ci, c in enumerate(channels):
        name = CHANNELS[c]
        gch = _child(ss, 10 + c)
        s = np.zeros((h, w), np.float32)
        if scene.n:
            s = _STAINS[name](scene, gch)
        # debris and background
        s += debris * _DEBRIS_LEVEL[name]
        bgl = np.float32(45.0 * bg)
        s += bgl * (1.0 + 0.15 * _smooth_noise(gch, (h, w), 20 * px))
        signal[ci] = s * (bright * cb[c])
    return signal, n_debris


def _stain_dna(sc: Scene, gch: np.random.Generator) -> np.ndarray:
    """Domed nuclei with chromatin texture and darker nucleoli; bright mitotic figures;
    fragmented apoptotic nuclei."""
    (h, w), px, ph, tex_gain = sc.shape, sc.px, sc.ph, float(sc.app["texture"])
    nuclei, cells, nuc_mask, mit_l, apo_l = sc.nuclei, sc.cells, sc.nuc_mask, sc.mit_l, sc.apo_l
    rho_n, nucleoli, g2, per_cell = sc.rho_n, sc.nucleoli, sc.pop.g2, sc.per_cell
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
    return s


def _stain_er(sc: Scene, gch: np.random.Generator) -> np.ndarray:
    """Reticular network decaying away from the nucleus, with a bright nuclear envelope."""
    (h, w), px, ph, tex_gain, app = sc.shape, sc.px, sc.ph, float(sc.app["texture"]), sc.app
    cells, nuc_mask, cyto, over, d_nuc = sc.cells, sc.nuc_mask, sc.cyto, sc.over, sc.d_nuc
    cell_r, mit_l, per_cell = sc.cell_r, sc.mit_l, sc.per_cell
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
        700.0 * lvl[cells] * (over * prof * (0.25 * fill + 0.9 * reticulum) + 0.6 * envelope)
        + 70.0 * lvl[cells] * nuc_mask
    )
    return s


def _stain_rna(sc: Scene, gch: np.random.Generator) -> np.ndarray:
    """Nucleoli, weak nucleoplasm and cytoplasmic texture."""
    (h, w), px, ph, tex_gain = sc.shape, sc.px, sc.ph, float(sc.app["texture"])
    cells, nuc_mask, cyto, d_nuc, cell_r = sc.cells, sc.nuc_mask, sc.cyto, sc.d_nuc, sc.cell_r
    nucleoli, mit_l, per_cell = sc.nucleoli, sc.mit_l, sc.per_cell
    lvl = per_cell(0.2) * math.exp(ph["rna_intensity"])
    tex = 1.0 + 0.35 * tex_gain * _bandpass(gch, (h, w), 0.5 * px, 2.0 * px)
    prof = np.exp(-d_nuc / np.maximum(0.6 * cell_r, 1.0))
    nl = 1400.0 * math.exp(0.6 * ph["nucleoli"]) * nucleoli
    s = lvl[cells] * (cyto * 420.0 * prof * np.clip(tex, 0.1, None) + nuc_mask * (220.0 + nl))
    s[mit_l[cells]] *= 0.6
    return s


def _stain_agp(sc: Scene, gch: np.random.Generator) -> np.ndarray:
    """Cell borders and cortex, actin stress fibres and a perinuclear Golgi blob."""
    (h, w), px, ph, tex_gain, app = sc.shape, sc.px, sc.ph, float(sc.app["texture"]), sc.app
    cells, cell_mask, cyto, border, mit_l = sc.cells, sc.cell_mask, sc.cyto, sc.border, sc.mit_l
    n, pop, per_cell = sc.n, sc.pop, sc.per_cell
    theta_c, r_cell, asp_cell, state, pos, r_nuc = (
        pop.theta_c,
        pop.r_cell,
        pop.asp_cell,
        pop.state,
        pop.pos,
        pop.r_nuc,
    )
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
    return s


def _stain_mito(sc: Scene, gch: np.random.Generator) -> np.ndarray:
    """Tubular and punctate organelles spread in the cytoplasm."""
    (h, w), px, ph, tex_gain, app = sc.shape, sc.px, sc.ph, float(sc.app["texture"]), sc.app
    cells, over, d_nuc, cell_r, per_cell = sc.cells, sc.over, sc.d_nuc, sc.cell_r, sc.per_cell
    lvl = per_cell(0.22) * math.exp(ph["mito_intensity"])
    tub = _bandpass(gch, (h, w), 0.4 * px, 1.4 * px)
    gate = _bandpass(gch, (h, w), 0.8 * px, 3.0 * px)
    organelles = np.exp(-((tub / (0.5 * tex_gain)) ** 2)) * (gate > -0.2)
    puncta = np.clip(tub - 1.3, 0, None)
    lam_m = 0.5 * math.exp(ph["mito_spread"]) * cell_r
    prof = np.exp(-d_nuc / np.maximum(lam_m, 1.0))
    fill = float(app["cytoplasm"])
    s = 1100.0 * lvl[cells] * over * prof * (0.12 * fill + 0.9 * organelles + 0.8 * puncta)
    return s


#: The stain of each channel.
_STAINS: dict[str, Callable[[Scene, np.random.Generator], np.ndarray]] = {
    "DNA": _stain_dna,
    "ER": _stain_er,
    "RNA": _stain_rna,
    "AGP": _stain_agp,
    "Mito": _stain_mito,
}


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
