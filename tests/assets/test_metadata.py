"""What the Dagster UI shows: every definition described, every asset in its stage's group, tables as native
tables with a schema that matches their rows, numbers rounded, charts small enough to show inline.

The assets run for real on a small input (ten renders of every filter decision, a small I_e, one labelling
round); training and evaluation are reported as materializations, so ``ablation_table`` reads them as it
reads real ones, and the trainer's record drives ``daring_unet``'s charts."""

import math

import dagster as dg
import polars as pl
import pytest

from cosmicman.annotation.ledger import RoundLedger
from cosmicman.assets.annotation import (
    annotation_rounds,
    annotator,
    base_annotator,
    eval_set,
    human_labels,
    labelling_tasks,
)
from cosmicman.assets.captions import captions
from cosmicman.assets.common import sourcing_batches
from cosmicman.assets.datasets import cosmicman_hq
from cosmicman.assets.evaluation import ablation_table, test_prompts
from cosmicman.assets.filtering import build_filtered_images, fake_person_classifier
from cosmicman.assets.metadata import counts_table, location, rounded, table, tidy, tidy_metadata
from cosmicman.assets.parsing import human_parsing
from cosmicman.assets.plots import (
    INLINE_MARKDOWN_LIMIT,
    ChartTooLargeError,
    bar_chart,
    bucket_means,
    histogram,
    line_chart,
    svg_markdown,
)
from cosmicman.assets.pool_annotation import build_annotations
from cosmicman.assets.training import _run_charts
from cosmicman.core.keys import table_key, training_run_key
from cosmicman.core.store import Store
from cosmicman.environments.simulated_annotation import SimulatedAnnotatorResource, SimulatedLabellingResource
from cosmicman.environments.simulated_data import (
    SimulatedEvaluationResource,
    SimulatedFilterResource,
    SimulatedParserResource,
)
from cosmicman.resources.storage import ObjectStoreResource
from cosmicman.simulation.truth import store_truth
from cosmicman.simulation.world import SyntheticWorld

# the asset groups are the stages of the house (README, "The house, by stage"); parsing is not filtering,
# Daring's captions are built by cosmicman/datasets
GROUPS = {
    "raw_images": "sourcing",
    "fake_person_classifier": "filtering",
    "filtered_images": "filtering",
    "human_parsing": "parsing",
    "eval_set": "annotation",
    "base_annotator": "annotation",
    "labelling_tasks": "annotation",
    "human_labels": "annotation",
    "annotator": "annotation",
    "annotations": "annotation",
    "captions": "datasets",
    "cosmicman_hq": "datasets",
    "daring_unet": "training",
    "test_prompts": "evaluation",
    "evaluation": "evaluation",
    "base_model_evaluation": "evaluation",
    "ablation_table": "evaluation",
}
BATCH = "batch-00000"
CASES = ["kept"] * 8 + ["too_small", "fake_person", "low_quality", "no_person", "many_people", "small_face"]


# --- descriptions and groups ---------------------------------------------------------------------------------


def test_every_asset_check_job_and_sensor_is_described_and_every_asset_is_in_its_stage_group():
    from cosmicman.definitions import defs

    specs = {spec.key.to_user_string(): spec for spec in defs.resolve_all_asset_specs()}
    assert {k: s.group_name for k, s in specs.items()} == GROUPS
    undescribed = [k for k, s in specs.items() if not (s.description or "").strip()]
    graph = defs.resolve_asset_graph()
    checks = list(graph.asset_check_keys)
    assert checks, "the graph has asset checks"
    undescribed += [str(c) for c in checks if not (graph.get_check_spec(c).description or "").strip()]
    jobs = [j for j in defs.resolve_all_job_defs() if not j.name.startswith("__")]
    assert len(jobs) >= 12
    undescribed += [j.name for j in jobs if not (j.description or "").strip()]
    sensors = list(defs.sensors or [])
    assert len(sensors) >= 4
    undescribed += [s.name for s in sensors if not (s.description or "").strip()]
    assert not undescribed, f"no description: {undescribed}"


# --- the rounding rule ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0.8532149, 0.8532),  # an accuracy: 4 decimals
        (1 / 3, 0.3333),
        (0.012345678, 0.01235),  # a small loss: 4 significant digits
        (-0.00098765, -0.0009877),
        (12.3456, 12.35),
        (123.456, 123.5),  # seconds: 1 decimal
        (123456.789, 123457.0),  # never rounded into the integer part
        (9.99996, 10.0),
        (0.0, 0.0),
        (2.0, 2.0),
    ],
)
def test_rounded_keeps_four_significant_digits(value, expected):
    assert rounded(value) == expected


