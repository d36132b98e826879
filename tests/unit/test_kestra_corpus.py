"""Kestra flows validate unchanged: the corpus in ``tests/kestra_flows/``.

Each file is a Kestra-style flow with the shape (types, properties, expressions) of a public
Kestra example that uses the Kafka plugin (its source is named at the top of the file). The
files that must validate are listed in :data:`PASSING`; each of the others names the first
problem that keeps it from validating (a gap of waxflow's, or a plugin outside its scope), so
closing a gap fails this test until the file moves to :data:`PASSING`.

Before the Kestra aliases (issue 13) none of the 22 files validated; 11 after them; 16 with
``inputs``/``variables``/``pluginDefaults``/``concurrency``, the serdes file tasks, Consume's
AVRO, ``core.Subflow`` and the JSONata tasks; 19 with ``kafka.Trigger`` in a share group and
``ForEachItem``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from waxflow.dataflows.spec import parse_flow
from waxflow.errors import FlowError

CORPUS = Path(__file__).resolve().parents[1] / "kestra_flows"
WAXFLOW = str(Path(sys.executable).with_name("waxflow"))

PASSING = {
    "01_howto_realtime_log.yaml",
    "02_plugin_realtime_avro.yaml",
    "04_plugin_realtime_share.yaml",
    "05_plugin_trigger_avro.yaml",
    "06_plugin_trigger_share.yaml",
    "07_docs_trigger_five_records.yaml",
    "08_plugin_consume_avro_registry.yaml",
    "09_plugin_consume_avro.yaml",
    "10_plugin_consume_ssl.yaml",
    "11_plugin_consume_to_jsonl.yaml",
    "12_plugin_produce_string.yaml",
    "14_blog_realtime_subflow.yaml",
    "15_blog_polling_foreachitem.yaml",
    "16_blog_schedule_http_produce.yaml",
    "17_docs_benchmark_transform.yaml",
    "18_blueprint_realtime_per_record.yaml",
    "19_blueprint_kafka_to_bigquery.yaml",
    "20_blueprint_api_to_kafka.yaml",
    "21_realtime_alert_slack.yaml",
}
#: file -> text of the problem expected to keep it from validating
FAILING = {
    # no MongoDB server here to build and test such a task against
    "03_plugin_realtime_mongodb.yaml": "unknown type 'io.kestra.plugin.mongodb.InsertOne': ",
    # JavaScript: waxflow runs no JS engine (core.Python is its scripting task)
    "13_plugin_produce_csv_avro.yaml":
        "unknown type 'io.kestra.plugin.graalvm.js.FileTransform': ",
    # AWS Glue needs AWS: the error says what waxflow reads AVRO through instead
    "22_consume_glue_foreach.yaml":
        "the AWS Glue schema registry is not supported: waxflow reads AVRO through a "
        "Confluent-compatible registry",
}
FILES = sorted(p.name for p in CORPUS.glob("*.yaml"))


def test_the_corpus_is_the_listed_files() -> None:
    assert set(FILES) == PASSING | set(FAILING)
    assert not PASSING & set(FAILING)
    for name in FILES:  # every fixture says where its shape comes from
        assert (CORPUS / name).read_text(encoding="utf-8").startswith("# Kestra-style flow")


@pytest.mark.parametrize("name", sorted(PASSING))
def test_validates_unchanged(name: str) -> None:
    parse_flow(CORPUS / name)


@pytest.mark.parametrize("name", sorted(FAILING))
def test_known_gap(name: str) -> None:
    with pytest.raises(FlowError) as err:
        parse_flow(CORPUS / name)
    assert FAILING[name] in str(err.value)


def test_waxflow_validate_on_the_corpus() -> None:
    """The CLI itself, once (the others are the same check in process)."""
    res = subprocess.run([WAXFLOW, "validate", str(CORPUS / "02_plugin_realtime_avro.yaml")],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "valid flow company.team.realtime_avro (kafka.RealtimeTrigger, 1 tasks)" in res.stdout
