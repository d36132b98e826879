"""Internal storage: batch files of Kafka records as ION, on a local directory or S3.

A batch file is an ION stream with one entry per record: ``{key, value, topic, partition,
offset, timestamp, headers}``, either binary ION (:meth:`Storage.put_records`) or Ion text
that is JSON, one record per line (:meth:`Storage.put_data`, from ``waxflow.connectors.jsonbatch``);
:func:`read_records` reads both. Names are deterministic (derived from the execution id by the
caller), so a replayed batch overwrites its file instead of adding a second one. Writes are
atomic on the local store (write to a temp file, then rename): a reader never sees half a
file. Location: ``$WAXFLOW_STORAGE`` — a directory path or ``file://`` URI (default
``.waxflow/storage``), or ``s3://bucket/prefix`` (boto3; ``$WAXFLOW_S3_ENDPOINT`` for a local
S3 such as moto). Every failure to write or read a batch file, creating its directory included,
raises :class:`StorageError` naming the file, the OS error and where the storage location came
from (e.g. ``cannot write internal storage file /x/y.ion: [Errno 13] Permission denied (internal
storage $WAXFLOW_STORAGE=/x)``): a job that cannot store its batches stops with that one line.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import urlparse

from waxflow.errors import WaxflowError

if TYPE_CHECKING:  # annotations only: a realtime run need not import pyarrow (~0.15 s CPU)
    import pyarrow as pa

ION_BVM = b"\xe0\x01\x00\xea"  # binary ION version marker: the first bytes of a binary file


class StorageError(WaxflowError, RuntimeError):
    """A batch file could not be written or read; the message names the URI."""


def _reason(exc: OSError) -> str:
    """``[Errno 20] Not a directory: '/x'`` (the OS error, with the path it is about)."""
    if exc.errno is None:
        return str(exc) or type(exc).__name__
    text = f"[Errno {exc.errno}] {exc.strerror}"
    return f"{text}: {str(exc.filename)!r}" if exc.filename else text


def _s3_client() -> Any:
    import boto3

    endpoint = os.environ.get("WAXFLOW_S3_ENDPOINT")
    return boto3.client("s3", endpoint_url=endpoint) if endpoint else boto3.client("s3")


class Storage:
    """Where batch files live; ``put_records`` returns the file's URI."""

    def __init__(self, base: str | None = None) -> None:
        env = os.environ.get("WAXFLOW_STORAGE")
        if base:
            self.origin = base
        elif env:
            base, self.origin = env, f"$WAXFLOW_STORAGE={env}"
        else:
            base = ".waxflow/storage"
            self.origin = f"{base}, the default; set $WAXFLOW_STORAGE to move it"
        self.base = base.rstrip("/") or "/"

    def _fail(self, what: str, target: object, exc: OSError) -> StorageError:
        return StorageError(f"cannot {what} {target}: {_reason(exc)} "
                            f"(internal storage {self.origin})")

    def _is_s3(self) -> bool:
        return self.base.startswith("s3://")

    def uri_for(self, name: str) -> str:
        if self._is_s3():
            return f"{self.base}/{name}"
        root = Path(self.base.removeprefix("file://")).resolve()
        return (root / name).as_uri()

    def put_records(self, name: str, records: Iterable[dict[str, Any]]) -> tuple[str, int]:
        """Store records as one binary ION file named ``name``; return (URI, count)."""
        from waxflow.connectors.ion import write_stream  # (amazon.ion: on first use)

        items = list(records)
        uri = self._put(name, lambda fp: write_stream(fp, items))
        if not self._is_s3():
            _remember(Path(urlparse(uri).path), items, None)
        return uri, len(items)

    def put_data(self, name: str, data: bytes, table: pa.Table | None = None) -> str:
        """Store an already encoded batch file named ``name``; return its URI. ``table``
        (its rows, ``waxflow.connectors.tabular``'s shape) is kept for this process's readers."""
        uri = self._put(name, lambda fp: fp.write(data))
        if not self._is_s3():
            _remember(Path(urlparse(uri).path), None, table)
        return uri

    def _put(self, name: str, write: Callable[[IO[bytes]], object]) -> str:
        """Write a file atomically (temp file, fsync, rename; S3: upload); return its URI."""
        uri = self.uri_for(name)
        if self._is_s3():
            try:
                with tempfile.NamedTemporaryFile(suffix=".ion") as tmp:
                    write(tmp)
                    tmp.flush()
                    self.put_file(uri, Path(tmp.name))
            except OSError as exc:
                raise self._fail("stage internal storage file", f"{uri} in the temp dir",
                                 exc) from None
            return uri
        path = Path(urlparse(uri).path)
        self._mkdir(path)
        try:
            fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".ion")
        except OSError as exc:
            raise self._fail("write internal storage file", path, exc) from None
        try:
            with os.fdopen(fd, "wb") as fp:
                write(fp)
                fp.flush()
                os.fsync(fp.fileno())
            os.replace(tmp_name, path)
        except BaseException as exc:
            Path(tmp_name).unlink(missing_ok=True)
            if isinstance(exc, OSError):
                raise self._fail("write internal storage file", path, exc) from None
            raise
        return uri

    def _mkdir(self, path: Path) -> None:
        """Create the directory of the file ``path`` (StorageError naming both)."""
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise self._fail("write internal storage file", path, exc) from None

    def put_file(self, uri: str, source: Path) -> None:
        parsed = urlparse(uri)
        if parsed.scheme == "s3":
            try:
                _s3_client().upload_file(str(source), parsed.netloc, parsed.path.lstrip("/"))
            except Exception as exc:
                raise StorageError(f"cannot write {uri}: {exc}") from None
            return
        dest = Path(parsed.path)
        self._mkdir(dest)
        try:
            os.replace(source, dest)
        except OSError as exc:
            raise self._fail("write internal storage file", dest, exc) from None