def test_rounded_edges():
    assert rounded(0.123456, significant=2) == 0.12
    assert math.isnan(rounded(float("nan"))) and rounded(float("inf")) == float("inf")
    assert rounded(-float("inf")) == -float("inf")
    assert rounded(rounded(0.987654321)) == rounded(0.987654321) == 0.9877  # idempotent


def test_tidy_rounds_inside_metadata_values_and_leaves_the_rest():
    tidied = tidy_metadata(
        {
            "acc": 0.123456789,
            "n": 7,
            "ok": True,
            "name": "0.123456789",
            "float": dg.MetadataValue.float(2 / 3),
            "json": dg.MetadataValue.json({"a": [1 / 7, {"b": 22 / 7}], "c": "x"}),
            "table": table([{"k": "a", "v": 1 / 9}]),
            "md": dg.MetadataValue.md("1/3 = 0.3333333"),
        }
    )
    assert tidied["acc"] == 0.1235 and tidied["n"] == 7 and tidied["ok"] is True and tidied["name"] == "0.123456789"
    assert tidied["float"] == dg.MetadataValue.float(0.6667)
    assert tidied["json"].data == {"a": [0.1429, {"b": 3.143}], "c": "x"}
    assert tidied["table"].records[0].data == {"k": "a", "v": 0.1111}
    assert tidied["md"].md_str == "1/3 = 0.3333333"
    assert tidy((0.11111, "a")) == [0.1111, "a"]


# --- tables and links ----------------------------------------------------------------------------------------


def test_table_types_its_columns_from_the_values_and_leaves_missing_cells_empty():
    t = table(
        [{"name": "a", "n": 1, "share": 0.5, "ok": True}, {"name": "b", "n": 2, "share": 1, "ok": None}],
        descriptions={"share": "of all"},
    )
    assert [(c.name, c.type) for c in t.schema.columns] == [
        ("name", "string"),
        ("n", "int"),
        ("share", "float"),
        ("ok", "bool"),
    ]
    assert t.schema.columns[2].description == "of all"
    assert [r.data for r in t.records] == [
        {"name": "a", "n": 1, "share": 0.5, "ok": True},
        {"name": "b", "n": 2, "share": 1, "ok": None},
    ]
    assert table([]).schema.columns == []


def test_counts_table_is_largest_first_with_shares():
    t = counts_table({"b": 1, "a": 3, "c": 1}, "reason")
    assert [r.data for r in t.records] == [
        {"reason": "a", "images": 3, "share": 0.6},
        {"reason": "b", "images": 1, "share": 0.2},
        {"reason": "c", "images": 1, "share": 0.2},
    ]
    assert counts_table({}, "reason").records == []


def test_local_locations_are_paths_without_file_scheme_and_web_ones_links():
    assert location("file:///tmp/store/x.parquet") == dg.MetadataValue.path("/tmp/store/x.parquet")
    assert location("s3://bucket/x") == dg.MetadataValue.path("s3://bucket/x")
    assert location("https://example.org/x") == dg.MetadataValue.url("https://example.org/x")


# --- charts ---------------------------------------------------------------------------------------------------


def test_bucket_means_thin_a_series_to_the_mean_of_each_bucket():
    assert bucket_means([1, 2, 3, 4, 5, 6], 3) == [1.5, 3.5, 5.5]
    assert bucket_means([1.0, 2.0], 5) == [1.0, 2.0]
    assert bucket_means(list(range(10)), 1) == [4.5]


