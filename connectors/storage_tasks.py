"""``storage.PurgeCurrentExecutionFiles`` (Kestra's
``io.kestra.plugin.core.storage.PurgeCurrentExecutionFiles``): delete the running
execution's files from internal storage.

The files are the ones waxflow names after the execution: its batch file
(``<namespace>/<flow>/<execution>.ion``, ``trigger.uri`` of a ``kafka.Trigger`` execution),
its tasks' files (``<namespace>/<flow>/<execution>/``: Consume, the serdes and JSONata tasks)
and its query results (``<execution>.<task>.rows.ion``). Nothing else is touched. Deleting is
safe for replays: a replayed batch execution stores its batch file again under the same name,
and its tasks write theirs again. Internal storage on S3 is refused with one line (use a
bucket lifecycle rule there). Outputs ``uris``: the files deleted.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

from pydantic import Field

from waxflow.connectors.storage import Storage
from waxflow.tasks import RunContext, TaskBase, TaskFailure, task_type

__all__ = ["PurgeCurrentExecutionFiles"]


@task_type("storage.PurgeCurrentExecutionFiles",
           aliases=("io.kestra.plugin.core.storage.PurgeCurrentExecutionFiles",))
class PurgeCurrentExecutionFiles(TaskBase):
    """Delete the running execution's files from internal storage (see module doc);
    outputs ``uris``."""

    type: Literal["storage.PurgeCurrentExecutionFiles"] = Field(description="the task type")

    def run(self, ctx: RunContext) -> dict[str, Any] | None:
        storage = Storage()
        if storage.base.startswith("s3://"):
            raise TaskFailure("internal storage on S3 is not purged by waxflow: expire the "
                              f"execution files of {storage.base} with a bucket lifecycle "
                              "rule")
        flow = ctx.vars.get("flow") or {}
        exec_id = str((ctx.vars.get("execution") or {}).get("id") or "")
        if not exec_id or "/" in exec_id:
            raise TaskFailure(f"no usable execution id in the context ({exec_id!r})")
        root = Path(urlparse(storage.uri_for("x")).path).parent
        prefix = root / str(flow.get("namespace", "")) / str(flow.get("id", ""))
        targets = [prefix / f"{exec_id}.ion", prefix / exec_id,
                   *sorted(root.glob(f"{_glob_safe(exec_id)}.*.rows.ion"))]
        deleted: list[str] = []
        for path in targets:
            try:
                if path.is_dir():
                    deleted += [p.as_uri() for p in sorted(path.rglob("*")) if p.is_file()]
                    shutil.rmtree(path)
                elif path.is_file():
                    path.unlink()
                    deleted.append(path.as_uri())
            except OSError as exc:
                raise TaskFailure(f"cannot delete internal storage file {path}: {exc}"
                                  ) from None
        return {"uris": deleted}


def _glob_safe(text: str) -> str:
    """``text`` with glob's special characters made literal."""
    return "".join(f"[{c}]" if c in "*?[]" else c for c in text)
