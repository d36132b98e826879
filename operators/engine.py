"""Runs one execution: the task list with retries, timeouts, allowFailure and errors handlers.

Guarantees: ``Engine.run`` returns only when the execution is terminal (SUCCESS, WARNING or
FAILED) and never raises for task failures: a failing task (after its retries) fails the
execution, stops the remaining tasks, runs the task's and then the flow's ``errors`` tasks,
and records the error text (secrets redacted). ``allowFailure`` turns a failure into
WARNING. A flow-level ``retry`` is the default for every task without its own. Flowable
tasks (Switch, If, ...) are not retried for a child's failure: the child already was.

Logging: what a task logs (``ctx.log``, e.g. ``core.Log``), each retry ("attempt 2 failed:
..., retrying in 1s", WARN) and each failure (ERROR; WARN under ``allowFailure``) become log
lines of the execution (:meth:`~waxflow.execution.Execution.log`: masked, with the task id,
task run id and attempt number), and are printed on stderr through the ``waxflow.task``
logger at their level (the job's log level decides what is printed; the execution keeps
every line).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from waxflow.core_tasks import is_truthy
from waxflow.execution import Attempt, Execution, State, TaskRun, iso, now
from waxflow.expressions import Expressions, env_vars, mask, redact
from waxflow.flow import FlowBase
from waxflow.logs import line_level, python_level
from waxflow.retry import RetryPolicy
from waxflow.tasks import RetrySpec, TaskBase, TaskFailure

LOG = logging.getLogger("waxflow.task")


class _Deferred(BaseException):
    """A task's retry is due in ``delay`` seconds: the execution pauses without holding a
    thread (a BaseException, so flowables' and tasks' ``except Exception`` let it through)."""

    def __init__(self, delay: float) -> None:
        super().__init__(delay)
        self.delay = delay


class _TaskFailed(Exception):
    def __init__(self, task_id: str, message: str) -> None:
        super().__init__(message)
        self.task_id = task_id
        self.message = message


def error_text(exc: BaseException) -> str:
    """One-line, redacted error text for the history (TaskFailure text as is)."""
    text = str(exc) if isinstance(exc, TaskFailure) else f"{type(exc).__name__}: {exc}"
    return mask(text, limit=2000)


def _log(execution: Execution, level: str, message: Any, task_id: str | None = None,
         task_run_id: str | None = None, attempt: int | None = None) -> None:
    """One log line of ``execution`` (masked), also printed on stderr at its level."""
    name = line_level(level)
    text = redact(str(message))
    execution.log(name, text, task_id=task_id, task_run_id=task_run_id, attempt=attempt)
    LOG.log(python_level(name), "[%s %s] %s", execution.id[:12], task_id or "-", text)


def _call_with_timeout(task: TaskBase, ctx: _Context, timeout: float | None) -> Any:
    if timeout is None:
        return task.run(ctx)
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["out"] = task.run(ctx)
        except BaseException as exc:  # handed back to the caller's thread
            box["exc"] = exc

    worker = threading.Thread(target=target, name=f"task-{task.id}", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise TaskFailure(f"timed out after {timeout:g}s")
    if "exc" in box:
        raise box["exc"]
    return box.get("out")


class _Context:
    """The RunContext of one execution (see waxflow.tasks.RunContext)."""

    def __init__(self, engine: Engine, execution: Execution, variables: dict[str, Any],
                 batch: Any = None) -> None:
        self.engine = engine
        self.batch = batch  # per-batch resources (waxflow.connectors.kafka_output.BatchScope)
        self.execution = execution
        self._vars = variables
        self.current: TaskBase | None = None
        self.warned = False
        #: a retry delay pauses the execution (:class:`_Deferred`) instead of sleeping
        self.deferrable = False
        #: continuing after a pause: task runs already finished are not run again
        self.resuming = False
        self.started: dict[int, float] = {}  # id(task run) -> first attempt (monotonic)

    @property
    def vars(self) -> Mapping[str, Any]:
        return self._vars

    def render(self, value: Any) -> Any:
        return self.engine.exprs.render_value(value, self._vars)

    def log(self, level: str, message: str) -> None:
        _log(self.execution, level, message,
             self.current.id if self.current is not None else None)

    def run_tasks(self, tasks: Sequence[TaskBase], parent: TaskBase | None) -> None:
        for task in tasks:
            self.engine.run_task(self, task, parent)

    def run_iteration(self, tasks: Sequence[TaskBase], parent: TaskBase, value: Any) -> None:
        # the same task ids run once per value: no pause in an iteration (children retry in
        # place) and no look-up of earlier runs by task id
        deferrable, resuming = self.deferrable, self.resuming
        self.deferrable = self.resuming = False
        try:
            for task in tasks:
                self.engine.run_task(self, task, parent, value)
        finally:
            self.deferrable, self.resuming = deferrable, resuming

    def run_parallel(self, tasks: Sequence[TaskBase], parent: TaskBase, concurrency: int) -> None:
        workers = concurrency if concurrency > 0 else max(1, len(tasks))
        failures: list[BaseException] = []
        deferrable, self.deferrable = self.deferrable, False  # children retry in place
        try:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                futures = [pool.submit(self.engine.run_task, self, t, parent) for t in tasks]
                for fut in futures:
                    exc = fut.exception()
                    if exc is not None:
                        failures.append(exc)
        finally:
            self.deferrable = deferrable
        if failures:
            raise failures[0]


_NO_VALUE: Any = object()


class _TaskScope:
    """The RunContext a running task sees: its execution's :class:`_Context` plus the
    task's own variables (``task``, ``taskrun``, ``parents``/``parent``). Attributes other
    than those are the execution context's (reads and writes)."""

    run_tasks = _Context.run_tasks
    run_iteration = _Context.run_iteration
    run_parallel = _Context.run_parallel

    def __init__(self, ctx: _Context | _TaskScope, task: TaskBase, value: Any) -> None:
        outer = ctx.frame if isinstance(ctx, _TaskScope) else None
        root = ctx._root if isinstance(ctx, _TaskScope) else ctx
        if value is _NO_VALUE and outer is not None and "value" in outer["taskrun"]:
            value = outer["taskrun"]["value"]  # children of an iteration share its value
        taskrun: dict[str, Any] = {"id": None, "startDate": None, "attemptsCount": 0}
        if value is not _NO_VALUE:
            taskrun["value"] = value
        parents: list[dict[str, Any]] = []
        if outer is not None:
            parents = [{"task": outer["task"], "taskrun": outer["taskrun"]}, *outer["parents"]]
        frame: dict[str, Any] = {"task": {"id": task.id, "type": task.type},
                                 "taskrun": taskrun, "parents": parents}
        if parents:
            frame["parent"] = parents[0]
        object.__setattr__(self, "_root", root)
        object.__setattr__(self, "frame", frame)
        object.__setattr__(self, "_vars", None)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._root, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._root, name, value)

    @property
    def vars(self) -> Mapping[str, Any]:
        """The execution's variables and the task's own (a fresh dict: the task may keep or
        change it)."""
        return {**self._root.vars, **self.frame}

    def render(self, value: Any) -> Any:
        # the merged variables are built once per task run, not per render: their values
        # are the live objects (``outputs``, ``taskrun``...), so later changes show
        merged: dict[str, Any] | None = self._vars
        if merged is None:
            merged = {**self._root.vars, **self.frame}
            object.__setattr__(self, "_vars", merged)
        return self._root.engine.exprs.render_value(value, merged)

    def log(self, level: str, message: str) -> None:
        taskrun = self.frame["taskrun"]
        _log(self._root.execution, level, message, self.frame["task"]["id"], taskrun["id"],
             taskrun["attemptsCount"] + 1 if taskrun["id"] is not None else None)


