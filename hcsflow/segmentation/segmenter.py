"""The public segmentation API: a :class:`Segmenter` loaded once, applied to many fields.

::

    from hcsflow.segmentation import Segmenter

    seg = Segmenter.load()                       # shipped model, CPU unless CUDA is present
    nuclei, cells = seg.predict(dna, er, image_mpp=0.65)
    res = seg.predict_with_qc(dna, None, image_mpp=None)   # nuclei-only, scale estimated
    res.nuclei, res.cells, res.stats, res.flags

How a field is processed (method ``"deep"``):

1. **QC.** A field whose nuclear channel is constant is flagged ``blank`` and gets no objects
   without running the network; so does a field whose nuclear channel holds nothing but noise
   and background (Otsu class separation below ``empty_contrast``). A field with more than ``saturation_fraction`` of its pixels at
   the image's maximum value (clipped detector) is flagged ``saturated`` and still segmented. A
   field in which nothing is found is flagged ``no_objects``.
2. **Scale.** The images are rescaled by ``zoom * image_mpp / model_mpp`` (bilinear,
   antialiased when shrinking) to the network's working resolution: ``zoom`` (default the
   checkpoint's ``meta["zoom"]``, else 1) can enlarge the nuclei beyond the size the network
   was trained at (the shipped model runs at ``zoom`` 1). With ``image_mpp=None`` the pixel size is estimated
   from the nuclear channel by :func:`estimate_nuclear_diameter` (a granulometry: Otsu mask,
   the maximum of the distance transform in each connected component is the radius of the
   nuclei it holds, clumped or not; the median diameter over components) as
   ``image_mpp = nuclear_diameter_um / diameter_px``. By default ``nuclear_diameter_um`` is
   the nuclear diameter the network was trained at (``meta["nuclear_diameter_px"]`` model
   pixels), so the estimate rescales the field to the object size the network knows -- as
   Cellpose's size model does; for the classical method it is 12 µm. The estimate is reported
   in the result.
3. **Network.** The normalized two-channel input is cut into ``tile_size`` tiles overlapping by
   ``tile_overlap`` pixels; tiles of one or several fields go through the network in batches.
   Tile outputs are blended with weights that fall linearly to the tile edge over the overlap,
   so the assembled maps have no seams; post-processing then runs once on the whole field.
4. **Post-processing** (:func:`~hcsflow.segmentation.postprocess.deep_watershed`) at the
   input's own resolution: the continuous maps (inner distances, foreground probabilities) are
   resized to the input shape (bilinear, antialiased when shrinking) and the watershed runs
   there, with its pixel sizes converted (``native_resolution=True``, the default), so that
   object boundaries are placed to the input's pixel rather than to a model pixel. With
   ``native_resolution=False`` the watershed runs at the working resolution and the labels
   are mapped back by nearest neighbour (a nucleus/cell pair that no longer has both parts at
   the input resolution is dropped). Without a cytoplasm channel the cells are the nuclei
   grown by ``expand_um``.

Test-time augmentation (``tta=True``) averages the network's maps over the eight flips and
90-degree rotations of every tile (eight times the network's cost).

Method ``"classical"`` runs :func:`~hcsflow.segmentation.classical.segment_classical` at the
image's own resolution instead (no network, no rescaling).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from hcsflow.segmentation.classical import ClassicalParams, field_contrast, segment_classical
from hcsflow.segmentation.postprocess import (
    PostprocessParams,
    PostStats,
    deep_watershed,
    nuclei_only,
)
from hcsflow.segmentation.preprocess import resize_float, resize_labels, scaled_shape

#: Default model, relative to the repository that holds the package.
DEFAULT_MODEL = "segmenter_v5.pt"

#: QC flags a field can carry.
FLAGS = ("blank", "saturated", "no_objects")


def default_model_path() -> Path:
    """Path of the shipped checkpoint, ``hcsflow/models/segmenter_v5.pt`` (package data)."""
    from hcsflow.resources import models_dir

    return models_dir() / DEFAULT_MODEL


def resolve_device(device: str | None) -> str:
    """``None``/``"auto"`` -> ``"cuda"`` when a GPU is present, else ``"cpu"``."""
    import torch

    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"segmentation device {device!r} requested but CUDA is not available")
    if not (str(device) == "cpu" or str(device).startswith("cuda")):
        raise ValueError(f"segmentation device must be auto, cpu or cuda[:N], got {device!r}")
    return str(device)


@dataclass
class SegmentationResult:
    """Labels and QC of one field.

    Attributes
    ----------
    nuclei, cells : ndarray of uint32, shape (H, W)
        Label images of the input's shape; cell ``k`` contains nucleus ``k``.
    stats : PostStats
        Object counts and the unmatched objects removed.
    flags : tuple of str
        QC flags among :data:`FLAGS` (empty for a normal field).
    image_mpp : float
        Pixel size used (the given one, or the estimate).
    mpp_estimated : bool
        Whether ``image_mpp`` was estimated from the image.
    timings : dict of str to float
        Seconds spent in ``network`` (normalization, rescaling, inference, blending) and
        ``postprocess`` (watershed, mapping labels back).
    """

    nuclei: np.ndarray
    cells: np.ndarray
    stats: PostStats
    flags: tuple[str, ...] = ()
    image_mpp: float = float("nan")
    mpp_estimated: bool = False
    timings: dict[str, float] = field(default_factory=dict)

    def qc_record(self) -> dict[str, Any]:
        """Flat record for a per-field QC table (counts named as CellProfiler's Image table)."""
        rec: dict[str, Any] = dict(self.stats.as_dict())
        rec["Count_Nuclei"] = rec.pop("n_nuclei")
        rec["Count_Cells"] = rec.pop("n_cells")
        rec["flags"] = ";".join(self.flags)
        rec["image_mpp"] = float(self.image_mpp)
        rec["mpp_estimated"] = bool(self.mpp_estimated)
        return rec


# --------------------------------------------------------------------------------------------
# image-level helpers


def field_flags(nuclear: np.ndarray, saturation_fraction: float = 0.05) -> list[str]:
    """QC flags of a raw nuclear image: ``blank`` (constant) or ``saturated``.

    Parameters
    ----------
    nuclear : ndarray, shape (H, W)
    saturation_fraction : float
        Fraction of pixels at the image maximum above which the field is ``saturated``.
    """
    img = np.asarray(nuclear)
    if img.size == 0:
        return ["blank"]
    lo, hi = img.min(), img.max()
    if not hi > lo:
        return ["blank"]
    at_max = np.count_nonzero(img == hi) / img.size
    return ["saturated"] if at_max > saturation_fraction else []


#: Ratio of twice the median per-component maximal distance to the median equivalent-circle
#: diameter of the nuclei, measured on DSB2018 training images (0.86, 75 images) and on
#: simulated fields of random appearance (0.88, 8 fields).
GRANULOMETRY_RATIO = 0.87


def estimate_nuclear_diameter(nuclear: np.ndarray) -> float:
    """Median nuclear diameter in pixels, by granulometry of the nuclear channel.

    The image is normalized, smoothed lightly and thresholded with Otsu's method; in each
    connected component the maximum of the Euclidean distance to the background is the radius
    of the (largest) nucleus it holds, whether the component is one nucleus or a clump. Twice
    the median of these radii over components (specks under 2 pixels radius are noise),
    divided by :data:`GRANULOMETRY_RATIO`, estimates the median equivalent-circle diameter
    (to about 10 %).

    Parameters
    ----------
    nuclear : ndarray, shape (H, W)

    Returns
    -------
    float
        Diameter in pixels, ``nan`` if the image has no foreground.
    """
    from skimage.filters import threshold_otsu

    img = np.asarray(nuclear, dtype=np.float32)
    lo, hi = np.percentile(img, (1.0, 99.8))
    if not hi > lo:
        return float("nan")
    img = ndi.gaussian_filter(np.clip((img - lo) / (hi - lo), 0, 1), 1.0)
    if img.min() == img.max():
        return float("nan")
    mask = img > threshold_otsu(img)
    labels, n = ndi.label(mask)
    if n == 0:
        return float("nan")
    dist = ndi.distance_transform_edt(mask)
    radius = np.asarray(ndi.maximum(dist, labels, index=np.arange(1, n + 1)))
    radius = radius[radius >= 2.0]
    if radius.size == 0:
        return float("nan")
    return float(2.0 * np.median(radius) / GRANULOMETRY_RATIO)


def native_maps(maps: np.ndarray, shape: tuple[int, int], cells: bool = True) -> np.ndarray:
    """Network maps resized to the input's shape for post-processing there.

    Parameters
    ----------
    maps : ndarray of float32, shape (6, h, w)
        Maps at the working resolution (order of
        :data:`~hcsflow.segmentation.postprocess.HEADS`, foreground as probabilities).
    shape : tuple of int
        Target ``(H, W)``.
    cells : bool
        Resize the cell maps too; if False they are returned as zeros.

    Returns
    -------
    ndarray of float32, shape (6, H, W)
        Inner distances and foreground probabilities resized bilinearly (antialiased when
        shrinking); the outer distances, which the watershed does not use, are zeros.
    """
    idx = [0, 2, 3, 5] if cells else [0, 2]
    small = resize_float(np.ascontiguousarray(maps[idx]), shape)
    out = np.zeros((maps.shape[0], *shape), np.float32)
    out[idx] = small
    return out


def pair_labels(nuclei: np.ndarray, cells: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Keep only labels present in both images, renumbered ``1..N`` in both the same way.

    Returns the two images and the number of pairs dropped.
    """
    top = int(max(nuclei.max(initial=0), cells.max(initial=0)))
    pn = np.bincount(nuclei.ravel(), minlength=top + 1) > 0
    pc = np.bincount(cells.ravel(), minlength=top + 1) > 0
    both = pn & pc
    both[0] = False
    lut = np.zeros(top + 1, dtype=np.uint32)
    lut[both] = np.arange(1, int(both.sum()) + 1, dtype=np.uint32)
    dropped = int(((pn | pc)[1:] & ~both[1:]).sum())
    return lut[nuclei], lut[cells], dropped


def tile_layout(size: int, tile: int, overlap: int, multiple: int = 1) -> tuple[int, list[int]]:
    """Balanced tiling of one axis: the fewest tiles of at most ``tile`` pixels overlapping by
    at least ``overlap``, all of one length (rounded up to ``multiple``, capped at ``size``).

    Returns the tile length and the start of each tile.
    """
    if size <= tile:
        return size, [0]
    n = -(-(size - overlap) // (tile - overlap))
    length = -(-(size + (n - 1) * overlap) // n)
    length = min(size, -(-length // multiple) * multiple)
    starts = np.linspace(0, size - length, n).round().astype(int).tolist()
    return length, starts


def _ramp(n: int, overlap: int) -> np.ndarray:
    i = np.arange(n)
    edge = np.minimum(i, n - 1 - i) + 1.0
    return np.clip(edge / (overlap + 1.0), 1e-3, 1.0).astype(np.float32)


def inference_model(model: Any) -> Any:
    """A copy of ``model`` prepared for fast inference (the input is not modified).

    Every batch normalization that follows a convolution (``convN``/``bnN`` attribute pairs and
    adjacent ``Conv2d``, ``BatchNorm2d`` in a ``Sequential``) is folded into the convolution's
    weights, and the weights are stored channels-last; outputs equal the original model's to
    float rounding. On CPU this makes the shipped network about a third faster.
    """
    import copy

    import torch
    from torch import nn
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    model = copy.deepcopy(model).eval()
    for mod in model.modules():
        for i in range(1, 4):
            conv, bn = getattr(mod, f"conv{i}", None), getattr(mod, f"bn{i}", None)
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                setattr(mod, f"conv{i}", fuse_conv_bn_eval(conv, bn))
                setattr(mod, f"bn{i}", nn.Identity())
        if isinstance(mod, nn.Sequential):
            for j in range(len(mod) - 1):
                if isinstance(mod[j], nn.Conv2d) and isinstance(mod[j + 1], nn.BatchNorm2d):
                    mod[j] = fuse_conv_bn_eval(mod[j], mod[j + 1])
                    mod[j + 1] = nn.Identity()
    return model.to(memory_format=torch.channels_last)


# --------------------------------------------------------------------------------------------


@dataclass
class FieldMaps:
    """The network's maps of one field and what post-processing needs (:meth:`Segmenter.maps`).

    Attributes
    ----------
    maps : ndarray of float32, shape (6, h, w)
        Maps at the working resolution (foreground as probabilities).
    nuclear : ndarray of float32, shape (h, w)
        The normalized nuclear input at the working resolution.
    native_nuclear : ndarray of float32, shape (H, W)
        The normalized nuclear channel at the input's resolution.
    nuclei_only : bool
        The field had no cytoplasm channel.
    shape : tuple of int
        The input's shape ``(H, W)``.
    image_mpp : float
        The input's pixel size, µm.
    """

    maps: np.ndarray
    nuclear: np.ndarray
    native_nuclear: np.ndarray
    nuclei_only: bool
    shape: tuple[int, int]
    image_mpp: float


class Segmenter:
    """Nuclear and whole-cell segmentation of fluorescence fields.

    Build it with :meth:`load`. Parameters (keyword arguments of :meth:`load`):

    Parameters
    ----------
    model : torch.nn.Module or None
        The network (``None`` for ``method="classical"``).
    meta : dict
        Checkpoint metadata (``model_mpp``, ``normalization``, optionally
        ``nuclear_diameter_um``).
    method : {"deep", "classical"}
    device : str
        ``"cpu"`` or ``"cuda[:N]"``.
    tile_size : int
        Tile edge at the model's resolution (pixels); rounded up to the network's multiple.
    tile_overlap : int
        Overlap of neighbouring tiles (pixels).
    batch_size : int
        Tiles per forward pass.
    expand_um : float
        Nuclei-only assays: distance by which nuclei are grown into cells.
    min_nucleus_area_um2 : float
        Smaller nuclei are removed.
    nuclear_diameter_um : float or None
        Reference nuclear diameter for ``image_mpp=None``; default
        ``meta["nuclear_diameter_px"] * meta["model_mpp"]``, or 12 µm without a model.
    saturation_fraction : float
        See :func:`field_flags`.
    empty_contrast : float
        Deep method: a field whose nuclear :func:`~hcsflow.segmentation.classical.field_contrast`
        is below this (noise or background only) gets no objects without running the network,
        which would otherwise find objects in the stretched noise.
    postprocess : dict, optional
        Other :class:`~hcsflow.segmentation.postprocess.PostprocessParams` fields
        (``fg_threshold``, ``seed_threshold``, ``min_distance``, ...); they override the
        checkpoint's ``meta["postprocess"]``, which overrides the defaults.
    classical : dict, optional
        :class:`~hcsflow.segmentation.classical.ClassicalParams` fields.
    zoom : float or None
        Factor by which fields are enlarged beyond the model's resolution before the network
        (nuclei of ``zoom * meta["nuclear_diameter_px"]`` pixels); None takes the checkpoint's
        ``meta["zoom"]``, else 1.
    native_resolution : bool
        Run the watershed on the maps resized to the input's shape (default) rather than at the
        working resolution followed by a nearest-neighbour resize of the labels.
    tta : bool
        Average the maps over the 8 flips/rotations of each tile (8 times the network time).
    """

    def __init__(
        self,
        model: Any = None,
        meta: dict[str, Any] | None = None,
        *,
        method: str = "deep",
        device: str = "cpu",
        tile_size: int = 1024,
        tile_overlap: int = 64,
        batch_size: int = 4,
        expand_um: float = 5.0,
        min_nucleus_area_um2: float = 15.0,
        nuclear_diameter_um: float | None = None,
        saturation_fraction: float = 0.05,
        empty_contrast: float = 4.0,
        postprocess: dict[str, Any] | None = None,
        classical: dict[str, Any] | None = None,
        zoom: float | None = None,
        native_resolution: bool = True,
        tta: bool = False,
    ) -> None:
        if method not in ("deep", "classical"):
            raise ValueError(f"segmentation method must be 'deep' or 'classical', got {method!r}")
        if method == "deep" and model is None:
            raise ValueError("method 'deep' needs a model; use Segmenter.load()")
        if tile_overlap < 0 or tile_size <= 2 * tile_overlap:
            raise ValueError(
                f"tile_size ({tile_size}) must exceed twice tile_overlap ({tile_overlap}) >= 0"
            )
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = inference_model(model) if model is not None else None
        self.meta = dict(meta or {})
        self.method = method
        self.device = device
        self.multiple = int(getattr(model, "multiple", 1) or 1)
        self.tile_size = int(-(-int(tile_size) // self.multiple) * self.multiple)
        self.tile_overlap = int(tile_overlap)
        self.batch_size = int(batch_size)
        self.expand_um = float(expand_um)
        self.min_nucleus_area_um2 = float(min_nucleus_area_um2)
        self.model_mpp = float(self.meta.get("model_mpp", float("nan")))
        zoom = float(self.meta.get("zoom", 1.0)) if zoom is None else float(zoom)
        if not (np.isfinite(zoom) and 0.25 <= zoom <= 4.0):
            raise ValueError(f"segmentation zoom must lie in [0.25, 4], got {zoom!r}")
        self.zoom = zoom
        #: pixel size (µm) at which the network runs
        self.work_mpp = self.model_mpp / zoom
        self.native_resolution = bool(native_resolution)
        self.tta = bool(tta)
        if nuclear_diameter_um is None:
            if "nuclear_diameter_px" in self.meta:
                nuclear_diameter_um = float(self.meta["nuclear_diameter_px"]) * self.model_mpp
            else:
                nuclear_diameter_um = ClassicalParams().nuclear_diameter_um
        self.nuclear_diameter_um = float(nuclear_diameter_um)
        self.saturation_fraction = float(saturation_fraction)
        self.empty_contrast = float(empty_contrast)
        self._post_extra = dict(postprocess or {})
        cls_kw = dict(classical or {})
        cls_kw.setdefault("expand_um", self.expand_um)
        if nuclear_diameter_um is not None:
            cls_kw.setdefault("nuclear_diameter_um", float(nuclear_diameter_um))
        cls_kw.setdefault("min_nucleus_area_um2", self.min_nucleus_area_um2)
        self.classical_params = ClassicalParams(**cls_kw)
        if method == "deep":
            self.post_params = self._post_params(self.work_mpp)

    # ---------------------------------------------------------------------------------------
    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str] | None = None,
        device: str | None = None,
        *,
        method: str = "deep",
        threads: int | None = None,
        **options: Any,
    ) -> Segmenter:
        """Load a segmenter.

        Parameters
        ----------
        path : path-like, optional
            Checkpoint; default :func:`default_model_path` (``hcsflow/models/segmenter_v5.pt``).
            Ignored for ``method="classical"``.
        device : str, optional
            ``"cpu"``, ``"cuda"``, or ``None``/``"auto"``: CUDA when present, else CPU.
        method : {"deep", "classical"}
        threads : int, optional
            CPU threads for the network (``torch.set_num_threads``); unchanged if None.
        **options
            Keyword arguments of :class:`Segmenter`.
        """
        if threads is not None:
            import torch

            if threads < 1:
                raise ValueError(f"threads must be >= 1, got {threads}")
            torch.set_num_threads(int(threads))
        if method == "classical":
            return cls(None, {}, method="classical", device="cpu", **options)
        if method != "deep":
            raise ValueError(f"segmentation method must be 'deep' or 'classical', got {method!r}")
        from hcsflow.segmentation.model import load_checkpoint

        dev = resolve_device(device)
        path = Path(path) if path is not None else default_model_path()
        model, meta = load_checkpoint(path, dev)
        meta = dict(meta)
        meta["path"] = str(path)
        return cls(model, meta, method="deep", device=dev, **options)

    def _post_params(self, mpp: float) -> PostprocessParams:
        """Post-processing parameters for maps of pixel size ``mpp`` (µm).

        Lengths and areas of :class:`PostprocessParams` are given in pixels of the model's
        training resolution (``model_mpp``); they are converted to pixels of ``mpp``. The
        smallest nucleus is ``min_nucleus_area_um2`` unless set explicitly.
        """
        kw = dict(self.meta.get("postprocess", {}))
        kw.update(self._post_extra)
        s = self.model_mpp / mpp  # pixels of mpp per model pixel
        if abs(s - 1.0) > 1e-9:
            base = PostprocessParams()
            for name in ("min_distance", "ring_width"):
                kw[name] = max(1, int(round(kw.get(name, getattr(base, name)) * s)))
            kw["seed_smoothing"] = float(kw.get("seed_smoothing", base.seed_smoothing)) * s
            for name in ("min_cell_size", "max_hole_size", "min_nucleus_size"):
                if name in kw or name != "min_nucleus_size":
                    kw[name] = int(round(kw.get(name, getattr(base, name)) * s * s))
        kw.setdefault("min_nucleus_size", int(round(self.min_nucleus_area_um2 / (mpp * mpp))))
        return PostprocessParams(**kw)

    # ---------------------------------------------------------------------------------------
    def predict(
        self,
        nuclear: np.ndarray,
        cytoplasm: np.ndarray | None = None,
        image_mpp: float | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Segment one field.

        Parameters
        ----------
        nuclear : ndarray, shape (H, W)
            Nuclear channel (raw intensities, any numeric dtype).
        cytoplasm : ndarray of shape (H, W), or None
            Cytoplasm/membrane channel; None for nuclei-only assays (cells are the nuclei
            grown by ``expand_um``).
        image_mpp : float or None
            Micrometres per pixel; None estimates it from the image.

        Returns
        -------
        nuclei, cells : ndarray of uint32, shape (H, W)
            Cell ``k`` contains nucleus ``k``.
        """
        res = self.predict_with_qc(nuclear, cytoplasm, image_mpp)
        return res.nuclei, res.cells

    def predict_with_qc(
        self,
        nuclear: np.ndarray,
        cytoplasm: np.ndarray | None = None,
        image_mpp: float | None = None,
    ) -> SegmentationResult:
        """Segment one field and return labels with counts and QC flags.

        See :meth:`predict` for the parameters.
        """
        return self.predict_batch([(nuclear, cytoplasm)], image_mpp)[0]

    def predict_batch(
        self,
        fields: Sequence[tuple[np.ndarray, np.ndarray | None]],
        image_mpp: float | None | Sequence[float | None] = None,
        flags: Sequence[Sequence[str]] | None = None,
    ) -> list[SegmentationResult]:
        """Segment several fields, batching their tiles through the network.

        Parameters
        ----------
        fields : sequence of (nuclear, cytoplasm)
            Each ``nuclear`` of shape (H_i, W_i); ``cytoplasm`` of the same shape or None.
        image_mpp : float, None, or sequence of those (one per field)
        flags : sequence of sequence of str, optional
            QC flags already known per field (e.g. decided on the raw images before
            illumination correction); a field flagged ``blank`` is not segmented.

        Returns
        -------
        list of SegmentationResult
        """
        fields = list(fields)
        mpps = (
            list(image_mpp)
            if isinstance(image_mpp, (list, tuple, np.ndarray))
            else [image_mpp] * len(fields)
        )
        if len(mpps) != len(fields):
            raise ValueError(f"{len(fields)} fields but {len(mpps)} image_mpp values")
        known = [()] * len(fields) if flags is None else [tuple(f) for f in flags]
        if len(known) != len(fields):
            raise ValueError(f"{len(fields)} fields but {len(known)} sets of flags")
        prepared = []
        for i, ((nuc, cyto), mpp, given) in enumerate(zip(fields, mpps, known, strict=True)):
            nuc = np.asarray(nuc)
            if nuc.ndim != 2:
                raise ValueError(f"field {i}: nuclear image must be 2-D, got shape {nuc.shape}")
            if cyto is not None and np.shape(cyto) != nuc.shape:
                raise ValueError(
                    f"field {i}: cytoplasm shape {np.shape(cyto)} differs from nuclear {nuc.shape}"
                )
            if not np.all(np.isfinite(nuc)):
                raise ValueError(f"field {i}: nuclear image contains NaN or infinite values")
            if mpp is not None and not (np.isfinite(mpp) and mpp > 0):
                raise ValueError(f"field {i}: image_mpp must be a positive number, got {mpp!r}")
            fl = sorted(set(field_flags(nuc, self.saturation_fraction)) | set(given))
            estimated = False
            if mpp is None and "blank" not in fl:
                diam = estimate_nuclear_diameter(nuc)
                if np.isfinite(diam):
                    mpp, estimated = self.nuclear_diameter_um / diam, True
            if mpp is None:
                # blank, or no foreground to measure: the scale is unknown and irrelevant
                mpp = self.model_mpp if self.method == "deep" else 1.0
            prepared.append((nuc, cyto, float(mpp), estimated, fl))

        if self.method == "classical":
            return [self._classical_one(*p) for p in prepared]

        t0 = time.perf_counter()
        inputs: list[np.ndarray | None] = []
        natives: list[np.ndarray | None] = []
        for nuc, cyto, mpp, _, fl in prepared:
            skip = "blank" in fl or field_contrast(nuc) < self.empty_contrast
            if skip:
                inputs.append(None)
                natives.append(None)
            else:
                x, native_nuclear = self._model_input(nuc, cyto, mpp, keep_native=True)
                inputs.append(x)
                natives.append(native_nuclear)
        maps = self.predict_maps([x for x in inputs if x is not None])
        t_net = (time.perf_counter() - t0) / max(1, len(fields))
        out = []
        it = iter(maps)
        for (nuc, cyto, mpp, estimated, fl), x, xn in zip(prepared, inputs, natives, strict=True):
            t1 = time.perf_counter()
            if x is None:
                nuclei = np.zeros(nuc.shape, np.uint32)
                cells, stats = nuclei.copy(), PostStats()
            else:
                nuclei, cells, stats = self._postprocess(
                    next(it), x[0], xn, cyto is None, nuc.shape, mpp
                )
            fl = list(fl)
            if stats.n_nuclei == 0 and "blank" not in fl:
                fl.append("no_objects")
            out.append(
                SegmentationResult(
                    nuclei,
                    cells,
                    stats,
                    tuple(sorted(fl)),
                    mpp,
                    estimated,
                    {"network": t_net, "postprocess": time.perf_counter() - t1},
                )
            )
        return out

    # ---------------------------------------------------------------------------------------
    def _classical_one(self, nuc, cyto, mpp, estimated, flags) -> SegmentationResult:
        t0 = time.perf_counter()
        if "blank" in flags:
            nuclei = np.zeros(nuc.shape, np.uint32)
            cells, stats = nuclei.copy(), PostStats()
        else:
            nuclei, cells, stats = segment_classical(nuc, cyto, mpp, self.classical_params)
        flags = list(flags)
        if stats.n_nuclei == 0 and "blank" not in flags:
            flags.append("no_objects")
        dt = time.perf_counter() - t0
        return SegmentationResult(
            nuclei,
            cells,
            stats,
            tuple(sorted(flags)),
            mpp,
            estimated,
            {"network": 0.0, "postprocess": dt},
        )

    def _model_input(
        self,
        nuc: np.ndarray,
        cyto: np.ndarray | None,
        mpp: float,
        keep_native: bool = False,
    ) -> Any:
        """Normalized input ``(2, h, w)`` at the working resolution (``work_mpp``).

        With ``keep_native`` also return the normalized nuclear channel at the input's
        resolution, shape (H, W).
        """
        from hcsflow.segmentation.preprocess import prepare_input

        x = prepare_input(nuc, cyto, **self.meta.get("normalization", {}))
        out = resize_float(x, scaled_shape(nuc.shape, mpp / self.work_mpp))
        return (out, x[0]) if keep_native else out

    def _postprocess(
        self,
        maps: np.ndarray,
        nuclear: np.ndarray,
        native_nuclear: np.ndarray | None,
        nuclei_only_field: bool,
        shape: tuple[int, int],
        image_mpp: float,
    ) -> tuple[np.ndarray, np.ndarray, PostStats]:
        p, mpp = self.post_params, self.work_mpp
        if self.native_resolution and maps.shape[-2:] != tuple(shape):
            maps = native_maps(maps, shape, cells=not nuclei_only_field)
            p, mpp = self._post_params(image_mpp), image_mpp
            if native_nuclear is not None:
                nuclear = native_nuclear
        if nuclei_only_field:
            nuclei, cells, stats = nuclei_only(
                maps[0], maps[2], p, grow=self.expand_um / mpp, nuclear=nuclear
            )
        else:
            nuclei, cells, stats = deep_watershed(maps, p, nuclear=nuclear)
        if nuclei.shape != tuple(shape):
            nuclei, cells, lost = pair_labels(
                resize_labels(nuclei, shape), resize_labels(cells, shape)
            )
            stats.small_nuclei += lost
            stats.n_nuclei = stats.n_cells = int(nuclei.max(initial=0))
        return nuclei.astype(np.uint32), cells.astype(np.uint32), stats

    def maps(
        self, nuclear: np.ndarray, cytoplasm: np.ndarray | None, image_mpp: float
    ) -> FieldMaps:
        """The network's maps of one field (normalized, rescaled, tiled and blended).

        Parameters
        ----------
        nuclear : ndarray of shape (H, W)
        cytoplasm : ndarray of shape (H, W), or None
        image_mpp : float
            Micrometres per pixel.

        Returns
        -------
        FieldMaps
            For :meth:`instances`, which may belong to another segmenter of the same model
            and zoom (other post-processing settings reuse the maps).
        """
        nuclear = np.asarray(nuclear)
        x, xn = self._model_input(nuclear, cytoplasm, float(image_mpp), keep_native=True)
        return FieldMaps(
            self.predict_maps([x])[0],
            x[0],
            xn,
            cytoplasm is None,
            (int(nuclear.shape[0]), int(nuclear.shape[1])),
            float(image_mpp),
        )

    def instances(self, maps: FieldMaps) -> tuple[np.ndarray, np.ndarray, PostStats]:
        """Nuclei and cells (uint32, the input's shape) from a field's maps, with counts.

        Post-processing with this segmenter's settings (deep watershed, or the nuclei grown by
        ``expand_um`` for a field without cytoplasm).
        """
        return self._postprocess(
            maps.maps,
            maps.nuclear,
            maps.native_nuclear,
            maps.nuclei_only,
            maps.shape,
            maps.image_mpp,
        )

    def _forward(self, t: Any) -> Any:
        """The network on a batch ``(B, 2, h, w)``; with ``tta`` the mean over the 8 flips and
        90-degree rotations (each output transformed back; logits averaged)."""
        import torch

        if not self.tta:
            return self.model(t)
        acc = None
        for k in range(4):
            for flip in (False, True):
                u = torch.rot90(t, k, dims=(2, 3))
                if flip:
                    u = torch.flip(u, dims=(3,))
                u = u.contiguous(memory_format=torch.channels_last)
                y = self.model(u).float()
                if flip:
                    y = torch.flip(y, dims=(3,))
                y = torch.rot90(y, -k, dims=(2, 3))
                acc = y if acc is None else acc + y
        return acc / 8.0

    def predict_maps(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Network maps of normalized inputs at the model's resolution, tiled and blended.

        Parameters
        ----------
        inputs : sequence of ndarray of float32, shape (2, h_i, w_i)
            Outputs of ``prepare_input`` at the model's resolution.

        Returns
        -------
        list of ndarray of float32, shape (6, h_i, w_i)
            Inner and outer distances as predicted; foreground maps as probabilities.
        """
        import torch

        tsize, ovl = self.tile_size, self.tile_overlap
        acc = [np.zeros((6, *x.shape[-2:]), np.float32) for x in inputs]
        wsum = [np.zeros(x.shape[-2:], np.float32) for x in inputs]
        # tiles grouped by shape so that each batch is one tensor
        groups: dict[tuple[int, int], list[tuple[int, int, int]]] = {}
        for k, x in enumerate(inputs):
            h, w = x.shape[-2:]
            th, ys = tile_layout(h, tsize, ovl, self.multiple)
            tw, xs = tile_layout(w, tsize, ovl, self.multiple)
            for y0 in ys:
                for x0 in xs:
                    groups.setdefault((th, tw), []).append((k, y0, x0))
        with torch.inference_mode():
            for (th, tw), tiles in groups.items():
                weight = _ramp(th, ovl)[:, None] * _ramp(tw, ovl)[None, :]
                for b in range(0, len(tiles), self.batch_size):
                    chunk = tiles[b : b + self.batch_size]
                    batch = np.stack([inputs[k][:, y : y + th, x : x + tw] for k, y, x in chunk])
                    t = torch.from_numpy(batch).to(self.device)
                    t = t.contiguous(memory_format=torch.channels_last)
                    y_out = self._forward(t).float().cpu().numpy()
                    for (k, y, x), o in zip(chunk, y_out, strict=True):
                        acc[k][:, y : y + th, x : x + tw] += o * weight
                        wsum[k][y : y + th, x : x + tw] += weight
        out = []
        for a, s in zip(acc, wsum, strict=True):
            a /= s
            for c in (2, 5):  # foreground logits -> probabilities
                a[c] = 1.0 / (1.0 + np.exp(-a[c]))
            out.append(a)
        return out
