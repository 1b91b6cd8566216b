"""Validation of the workflow configuration and the plate sheet.

Everything that can be checked before a job starts is checked here, and every problem found is
reported in one message that names the configuration key or file and what was expected:
unknown keys, wrong types, missing files and folders, channel ids that match no file, plates
listed twice, unusable plate maps. The module knows nothing of Snakemake; ``rules/common.smk``
calls :func:`load_workflow_config` on the ``config`` dictionary.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import pandas as pd
import yaml

from hcsflow.discover import probe_channels
from hcsflow.layouts import LayoutError, compile_layout
from hcsflow.platemap import PlatemapError, make_shards, read_platemap

SHEET_REQUIRED = ("plate", "images", "layout", "platemap")
SHEET_OPTIONAL = ("batch",)
_PLATE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class ConfigError(ValueError):
    """The configuration or the plate sheet cannot be used; the message lists every problem."""


@dataclass
class WorkflowConfig:
    """A validated configuration.

    Attributes
    ----------
    config : dict
        The configuration with every default filled in.
    results : str
        The results folder.
    plates : DataFrame
        The plate sheet indexed by plate (columns ``images``, ``layout``, ``platemap``,
        ``batch``).
    channels : list of dict
        ``{"name", "id", "role"}`` per channel.
    shards : dict
        plate -> shard id -> wells (from the plate map, in plate order).
    """

    config: dict[str, Any]
    results: str
    plates: pd.DataFrame
    channels: list[dict[str, str]]
    shards: dict[str, dict[str, list[str]]]


def _with_defaults(validator_class: type) -> type:
    """A validator class that fills in ``default`` values of absent properties."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):  # type: ignore[no-untyped-def]
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if "default" in sub and name not in instance:
                    instance[name] = copy.deepcopy(sub["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


_Validator = _with_defaults(jsonschema.Draft202012Validator)


def load_schema(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read the configuration schema (YAML)."""
    with open(path) as fh:
        return yaml.safe_load(fh)


#: The configuration schema, shipped inside the package: the one source of every key's default.
SCHEMA_PATH = Path(__file__).resolve().parent / "config.schema.yaml"


def _as_json(value: Any) -> Any:
    """``value`` with tuples as lists and mappings as dicts (what a schema validates)."""
    if isinstance(value, Mapping):
        return {k: _as_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_as_json(v) for v in value]
    return value


def config_section(
    name: str,
    values: Mapping[str, Any] | None = None,
    schema: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """One section of the configuration, validated, with the schema's defaults filled in.

    Parameters
    ----------
    name : str
        A top-level key of the configuration (e.g. ``"analysis"``).
    values : mapping, optional
        The keys given for the section (any subset; none gives every default).
    schema : path, optional
        The configuration schema; by default :data:`SCHEMA_PATH`.

    Raises
    ------
    ConfigError
        On an unknown key or a value the schema does not allow (one line per problem).
    FileNotFoundError
        When the schema file does not exist.
    """
    path = Path(schema) if schema is not None else SCHEMA_PATH
    if not path.is_file():
        raise FileNotFoundError(
            f"configuration schema {path} not found: pass schema= or a complete '{name}' section"
        )
    sub = load_schema(path)["properties"][name]
    wrapper = {"type": "object", "properties": {name: sub}}
    filled = validate_config({name: _as_json(values or {})}, wrapper)
    return filled[name]


def _key(path: Any) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _describe(error: jsonschema.ValidationError) -> str:
    key = _key(error.absolute_path)
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed))
        where = f" under '{key}'" if error.absolute_path else ""
        return (
            f"unknown config key(s) {', '.join(repr(e) for e in extra)}{where}; "
            f"allowed: {', '.join(allowed)}"
        )
    if error.validator == "required":
        return f"config key '{key}': {error.message}"
    if error.validator == "type":
        return (
            f"config key '{key}': expected {error.validator_value}, got "
            f"{type(error.instance).__name__} {error.instance!r}"
        )
    if error.validator == "enum":
        return (
            f"config key '{key}': {error.instance!r} is not one of "
            f"{', '.join(map(repr, error.validator_value))}"
        )
    return f"config key '{key}': {error.message}"


_YAML_NULL = ("null", "Null", "NULL", "~")


def _schema_types(node: Mapping[str, Any]) -> set[str]:
    types = node.get("type", ())
    return {types} if isinstance(types, str) else set(types)


def _coerce_scalar(value: str, types: set[str]) -> Any:
    """``value`` read as a YAML scalar when the schema wants a non-string type it then has."""
    if "string" in types:
        # A string is valid here; only a YAML null may stand for the schema's null.
        return None if "null" in types and value in _YAML_NULL else value
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError:
        return value
    if parsed is None:
        return None if "null" in types else value
    if isinstance(parsed, bool):
        return parsed if "boolean" in types else value
    if isinstance(parsed, int):
        return parsed if types & {"integer", "number"} else value
    if isinstance(parsed, float):
        return parsed if "number" in types else value
    return value


def coerce_config(config: Any, schema: Mapping[str, Any]) -> Any:
    """Read string values as the YAML scalars the schema expects; return a copy.

    Snakemake parses ``--config 'shards={wells_per_shard: 8}'`` with YAML's base loader, which
    keeps every scalar inside a mapping or list as a string. Where the schema wants an
    integer, number, boolean or null and the string is a YAML scalar of that type, the value
    is replaced by it (``'8'`` -> 8, ``'false'`` -> False, ``'null'`` -> None); keys whose
    schema allows strings keep them. Anything else is left for :func:`validate_config` to
    report with the key's name.

    Parameters
    ----------
    config : object
        The configuration, or a part of it.
    schema : mapping
        The JSON schema of ``config`` (``properties``, ``additionalProperties`` and ``items``
        are followed).

    Returns
    -------
    object
        A coerced copy of ``config``; the argument is not modified.
    """
    if isinstance(config, str):
        return _coerce_scalar(config, _schema_types(schema))
    if isinstance(config, Mapping):
        properties = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        out = {}
        for key, value in config.items():
            sub = properties.get(key, extra if isinstance(extra, Mapping) else None)
            out[key] = copy.deepcopy(value) if sub is None else coerce_config(value, sub)
        return out
    if isinstance(config, list):
        items = schema.get("items")
        if isinstance(items, Mapping):
            return [coerce_config(v, items) for v in config]
    return copy.deepcopy(config)


def validate_config(config: Mapping[str, Any], schema: Mapping[str, Any]) -> dict[str, Any]:
    """Validate ``config`` against ``schema`` and return a copy with defaults filled in.

    String values where the schema wants an integer, number, boolean or null are first read
    as YAML scalars (:func:`coerce_config`), as Snakemake's ``--config`` leaves them inside
    nested mappings.

    Raises
    ------
    ConfigError
        With one line per problem, each naming the key.
    """
    filled = coerce_config(dict(config), schema)
    validator = _Validator(schema)
    errors = sorted(validator.iter_errors(filled), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        raise ConfigError("\n".join(f"- {_describe(e)}" for e in errors))
    return filled


def _check_channels(channels: list[dict[str, str]]) -> list[str]:
    problems = []
    for field in ("name", "id"):
        values = [c[field] for c in channels]
        dup = sorted({v for v in values if values.count(v) > 1})
        if dup:
            problems.append(
                f"config key 'channels': channel {field}(s) {', '.join(map(repr, dup))} "
                "appear more than once"
            )
    return problems


def read_plate_sheet(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read the plate sheet (TSV) without checking the files it names.

    Raises ``ConfigError`` for a missing file, missing columns, an empty sheet, or a plate
    name listed twice or unusable in file names.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"- config key 'plates': plate sheet {path} does not exist")
    try:
        sheet = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, comment="#")
    except Exception as exc:  # noqa: BLE001 - re-raised with the file name
        raise ConfigError(f"- plate sheet {path} cannot be read as TSV: {exc}") from exc
    sheet.columns = [c.strip() for c in sheet.columns]
    missing = [c for c in SHEET_REQUIRED if c not in sheet.columns]
    if missing:
        raise ConfigError(
            f"- plate sheet {path} lacks column(s) {', '.join(missing)} (tab-separated; "
            f"required: {', '.join(SHEET_REQUIRED)}; optional: {', '.join(SHEET_OPTIONAL)}); "
            f"found: {', '.join(sheet.columns)}"
        )
    if sheet.empty:
        raise ConfigError(f"- plate sheet {path} lists no plate")
    sheet = sheet.map(lambda v: v.strip() if isinstance(v, str) else v)
    if "batch" not in sheet.columns:
        sheet["batch"] = ""
    problems = []
    dup = sorted(set(sheet.loc[sheet["plate"].duplicated(), "plate"]))
    if dup:
        problems.append(
            f"- plate sheet {path}: plate name(s) {', '.join(map(repr, dup))} listed more "
            "than once (plate names must be unique)"
        )
    bad = [p for p in sheet["plate"] if not _PLATE_NAME.match(p)]
    if bad:
        problems.append(
            f"- plate sheet {path}: plate name(s) {', '.join(map(repr, bad))} must start with a "
            "letter or digit and contain only letters, digits, '.', '_' and '-'"
        )
    bad = sorted({b for b in sheet["batch"] if b and not _PLATE_NAME.match(b)})
    if bad:
        problems.append(
            f"- plate sheet {path}: batch name(s) {', '.join(map(repr, bad))} must start with a "
            "letter or digit and contain only letters, digits, '.', '_' and '-'"
        )
    for col in ("images", "layout", "platemap"):
        empty = sheet.loc[sheet[col] == "", "plate"].tolist()
        if empty:
            problems.append(f"- plate sheet {path}: column {col} is empty for plate(s) {empty}")
    if problems:
        raise ConfigError("\n".join(problems))
    return sheet.set_index("plate", drop=False)


def _check_dark(illumination: dict[str, Any]) -> list[str]:
    """Check ``illumination.dark`` (and its agreement with ``darkfield``); normalise it in place.

    A number given as a string (``--config``) becomes a float; a path must name a readable
    2-D dark frame.

    Returns
    -------
    list of str
        One line per problem, naming the key.
    """
    dark = illumination.get("dark", "auto")
    key = "- config key 'illumination.dark'"
    if isinstance(dark, str) and dark not in ("auto", "none"):
        try:
            dark = float(dark)
        except ValueError:
            pass
    if isinstance(dark, bool):
        return [f"{key}: expected auto, none, a number or a dark frame path, got {dark!r}"]
    if isinstance(dark, (int, float)):
        if not (dark >= 0 and dark != float("inf")):
            return [f"{key}: the camera offset must be a finite number >= 0, got {dark}"]
        dark = float(dark)
    elif dark not in ("auto", "none"):
        from hcsflow.illumination import read_dark_frame

        try:
            read_dark_frame(dark)
        except ValueError as exc:
            return [f"{key}: {exc} (expected auto, none, a number or a dark frame file)"]
    illumination["dark"] = dark
    if not illumination.get("darkfield", True) and dark not in ("auto", "none"):
        return [
            f"{key} gives a dark-field ({dark}) but 'illumination.darkfield' is false; "
            "use dark: none, or darkfield: true"
        ]
    return []


def load_workflow_config(
    config: Mapping[str, Any], schema: str | os.PathLike[str] | None = None
) -> WorkflowConfig:
    """Validate the whole configuration, the plate sheet and every file it names.

    Parameters
    ----------
    config : mapping
        The configuration as loaded from YAML (plus any command-line overrides).
    schema : path, optional
        The configuration schema; by default :data:`SCHEMA_PATH`.

    Raises
    ------
    ConfigError
        Listing every problem found, one per line.
    """
    filled = validate_config(config, load_schema(SCHEMA_PATH if schema is None else schema))
    problems = _check_channels(filled["channels"])
    if filled.get("input_profiles"):
        # Profile-level run: the image stages are skipped, so no plate sheet is read.
        path = Path(filled["input_profiles"])
        if not path.is_file():
            problems.append(f"- config key 'input_profiles': {path} does not exist")
        if problems:
            raise ConfigError("\n".join(problems))
        empty = pd.DataFrame(columns=[*SHEET_REQUIRED, *SHEET_OPTIONAL]).set_index(
            "plate", drop=False
        )
        return WorkflowConfig(
            config=filled,
            results=str(filled["results"]).rstrip("/"),
            plates=empty,
            channels=[dict(c) for c in filled["channels"]],
            shards={},
        )
    problems += _check_dark(filled["illumination"])
    sheet = read_plate_sheet(filled["plates"])
    if filled["illumination"]["group_by"] == "batch":
        unbatched = sheet.loc[sheet["batch"] == "", "plate"].tolist()
        if unbatched:
            problems.append(
                "- config key 'illumination.group_by' is 'batch' but plate sheet "
                f"{filled['plates']} gives no batch for plate(s) {', '.join(unbatched)}"
            )
    disc = filled["discovery"]
    shards: dict[str, dict[str, list[str]]] = {}
    for plate, row in sheet.iterrows():
        where = f"plate sheet {filled['plates']}, plate {plate}"
        try:
            compile_layout(row["layout"])
        except LayoutError as exc:
            problems.append(f"- {where}: {exc}")
            continue
        images = Path(row["images"])
        if not images.is_dir():
            problems.append(f"- {where}: image folder {images} does not exist")
        else:
            if disc["probe_channels"]:
                ids = [c["id"] for c in filled["channels"]]
                found, seen, n = probe_channels(images, row["layout"], ids)
                if n == 0:
                    problems.append(
                        f"- {where}: no file in {images} matches layout {row['layout']!r}"
                    )
                elif found != set(ids):
                    absent = [c for c in filled["channels"] if c["id"] not in found]
                    desc = ", ".join(f"{c['name']} (id {c['id']!r})" for c in absent)
                    problems.append(
                        f"- {where}: config key 'channels': {desc} matches no file in {images}; "
                        f"channel ids found there: {', '.join(sorted(seen))}"
                    )
        try:
            pm = read_platemap(row["platemap"])
        except PlatemapError as exc:
            problems.append(f"- {where}: {exc}")
            continue
        shards[plate] = make_shards(
            pm["Metadata_Well"].tolist(), filled["shards"]["wells_per_shard"]
        )
    if problems:
        raise ConfigError("\n".join(problems))
    return WorkflowConfig(
        config=filled,
        results=str(filled["results"]).rstrip("/"),
        plates=sheet,
        channels=[dict(c) for c in filled["channels"]],
        shards=shards,
    )
