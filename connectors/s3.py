"""S3: the ``s3.Upload`` task (any S3-compatible endpoint; moto in tests).

Clients are created once per process and option set (endpoint, region, credentials) and
shared by task runs (boto3 clients are thread-safe; sessions are not, so each client comes
from its own session). Credentials are ``accessKeyId``/``secretKeyId`` (and
``sessionToken``), rendered so they may come from ``secret()``, else boto3's default chain
(environment, shared files, instance role). Error messages never contain credentials.
"""

from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field

from waxflow.connectors.storage import StorageError, local_path
from waxflow.connectors.tabular import (
    OnReject,
    Split,
    on_reject_doc,
    settle_rejects,
    split_table,
    to_ndjson,
)
from waxflow.expressions import mask
from waxflow.tasks import RunContext, TaskBase, TaskFailure, task_type

__all__ = ["Upload", "s3_client"]

_CONTENT_TYPES = {"ION": "application/x-amzn-ion", "PARQUET": "application/vnd.apache.parquet",
                  "NDJSON": "application/x-ndjson"}
_CLIENTS: dict[tuple[Any, ...], Any] = {}
_CLIENTS_LOCK = threading.Lock()


def s3_client(*, endpoint: str | None, region: str | None, access_key: str | None,
              secret_key: str | None, session_token: str | None = None) -> Any:
    """The process's shared boto3 S3 client for these options."""
    key = (os.getpid(), endpoint, region, access_key, secret_key, session_token)
    with _CLIENTS_LOCK:
        client = _CLIENTS.get(key)
        if client is None:
            import boto3

            session = boto3.session.Session()
            client = session.client(
                "s3", endpoint_url=endpoint, region_name=region, aws_access_key_id=access_key,
                aws_secret_access_key=secret_key, aws_session_token=session_token)
            _CLIENTS[key] = client
        return client


