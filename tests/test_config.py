"""Configuration errors stop the run with one message naming the key or file."""

import copy
from pathlib import Path

import pytest
import yaml

from conftest import REPO
from hcsflow.config import (
    SCHEMA_PATH,
    ConfigError,
    load_schema,
    load_workflow_config,
    validate_config,
)

SCHEMA = REPO / "hcsflow" / "config.schema.yaml"


@pytest.fixture
def workspace(imagexpress_plate, tmp_path):
    root, images, pm = imagexpress_plate
    sheet = tmp_path / "plates.tsv"
    sheet.write_text(
        f"plate\timages\tlayout\tplatemap\tbatch\nP1\t{images}\timagexpress\t{pm}\tB1\n"
    )
    cfg = {
        "results": str(tmp_path / "results"),
        "plates": str(sheet),
        "channels": [
            {"name": "DNA", "id": "w1", "role": "nuclear"},
            {"name": "ER", "id": "w2", "role": "cytoplasm"},
            {"name": "Mito", "id": "w3"},
        ],
    }
    return cfg, sheet, images, pm


def test_defaults_filled(workspace):
    cfg, *_ = workspace
    wf = load_workflow_config(cfg, SCHEMA)
    assert wf.config["discovery"]["on_missing_channel"] == "error"
    assert wf.config["image_mpp"] == 0.65
    assert wf.channels[2]["role"] == "other"
    assert list(wf.plates.index) == ["P1"]
    assert wf.shards == {"P1": {"000": ["A01", "B02", "C03"]}}
    assert "role" not in cfg["channels"][2], "the caller's dict must not be modified"


def test_the_packaged_schema_is_the_default(workspace):
    cfg, *_ = workspace
    assert SCHEMA_PATH == SCHEMA.resolve()
    assert load_workflow_config(cfg).config == load_workflow_config(cfg, SCHEMA).config


def test_every_schema_key_is_described_and_defaulted():
    def walk(node, path):
        for name, sub in node.get("properties", {}).items():
            key = f"{path}.{name}" if path else name
            assert sub.get("description"), f"{key} has no description"
            assert "type" in sub, f"{key} has no type"
            assert "default" in sub, f"{key} has no default"
            if sub.get("type") == "object":
                walk(sub, key)

    walk(load_schema(SCHEMA), "")


def test_default_config_file_is_valid():
    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    validate_config(cfg, load_schema(SCHEMA))


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda c: c.update(colour="red"), "unknown config key(s) 'colour'"),
        (
            lambda c: c.update(discovery={"on_missing": "drop"}),
            "unknown config key(s) 'on_missing' under 'discovery'",
        ),
        (
            lambda c: c.update(image_mpp="fine"),
            "config key 'image_mpp': expected number, got str 'fine'",
        ),
        (lambda c: c.update(image_mpp=0), "config key 'image_mpp'"),
        (
            lambda c: c["channels"][0].update(role="nucleus"),
            "config key 'channels[0].role': 'nucleus' is not one of",
        ),
        (lambda c: c["channels"][1].update(id="w1"), "channel id(s) 'w1' appear more than once"),
        (
            lambda c: c.update(discovery={"on_unmapped_well": "ignore"}),
            "'discovery.on_unmapped_well': 'ignore' is not one of 'error', 'drop'",
        ),
        (lambda c: c.update(shards={"wells_per_shard": 0}), "config key 'shards.wells_per_shard'"),
    ],
)
def test_config_errors(workspace, change, message):
    cfg, *_ = workspace
    cfg = copy.deepcopy(cfg)
    change(cfg)
    with pytest.raises(ConfigError) as exc:
        load_workflow_config(cfg, SCHEMA)
    assert message in str(exc.value)


def test_channel_id_matching_no_file(workspace):
    cfg, _, images, _ = workspace
    cfg["channels"][2]["id"] = "w9"
    with pytest.raises(ConfigError) as exc:
        load_workflow_config(cfg, SCHEMA)
    msg = str(exc.value)
    assert "Mito (id 'w9') matches no file in" in msg and str(images) in msg
    assert "channel ids found there: w1, w2, w3" in msg


def test_sheet_errors(workspace, tmp_path):
    cfg, sheet, images, pm = workspace
    sheet.write_text(
        "plate\timages\tlayout\tplatemap\n"
        f"P1\t{images}\timagexpress\t{pm}\n"
        f"P1\t{images}\timagexpress\t{pm}\n"
    )
    with pytest.raises(ConfigError, match="plate name\\(s\\) 'P1' listed more than once"):
        load_workflow_config(cfg, SCHEMA)

    sheet.write_text(
        "plate\timages\tlayout\tplatemap\n"
        f"P1\t{tmp_path / 'nowhere'}\timagexpress\t{pm}\n"
        f"P2\t{images}\toperetta\t{pm}\n"
        f"P3\t{images}\timagexpress\t{tmp_path / 'missing.csv'}\n"
    )
    with pytest.raises(ConfigError) as exc:
        load_workflow_config(cfg, SCHEMA)
    msg = str(exc.value)
    # every problem in one message, each naming the plate and the file
    assert f"plate P1: image folder {tmp_path / 'nowhere'} does not exist" in msg
    assert "plate P2: unknown layout 'operetta'" in msg
    assert f"plate P3: plate map {tmp_path / 'missing.csv'} does not exist" in msg

    sheet.write_text("plate\timages\nP1\tx\n")
    with pytest.raises(ConfigError, match="lacks column\\(s\\) layout, platemap"):
        load_workflow_config(cfg, SCHEMA)

    cfg["plates"] = str(tmp_path / "none.tsv")
    with pytest.raises(
        ConfigError, match="config key 'plates': plate sheet .*none.tsv does not exist"
    ):
        load_workflow_config(cfg, SCHEMA)


