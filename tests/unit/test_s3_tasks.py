"""s3.Upload against a real S3 API (moto's server on a loopback port), read back with boto3."""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pyarrow.parquet as pq
import pytest

import waxflow.connectors.s3  # noqa: F401  (registers s3.*)
from tests.moto_server import moto_endpoint
from tests.task_helpers import FakeContext, parse_task
from waxflow.connectors.storage import Storage, read_records
from waxflow.tasks import TaskFailure

ACCESS, SECRET = "test-access-key", "test-secret-value-123"


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """A real moto S3 server on a free loopback port, stopped after the module."""
    with moto_endpoint() as endpoint:
        yield endpoint


@pytest.fixture
def client(s3_endpoint: str) -> Any:
    return boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1",
                        aws_access_key_id=ACCESS, aws_secret_access_key=SECRET)


@pytest.fixture
def bucket(client: Any) -> str:
    name = f"b-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=name)
    return name


RECORDS = [{"key": f"k{i}", "value": {"id": i, "amount": i * 1.5}, "topic": "events",
            "partition": 0, "offset": 100 + i, "timestamp": 1_700_000_000_000 + i,
            "headers": {"h": "v"}} for i in range(10)]


@pytest.fixture
def stored(tmp_path: Path) -> str:
    uri, _ = Storage(str(tmp_path / "storage")).put_records("exec-1.ion", RECORDS)
    return uri


def upload(endpoint: str, bucket: str, source: str, **props: Any) -> dict[str, Any]:
    task = parse_task({"id": "up", "type": "s3.Upload", "bucket": bucket,
                       "key": "{{ flow.id }}/{{ execution.id }}.data", "from": source,
                       "endpointUrl": endpoint, "accessKeyId": "{{ creds.id }}",
                       "secretKeyId": "{{ creds.secret }}", **props})
    ctx = FakeContext({"flow": {"id": "bridge"}, "execution": {"id": "e1"},
                       "creds": {"id": ACCESS, "secret": SECRET}})
    out: dict[str, Any] = task.run(ctx)
    return out


def body(client: Any, bucket: str, key: str) -> bytes:
    data: bytes = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    return data


def test_upload_ion_as_stored(s3_endpoint: str, client: Any, bucket: str, stored: str) -> None:
    out = upload(s3_endpoint, bucket, stored)
    local = Path(stored.removeprefix("file://")).read_bytes()
    assert out == {"uri": f"s3://{bucket}/bridge/e1.data", "bucket": bucket,
                   "key": "bridge/e1.data", "bytes": len(local), "rejected": 0,
                   "rejectsUri": None}
    assert body(client, bucket, "bridge/e1.data") == local
    head = client.head_object(Bucket=bucket, Key="bridge/e1.data")
    assert head["ContentType"] == "application/x-amzn-ion"


def test_upload_parquet(s3_endpoint: str, client: Any, bucket: str, stored: str) -> None:
    out = upload(s3_endpoint, bucket, stored, format="PARQUET", key="events/e1.parquet")
    data = body(client, bucket, "events/e1.parquet")
    assert out["bytes"] == len(data)
    table = pq.read_table(io.BytesIO(data))
    assert table.to_pylist() == [
        {"id": r["value"]["id"], "amount": r["value"]["amount"], "_topic": "events",
         "_partition": 0, "_offset": r["offset"], "_timestamp": r["timestamp"],
         "_key": r["key"]} for r in RECORDS]


MIXED = [{**r, "value": [1, 2] if i in (2, 5) else ("text" if i == 7 else r["value"])}
         for i, r in enumerate(RECORDS)]


def test_parquet_sets_aside_values_that_are_not_objects(
        s3_endpoint: str, client: Any, bucket: str, tmp_path: Path) -> None:
    uri, _ = Storage(str(tmp_path / "storage")).put_records("exec-9.ion", MIXED)
    out = upload(s3_endpoint, bucket, uri, format="PARQUET", key="m.parquet")
    table = pq.read_table(io.BytesIO(body(client, bucket, "m.parquet")))
    assert table.column("_offset").to_pylist() == [100, 101, 103, 104, 106, 108, 109]
    assert out["rejected"] == 3
    assert out["rejectsUri"] == uri.removesuffix(".ion") + ".up.rejects.ion"
    rejects = list(read_records(out["rejectsUri"]))
    assert [(r["offset"], r["value"]) for r in rejects] == [
        (102, [1, 2]), (105, [1, 2]), (107, "text")]
    with pytest.raises(TaskFailure, match=r"3 of 10 records do not fit .*onReject is FAIL"):
        upload(s3_endpoint, bucket, uri, format="PARQUET", key="f.parquet", onReject="FAIL")
    assert "Contents" not in client.list_objects_v2(Bucket=bucket, Prefix="f.parquet")
    # NDJSON rows need no common type: every record is uploaded
    out = upload(s3_endpoint, bucket, uri, format="NDJSON", key="m.ndjson")
    assert out["rejected"] == 0
    assert len(body(client, bucket, "m.ndjson").decode().splitlines()) == 10


