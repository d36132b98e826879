"""Kestra flows validate unchanged: the corpus in ``tests/kestra_flows/``.

Each file is a Kestra-style flow with the shape (types, properties, expressions) of a public
Kestra example that uses the Kafka plugin (its source is named at the top of the file). The
files that must validate are listed in :data:`PASSING`: since the MongoDB tasks, all of them
(earlier a ``FAILING`` table named, for each other file, the problem that kept it from
validating).

Before the Kestra aliases (issue 13) none of the 22 files validated; 11 after them; 16 with
``inputs``/``variables``/``pluginDefaults``/``concurrency``, the serdes file tasks, Consume's
AVRO, ``core.Subflow`` and the JSONata tasks; 19 with ``kafka.Trigger`` in a share group and
``ForEachItem``; 20 with the JavaScript ``FileTransform`` (V8 through mini-racer); 21 with
the AWS Glue schema registry; 22 with the MongoDB tasks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from waxflow.dataflows.spec import parse_flow

CORPUS = Path(__file__).resolve().parents[1] / "kestra_flows"
WAXFLOW = str(Path(sys.executable).with_name("waxflow"))

PASSING = {
    "01_howto_realtime_log.yaml",
    "02_plugin_realtime_avro.yaml",
    "03_plugin_realtime_mongodb.yaml",
    "04_plugin_realtime_share.yaml",
    "05_plugin_trigger_avro.yaml",
    "06_plugin_trigger_share.yaml",
    "07_docs_trigger_five_records.yaml",
    "08_plugin_consume_avro_registry.yaml",
    "09_plugin_consume_avro.yaml",
    "10_plugin_consume_ssl.yaml",
    "11_plugin_consume_to_jsonl.yaml",
    "12_plugin_produce_string.yaml",
    "13_plugin_produce_csv_avro.yaml",
    "14_blog_realtime_subflow.yaml",
    "15_blog_polling_foreachitem.yaml",
    "16_blog_schedule_http_produce.yaml",
    "17_docs_benchmark_transform.yaml",
    "18_blueprint_realtime_per_record.yaml",
    "19_blueprint_kafka_to_bigquery.yaml",
    "20_blueprint_api_to_kafka.yaml",
    "21_realtime_alert_slack.yaml",
    "22_consume_glue_foreach.yaml",
}
FILES = sorted(p.name for p in CORPUS.glob("*.yaml"))


def test_the_corpus_is_the_listed_files() -> None:
    assert set(FILES) == PASSING
    for name in FILES:  # every fixture says where its shape comes from
        assert (CORPUS / name).read_text(encoding="utf-8").startswith("# Kestra-style flow")


@pytest.mark.parametrize("name", sorted(PASSING))
def test_validates_unchanged(name: str) -> None:
    parse_flow(CORPUS / name)


def test_waxflow_validate_on_the_corpus() -> None:
    """The CLI itself, once (the others are the same check in process)."""
    res = subprocess.run([WAXFLOW, "validate", str(CORPUS / "02_plugin_realtime_avro.yaml")],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "valid flow company.team.realtime_avro (kafka.RealtimeTrigger, 1 tasks)" in res.stdout


def test_13_dry_run_with_a_file_input(tmp_path: Path) -> None:
    """``waxflow test --input file=...`` on 13: the FILE input, CsvToIon, the JavaScript
    FileTransform and the AVRO Produce (the client's in-process registry, ``mock://``), the
    records captured, not sent."""
    csv_file = tmp_path / "posts.csv"
    csv_file.write_text('id,name,text,timestamp\n1,ann,hello,2026-01-02T03:04:05Z\n'
                        '2,bo,"hi, there",2026-01-02T03:04:06Z\n', encoding="utf-8")
    flow = tmp_path / "13.yaml"
    flow.write_text((CORPUS / "13_plugin_produce_csv_avro.yaml").read_text(encoding="utf-8")
                    .replace("http://localhost:8085", "mock://kestra-13"), encoding="utf-8")
    res = subprocess.run([WAXFLOW, "test", str(flow), "--input", f"file={csv_file}",
                          "--outputs", str(tmp_path / "out")], capture_output=True, text=True,
                         timeout=120, env={**os.environ,
                                           "WAXFLOW_STORAGE": str(tmp_path / "storage")})
    assert res.returncode == 0, res.stderr[-2000:]
    lines = (tmp_path / "out" / "posts.jsonl").read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines]
    assert [(r["key"], r["timestamp"], r["headers"]["source"]) for r in records] == [
        ("1", 1767323045000, "csv"), ("2", 1767323046000, "csv")]
    # Confluent framing (magic byte, schema id), then the AVRO strings of name and text
    assert [r["value"][5:] for r in records] == ["\x06ann\nhello", "\x04bo\x12hi, there"]