def test_batch_names_and_batch_grouping(workspace):
    cfg, sheet, images, pm = workspace
    sheet.write_text(
        "plate\timages\tlayout\tplatemap\tbatch\n"
        f"P1\t{images}\timagexpress\t{pm}\tweek 1\n"
        f"P2\t{images}\timagexpress\t{pm}\t\n"
    )
    with pytest.raises(ConfigError, match="batch name\\(s\\) 'week 1' must start"):
        load_workflow_config(cfg, SCHEMA)
    sheet.write_text(
        "plate\timages\tlayout\tplatemap\tbatch\n"
        f"P1\t{images}\timagexpress\t{pm}\tW1\n"
        f"P2\t{images}\timagexpress\t{pm}\t\n"
    )
    load_workflow_config(cfg, SCHEMA)  # an unbatched plate is fine when grouping by plate
    cfg["illumination"] = {"group_by": "batch"}
    with pytest.raises(
        ConfigError, match="'batch' but plate sheet .* no batch for plate\\(s\\) P2"
    ):
        load_workflow_config(cfg, SCHEMA)


def test_layout_matching_nothing(workspace, tmp_path):
    cfg, sheet, images, pm = workspace
    sheet.write_text(f"plate\timages\tlayout\tplatemap\nP1\t{images}\tbroad\t{pm}\n")
    with pytest.raises(ConfigError, match="no file in .* matches layout 'broad'"):
        load_workflow_config(cfg, SCHEMA)


def test_bad_platemap_named(workspace):
    cfg, sheet, images, pm = workspace
    Path(pm).write_text("well,compound,dose_um,role\nA01,DMSO,0,negcon\nA01,X,1,trt\n")
    with pytest.raises(
        ConfigError, match=f"plate P1: plate map {pm}: well\\(s\\) listed more than once: A01"
    ):
        load_workflow_config(cfg, SCHEMA)


def cli_config(*entries: str) -> dict:
    """``--config`` entries as Snakemake parses them (nested scalars stay strings)."""
    from snakemake.cli import parse_config

    return parse_config(list(entries))


def test_nested_command_line_values_are_read_as_the_schema_types(workspace):
    cfg, *_ = workspace
    given = cli_config(
        "shards={wells_per_shard: 2}",
        "illumination={darkfield: false, max_fields: 50, max_frequency: 3.5, "
        "saturation_value: null}",
        "segmentation={model: null, nuclear_diameter_um: 7, channel_weights: {DNA: 2}}",
        "discovery={on_missing_channel: drop, plane: ~}",
    )
    assert given["shards"]["wells_per_shard"] == "2", "Snakemake leaves nested values as str"
    cfg.update(given)
    wf = load_workflow_config(cfg, SCHEMA)
    c = wf.config
    assert c["shards"]["wells_per_shard"] == 2 and type(c["shards"]["wells_per_shard"]) is int
    assert c["illumination"]["darkfield"] is False
    assert c["illumination"]["max_fields"] == 50
    assert c["illumination"]["max_frequency"] == 3.5
    assert c["illumination"]["saturation_value"] is None
    assert c["segmentation"]["model"] is None
    assert c["segmentation"]["nuclear_diameter_um"] == 7
    assert c["segmentation"]["channel_weights"] == {"DNA": 2}
    assert c["discovery"]["on_missing_channel"] == "drop"
    assert c["discovery"]["plane"] is None
    assert wf.shards == {"P1": {"000": ["A01", "B02"], "001": ["C03"]}}
    assert cfg["shards"]["wells_per_shard"] == "2", "the caller's dict must not be modified"


def test_command_line_strings_stay_strings_where_the_schema_wants_strings():
    schema = load_schema(SCHEMA)
    given = cli_config("channels=[{name: DNA, id: 01, role: nuclear}, {name: ER, id: true}]")
    filled = validate_config(given, schema)
    assert [c["id"] for c in filled["channels"]] == ["01", "true"]


@pytest.mark.parametrize(
    "entry, message",
    [
        (
            "shards={wells_per_shard: eight}",
            "config key 'shards.wells_per_shard': expected integer, got str 'eight'",
        ),
        (
            "shards={wells_per_shard: 2.5}",
            "config key 'shards.wells_per_shard': expected integer, got str '2.5'",
        ),
        ("shards={wells_per_shard: 0}", "config key 'shards.wells_per_shard': 0 is less than"),
        (
            "illumination={darkfield: maybe}",
            "config key 'illumination.darkfield': expected boolean, got str 'maybe'",
        ),
        (
            "illumination={darkfield: 1}",
            "config key 'illumination.darkfield': expected boolean, got str '1'",
        ),
        (
            "illumination={max_frequency: high}",
            "config key 'illumination.max_frequency': expected number, got str 'high'",
        ),
        (
            "segmentation={channel_weights: {DNA: heavy}}",
            "config key 'segmentation.channel_weights.DNA': expected number, got str 'heavy'",
        ),
    ],
)
def test_command_line_values_that_do_not_coerce_name_the_key(workspace, entry, message):
    cfg, *_ = workspace
    cfg.update(cli_config(entry))
    with pytest.raises(ConfigError) as exc:
        load_workflow_config(cfg, SCHEMA)
    assert message in str(exc.value)