def test_rejects_of_a_batch_in_s3_storage_are_stored_next_to_it(
        s3_endpoint: str, client: Any, bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WAXFLOW_S3_ENDPOINT", s3_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    uri, _ = Storage(f"s3://{bucket}/internal").put_records("exec-4.ion", MIXED)
    out = upload(s3_endpoint, bucket, uri, format="PARQUET", key="m.parquet")
    assert out["rejectsUri"] == f"s3://{bucket}/internal/exec-4.up.rejects.ion"
    assert [r["offset"] for r in read_records(out["rejectsUri"])] == [102, 105, 107]
    assert pq.read_table(io.BytesIO(body(client, bucket, "m.parquet"))).num_rows == 7


def test_upload_ndjson(s3_endpoint: str, client: Any, bucket: str, stored: str) -> None:
    upload(s3_endpoint, bucket, stored, format="NDJSON", key="events/e1.ndjson")
    lines = body(client, bucket, "events/e1.ndjson").decode().splitlines()
    assert [json.loads(line) for line in lines] == [
        {"id": r["value"]["id"], "amount": r["value"]["amount"], "_topic": "events",
         "_partition": 0, "_offset": r["offset"], "_timestamp": r["timestamp"],
         "_key": r["key"]} for r in RECORDS]


def test_same_key_twice_overwrites(s3_endpoint: str, client: Any, bucket: str,
                                   tmp_path: Path) -> None:
    store = Storage(str(tmp_path / "storage"))
    first, _ = store.put_records("a.ion", RECORDS[:3])
    second, _ = store.put_records("b.ion", RECORDS[3:])
    upload(s3_endpoint, bucket, first, format="NDJSON", key="events/same.ndjson")
    upload(s3_endpoint, bucket, second, format="NDJSON", key="events/same.ndjson")
    listed = client.list_objects_v2(Bucket=bucket)["Contents"]
    assert [o["Key"] for o in listed] == ["events/same.ndjson"]
    lines = body(client, bucket, "events/same.ndjson").decode().splitlines()
    assert [json.loads(line)["_offset"] for line in lines] == [103 + i for i in range(7)]


def test_upload_a_local_path_and_from_s3_storage(s3_endpoint: str, client: Any, bucket: str,
                                                 tmp_path: Path, stored: str,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    plain = tmp_path / "report.csv"
    plain.write_text("a,b\n1,2\n")
    out = upload(s3_endpoint, bucket, str(plain), key="r.csv", contentType="text/csv")
    assert body(client, bucket, "r.csv") == b"a,b\n1,2\n" and out["bytes"] == 8
    assert client.head_object(Bucket=bucket, Key="r.csv")["ContentType"] == "text/csv"
    # a batch file kept in S3 internal storage is converted after download
    monkeypatch.setenv("WAXFLOW_S3_ENDPOINT", s3_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    s3_uri, _ = Storage(f"s3://{bucket}/internal").put_records("exec-2.ion", RECORDS)
    task = parse_task({"id": "up", "type": "s3.Upload", "bucket": bucket, "key": "p.parquet",
                       "from": s3_uri, "format": "PARQUET"})  # endpoint and creds from env
    task.run(FakeContext())
    assert pq.read_table(io.BytesIO(body(client, bucket, "p.parquet"))).num_rows == 10


def test_missing_bucket_fails_without_leaking_credentials(s3_endpoint: str,
                                                          stored: str) -> None:
    with pytest.raises(TaskFailure) as info:
        upload(s3_endpoint, "no-such-bucket", stored)
    message = str(info.value)
    assert message.startswith("s3.Upload up: cannot upload to s3://no-such-bucket/bridge/e1.data")
    assert "NoSuchBucket" in message
    assert SECRET not in message


def test_missing_source_fails(s3_endpoint: str, bucket: str, tmp_path: Path) -> None:
    with pytest.raises(TaskFailure, match=r"does not exist"):
        upload(s3_endpoint, bucket, (tmp_path / "gone.ion").as_uri(), format="PARQUET")


def test_only_one_credential_is_rejected(s3_endpoint: str, bucket: str, stored: str) -> None:
    task = parse_task({"id": "up", "type": "s3.Upload", "bucket": bucket, "key": "k",
                       "from": stored, "endpointUrl": s3_endpoint, "accessKeyId": ACCESS})
    with pytest.raises(TaskFailure, match="both"):
        task.run(FakeContext())


def test_bulk_batch_in_s3_internal_storage_reads_back(
        s3_endpoint: str, bucket: str, monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    import tempfile

    from waxflow.connectors import jsonbatch
    from waxflow.connectors.storage import StorageError, read_bytes, read_records
    from waxflow.connectors.tabular import to_table

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))

    monkeypatch.setenv("WAXFLOW_S3_ENDPOINT", s3_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    raws = [("events", 0, 100 + i, f"k{i}".encode(), json.dumps(r["value"]).encode(),
             1_700_000_000_000 + i, ()) for i, r in enumerate(RECORDS)]
    batch = jsonbatch.encode(raws)
    assert batch is not None
    uri = Storage(f"s3://{bucket}/internal").put_data("exec-3.ion", batch.data, batch.table)
    assert uri == f"s3://{bucket}/internal/exec-3.ion"
    assert [r["value"] for r in read_records(uri)] == [r["value"] for r in RECORDS]
    assert to_table(uri).equals(batch.table)
    assert read_bytes(uri) == batch.data
    # reads from S3 go through memory: a long-running job leaves no download behind
    assert list(scratch.iterdir()) == []
    with pytest.raises(StorageError, match=f"cannot read s3://{bucket}/internal/gone.ion"):
        read_bytes(f"s3://{bucket}/internal/gone.ion")