@task_type("s3.Upload")
class Upload(TaskBase):
    """Upload a file to ``s3://bucket/key`` (both rendered).

    ``from`` is an internal-storage URI (``file://`` or ``s3://``) or a local path.
    ``format``: ``ION`` uploads the file as it is stored; ``PARQUET`` and ``NDJSON`` convert a
    stored batch file (``waxflow.connectors.tabular``: one row per record with the ``_topic``,
    ``_partition``, ``_offset``, ``_timestamp``, ``_key`` columns) before uploading.
    ``PARQUET`` is one table: records that do not fit it (a value that is not a JSON object
    among objects, a field whose type differs from most records') are set aside as
    ``onReject`` says — by default stored next to the source file while the others are
    uploaded; ``NDJSON`` rows need no common type, so every record is uploaded.

    Guarantees: the source file is only read, so a retry re-reads it; an upload replaces any
    object at the same key, so with a deterministic key (``{{ flow.id }}/{{ execution.id
    }}.parquet``) a replayed batch overwrites its object instead of adding one. The object
    appears whole or not at all (S3 PUT and multipart completion are atomic). Outputs
    ``uri`` (``s3://bucket/key``), ``bucket``, ``key``, ``bytes`` (object size),
    ``rejected`` (records set aside; 0 but for ``PARQUET``) and ``rejectsUri`` (their file,
    or null).
    """

    type: Literal["s3.Upload"] = Field(description="the task type")
    bucket: str = Field(min_length=1, description="bucket to upload to (rendered)")
    key: str = Field(
        min_length=1,
        description="object key (rendered; a leading `/` is dropped); an existing object at "
                    "the key is replaced")
    from_: str = Field(
        alias="from",
        description="file to upload (rendered): an internal-storage URI (`file://`, `s3://`) "
                    "or a local path, usually `{{ trigger.uri }}`")
    format: Literal["ION", "PARQUET", "NDJSON"] = Field(
        default="ION",
        description="`ION` uploads the file as stored; `PARQUET` and `NDJSON` convert a "
                    "stored batch file to one row per record first")
    onReject: OnReject = Field(
        default="REJECTS_FILE",
        description="`format: PARQUET` only: " + on_reject_doc(
            table="the Parquet file's table", load="upload", source="the source file"))
    contentType: str | None = Field(
        default=None,
        description="`Content-Type` of the object (rendered); default the format's type, such "
                    "as `application/vnd.apache.parquet`")
    endpointUrl: str | None = Field(
        default=None,
        description="S3-compatible endpoint (rendered); default `$WAXFLOW_S3_ENDPOINT`, else "
                    "AWS")
    region: str | None = Field(
        default=None,
        description="region (rendered); default boto3's (`us-east-1` with a custom endpoint "
                    "and no `$AWS_DEFAULT_REGION`)")
    accessKeyId: str | None = Field(
        default=None,
        description="access key id (rendered; set with `secretKeyId`); default boto3's "
                    "credential chain")
    secretKeyId: str | None = Field(
        default=None,
        description="secret access key (rendered), masked in error messages; a secret: write "
                    "`{{ secret('NAME') }}`")
    sessionToken: str | None = Field(
        default=None,
        description="session token of temporary credentials (rendered); masked in error "
                    "messages")

    model_config = {**TaskBase.model_config, "populate_by_name": True}

    def _render(self, ctx: RunContext, value: str | None) -> str | None:
        return str(ctx.render(value)) if value else None

    def run(self, ctx: RunContext) -> dict[str, Any] | None:
        who = f"s3.Upload {self.id}"
        bucket = str(ctx.render(self.bucket))
        key = str(ctx.render(self.key)).lstrip("/")
        source = str(ctx.render(self.from_))
        if not key:
            raise TaskFailure(f"{who}: `key` rendered empty")
        endpoint = self._render(ctx, self.endpointUrl) or os.environ.get("WAXFLOW_S3_ENDPOINT")
        region = self._render(ctx, self.region)
        if region is None and endpoint and not os.environ.get("AWS_DEFAULT_REGION"):
            region = "us-east-1"  # S3-compatible servers need one; AWS's own default
        access = self._render(ctx, self.accessKeyId)
        secret = self._render(ctx, self.secretKeyId)
        token = self._render(ctx, self.sessionToken)
        if (access is None) != (secret is None):
            raise TaskFailure(f"{who}: set both `accessKeyId` and `secretKeyId`, or neither")
        uri = f"s3://{bucket}/{key}"
        content_type = self._render(ctx, self.contentType) or _CONTENT_TYPES[self.format]
        with tempfile.TemporaryDirectory(prefix="waxflow-s3-") as tmp:
            path, split, stored = self._prepare(who, source, Path(tmp))
            rejects = settle_rejects(ctx, split, who=who, uri=source, task_id=self.id,
                                     on_reject=self.onReject, source=stored)
            if self.format == "PARQUET":
                path = self._write_parquet(who, source, split, path)
            size = path.stat().st_size
            try:
                client = s3_client(endpoint=endpoint, region=region, access_key=access,
                                   secret_key=secret, session_token=token)
                client.upload_file(str(path), bucket, key,
                                   ExtraArgs={"ContentType": content_type})
            except Exception as exc:
                detail = mask(f"{type(exc).__name__}: {exc}", (access, secret, token))
                raise TaskFailure(f"{who}: cannot upload to {uri}: {detail}") from None
        ctx.log("INFO", f"uploaded {size} bytes to {uri}")
        return {"uri": uri, "bucket": bucket, "key": key, "bytes": size, **rejects}

    def _prepare(self, who: str, source: str, tmp: Path) -> tuple[Path, Split, str]:
        """(the local file to upload — the source itself, its NDJSON conversion in ``tmp``,
        or for PARQUET where to write it —, the batch as a table when PARQUET (else an empty
        split), the URI of the local copy of the source)."""
        try:
            path = local_path(source, tmp)
            stored = path.as_uri() if urlparse(source).scheme == "s3" else source
            dest = tmp / f".waxflow-upload.{self.format.lower()}"
            if self.format == "PARQUET":
                return dest, split_table(stored), stored
            if self.format == "NDJSON":
                path = to_ndjson(stored, dest)
            return path, Split(pa.table({})), stored
        except StorageError as exc:
            raise TaskFailure(f"{who}: {exc}") from None
        except Exception as exc:  # a file that is not a batch file, or does not fit a table
            raise TaskFailure(f"{who}: cannot convert {source} to {self.format}: "
                              f"{type(exc).__name__}: {exc}") from None

    def _write_parquet(self, who: str, source: str, split: Split, dest: Path) -> Path:
        try:
            pq.write_table(split.table, dest)
        except Exception as exc:
            raise TaskFailure(f"{who}: cannot convert {source} to {self.format}: "
                              f"{type(exc).__name__}: {exc}") from None
        return dest
