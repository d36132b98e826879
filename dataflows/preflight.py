"""Pre-flight: refuse to start a flow that cannot work in this environment.

``waxflow validate`` checks the flow file on its own. :func:`preflight` also checks it
against where it is about to run, so a flow that would FAIL every execution (and, with the
default ``onFailure: CONTINUE``, commit the whole backlog as failed) never starts:

* ``secret('NAME')``: defined in ``$WAXFLOW_SECRET_NAME`` or in ``$WAXFLOW_SECRETS_FILE``;
* ``env.NAME`` / ``env['NAME']``: set in the environment (``WAXFLOW_SECRET_*`` variables are
  not visible as ``env``);
* ``outputs.ID`` / ``outputs['ID']``: ``ID`` is a task of the flow that can have run
  before the template is rendered: an earlier task of the same list, of an enclosing list,
  or inside one of those; a task's ``errors`` handlers also see the task's children, the
  flow's ``errors`` every task of ``tasks``; ``finally`` those and ``errors``',
  ``afterExecution`` also ``finally``'s, the flow's ``outputs`` ``tasks`` and ``finally``.
  A later task, one in another branch of a ``core.Switch``/``core.If``, a sibling in the
  same ``core.Parallel``, an enclosing task (its outputs exist once it ended) and a
  disabled task are refused;
* ``core.Python``: the ``module:function`` imports and is callable (the check imports the
  module, as a worker would); the same for the ``core.Python`` tasks of the child flows of
  ``core.Subflow``/``core.ForEachItem`` (and of their children), each problem at the
  ``flowId`` line of the parent's task, naming the child flow and its task;
* the flow is not ``disabled`` (a flow without an enabled trigger is a manual flow:
  ``waxflow run`` runs it once);
* the templates of ``pluginDefaults`` as those of tasks (secrets, env, task ids), at the
  default's own line.

Before those, :func:`validate` (all ``waxflow validate`` does) checks the file on its own
(:func:`~waxflow.dataflows.spec.parse_flow`), then against the other flow files: the child
flow of each ``core.Subflow``/``core.ForEachItem`` is found (``$WAXFLOW_FLOWS_PATH``, as
when it runs), is valid, and takes the parent's inputs: no unknown input, every required
one given, and each value written without a template fits the input's type. Each problem
is at the ``file:line`` of the parent's task; a ``namespace``/``flowId`` template that
cannot be rendered before the run (it reads more than ``vars``/``flow``) leaves the child
unchecked, with a note. Notes (also for a Kestra blueprint's ``extend:``, which is ignored)
are printed by ``waxflow validate`` and logged by ``waxflow run``; they never stop a flow.

Reads guarded in the template (``env.X | default('y')``, ``outputs.x is defined``,
``'X' in env``) and names that are not constants (``secret(trigger.value.k)``) are not
checked, nor are disabled tasks (they never run). Every problem is reported at once, each
at the ``file:line:column`` of the string holding the template, with what to do; no secret
value is ever part of a message.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import logging
import os
import re
from collections.abc import Hashable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from waxflow.dataflows.spec import parse_flow
from waxflow.dataflows.yamlpos import PositionMap, load_yaml
from waxflow.errors import FlowError, Problem
from waxflow.expressions import Expressions, SecretError, Secrets, mask
from waxflow.flow import FlowBase
from waxflow.subflow import ChildFlowTask, is_template
from waxflow.tasks import TaskBase, known_task_type

__all__ = ["NOTE", "preflight", "validate"]

LOG = logging.getLogger(__name__)
#: how a note's message starts (a :class:`Problem` that stops nothing)
NOTE = "note: "

Where = tuple[Hashable, ...]
_MARKERS = ("{{", "{%", "{#")
_NOT_TEMPLATES = frozenset({"id", "type", "description"})  # never rendered


def preflight(path: str | Path, *, environ: Mapping[str, str] | None = None,
              inputs: Mapping[str, str] | None = None) -> None:
    """Validate the flow file at ``path`` (as ``waxflow validate``), then check it against
    ``environ`` (default: this process's environment) and this interpreter's import path,
    and, given ``inputs`` (``--input`` values), the execution's input values.

    Raises :class:`~waxflow.errors.FlowError` holding every problem found (validation
    problems alone when the file is invalid), then :class:`~waxflow.flow.InputError` for
    an input value that does not fit or a required input with no value; returns None when
    the flow can start.
    """
    flow, notes, children = _validated(path)  # FlowError for a missing or invalid file
    for note in notes:
        LOG.info("%s", note)
    text = Path(path).read_text(encoding="utf-8")
    data, pos = load_yaml(text, str(path))
    checker = _Checker(pos, os.environ if environ is None else environ)
    if flow.disabled:
        checker.problem(("disabled",), "the flow is disabled (`disabled: true`): it does not "
                                       "start")
    checker.check_flow(data)
    for at, name, child in children:
        for through, task_id, spec in _child_functions(child, name, pos, {name}):
            message = _function_problem(spec)
            if message:
                checker.problem(at, f"child flow {through}: task '{task_id}': {message}")
    if checker.problems:
        problems = sorted(set(checker.problems), key=lambda p: (p.line or 0, p.column or 0,
                                                                 p.field, p.message))
        raise FlowError(problems)
    if inputs is not None:
        flow.input_values(inputs)


def validate(path: str | Path) -> tuple[FlowBase, list[Problem]]:
    """All ``waxflow validate`` checks (module doc): the file on its own, then its child
    flows. Returns the flow and its notes (each message starts with :data:`NOTE`); raises
    :class:`~waxflow.errors.FlowError` holding every problem found."""
    flow, notes, _ = _validated(path)
    return flow, notes


#: a child flow :func:`validate` loaded: where the parent's task names it (its ``flowId``),
#: ``namespace.id``, the parsed flow
Child = tuple[Where, str, FlowBase]


def _validated(path: str | Path) -> tuple[FlowBase, list[Problem], list[Child]]:
    """:func:`validate`, also returning the child flows it loaded."""
    flow = parse_flow(path)  # raises FlowError for a missing or invalid file
    text = Path(path).read_text(encoding="utf-8")
    data, pos = load_yaml(text, str(path))
    notes: list[Problem] = []
    if isinstance(data, dict) and "extend" in data:
        notes.append(pos.problem(("extend",), f"{NOTE}Kestra blueprint metadata (title, "
                                 "description, tags...): ignored by waxflow", at_key=True))
    children = _Children(flow, pos, data)
    for where, task in flow.all_tasks():
        if isinstance(task, ChildFlowTask) and not task.disabled:
            children.check(where, task)
    if children.problems:
        raise FlowError(sorted(children.problems, key=lambda p: (p.line or 0, p.column or 0)))
    return (flow, sorted(notes + children.notes, key=lambda p: (p.line or 0, p.column or 0)),
            children.loaded)


class _Children:
    """The checks of a flow's child flows (see :func:`validate`)."""

    def __init__(self, flow: FlowBase, pos: PositionMap, data: Any) -> None:
        self.flow = flow
        self.pos = pos
        self.strings = list(_strings(data, ()))  # (path, text) of every string of the file
        self.problems: list[Problem] = []
        self.notes: list[Problem] = []
        self.loaded: list[Child] = []  # the child flows found and valid
        self._exprs: Expressions | None = None

    def static_name(self, value: str) -> str | None:
        """``value`` rendered with what is known before the run (``vars``, ``flow``); None
        when it reads anything else."""
        if not is_template(value):
            return value
        if self._exprs is None:
            self._exprs = Expressions(Secrets(environ={}),  # a secret is never a name
                                      extra_globals={"vars": dict(self.flow.variables)})
        ctx = {"flow": {"id": self.flow.id, "namespace": self.flow.namespace}}
        try:
            out = self._exprs.compile(value).render(ctx)
        except Exception:  # undefined at validate time (trigger, inputs, secret...)
            return None
        return out if isinstance(out, str) else None

    def check(self, where: tuple[Any, ...], task: ChildFlowTask) -> None:
        from waxflow.dataflows.subflow_runner import locate_flow, searched

        namespace, flow_id = self.static_name(task.namespace), self.static_name(task.flowId)
        at = (*where, "flowId")
        if namespace is None or flow_id is None:
            self.notes.append(self.pos.problem(at, f"{NOTE}the child flow is named by a "
                                               "template known only when the task runs: it "
                                               "is not checked before"))
            return
        name = f"{namespace}.{flow_id}"
        path = locate_flow(namespace, flow_id)
        if path is None:
            self.problems.append(self.pos.problem(
                at, f"no flow {name} among the flow files of {searched()}: add its file "
                    "there, or set $WAXFLOW_FLOWS_PATH to the directories holding it"))
            return
        try:
            child = parse_flow(path)
        except FlowError as exc:
            more = len(exc.problems) - 1
            self.problems.append(self.pos.problem(
                at, f"child flow {name} is not valid: {exc.problems[0]}"
                    + (f" (and {more} more: waxflow validate {path})" if more else "")))
            return
        self.loaded.append((at, name, child))
        self.check_inputs(where, task, child, name)
        self.check_reads(task, child, name)

    def check_inputs(self, where: tuple[Any, ...], task: ChildFlowTask, child: FlowBase,
                     name: str) -> None:
        declared = {i.id: i for i in child.inputs}
        for key, value in task.inputs.items():
            item = declared.get(key)
            if item is None:
                close = difflib.get_close_matches(key, sorted(declared), n=1)
                hint = f"did you mean '{close[0]}'? " if close else ""
                self.problems.append(self.pos.problem(
                    (*where, "inputs", key),
                    f"child flow {name} has no input '{key}' ({hint}its inputs: "
                    f"{', '.join(sorted(declared)) or 'none'})", at_key=True))
            elif (item.type not in ("FILE", "SECRET") and value is not None
                  and not _has_template(value)):
                try:
                    item.convert(value)
                except (ValueError, TypeError, yaml.YAMLError) as exc:
                    reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
                    self.problems.append(self.pos.problem(
                        (*where, "inputs", key),
                        f"input '{key}' ({item.type}) of child flow {name}: {reason}"))
        for item in child.inputs:
            if item.required and item.defaults is None and item.id not in task.inputs:
                self.problems.append(self.pos.problem(
                    (*where, "flowId"), f"child flow {name} requires input '{item.id}' "
                                        f"({item.type}): give it in this task's `inputs`"))


    def check_reads(self, task: ChildFlowTask, child: FlowBase, name: str) -> None:
        """``outputs.<task>.outputs.<name>`` read anywhere in the file: ``name`` is one of
        the child's flow-level outputs (or, when it declares none, one of its task ids)."""
        if child.outputs:
            known, kind, why = sorted(o.id for o in child.outputs), "output", ""
        else:
            known, kind = sorted(t.id for _, t in child.all_tasks()), "task"
            why = "; it declares no flow-level outputs, so its task outputs are read by task id"
        read = re.compile(rf"\boutputs\.{re.escape(task.id)}\.outputs\.([A-Za-z_][\w-]*)")
        for path, text in self.strings:
            if not is_template(text):
                continue
            for match in read.finditer(text):
                if match.group(1) not in known:
                    close = difflib.get_close_matches(match.group(1), known, n=1)
                    hint = f"did you mean '{close[0]}'? " if close else ""
                    self.problems.append(self.pos.problem(
                        path, f"outputs.{task.id}.outputs.{match.group(1)}: child flow {name} "
                              f"has no {kind} '{match.group(1)}' ({hint}known: "
                              f"{', '.join(known) or 'none'}{why})"))


def _enabled_tasks(flow: FlowBase) -> Iterator[TaskBase]:
    """The tasks of ``flow`` that can run: not disabled, nor inside a disabled task."""
    off: list[tuple[Hashable, ...]] = []
    for where, task in flow.all_tasks():
        if any(where[:len(p)] == p for p in off):
            continue
        if task.disabled:
            off.append(where)
            continue
        yield task


def _child_functions(flow: FlowBase, name: str, pos: PositionMap, seen: set[str]
                     ) -> Iterator[tuple[str, str, str]]:
    """(the flow, as named from the parent: ``a.b`` or ``a.b > c.d``, the task id, the
    ``module:function``) of each ``core.Python`` task of child flow ``flow`` and of the
    child flows it names with a name known before the run (each flow once: ``seen``). A
    grandchild that is missing or invalid is skipped: validating its parent reports it."""
    from waxflow.dataflows.subflow_runner import locate_flow

    names = _Children(flow, pos, None)  # for static_name with this flow's variables
    for task in _enabled_tasks(flow):
        spec = getattr(task, "function", None)
        if task.type == "core.Python" and isinstance(spec, str):
            yield name, task.id, spec
        elif isinstance(task, ChildFlowTask):
            namespace, flow_id = names.static_name(task.namespace), names.static_name(
                task.flowId)
            if namespace is None or flow_id is None or f"{namespace}.{flow_id}" in seen:
                continue
            inner = f"{namespace}.{flow_id}"
            seen.add(inner)
            path = locate_flow(namespace, flow_id)
            try:
                child = parse_flow(path) if path is not None else None
            except FlowError:
                child = None
            if child is not None:
                yield from _child_functions(child, f"{name} > {inner}", pos, seen)


def _strings(value: Any, path: Where) -> Iterable[tuple[Where, str]]:
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _strings(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _strings(v, (*path, i))


def _has_template(value: Any) -> bool:
    if isinstance(value, str):
        return is_template(value)
    if isinstance(value, dict):
        return any(_has_template(k) or _has_template(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_template(v) for v in value)
    return False


def _is_task(value: Any) -> bool:
    return isinstance(value, dict) and isinstance(value.get("type"), str) \
        and known_task_type(value["type"]) and isinstance(value.get("id"), str)


def _is_task_list(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(_is_task(v) for v in value)


def _ids(tasks: Iterable[Any]) -> set[str]:
    """Ids of ``tasks`` and of every task nested in them."""
    out: set[str] = set()

    def walk(value: Any) -> None:
        if _is_task(value):
            out.add(value["id"])
        if isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)

    for task in tasks:
        walk(task)
    return out


class _Checker:
    def __init__(self, pos: PositionMap, environ: Mapping[str, str]) -> None:
        self.pos = pos
        self.secrets = Secrets(environ=environ)
        with contextlib.suppress(SecretError):  # a bad file is reported where it is used
            self.secrets.register_all()  # so text quoted from imports masks every value
        self.exprs = Expressions(self.secrets)
        self.env = {k for k in environ if not k.startswith("WAXFLOW_SECRET_")}
        self.problems: list[Problem] = []
        self.tasks: dict[str, dict[str, Any]] = {}  # id -> the task (ids are unique)
        self.order: dict[str, int] = {}  # id -> place in the file (depth first)
        self._secrets_file_error: str | None = None
        self._reported_file = False

    def problem(self, path: Where, message: str, *, at_key: bool = False) -> None:
        self.problems.append(self.pos.problem(path, message, at_key=at_key))

    # ----------------------------------------------------------------- structure
    def check_flow(self, data: Any) -> None:
        if not isinstance(data, dict):
            return
        main: list[Any] = data["tasks"] if isinstance(data.get("tasks"), list) else []
        handlers: list[Any] = data["errors"] if isinstance(data.get("errors"), list) else []

        def index(value: Any) -> None:
            if _is_task(value):
                self.tasks.setdefault(value["id"], value)
                self.order.setdefault(value["id"], len(self.order))
            if isinstance(value, dict):
                for v in value.values():
                    index(v)
            elif isinstance(value, list):
                for v in value:
                    index(v)

        closing: list[Any] = data["finally"] if isinstance(data.get("finally"), list) else []
        after: list[Any] = (data["afterExecution"]
                            if isinstance(data.get("afterExecution"), list) else [])
        index(main)
        index(handlers)
        index(closing)
        index(after)
        self.visit_list(main, ("tasks",), frozenset(), (), parallel=False)
        self.visit_list(handlers, ("errors",), frozenset(_ids(main)), (), parallel=False)
        # `finally` runs after `tasks` (and `errors`), `afterExecution` after all of them;
        # the flow's `outputs` are rendered at the end of an execution that did not fail
        ended = frozenset(_ids(main) | _ids(handlers))
        self.visit_list(closing, ("finally",), ended, (), parallel=False)
        self.visit_list(after, ("afterExecution",), ended | _ids(closing), (), parallel=False)
        defaults = data.get("pluginDefaults")
        for i, default in enumerate(defaults if isinstance(defaults, list) else []):
            values = default.get("values") if isinstance(default, dict) else None
            if isinstance(values, dict):  # any task may get them: any task id may be read
                templates, _ = self.split(values, ("pluginDefaults", i, "values"))
                for where, source, at_key in templates:
                    self.check_template(where, source, at_key=at_key,
                                        visible=frozenset(self.tasks), task_id="",
                                        enclosing=())
        outputs = data.get("outputs")
        for i, item in enumerate(outputs if isinstance(outputs, list) else []):
            value = item.get("value") if isinstance(item, dict) else None
            if isinstance(value, str) and any(m in value for m in _MARKERS):
                self.check_template(("outputs", i, "value"), value, at_key=False,
                                    visible=frozenset(_ids(main) | _ids(closing)),
                                    task_id=str(item.get("id")), enclosing=())

    def visit_list(self, tasks: list[Any], path: Where, before: frozenset[str],
                   enclosing: tuple[str, ...], *, parallel: bool) -> None:
        """Check a task list; ``before``: ids whose outputs may exist when it starts."""
        seen = set(before)
        for i, task in enumerate(tasks):
            if not _is_task(task):
                continue
            if task.get("disabled") is True:  # never runs, nor do its children
                if not parallel:
                    seen |= _ids([task])  # read later: reported as disabled
                continue
            here = (*path, i)
            visible = before if parallel else frozenset(seen)
            templates, children = self.split(task, here)
            for where, source, at_key in templates:
                self.check_template(where, source, at_key=at_key, visible=visible,
                                    task_id=task["id"], enclosing=enclosing)
            if task["type"] == "core.Python" and isinstance(task.get("function"), str):
                self.check_function((*here, "function"), task["function"])
            inner = (*enclosing, task["id"])
            handlers = [c for c in children if c[0] == (*here, "errors")]
            body = [c for c in children if c[0] != (*here, "errors")]
            for child_path, child_tasks in body:
                is_parallel = task["type"] == "core.Parallel" and child_path == (*here, "tasks")
                self.visit_list(child_tasks, child_path, visible, inner, parallel=is_parallel)
            ran = visible | _ids(t for _, ts in body for t in ts)  # the task itself failed
            for child_path, child_tasks in handlers:
                self.visit_list(child_tasks, child_path, ran, inner, parallel=False)
            if not parallel:
                seen |= _ids([task])

    @staticmethod
    def split(task: dict[str, Any], path: Where
              ) -> tuple[list[tuple[Where, str, bool]], list[tuple[Where, list[Any]]]]:
        """The task's own template strings (path, source, is a key) and its child lists."""
        templates: list[tuple[Where, str, bool]] = []
        children: list[tuple[Where, list[Any]]] = []

        def walk(value: Any, where: Where) -> None:
            if _is_task_list(value):
                children.append((where, value))
            elif isinstance(value, dict):
                for k, v in value.items():
                    if isinstance(k, str) and any(m in k for m in _MARKERS):
                        templates.append(((*where, k), k, True))
                    walk(v, (*where, k))
            elif isinstance(value, list):
                for i, v in enumerate(value):
                    walk(v, (*where, i))
            elif isinstance(value, str) and any(m in value for m in _MARKERS):
                templates.append((where, value, False))

        for key, value in task.items():
            if key not in _NOT_TEMPLATES:
                walk(value, (*path, key))
        return templates, children

    # ----------------------------------------------------------------- checks
    def check_template(self, path: Where, source: str, *, at_key: bool,
                       visible: frozenset[str], task_id: str,
                       enclosing: tuple[str, ...]) -> None:
        refs = self.exprs.references(source)
        for name in sorted(refs.secrets):
            message = self.secret_problem(name)
            if message:
                self.problem(path, message, at_key=at_key)
        for name in sorted(refs.env):
            if name.startswith("WAXFLOW_SECRET_"):
                self.problem(path, f"env.{name} is not visible to expressions (it holds a "
                                   "secret): read it with secret('...') instead",
                             at_key=at_key)
            elif name not in self.env:
                self.problem(path, f"environment variable '{name}' is not set: set it before "
                                   f"`waxflow run`, or write `env.{name} | default(...)`",
                             at_key=at_key)
        for ref in sorted(refs.outputs):
            message = self.outputs_problem(ref, visible, task_id, enclosing)
            if message:
                self.problem(path, message, at_key=at_key)

    def secret_problem(self, name: str) -> str | None:
        if self._secrets_file_error is not None:
            return self._file_problem()
        try:
            if self.secrets.defined(name):
                return None
        except SecretError as exc:  # its text names the file, never a value
            self._secrets_file_error = str(exc)
            return self._file_problem()
        env = Secrets.env_name(name)
        if self.secrets.file is not None:
            where = f"or add '{name}' to the secrets file {self.secrets.file}"
        else:
            where = "or add it to a YAML/JSON file named by $WAXFLOW_SECRETS_FILE"
        return f"secret '{name}' is not defined: set {env} {where}"

    def _file_problem(self) -> str | None:
        if self._reported_file:
            return None
        self._reported_file = True
        return f"{self._secrets_file_error}: fix the file or $WAXFLOW_SECRETS_FILE"

    def outputs_problem(self, ref: str, visible: frozenset[str], task_id: str,
                        enclosing: tuple[str, ...]) -> str | None:
        if ref in visible:
            task = self.tasks.get(ref)
            if task is not None and task.get("disabled") is True:
                return (f"outputs.{ref}: task '{ref}' is disabled, so it never has outputs: "
                        f"enable it or stop reading its outputs")
            return None
        if ref not in self.tasks:
            close = difflib.get_close_matches(ref, sorted(self.tasks), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            return (f"outputs.{ref}: there is no task '{ref}' in this flow{hint}; "
                    "outputs are read by task id")
        if ref == task_id:
            return f"outputs.{ref}: a task cannot read its own outputs"
        if ref in enclosing:
            return (f"outputs.{ref}: this task runs inside task '{ref}' (or as its errors "
                    f"handler), before '{ref}' has outputs: read them in a task after it")
        if self.order[ref] > self.order.get(task_id, -1):
            why = "it comes later in the flow"
        else:
            why = "it is in another branch, or runs in parallel with this task"
        return (f"outputs.{ref}: task '{ref}' cannot have run before this task ({why}): "
                f"move it before this task, or read its outputs in a task that runs after it")

    def check_function(self, path: Where, spec: str) -> None:
        message = _function_problem(spec)
        if message:
            self.problem(path, message)


def _function_problem(spec: str) -> str | None:
    """Why the ``module:function`` of a ``core.Python`` task cannot be called here (its
    module is imported, as a worker would), or None."""
    module_name, _, attr_path = spec.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        return (f"cannot import module '{module_name}' of function '{spec}' "
                f"({type(exc).__name__}: {mask(str(exc))}): install it or add "
                "its directory to PYTHONPATH")
    except Exception as exc:  # the module's own code failed
        return (f"importing module '{module_name}' of function '{spec}' "
                f"failed: {type(exc).__name__}: {mask(str(exc))}")
    for part in attr_path.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            return (f"module '{module_name}' has no '{attr_path}' (no "
                    f"attribute '{part}'): check the name after the colon")
    if not callable(target):
        return f"'{spec}' is not callable: name a function"
    return None