def test_charts_fit_inline_and_a_chart_that_cannot_says_so():
    steps = [float(s) for s in range(1, 5001)]
    loss = line_chart(
        steps,
        {"loss": [1 / s for s in steps], "noise": [0.5 / s for s in steps], "hola": [0.1 + 0 * s for s in steps]},
        title="training loss",
        x_label="step",
    )
    assert len(loss.md_str) < INLINE_MARKDOWN_LIMIT and loss.md_str.count("polyline") == 3
    assert loss.md_str.startswith("![training loss](<data:image/svg+xml,")
    variants = {f"hola-variant-{i}": 0.5 + i / 100 for i in range(7)}
    bars = bar_chart(variants, title="acc_all", references=dict.fromkeys(variants, 0.8), reference_label="real")
    assert len(bars.md_str) < INLINE_MARKDOWN_LIMIT and "stroke='black'" in bars.md_str
    few = bar_chart({"acc_obj": 0.5, "acc_all": 0.25}, title="acc")
    assert ">0.5\\<" in few.md_str and ">0.25\\<" in few.md_str  # values written when they fit
    hist = histogram([i / 100 for i in range(100)], title="P(fake)", threshold=0.5)
    assert len(hist.md_str) < INLINE_MARKDOWN_LIMIT and "threshold 0.5" in hist.md_str and "(100 images)" in hist.md_str
    with pytest.raises(ChartTooLargeError, match="at most 1000"):
        svg_markdown("<text>" + "x" * INLINE_MARKDOWN_LIMIT + "</text>", 100, "big")
    with pytest.raises(ValueError, match="no finite value"):
        histogram([float("nan")], title="empty")


# --- the assets ------------------------------------------------------------------------------------------------


def _floats(value):
    """Every float inside a metadata value (plain, JSON, table records)."""
    if isinstance(value, dg.FloatMetadataValue):
        yield value.value
    elif isinstance(value, dg.JsonMetadataValue):
        yield from _floats(value.data)
    elif isinstance(value, dg.TableMetadataValue):
        for record in value.records:
            yield from _floats(dict(record.data))
    elif isinstance(value, float):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _floats(v)
    elif isinstance(value, list):
        for v in value:
            yield from _floats(v)


def _assert_ui_ready(asset: str, metadata: dict) -> None:
    for key, value in metadata.items():
        for f in _floats(value):
            assert not math.isfinite(f) or rounded(f) == f, f"{asset}.{key}: {f} is not rounded"
        if isinstance(value, dg.TableMetadataValue):
            names = [c.name for c in value.schema.columns]
            assert names, f"{asset}.{key}: a table without columns"
            for record in value.records:
                assert set(record.data) == set(names), f"{asset}.{key}: {set(record.data) ^ set(names)} off schema"
            typed = {c.name: c.type for c in value.schema.columns}
            for record in value.records:
                for name, cell in record.data.items():
                    if cell is None:
                        continue
                    expected = {bool: "bool", int: "int", float: "float", str: "string"}[type(cell)]
                    assert typed[name] == expected or (typed[name] == "float" and expected == "int"), (
                        f"{asset}.{key}.{name}: {cell!r} in a {typed[name]} column"
                    )
        if isinstance(value, dg.MarkdownMetadataValue) and "image/svg+xml" in value.md_str:
            assert len(value.md_str) < INLINE_MARKDOWN_LIMIT, f"{asset}.{key}: the chart would hide behind a button"
        if isinstance(value, dg.PathMetadataValue | dg.UrlMetadataValue):
            assert not str(value.value).startswith("file://"), f"{asset}.{key}: a file:// link does not open"