def local_path(uri: str, workdir: Path | None = None) -> Path:
    """A local file with the content of ``uri``: the file itself on the local store; for an
    ``s3://`` URI a download into ``workdir``, which the caller owns and removes (without
    one, a StorageError: a download nobody removes would fill the disk of a long-running
    job; read the bytes with :func:`read_bytes` instead)."""
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        path = Path(parsed.path if parsed.scheme else uri)
        try:
            found = path.exists()
        except OSError as exc:
            raise StorageError(f"cannot read internal storage file {path}: {_reason(exc)}"
                               ) from None
        if not found:
            raise StorageError(f"{uri} does not exist in internal storage")
        return path
    if parsed.scheme == "s3":
        if workdir is None:
            raise StorageError(f"cannot read {uri} as a local file without a directory to "
                               "download it to")
        target = workdir / Path(parsed.path).name
        try:
            _s3_client().download_file(parsed.netloc, parsed.path.lstrip("/"), str(target))
        except Exception as exc:
            raise StorageError(f"cannot read {uri}: {exc}") from None
        return target
    raise StorageError(f"unsupported storage URI {uri!r} (file:// or s3://)")


def stored_path(uri: str) -> Path | None:
    """The local file of ``uri`` when it is on the local store (checked to exist), else None
    (an ``s3://`` object)."""
    return None if urlparse(uri).scheme == "s3" else local_path(uri)


def read_bytes(uri: str) -> bytes:
    """The content of an internal storage file, local or ``s3://`` (read into memory: no
    temporary file is left behind); StorageError naming the URI when it cannot be read."""
    path = stored_path(uri)
    if path is not None:
        try:
            return path.read_bytes()
        except OSError as exc:
            raise StorageError(f"cannot read internal storage file {path}: {_reason(exc)}"
                               ) from None
    parsed = urlparse(uri)
    try:
        body = _s3_client().get_object(Bucket=parsed.netloc, Key=parsed.path.lstrip("/"))
        return bytes(body["Body"].read())
    except Exception as exc:
        raise StorageError(f"cannot read {uri}: {exc}") from None


# The last batches this process wrote, so the tasks of the same execution read them without
# parsing the file again (measured: decoding was half the CPU of a batch load). An entry is
# used only while the file still has the size and mtime it had when written; a restart, or
# a file written elsewhere, reads the file.
_Entry = tuple[int, int, "list[dict[str, Any]] | None", "pa.Table | None"]
_RECENT: OrderedDict[Path, _Entry] = OrderedDict()
_RECENT_LOCK = threading.Lock()
_RECENT_MAX = 2


def _remember(path: Path, items: list[dict[str, Any]] | None, table: pa.Table | None) -> None:
    st = path.stat()
    with _RECENT_LOCK:
        _RECENT[path] = (st.st_size, st.st_mtime_ns, items, table)
        _RECENT.move_to_end(path)
        while len(_RECENT) > _RECENT_MAX:
            _RECENT.popitem(last=False)


def _recalled(path: Path) -> _Entry | None:
    with _RECENT_LOCK:
        hit = _RECENT.get(path)
    if hit is None:
        return None
    try:
        st = path.stat()
    except OSError:
        return None
    return hit if (st.st_size, st.st_mtime_ns) == hit[:2] else None


def recalled(path: Path) -> tuple[list[dict[str, Any]] | None, pa.Table | None]:
    """(records, rows table) this process stored with the file at ``path``, while the file
    is unchanged (either may be None: nothing kept)."""
    hit = _recalled(path)
    return (hit[2], hit[3]) if hit is not None else (None, None)


def _json_values(data: bytes) -> list[Any] | None:
    """The JSON values of an Ion-text file written as JSON, or None if it is other Ion."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    decode = json.JSONDecoder().raw_decode
    out: list[Any] = []
    pos, end = 0, len(text)
    try:
        while True:
            while pos < end and text[pos] in " \t\r\n":
                pos += 1
            if pos >= end:
                return out
            value, pos = decode(text, pos)
            out.append(value)
    except json.JSONDecodeError:
        return None


def parse_records(data: bytes) -> list[dict[str, Any]]:
    """The records of a batch file's content (binary ION, or Ion text: JSON when written
    by ``waxflow.connectors.jsonbatch``)."""
    if not data.startswith(ION_BVM):
        values = _json_values(data)
        if values is not None:
            return values
    from waxflow.connectors.ion import read_stream  # (amazon.ion: ~18 ms, on first use)

    return list(read_stream(io.BytesIO(data)))


def read_records(uri: str) -> Iterator[dict[str, Any]]:
    """The records of a batch file, in stored order (callers must not mutate them)."""
    path = stored_path(uri)
    records = None if path is None else recalled(path)[0]
    if records is None:
        records = parse_records(read_bytes(uri))
    yield from records
