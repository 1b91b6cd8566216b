"""Reading and writing the workflow's tables, images and masks.

- :mod:`~hcsflow.io.tables`: Parquet tables with provenance in their schema metadata, written
  atomically (:func:`write_table`, :func:`read_table`, :func:`read_provenance`,
  :func:`atomic_path`, :func:`read_manifest`).
- :mod:`~hcsflow.io.images`: image headers and images, with errors that name the file, well,
  site and channel (:func:`read_image_header`, :func:`read_image`, :func:`read_field`,
  :func:`field_paths`, :class:`BadImageError`).
- :mod:`~hcsflow.io.masks`: segmentation masks, one compressed archive per plate x shard
  (:class:`MaskWriter`, :func:`write_masks`, :func:`read_masks`).

Every name is importable from ``hcsflow.io`` itself.
"""

from __future__ import annotations

from hcsflow.io.images import (
    BadImageError,
    ImageHeader,
    ImagesRoot,
    check_shape,
    field_paths,
    read_field,
    read_image,
    read_image_header,
    resolve_paths,
    row_root,
)
from hcsflow.io.masks import (
    MaskWriter,
    mask_key,
    read_masks,
    write_masks,
)
from hcsflow.io.tables import (
    PROVENANCE_KEY,
    TRACKED_PACKAGES,
    atomic_path,
    config_hash,
    file_checksum,
    make_provenance,
    package_versions,
    parquet_write_options,
    read_manifest,
    read_provenance,
    read_table,
    write_table,
)

__all__ = [
    "BadImageError",
    "ImageHeader",
    "ImagesRoot",
    "MaskWriter",
    "PROVENANCE_KEY",
    "TRACKED_PACKAGES",
    "atomic_path",
    "check_shape",
    "config_hash",
    "field_paths",
    "file_checksum",
    "make_provenance",
    "mask_key",
    "package_versions",
    "parquet_write_options",
    "read_field",
    "read_image",
    "read_image_header",
    "read_manifest",
    "read_masks",
    "read_provenance",
    "read_table",
    "resolve_paths",
    "row_root",
    "write_masks",
    "write_table",
]