@pytest.fixture(scope="module")
def turned(tmp_path_factory):
    """The assets from fake-person head to dataset version over 14 renders and a labelling round; each
    asset's latest metadata by name."""
    store = Store(str(tmp_path_factory.mktemp("metadata") / "store"))
    resources = {
        "object_store": ObjectStoreResource(url=store.url),
        "filters": SimulatedFilterResource(fake_head_train_size=40),
        "parser": SimulatedParserResource(),
        "annotation": SimulatedAnnotatorResource(eval_size=12, pretrain_size=24, round_sample_size=6, max_rounds=1),
        "labelling": SimulatedLabellingResource(),
        "evaluation_config": SimulatedEvaluationResource(n_prompts=4),
    }
    world = SyntheticWorld(seed=11)
    samples = [world.sample(i, case) for i, case in enumerate(CASES)]
    puts = [store.put_blob(s.image_bytes, "jpg") for s in samples]
    store.write_table(
        table_key("raw_images", BATCH),
        pl.DataFrame(
            {
                "sha256": [p.sha256 for p in puts],
                "blob_key": [p.key for p in puts],
                "ext": ["jpg"] * len(puts),
                "source": ["synthetic"] * len(puts),
                "source_id": [f"s{i}" for i in range(len(puts))],
                "licence": ["cc0"] * len(puts),
            }
        ),
    )
    store_truth(BATCH, list(zip(samples, [p.sha256 for p in puts])), store)
    raw = dg.AssetSpec("raw_images", partitions_def=sourcing_batches)
    filtered = build_filtered_images()
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(sourcing_batches.name, [BATCH])
        instance.add_dynamic_partitions(annotation_rounds.name, ["round-001"])

        def run(assets, partition=None, selection=None):
            result = dg.materialize(
                assets, resources=resources, instance=instance, partition_key=partition, selection=selection
            )
            assert result.success

        run([fake_person_classifier, eval_set, base_annotator, test_prompts])
        run([raw, dg.AssetSpec("fake_person_classifier"), filtered], BATCH)
        run([dg.AssetSpec("filtered_images", partitions_def=sourcing_batches), human_parsing], BATCH)
        run([labelling_tasks, human_labels, annotator], "round-001")
        annotations = build_annotations()
        filtered_spec = dg.AssetSpec("filtered_images", partitions_def=sourcing_batches)
        run([filtered_spec, annotator, annotations, captions], BATCH, selection=[annotations, captions])
        batch_specs = [dg.AssetSpec(k, partitions_def=sourcing_batches) for k in ("human_parsing", "annotations")]
        run([filtered_spec, *batch_specs, captions, cosmicman_hq], selection=[cosmicman_hq])
        for variant, acc in (("baseline", 0.41234567), ("hola", 0.45678912)):
            shares = {"baseline": (0.15, 0.4), "hola": (0.25, 0.5)}[variant]
            by_group = dg.MetadataValue.table(
                [
                    dg.TableRecord({"group": g, "share_in_mask": v, "chance": c})
                    for g, v, c in (("hair", shares[0], 0.1), ("bottom", shares[1], 0.3))
                ],
                schema=dg.TableSchema(
                    columns=[
                        dg.TableColumn("group", "string"),
                        dg.TableColumn("share_in_mask", "float"),
                        dg.TableColumn("chance", "float"),
                    ]
                ),
            )
            instance.report_runless_asset_event(
                dg.AssetMaterialization(
                    "daring_unet",
                    partition=variant,
                    metadata={"loss_last": 0.123456789, "act_fn": "silu", "attention_in_mask_by_group": by_group},
                )
            )
            instance.report_runless_asset_event(
                dg.AssetMaterialization(
                    "evaluation",
                    partition=variant,
                    metadata={
                        "acc_obj": acc,
                        "acc_tex": acc,
                        "acc_shape": acc,
                        "acc_all": acc,
                        "frechet_distance": 12.3456789,
                        "kid": 0.01234567,
                        "clip_score": 21.2345678,
                        "hpsv2": 0.2012345,
                        "ceiling_acc_all": 0.8123456,
                    },
                )
            )
        run([ablation_table])
        latest = {}
        for key in instance.get_asset_keys():
            event = instance.get_latest_materialization_event(key)
            if event is not None and event.asset_materialization is not None:
                latest[key.to_user_string()] = dict(event.asset_materialization.metadata)
    return {"store": store, "latest": latest}


@pytest.mark.slow  # a whole local turn: metadata display, not a rule
def test_the_assets_report_native_tables_rounded_numbers_and_inline_charts(turned):
    latest = turned["latest"]
    made = set(GROUPS) - {"raw_images", "daring_unet", "evaluation", "base_model_evaluation"}
    assert made <= set(latest)
    for asset in made:
        _assert_ui_ready(asset, latest[asset])
    tables = {a: {k for k, v in m.items() if isinstance(v, dg.TableMetadataValue)} for a, m in latest.items()}
    assert {"held_out_accuracy"} <= tables["fake_person_classifier"]
    assert {"decision_counts", "thresholds"} <= tables["filtered_images"]
    assert {"accuracy_by_tag", "weakest_categories", "rounds"} <= tables["annotator"]
    assert {"statistics", "sources", "caption_groups", "changes"} - {"changes"} <= tables["cosmicman_hq"]
    assert {"examples"} <= tables["captions"] and {"table"} <= tables["ablation_table"]
    assert {"first_prompts"} <= tables["test_prompts"]


