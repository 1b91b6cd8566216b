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
from pathlib import Path
from typing import Any

import numpy as np

from hcsflow.segmentation.classical import ClassicalParams, field_contrast, segment_classical
from hcsflow.segmentation.fields import (
    FLAGS,
    GRANULOMETRY_RATIO,
    FieldMaps,
    SegmentationResult,
    empty_labels,
    estimate_nuclear_diameter,
    field_flags,
)
from hcsflow.segmentation.inference import (
    inference_model,
    native_maps,
    pair_labels,
    symmetry_mean,
    tile_layout,
    tiled_maps,
)
from hcsflow.segmentation.postprocess import (
    PostprocessParams,
    PostStats,
    deep_watershed,
    nuclei_only,
)
from hcsflow.segmentation.preprocess import resize_float, resize_labels, scaled_shape

#: Names of this module, including those defined in :mod:`~hcsflow.segmentation.fields` and
#: :mod:`~hcsflow.segmentation.inference` that callers import from here.
__all__ = [
    "DEFAULT_MODEL",
    "FLAGS",
    "GRANULOMETRY_RATIO",
    "FieldMaps",
    "SegmentationResult",
    "Segmenter",
    "default_model_path",
    "estimate_nuclear_diameter",
    "field_flags",
    "inference_model",
    "native_maps",
    "pair_labels",
    "resize_labels",
    "resolve_device",
    "tile_layout",
]

#: Default model, relative to the repository that holds the package.
DEFAULT_MODEL = "segmenter_v5.pt"


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
        prepared = self._prepare_fields(list(fields), image_mpp, flags)
        if self.method == "classical":
            return [self._classical_one(*p) for p in prepared]
        return self._deep_batch(prepared)

    # ---------------------------------------------------------------------------------------
    def _prepare_fields(
        self,
        fields: list[tuple[np.ndarray, np.ndarray | None]],
        image_mpp: float | None | Sequence[float | None],
        flags: Sequence[Sequence[str]] | None,
    ) -> list[tuple[np.ndarray, np.ndarray | None, float, bool, list[str]]]:
        """Check the arguments of :meth:`predict_batch`; each field's QC flags and pixel size.

        Returns, per field, ``(nuclear, cytoplasm, image_mpp, mpp_estimated, flags)``.
        """
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
        return [
            self._prepare_field(i, nuc, cyto, mpp, given)
            for i, ((nuc, cyto), mpp, given) in enumerate(zip(fields, mpps, known, strict=True))
        ]

    def _prepare_field(
        self,
        i: int,
        nuc: np.ndarray,
        cyto: np.ndarray | None,
        mpp: float | None,
        given: Sequence[str],
    ) -> tuple[np.ndarray, np.ndarray | None, float, bool, list[str]]:
        """One field of :meth:`_prepare_fields` (``i`` is its position, for the messages)."""
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
        return nuc, cyto, float(mpp), estimated, fl

    def _deep_batch(
        self, prepared: list[tuple[np.ndarray, np.ndarray | None, float, bool, list[str]]]
    ) -> list[SegmentationResult]:
        """The network on the prepared fields' tiles together, then post-processing per field.

        A blank field, or one whose nuclear contrast is below ``empty_contrast``, skips the
        network and gets no objects.
        """
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
        t_net = (time.perf_counter() - t0) / max(1, len(prepared))
        out = []
        it = iter(maps)
        for (nuc, cyto, mpp, estimated, fl), x, xn in zip(prepared, inputs, natives, strict=True):
            t1 = time.perf_counter()
            if x is None:
                nuclei, cells, stats = empty_labels(nuc.shape)
            else:
                nuclei, cells, stats = self._postprocess(
                    next(it), x[0], xn, cyto is None, nuc.shape, mpp
                )
            timings = {"network": t_net, "postprocess": time.perf_counter() - t1}
            out.append(
                SegmentationResult.from_labels(nuclei, cells, stats, fl, mpp, estimated, timings)
            )
        return out

    def _classical_one(self, nuc, cyto, mpp, estimated, flags) -> SegmentationResult:
        t0 = time.perf_counter()
        if "blank" in flags:
            nuclei, cells, stats = empty_labels(nuc.shape)
        else:
            nuclei, cells, stats = segment_classical(nuc, cyto, mpp, self.classical_params)
        timings = {"network": 0.0, "postprocess": time.perf_counter() - t0}
        return SegmentationResult.from_labels(nuclei, cells, stats, flags, mpp, estimated, timings)

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
        return self.model(t) if not self.tta else symmetry_mean(self.model, t)

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
        return tiled_maps(
            self._forward,
            inputs,
            self.tile_size,
            self.tile_overlap,
            self.multiple,
            self.batch_size,
            self.device,
        )