class Engine:
    """Runs executions of one flow; thread-safe (one instance serves all workers)."""

    def __init__(self, flow: FlowBase, exprs: Expressions) -> None:
        self.flow = flow
        self.exprs = exprs
        self.env = env_vars()
        self._flow_vars = {"id": flow.id, "namespace": flow.namespace}
        self._policies: dict[int, RetryPolicy] = {}
        #: the flow has an end to run (``finally``, ``outputs``, ``afterExecution``)
        self._has_end = bool(flow.finally_ or flow.outputs or flow.afterExecution)

    def run(self, execution: Execution, trigger_vars: dict[str, Any],
            batch: Any = None) -> Execution:
        """Run the flow's tasks for ``execution`` until it is terminal (retry delays sleep).

        ``batch`` is the execute step's per-batch scope (the Kafka transaction of the batch).
        """
        self.advance(self.begin(execution, trigger_vars, batch))
        return execution

    def begin(self, execution: Execution, trigger_vars: dict[str, Any], batch: Any = None,
              *, deferrable: bool = False) -> _Context:
        """The run state of ``execution``, to :meth:`advance`; ``deferrable``: a retry delay
        pauses the execution instead of sleeping on the thread."""
        execution.state = State.RUNNING
        variables: dict[str, Any] = {
            "trigger": trigger_vars,
            "outputs": {},
            "execution": {"id": execution.id, "startDate": iso(execution.start),
                          "runId": execution.run_id, "state": State.RUNNING.value},
            "flow": self._flow_vars,
            "labels": self.flow.labels,
            "env": self.env,
        }
        ctx = _Context(self, execution, variables, batch)
        ctx.deferrable = deferrable
        return ctx

    def advance(self, ctx: _Context) -> float | None:
        """Run the execution until it is terminal (None) or a retry pauses it: then the
        seconds until the retry is due, and the next call continues from the retrying task
        (the tasks that finished are not run again; their outputs are kept)."""
        execution = ctx.execution
        failed = False
        try:
            ctx.run_tasks(self.flow.tasks, None)
        except _Deferred as pause:
            ctx.resuming = True
            return pause.delay
        except _TaskFailed as failure:
            execution.error = {"taskId": failure.task_id, "message": failure.message}
            self._run_handlers(ctx, self.flow.errors)
            failed = True
        except Exception as exc:  # engine bug or unexpected error: still a FAILED execution
            self._unexpected(execution, exc)
            failed = True
        if self._has_end:  # a flow without them pays one test
            self._end(ctx, failed)
            return None
        execution.finish(State.FAILED if failed else
                         State.WARNING if ctx.warned else State.SUCCESS)
        return None

    @staticmethod
    def _unexpected(execution: Execution, exc: Exception) -> None:
        execution.error = {"taskId": "", "message": error_text(exc)}
        _log(execution, "ERROR", f"execution failed: {execution.error['message']}")

    def _end(self, ctx: _Context, failed: bool) -> None:
        """The end of an execution of a flow with ``finally``, ``outputs`` or
        ``afterExecution``: the ``finally`` tasks (a failure fails the execution), the flow's
        outputs (unless it failed; one that does not render fails it), the final state, then
        the ``afterExecution`` tasks (their failures change nothing)."""
        execution, flow = ctx.execution, self.flow
        ctx.deferrable = False  # the end retries in place: its tasks run once each
        if flow.finally_:
            try:
                ctx.run_tasks(flow.finally_, None)
            except _TaskFailed as failure:
                if not failed:
                    execution.error = {"taskId": failure.task_id, "message": failure.message}
                failed = True
            except Exception as exc:
                if not failed:
                    self._unexpected(execution, exc)
                failed = True
        if flow.outputs and not failed:
            failed = not self._outputs(ctx)
        state = State.FAILED if failed else State.WARNING if ctx.warned else State.SUCCESS
        execution.finish(state)
        if flow.afterExecution:
            ctx.vars["execution"]["state"] = state.value
            try:
                ctx.run_tasks(flow.afterExecution, None)
            except _TaskFailed:
                pass  # recorded in its task run: the state stays
            except Exception as exc:  # an engine bug: logged, the state stays
                _log(execution, "ERROR", f"afterExecution failed: {error_text(exc)}")

    def _outputs(self, ctx: _Context) -> bool:
        """Render and convert the flow's outputs into ``execution.outputs``; False (the
        execution's error set, naming the output) when one does not render or fit."""
        out: dict[str, Any] = {}
        for item in self.flow.outputs:
            try:
                out[item.id] = item.convert(ctx.render(item.value))
            except Exception as exc:
                reason = mask(str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
                              limit=500)
                message = f"output '{item.id}' ({item.type}): {reason}"
                ctx.execution.error = {"taskId": "", "message": message}
                _log(ctx.execution, "ERROR", message)
                return False
        ctx.execution.outputs = out
        return True

    def _run_handlers(self, ctx: _Context, tasks: Sequence[TaskBase]) -> None:
        # a failing errors handler is recorded in its task run; the state stays FAILED
        ctx.deferrable = False  # handlers retry in place: the execution is failing already
        with contextlib.suppress(_TaskFailed):
            ctx.run_tasks(tasks, None)

    def run_task(self, ctx: _Context | _TaskScope, task: TaskBase, parent: TaskBase | None,
                 value: Any = _NO_VALUE) -> None:
        """Run one task with its retry policy; raise _TaskFailed when it fails the execution.

        ``value``: the iteration value (``taskrun.value``) of a flowable's child list."""
        if task.disabled:
            return
        scope = _TaskScope(ctx, task, value)
        if task.runIf is not None and not self._should_run(scope, task, parent):
            return
        self._run_task(scope, task, parent)

    def _should_run(self, scope: _TaskScope, task: TaskBase, parent: TaskBase | None) -> bool:
        """``runIf`` of ``task``: False records a SKIPPED task run (a condition that does not
        render fails the task, as any failure would)."""
        root: _Context = scope._root
        if root.resuming:  # decided before the pause: its task run says how
            run = self._resumed_run(root, task.id, parent.id if parent is not None else None)
            if run is not None:
                return run.state != State.SKIPPED
        try:
            go = is_truthy(scope.render(task.runIf))
        except Exception as exc:
            run = TaskRun(task.id, task.type, parent.id if parent is not None else None)
            root.execution.add_task_run(run)
            run.attempts.append(Attempt(State.FAILED, now(), now(), f"runIf: {error_text(exc)}"))
            as_context: Any = scope  # a scope forwards what _fail uses to its context
            self._fail(as_context, task, run, run.attempts[0].error or "")
            return False
        if not go:
            run = TaskRun(task.id, task.type, parent.id if parent is not None else None,
                          state=State.SKIPPED)
            root.execution.add_task_run(run)
        return go

    def _run_task(self, ctx: Any, task: TaskBase, parent: TaskBase | None) -> None:
        # the execution's context, read directly (the scope forwards every other attribute
        # to it: measured, the forwarding was ~15 calls per task run on the hot path)
        root: _Context = ctx._root
        execution = root.execution
        parent_id = parent.id if parent is not None else None
        run = self._resumed_run(root, task.id, parent_id) if root.resuming else None
        if run is not None and run.state in (State.SUCCESS, State.WARNING):
            return  # finished before the pause: its outputs are in ctx.vars already
        if run is None:
            run = TaskRun(task.id, task.type, parent_id)
            index = execution.add_task_run(run)
        else:
            index = next(i for i, r in enumerate(execution.task_runs) if r is run)
        timeout = task.timeout.total_seconds() if task.timeout is not None else None
        started = root.started.setdefault(id(run), time.monotonic())
        attempts = run.attempts
        attempt_no = len(attempts)
        # a flowable paused inside a child: continue its running attempt
        reenter = bool(attempts) and attempts[-1].state == State.RUNNING
        taskrun = ctx.frame["taskrun"]
        taskrun["id"] = execution.task_run_id(index)
        while True:
            if reenter:
                attempt, reenter = attempts[-1], False
            else:
                attempt_no += 1
                attempt = Attempt(State.RUNNING, now())
                attempts.append(attempt)
            taskrun["attemptsCount"] = len(attempts) - 1  # earlier attempts (Kestra)
            taskrun["startDate"] = iso(attempts[0].start)
            previous, root.current = root.current, task
            try:
                out = task.run(ctx) if timeout is None else _call_with_timeout(task, ctx, timeout)
            except _TaskFailed as child:
                attempt.state, attempt.end = State.FAILED, now()
                attempt.error = f"child task {child.task_id} failed"
                run.state = State.FAILED
                raise
            except Exception as exc:
                attempt.state, attempt.end, attempt.error = State.FAILED, now(), error_text(exc)
                delay = self._policy(task).next_delay(attempt_no, time.monotonic() - started)
                if delay is not None:
                    run.state = State.RETRYING
                    ctx.log("WARN", f"attempt {attempt_no} failed: {attempt.error}, retrying "
                                    f"in {delay.total_seconds():g}s")
                    if root.deferrable:
                        raise _Deferred(delay.total_seconds()) from None
                    time.sleep(delay.total_seconds())
                    continue
                self._fail(ctx, task, run, attempt.error)
                return
            finally:
                root.current = previous
            attempt.state, attempt.end = State.SUCCESS, now()
            if isinstance(out, dict):
                run.outputs = out
                root._vars["outputs"][task.id] = out
            else:
                run.outputs = None
            if attempt_no > 1 and self._policy(task).warning_on_retry:
                run.state, root.warned = State.WARNING, True
            else:
                run.state = State.SUCCESS
            return

    @staticmethod
    def _resumed_run(ctx: _Context, task_id: str, parent_id: str | None) -> TaskRun | None:
        """The task run of ``task_id`` (under ``parent_id``) from before the pause, if any."""
        for run in reversed(ctx.execution.task_runs):
            if run.task_id == task_id and run.parent == parent_id:
                return run
        return None

    def _fail(self, ctx: _Context, task: TaskBase, run: TaskRun, message: str) -> None:
        attempts = len(run.attempts)
        if task.allowFailure:
            ctx.log("WARN", f"attempt {attempts} failed: {message} (allowFailure: the "
                            "execution goes on)")
            run.state, ctx.warned = State.WARNING, True
            return
        ctx.log("ERROR", f"attempt {attempts} failed: {message}")
        run.state = State.FAILED
        if task.errors:
            self._run_handlers(ctx, task.errors)
        raise _TaskFailed(task.id, message)

    def _flow_retry(self) -> RetrySpec | None:
        return self.flow.retry

    def _policy(self, task: TaskBase) -> RetryPolicy:
        """The task's retry policy, built once (policies hold no per-run state)."""
        policy = self._policies.get(id(task))
        if policy is None:
            policy = self._policies[id(task)] = RetryPolicy(task.retry or self._flow_retry())
        return policy