@pytest.mark.slow  # a whole local turn: metadata display, not a rule
def test_filtered_images_counts_every_decision_and_draws_its_scores(turned):
    meta = turned["latest"]["filtered_images"]
    counts = {r.data["decision"]: r.data["images"] for r in meta["decision_counts"].records}
    assert sum(counts.values()) == meta["raw"].value == len(CASES) and counts["kept"] == meta["kept"].value
    assert meta["decisions"].data == counts  # the dict the CLI summary adds up
    fake = meta["fake_score_histogram"].md_str
    assert f"({len(CASES) - 1} images)" in fake  # every decodable image reached the fake-person filter
    assert "threshold" in fake and "data:image/jpeg;base64" in meta["kept_sample"].md_str


@pytest.mark.slow  # a whole local turn: metadata display, not a rule
def test_a_round_shows_accuracy_per_tag_and_its_weakest_categories_not_all_seventy(turned):
    meta = turned["latest"]["annotator"]
    by_tag = meta["accuracy_by_tag"]
    measured = RoundLedger(turned["store"]).plan(1).accuracy_before
    assert sum(r.data["categories"] for r in by_tag.records) == len(measured) > 60
    assert {r.data["tag"] for r in by_tag.records} <= {"obj", "tex", "shape", "global"} and len(by_tag.records) >= 3
    weakest = [r.data for r in meta["weakest_categories"].records]
    assert len(weakest) == 15 and weakest == sorted(weakest, key=lambda r: (r["after"], r["category"]))
    assert [r.data["round"] for r in meta["rounds"].records] == [0, 1]
    assert len(meta["accuracy_curve"].md_str) < INLINE_MARKDOWN_LIMIT
    ledger = RoundLedger(turned["store"])
    assert meta["rounds"].records[1].data["mean_accuracy"] == rounded(ledger.curve()[1]["mean_accuracy"])


@pytest.mark.slow  # a whole local turn: metadata display, not a rule
def test_the_ablation_table_puts_variants_side_by_side_against_the_real_image_ceiling(turned):
    meta = turned["latest"]["ablation_table"]
    rows = [r.data for r in meta["table"].records]
    assert [r["variant"] for r in rows] == ["baseline", "hola"]
    assert rows[0]["acc_all"] == 0.4123 and rows[1]["acc_obj"] == 0.4568
    other = [r.data for r in meta["fidelity_and_training"].records]
    assert other[1] == {
        "variant": "hola",
        "fd": 12.35,
        "fd_sd": None,
        "kid": 0.01235,
        "clip_score": 21.23,
        "hpsv2": 0.2012,
        "loss_last": 0.1235,
        "attn_in_mask": None,
        "attn_in_mask_sd": None,
    }
    assert meta["variants"].value == 2
    # materializations from before replicates: one seed each, no spread, no base row until it is evaluated
    assert [r["seeds"] for r in rows] == [1, 1] and rows[0]["acc_all_sd"] is None
    assert meta["base_model"].value.startswith("not evaluated yet")
    # per caption group: chance beside each variant's share in the mask
    groups = [r.data for r in meta["attention_in_mask_by_group"].records]
    assert groups == [
        {"group": "bottom", "chance": 0.3, "baseline": 0.4, "hola": 0.5},
        {"group": "hair", "chance": 0.1, "baseline": 0.15, "hola": 0.25},
    ]
    chart = meta["acc_all_chart"].md_str
    assert "real images" in chart and chart.count("v16") == 2  # one ceiling tick per variant


def test_a_training_run_shows_its_loss_curve_and_attention_per_group(tmp_path):
    store = Store(str(tmp_path / "store"))
    assert _run_charts(store, "v0001-abc")["loss_curve"].text.startswith("no loss curve: the trainer published no")
    history = [{"step": s, "loss": 1 / s, "noise": 0.9 / s, "hola": 0.1 / s} for s in range(1, 201)]
    alignment = {"groups": {"hair": 0.3, "person": 0.6}, "chance_groups": {"hair": 0.1, "person": 0.4}}
    store.write_json(
        training_run_key("v0001-abc"), {"loss_history": history, "metrics": {"attention_alignment": alignment}}
    )
    charts = _run_charts(store, "v0001-abc")
    curve = charts["loss_curve"].md_str
    assert len(curve) < INLINE_MARKDOWN_LIMIT and curve.count("polyline") == 3 and "step 200" in curve
    assert [r.data for r in charts["attention_in_mask_by_group"].records] == [
        {"group": "hair", "share_in_mask": 0.3, "chance": 0.1},
        {"group": "person", "share_in_mask": 0.6, "chance": 0.4},
    ]
    _assert_ui_ready("daring_unet", charts)
