"""Field screening: downsampling to the working grid and leaving out unusable fields.

A field is left out of the estimate when it is blank, saturated or out of focus (see the
documentation of :mod:`hcsflow.illumination`); the statistics that decide it are gathered
while the fields are downsampled, one chunk at a time.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class ScreeningParams:
    """Thresholds of the field screening (see the module documentation).

    Attributes
    ----------
    blank_fraction : float
        A field is blank when its mean above its own floor is below this fraction of the
        stack's median of that quantity.
    saturated_fraction : float
        A field is saturated when more than this fraction of its pixels is saturated.
    focus_fraction : float
        A field is out of focus when its focus score is below this fraction of the stack's median.
    saturation_value : float or None
        Saturation level in raw units; ``None`` takes the maximum of the integer type.
    """

    blank_fraction: float = 0.05
    saturated_fraction: float = 0.005
    focus_fraction: float = 0.2
    saturation_value: float | None = None


@dataclass
class FieldStats:
    """Per-field statistics gathered while downsampling, used for screening.

    Attributes
    ----------
    mean : ndarray of shape (N,)
    floor : ndarray of shape (N,)
        Minimum of each field on the working grid.
    saturated : ndarray of shape (N,)
        Fraction of saturated pixels of each field.
    clipped_at_max : ndarray of shape (N,)
        Fraction of pixels of each field equal to that field's maximum.
    maximum : ndarray of shape (N,)
        Maximum of each field.
    focus : ndarray of shape (N,)
        Focus score of each field (NaN for a constant field).
    noise : ndarray of shape (N, h, w), optional
        Local pixel noise variance of each field on the working grid: the mean over the cell
        of the squared diagonal difference ``(a - b - c + d) / 2`` of every (overlapping)
        2 x 2 block of full-size pixels, which cancels smooth signal and equals the noise
        variance for white noise.
    cumulants : ndarray of shape (N, 4, h, w), optional
        The pixel noise's second and third cumulants on the specimen's background
        (:func:`_noise_cumulants`): per cell of the working grid, the fraction of its pixels
        used, their mean intensity, and the second and third cumulants of their noise.
    """

    mean: np.ndarray
    floor: np.ndarray
    saturated: np.ndarray
    clipped_at_max: np.ndarray
    maximum: np.ndarray
    focus: np.ndarray
    noise: np.ndarray | None = None
    cumulants: np.ndarray | None = None


def _working_shape(shape: tuple[int, int], working_size: int) -> tuple[int, int]:
    h, w = shape
    scale = min(1.0, working_size / max(h, w))
    return max(1, round(h * scale)), max(1, round(w * scale))


def _laplacian_var(x: torch.Tensor) -> torch.Tensor:
    """Variance of the 4-neighbour Laplacian of each image of a (n, 1, h, w) tensor."""
    lap = (
        x[:, :, 1:-1, :-2]
        + x[:, :, 1:-1, 2:]
        + x[:, :, :-2, 1:-1]
        + x[:, :, 2:, 1:-1]
        - 4 * x[:, :, 1:-1, 1:-1]
    )
    return lap.flatten(1).var(dim=1)


def _noise_cumulants(t: torch.Tensor, working: tuple[int, int]) -> torch.Tensor:
    """Second and third cumulants of the pixel noise on the specimen's background, per cell.

    The residual of every pixel from the mean of its 4 neighbours, ``r = x - mean(4)``,
    cancels smooth signal; for noise independent between pixels its second and third
    moments are ``1.25`` and ``0.9375`` (``1 + 4 / 4^3``) times the noise's second and third
    cumulants. Pixels near the specimen's objects (4 x 4 cells whose mean lies more than 3 SD
    of that mean above the field's local background, the median of the 5 x 5 blocks of
    8 x 8 pixels around it, and their neighbour cells), those on the border and residuals
    beyond 8 SD (hot pixels) are left out: the edges of bright objects skew the residuals far
    more than the noise does.

    Parameters
    ----------
    t : Tensor of shape (k, 1, H, W), float32
        Full-size fields (``H, W >= 64``).
    working : tuple of int
        The working grid ``(h, w)``.

    Returns
    -------
    Tensor of shape (k, 4, h, w), float64
        Per cell (sums in float32): the fraction of pixels used, their mean intensity, and the noise's second
        and third cumulants (NaN where no pixel was used).
    """
    x = t.float()
    k, _, hh, ww = x.shape
    r = torch.zeros_like(x)
    # x - (sum of the 4 neighbours) / 4, computed in place as -(sum / 4) + x (the same value)
    s = x[:, :, 1:-1, :-2] + x[:, :, 1:-1, 2:]
    s.add_(x[:, :, :-2, 1:-1]).add_(x[:, :, 2:, 1:-1]).mul_(-0.25).add_(x[:, :, 1:-1, 1:-1])
    r[:, :, 1:-1, 1:-1] = s
    del s
    # the noise SD of each field from the median squared residual (median of chi2(1): 0.4549)
    sub = (r[:, :, 1:-1:3, 1:-1:3] ** 2).flatten(1)
    sd = _lower_median(sub) / (1.25 * 0.4549)
    sd = sd.clamp_min(1e-12).sqrt()[:, None, None, None]
    # objects on a grid of 4 x 4 pixels: a cell more than 3 SD of its mean above the median of
    # the 8 x 8 block means around it, grown by one cell
    cells = F.avg_pool2d(x, 4, ceil_mode=True)
    blocks = F.avg_pool2d(cells, 2, ceil_mode=True)
    nb = blocks.shape[-2:]
    patches = F.unfold(F.pad(blocks, (2, 2, 2, 2), mode="replicate"), 5)
    background = _lower_median(patches.transpose(1, 2)).view(k, 1, *nb)
    background = F.interpolate(background, size=cells.shape[-2:], mode="bilinear")
    objects = (cells - background > 3.0 * 0.25 * sd).float()
    near = F.max_pool2d(objects, 3, stride=1, padding=1)
    near = F.interpolate(near, scale_factor=4, mode="nearest")[:, :, :hh, :ww] > 0
    keep = ~near & (r.abs() <= 8.0 * 1.118 * sd)
    keep[:, :, :1] = keep[:, :, -1:] = False
    keep[:, :, :, :1] = keep[:, :, :, -1:] = False
    m = keep.float()
    mr = m * r
    mr2 = mr * r
    pooled = [F.adaptive_avg_pool2d(v, working).double() for v in (m, m * x, mr2, mr2 * r)]
    frac = pooled[0]
    den = torch.where(frac > 0, frac, torch.ones_like(frac))
    nan = torch.full_like(frac, float("nan"))
    mean = torch.where(frac > 0, pooled[1] / den, nan)
    k2 = torch.where(frac > 0, pooled[2] / den / 1.25, nan)
    k3 = torch.where(frac > 0, pooled[3] / den / 0.9375, nan)
    return torch.cat([frac, mean, k2, k3], dim=1)


def _lower_median(values: torch.Tensor) -> torch.Tensor:
    """The lower median along the last axis, as ``torch.median`` gives it, by partition.

    Parameters
    ----------
    values : Tensor of shape (..., m), float32
        Finite values.

    Returns
    -------
    Tensor of shape (...)
        The value of rank ``(m - 1) // 2`` (0-based) of each row: the median for odd ``m``,
        the lower of the two middle values for even ``m``. ``torch.median`` selects along a
        strided axis several times more slowly than numpy's partition of contiguous rows.
    """
    a = np.ascontiguousarray(values.numpy())
    mid = (a.shape[-1] - 1) // 2
    return torch.from_numpy(np.ascontiguousarray(np.partition(a, mid, axis=-1)[..., mid]))


def _field_means(chunk: np.ndarray, flat: torch.Tensor) -> np.ndarray:
    """Mean of each field in float64: exact integer sums for 8- and 16-bit images (the same
    value as the float64 mean of their float32 copy, whose partial sums are exact integers
    too), else from the float32 copy ``flat`` of shape (k, H * W)."""
    if np.issubdtype(chunk.dtype, np.integer) and chunk.dtype.itemsize <= 2:
        return chunk.reshape(len(chunk), -1).sum(axis=1, dtype=np.int64) / flat.shape[1]
    return flat.mean(dim=1, dtype=torch.float64).numpy()


def _reduce_chunk(
    chunk: np.ndarray, working: tuple[int, int], sat_level: float, cumulants: bool = True
) -> tuple[torch.Tensor, dict[str, np.ndarray]]:
    """Downsample a chunk (k, H, W) to the working grid and gather screening statistics
    (the noise cumulants only with ``cumulants``)."""
    t = torch.from_numpy(np.ascontiguousarray(chunk, dtype=np.float32)).unsqueeze(1)
    k = t.shape[0]
    flat = t.view(k, -1)
    maximum = flat.amax(dim=1)
    if float(maximum.max()) < sat_level:
        sat = torch.zeros(k)  # no pixel reaches the saturation level
    else:
        sat = (flat >= sat_level).float().mean(dim=1)
    at_max = (flat >= maximum[:, None]).float().mean(dim=1)
    h, w = t.shape[-2:]
    fine = F.avg_pool2d(t, 2) if min(h, w) >= 64 else t
    coarse = F.avg_pool2d(fine, 4) if min(fine.shape[-2:]) >= 16 else fine
    lap_fine = _laplacian_var(fine)
    lap_coarse = _laplacian_var(coarse)
    focus = torch.where(lap_coarse > 0, lap_fine / lap_coarse.clamp_min(1e-30), torch.nan)
    small = F.adaptive_avg_pool2d(t, working)[:, 0]
    if h >= 2 * working[0] and w >= 2 * working[1]:
        # ((a - b - c + d) / 2)^2, in place (the same operations in the same order)
        q = torch.sub(t[:, :, :-1, :-1], t[:, :, :-1, 1:])
        q.sub_(t[:, :, 1:, :-1]).add_(t[:, :, 1:, 1:]).mul_(0.5).square_()
        noise = F.adaptive_avg_pool2d(q, working)[:, 0]
        del q
    else:
        noise = torch.full_like(small, torch.nan)
    stats = {
        "mean": _field_means(chunk, flat),
        "floor": small.flatten(1).amin(dim=1).double().numpy(),
        "saturated": sat.double().numpy(),
        "clipped_at_max": at_max.double().numpy(),
        "maximum": maximum.double().numpy(),
        "focus": focus.double().numpy(),
        "noise": noise.numpy(),
    }
    if cumulants and min(h, w) >= 64:
        # two fields at a time: the full-size temporaries stay a few arrays of two fields
        parts = [_noise_cumulants(t[i : i + 2], working) for i in range(0, k, 2)]
        stats["cumulants"] = torch.cat(parts).numpy()
    elif cumulants:
        stats["cumulants"] = np.full((k, 4, *working), np.nan)
    return small, stats


def downsample(
    fields: Iterable[np.ndarray],
    *,
    working_size: int = 128,
    saturation_value: float | None = None,
    names: Sequence[str] | None = None,
    chunk: int = 16,
    cumulants: bool = True,
) -> tuple[np.ndarray, FieldStats, tuple[int, int]]:
    """Downsample fields to the working grid (area averaging) and gather screening statistics.

    Fields are consumed one chunk at a time, so a generator that reads files keeps memory
    bounded by ``chunk`` full-size images.

    Parameters
    ----------
    fields : iterable of ndarray of shape (H, W)
        The fields (any real dtype); all must have the same shape.
    working_size : int
        Longest side of the working grid; smaller images are kept at full size.
    saturation_value : float, optional
        Saturation level in raw units; default the integer dtype's maximum (none for floats).
    names : sequence of str, optional
        A name per field (file path) used in error messages.
    chunk : int
        Number of full-size fields processed at once.
    cumulants : bool
        Gather the noise cumulants (:attr:`FieldStats.cumulants`; about half the time of the
        downsampling); ``False`` leaves them ``None``.

    Returns
    -------
    small : ndarray of shape (N, h, w), float32
        The downsampled stack.
    stats : FieldStats
        Screening statistics per field.
    shape : tuple of int
        The full-size shape ``(H, W)``.
    """
    shape: tuple[int, int] | None = None
    working: tuple[int, int] = (0, 0)
    sat_level = np.inf if saturation_value is None else float(saturation_value)
    smalls: list[torch.Tensor] = []
    parts: list[dict[str, np.ndarray]] = []
    buf: list[np.ndarray] = []

    def name(i: int) -> str:
        return str(names[i]) if names is not None and i < len(names) else f"field {i}"

    def flush() -> None:
        if buf:
            small, stats = _reduce_chunk(np.stack(buf), working, sat_level, cumulants)
            smalls.append(small)
            parts.append(stats)
            buf.clear()

    for i, img in enumerate(fields):
        img = np.asarray(img)
        if img.ndim != 2:
            raise ValueError(f"{name(i)} has shape {img.shape}; expected a 2-D field (H, W)")
        if not np.issubdtype(img.dtype, np.number) or np.issubdtype(img.dtype, np.complexfloating):
            raise ValueError(f"{name(i)} has dtype {img.dtype}; expected real numbers")
        if shape is None:
            shape = (int(img.shape[0]), int(img.shape[1]))
            working = _working_shape(shape, working_size)
            if saturation_value is None and np.issubdtype(img.dtype, np.integer):
                sat_level = float(np.iinfo(img.dtype).max)
        elif img.shape != shape:
            raise ValueError(
                f"{name(i)} has shape {img.shape}, but the other fields of the stack have {shape}"
            )
        if np.issubdtype(img.dtype, np.floating) and not np.isfinite(img).all():
            raise ValueError(f"{name(i)} contains NaN or infinite values")
        buf.append(img)
        if len(buf) >= chunk:
            flush()
    flush()
    if shape is None:
        raise ValueError("no fields given: the stack is empty")
    small = torch.cat(smalls).numpy()
    stats = FieldStats(**{k: np.concatenate([p[k] for p in parts]) for k in parts[0]})
    return small, stats, shape


def screen_fields(stats: FieldStats, params: ScreeningParams = ScreeningParams()) -> dict[int, str]:
    """Decide which fields to leave out of the estimate.

    Parameters
    ----------
    stats : FieldStats
        Statistics from :func:`downsample`.
    params : ScreeningParams
        Thresholds.

    Returns
    -------
    dict of int to str
        Index of each excluded field -> ``"blank"``, ``"saturated"`` or ``"out_of_focus"``
        (the first criterion that applies, in that order).
    """
    n = len(stats.mean)
    signal = stats.mean - stats.floor
    ref = float(np.median(signal)) if n else 0.0
    blank = ~(signal > params.blank_fraction * ref) | (ref <= 0)
    global_max = float(stats.maximum.max()) if n else 0.0
    clipped = np.where(stats.maximum >= global_max, stats.clipped_at_max, 0.0)
    saturated = np.maximum(stats.saturated, clipped) > params.saturated_fraction
    keep = ~blank & ~saturated
    focus = stats.focus
    finite = keep & np.isfinite(focus)
    fref = float(np.median(focus[finite])) if finite.any() else np.nan
    out_of_focus = np.isfinite(fref) & ~(focus >= params.focus_fraction * fref)
    excluded: dict[int, str] = {}
    for i in range(n):
        if blank[i]:
            excluded[i] = "blank"
        elif saturated[i]:
            excluded[i] = "saturated"
        elif out_of_focus[i]:
            excluded[i] = "out_of_focus"
    return excluded
