"""The control commands: an explicit table of names, argument schemas and handlers.

Nothing is looked up by attribute name from client input: a command is in
`COMMANDS` or it is unknown. Each entry's `doc` is the reference text of
docs/protocol.md.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from supervise.protocol.errors import ErrorCode, ProtocolError
from supervise.supervisor.core.runs import RunState
from supervise.supervisor.daemon.ports import HeldElsewhere

if TYPE_CHECKING:
    from supervise.supervisor.daemon.ports import ControlApi


@dataclass(frozen=True, slots=True)
class Arg:
    type: type | tuple[type, ...]
    required: bool = False
    doc: str = ""
    min: float | None = None
    max: float | None = None


Handler = Callable[["ControlApi", Mapping[str, object]], Awaitable[object]]


@dataclass(frozen=True, slots=True)
class Command:
    name: str
    handler: Handler
    doc: str
    args: Mapping[str, Arg] = field(default_factory=dict)
    changes_state: bool = False  # False: read-only CURVE keys may run it too (docs/security.md)
    wire: Handler | None = None  # the same reply for the control socket, maybe encoded already (codec.Prepacked)

    def validate(self, args: Mapping[str, object]) -> dict[str, object]:
        """Check `args` against the schema; raise BAD_ARGS naming the argument."""
        for key in args:
            if key not in self.args:
                raise ProtocolError(
                    ErrorCode.BAD_ARGS, f'{self.name}: unknown argument "{key}"{_did_you_mean(key, self.args)}'
                )
        for key, spec in self.args.items():
            if key not in args:
                if spec.required:
                    raise ProtocolError(ErrorCode.BAD_ARGS, f'{self.name}: missing required argument "{key}"')
                continue
            value = args[key]
            if not _has_type(value, spec.type):
                raise ProtocolError(
                    ErrorCode.BAD_ARGS,
                    f'{self.name}: argument "{key}" must be {_type_name(spec.type)}, got {_wire_type(value)}',
                )
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                low = spec.min if spec.min is not None else -math.inf
                high = spec.max if spec.max is not None else math.inf
                if not (low <= value <= high):  # also rejects NaN
                    raise ProtocolError(
                        ErrorCode.BAD_ARGS,
                        f'{self.name}: argument "{key}" must be between {low:g} and {high:g}, got {value}',
                    )
        return dict(args)


def _has_type(value: object, expected: type | tuple[type, ...]) -> bool:
    types = expected if isinstance(expected, tuple) else (expected,)
    if isinstance(value, bool) and bool not in types:
        return False  # True is an int to Python, not to a protocol
    if isinstance(value, int) and float in types:
        return True
    return isinstance(value, types)


def _type_name(expected: type | tuple[type, ...]) -> str:
    types = expected if isinstance(expected, tuple) else (expected,)
    names = {
        str: "a string",
        int: "an integer",
        float: "a number",
        bool: "true or false",
        dict: "a map",
        list: "an array",
    }
    return " or ".join(names.get(t, t.__name__) for t in types)


def _wire_type(value: object) -> str:
    return {
        bool: "boolean",
        int: "integer",
        float: "float",
        str: "string",
        bytes: "binary",
        list: "array",
        dict: "map",
    }.get(type(value), "nil" if value is None else type(value).__name__)


def _did_you_mean(word: str, choices: Mapping[str, object] | list[str]) -> str:
    import difflib  # only for this message: not held by every daemon

    close = difflib.get_close_matches(word, list(choices), n=1)
    return f'; did you mean "{close[0]}"?' if close else ""


def resolve(name: str, args: Mapping[str, object]) -> tuple[Command, dict[str, object]]:
    """The command called `name` and its validated arguments; ProtocolError if either is wrong."""
    command = COMMANDS.get(name)
    if command is None:
        raise unknown_command(name)
    return command, command.validate(args)


def unknown_command(name: str) -> ProtocolError:
    shown = name if len(name) <= 64 else name[:61] + "..."
    return ProtocolError(
        ErrorCode.UNKNOWN_COMMAND, f'unknown command "{shown}"{_did_you_mean(name, sorted(COMMANDS))} (see "help")'
    )


# -- the table ---------------------------------------------------------------

_TARGET_ARGS = {
    "name": Arg(str, doc="the service"),
    "all": Arg(bool, doc="every service instead of one"),
    "wait": Arg(bool, doc="reply once the change is done (default true)"),
}


async def _ping(sup: ControlApi, args: Mapping[str, object]) -> object:
    return sup.ping()


async def _help(sup: ControlApi, args: Mapping[str, object]) -> object:
    return {
        name: {"doc": cmd.doc, "args": {k: a.doc for k, a in cmd.args.items()}}
        for name, cmd in sorted(COMMANDS.items())
    }


async def _status(sup: ControlApi, args: Mapping[str, object]) -> object:
    name = args.get("name")
    return sup.status(name if isinstance(name, str) else None, detail=args.get("detail") is True)


async def _status_wire(sup: ControlApi, args: Mapping[str, object]) -> object:
    """`status` of every service, the monitoring poll, with its rows kept encoded between calls."""
    if args.get("name") is None and args.get("detail") is not True:
        return sup.status_prepacked()
    return await _status(sup, args)


def _targets(sup: ControlApi, command: str, args: Mapping[str, object]) -> list[str]:
    name = args.get("name")
    if args.get("all") is True:
        if name is not None:
            raise ProtocolError(ErrorCode.BAD_ARGS, f'{command}: give "name" or "all", not both')
        return sup.service_names()
    if not isinstance(name, str):
        raise ProtocolError(ErrorCode.BAD_ARGS, f'{command}: missing required argument "name" (or "all": true)')
    return sup.expand(name)


def _service_action(command: str) -> Handler:
    async def handler(sup: ControlApi, args: Mapping[str, object]) -> object:
        names = _targets(sup, command, args)
        return await sup.act(command, names, wait=args.get("wait", True) is True)

    return handler


def _name(sup: ControlApi, args: Mapping[str, object]) -> str:
    name = str(args["name"])
    sup.require(name)
    return name


def _datetime_arg(command: str, key: str, value: object) -> datetime:
    try:
        when = datetime.fromisoformat(str(value))
    except ValueError:
        raise ProtocolError(
            ErrorCode.BAD_ARGS, f'{command}: argument "{key}" must be an ISO-8601 datetime, got {value!r}'
        ) from None
    if when.utcoffset() is None:
        raise ProtocolError(
            ErrorCode.BAD_ARGS, f'{command}: argument "{key}" needs a UTC offset, e.g. 2026-12-01T09:00:00+01:00'
        )
    return when


async def _run(sup: ControlApi, args: Mapping[str, object]) -> object:
    name = _name(sup, args)
    run = sup.require_scheduler(name).run_now(name, args.get("args"))  # type: ignore[arg-type]
    return {"run_id": run.run_id, "state": str(run.state), "reason": run.reason}


async def _cancel(sup: ControlApi, args: Mapping[str, object]) -> object:
    if sup.scheduler is None:
        raise ProtocolError(ErrorCode.NOT_FOUND, f'no run with id "{args["run_id"]}"')
    try:
        run = sup.scheduler.cancel(str(args["run_id"]))
    except HeldElsewhere as e:  # cluster mode: the node that runs it cancels it (docs/cluster.md)
        return await sup.forward(e.node, "cancel", {"run_id": str(args["run_id"])})
    return {"run_id": run.run_id, "state": str(run.state)}


async def _skip(sup: ControlApi, args: Mapping[str, object]) -> object:
    name = _name(sup, args)
    return {"skipping": sup.require_scheduler(name).skip_next(name)}


async def _next(sup: ControlApi, args: Mapping[str, object]) -> object:
    name = _name(sup, args)
    return {"next": sup.require_scheduler(name).next_fires(name, int(args.get("count", 5)))}  # type: ignore[call-overload]


async def _runs(sup: ControlApi, args: Mapping[str, object]) -> object:
    name = args.get("name")
    state = args.get("state")
    try:
        states = {RunState(str(state))} if state is not None else None
    except ValueError:
        allowed = ", ".join(s.value for s in RunState)
        raise ProtocolError(
            ErrorCode.BAD_ARGS, f'runs: argument "state" must be one of {allowed}; got {state!r}'
        ) from None
    limit = int(args.get("limit", 20))  # type: ignore[call-overload]
    if sup.scheduler is not None:
        await sup.scheduler.written()  # a run a client just added (a one-shot) is listed
    return {"runs": sup.runs(name if isinstance(name, str) else None, states, limit)}


MAX_SCHEDULE_BATCH = 1000


async def _schedule(sup: ControlApi, args: Mapping[str, object]) -> object:
    name = _name(sup, args)
    scheduler = sup.require_scheduler(name)
    if ("at" in args) == ("runs" in args):
        raise ProtocolError(
            ErrorCode.BAD_ARGS, 'schedule: give "at" (one run) or "runs" (a list of {at, args}), not both'
        )
    if "runs" in args:
        entries = _schedule_batch(args["runs"])
        run_ids = await scheduler.schedule_many(name, entries)
        await scheduler.keep_up()
        return {"run_ids": run_ids}
    at = _datetime_arg("schedule", "at", args["at"])
    run_id = scheduler.schedule_at(name, at, args.get("args"))  # type: ignore[arg-type]
    await scheduler.keep_up()
    return {"id": run_id, "run_id": run_id, "at": at.isoformat()}


def _schedule_batch(value: object) -> list[tuple[datetime, Mapping[str, Any] | None]]:
    """The `runs` argument of `schedule`, checked whole before any run is added."""
    assert isinstance(value, list)
    if not 1 <= len(value) <= MAX_SCHEDULE_BATCH:
        raise ProtocolError(
            ErrorCode.BAD_ARGS, f'schedule: "runs" must hold 1 to {MAX_SCHEDULE_BATCH} entries, got {len(value)}'
        )
    entries: list[tuple[datetime, Mapping[str, Any] | None]] = []
    for i, entry in enumerate(value):
        if not isinstance(entry, dict) or "at" not in entry or set(entry) - {"at", "args"}:
            raise ProtocolError(
                ErrorCode.BAD_ARGS, f"schedule: runs[{i}] must be a map {{at, args}}, got {entry!r:.80}"
            )
        run_args = entry.get("args")
        if run_args is not None and not isinstance(run_args, dict):
            raise ProtocolError(ErrorCode.BAD_ARGS, f"schedule: runs[{i}].args must be a map")
        entries.append((_datetime_arg("schedule", f"runs[{i}].at", entry["at"]), run_args))
    return entries


async def _backfill(sup: ControlApi, args: Mapping[str, object]) -> object:
    name = _name(sup, args)
    start = _datetime_arg("backfill", "from", args["from"])
    end = _datetime_arg("backfill", "to", args["to"])
    return {"run_ids": sup.require_scheduler(name).backfill(name, start, end)}


async def _add(sup: ControlApi, args: Mapping[str, object]) -> object:
    return await sup.add(str(args["name"]), args["spec"])  # type: ignore[arg-type]


async def _remove(sup: ControlApi, args: Mapping[str, object]) -> object:
    return await sup.remove(str(args["name"]))


async def _drop_tenant(sup: ControlApi, args: Mapping[str, object]) -> object:
    return await sup.drop_tenant(str(args["tenant"]))


async def _update(sup: ControlApi, args: Mapping[str, object]) -> object:
    unset = args.get("unset", [])
    assert isinstance(unset, list)
    if not all(isinstance(key, str) for key in unset):
        raise ProtocolError(ErrorCode.BAD_ARGS, 'update: argument "unset" must be an array of key names')
    spec = args.get("spec", {})
    if not spec and not unset and args.get("replace") is not True:
        raise ProtocolError(ErrorCode.BAD_ARGS, 'update: give "spec" (keys to set), "unset" (keys to remove), or both')
    return await sup.update(str(args["name"]), spec, unset=unset, replace_all=args.get("replace") is True)  # type: ignore[arg-type]


async def _scale(sup: ControlApi, args: Mapping[str, object]) -> object:
    return await sup.scale(str(args["name"]), int(args["processes"]))  # type: ignore[call-overload]


async def _reload(sup: ControlApi, args: Mapping[str, object]) -> object:
    return await sup.reload(dry_run=args.get("dry_run") is True)


async def _shutdown(sup: ControlApi, args: Mapping[str, object]) -> object:
    sup.request_shutdown()
    return {"shutting_down": True}


# -- observability (docs/observability.md) -------------------------------------


async def _metrics(sup: ControlApi, args: Mapping[str, object]) -> object:
    name = args.get("name")
    if isinstance(name, str):
        sup.require(name)
    return sup.observability.metrics(name if isinstance(name, str) else None)


async def _events(sup: ControlApi, args: Mapping[str, object]) -> object:
    service = args.get("service")
    if isinstance(service, str):
        sup.require(service)
    since, limit = args.get("since", 0), args.get("limit", 1000)
    assert isinstance(since, int) and isinstance(limit, int)
    return sup.observability.events_since(since, service=service if isinstance(service, str) else None, limit=limit)


async def _notifications(sup: ControlApi, args: Mapping[str, object]) -> object:
    limit = int(args.get("limit", 20))  # type: ignore[call-overload]
    return {"notifications": await sup.notifications(failed_only=args.get("failed") is True, limit=limit)}


async def _logs(sup: ControlApi, args: Mapping[str, object]) -> object:
    name = str(args["name"])
    sup.require(name)
    lines = args.get("lines", 100)
    assert isinstance(lines, int)
    return await asyncio.to_thread(sup.observability.logs, name, lines)


COMMANDS: dict[str, Command] = {
    c.name: c
    for c in [
        Command("ping", _ping, "Liveness of the supervisor: its pid, version and uptime."),
        Command("help", _help, "The commands this supervisor understands, with their arguments."),
        Command(
            "status",
            _status,
            "State of every service, or of one: state, pid, uptime, restarts, heartbeat age, last exit and error,"
            " CPU and memory, schedule. With detail: also its configuration facts and counters.",
            {
                "name": Arg(str, doc="only this service"),
                "detail": Arg(
                    bool,
                    doc="also service, instance, kind, critical, origin, incarnation, backoff_remaining,"
                    " max_memory_bytes, log_dropped_bytes, log_write_errors and metrics",
                ),
            },
            wire=_status_wire,
        ),
        Command("start", _service_action("start"), "Start a stopped, exited or FATAL service.", _TARGET_ARGS, True),
        Command(
            "stop",
            _service_action("stop"),
            "Stop a service: stop message and stop_signal, then SIGKILL to its group after stop_timeout.",
            _TARGET_ARGS,
            True,
        ),
        Command("restart", _service_action("restart"), "Stop (if running), then start.", _TARGET_ARGS, True),
        Command(
            "pause",
            _service_action("pause"),
            "Pause a running service (Python: ctx.paused, cooperative; command: SIGSTOP to its group).",
            _TARGET_ARGS,
            True,
        ),
        Command("resume", _service_action("resume"), "Resume a paused service.", _TARGET_ARGS, True),
        Command("shutdown", _shutdown, "Stop every service and exit the supervisor.", {}, True),
        Command(
            "add",
            _add,
            "Register and start a service; `spec` has the keys of a [services.NAME] table. Kept across restarts.",
            {"name": Arg(str, True), "spec": Arg(dict, True, "the service's config keys")},
            True,
        ),
        Command("remove", _remove, "Stop a service (as stop does) and deregister it.", {"name": Arg(str, True)}, True),
        Command(
            "drop_tenant",
            _drop_tenant,
            "Close and delete a tenant's own run-history store (its SQLite file or PostgreSQL schema);"
            " `supervise tenant delete` calls it after removing the tenant's services.",
            {"tenant": Arg(str, True, "the tenant's name")},
            True,
        ),
        Command(
            "update",
            _update,
            "Change a service's settings: the keys in `spec` are set, those in `unset` removed, the others kept;"
            " the merged table is validated as a whole. With `replace`, `spec` is the whole new table."
            " Restarts the service only if its process would differ.",
            {
                "name": Arg(str, True),
                "spec": Arg(
                    dict,
                    doc="keys to set, as in a [services.NAME] table (setting command or target, or a"
                    " trigger, drops the other one)",
                ),
                "unset": Arg(list, doc="keys to remove: they take their defaults"),
                "replace": Arg(bool, doc="`spec` is the whole new table (default false)"),
            },
            True,
        ),
        Command(
            "scale",
            _scale,
            "Run N identical processes of a service (instances NAME, NAME:1, NAME:2 ...).",
            {"name": Arg(str, True), "processes": Arg(int, True, "how many", min=1, max=1000)},
            True,
        ),
        Command(
            "reload",
            _reload,
            "Re-read the config file; apply only the difference. An invalid file changes nothing.",
            {"dry_run": Arg(bool, doc="only say what would change")},
            True,
        ),
        Command(
            "run",
            _run,
            "Run a scheduled service now (its overlap policy applies); returns the run id.",
            {"name": Arg(str, True, "the service"), "args": Arg(dict, doc="keyword arguments of this run")},
            True,
        ),
        Command(
            "cancel",
            _cancel,
            "Cancel a run: cooperatively, then by force after cancel_grace.",
            {"run_id": Arg(str, True)},
            True,
        ),
        Command("skip", _skip, "Skip the next occurrence of a scheduled service.", {"name": Arg(str, True)}, True),
        Command(
            "next",
            _next,
            "The next fire times of a scheduled service (ISO-8601, in its timezone's offset).",
            {"name": Arg(str, True), "count": Arg(int, doc="how many (default 5)", min=1, max=1000)},
        ),
        Command(
            "runs",
            _runs,
            "Run history, newest first, with the runs still to come (pending, queued); each with its idempotency key.",
            {
                "name": Arg(str, doc="only this service"),
                "state": Arg(str, doc="only runs in this state"),
                "limit": Arg(int, doc="how many (default 20)", min=1, max=10_000),
            },
        ),
        Command(
            "schedule",
            _schedule,
            "Add a one-shot occurrence of a service at a datetime: a pending run, stored at once; "
            "replies {id, run_id, at} (id = run_id, for cancel and runs). With runs instead of at: "
            "many at once, replies {run_ids} in their order.",
            {
                "name": Arg(str, True),
                "at": Arg(str, False, "ISO-8601 with offset"),
                "args": Arg(dict),
                "runs": Arg(list, False, f"many one-shots: a list of {{at, args}} maps (1 to {MAX_SCHEDULE_BATCH})"),
            },
            True,
        ),
        Command(
            "backfill",
            _backfill,
            "Run every occurrence of a schedule between two datetimes, in order.",
            {"name": Arg(str, True), "from": Arg(str, True), "to": Arg(str, True)},
            True,
        ),
        Command(
            "metrics",
            _metrics,
            "Aggregated metrics of the supervisor and every service (or one): CPU, memory, "
            "restarts, exits by cause, runs, custom counters.",
            {"name": Arg(str, doc="only this service")},
        ),
        Command(
            "events",
            _events,
            "Replay recent events after a sequence number, oldest first (a bounded ring; `missed` "
            "counts what left it).",
            {
                "since": Arg(int, doc="return events with seq greater than this (default 0: all kept)", min=0),
                "service": Arg(str, doc="only this service's events"),
                "limit": Arg(int, doc="at most this many (default 1000)", min=1, max=1000),
            },
        ),
        Command(
            "logs",
            _logs,
            "The last lines of a service's captured stdout/stderr, across rotated files, and where to follow from.",
            {"name": Arg(str, True, "the service"), "lines": Arg(int, doc="how many (default 100)", min=0, max=10_000)},
        ),
        Command(
            "notifications",
            _notifications,
            "The notifications outbox, newest first: each message per channel, its state, attempts and last error.",
            {
                "failed": Arg(bool, doc="only those given up on"),
                "limit": Arg(int, doc="at most this many (default 20)", min=1, max=10_000),
            },
        ),
    ]
}


_DEFAULT_ARG_DOCS = {
    "name": "the service",
    "run_id": "a run id, as `run` or `runs` return it",
    "spec": "the keys of a [services.NAME] table",
    "from": "ISO-8601 datetime with UTC offset",
    "to": "ISO-8601 datetime with UTC offset",
}


def reference_markdown() -> str:
    """The `## Commands` section of docs/protocol.md, generated from `COMMANDS`."""
    lines = [
        "## Commands",
        "",
        "Generated from the dispatch table (`supervise.supervisor.daemon.commands.reference_markdown()`);",
        "a test keeps this section equal to it. Arguments marked * are required.",
        "",
    ]
    for name, command in sorted(COMMANDS.items()):
        lines.append(f"### `{name}`" + (" (changes state)" if command.changes_state else ""))
        lines.append("")
        lines.append(command.doc)
        lines.append("")
        if command.args:
            lines.append("| argument | type | meaning |")
            lines.append("|---|---|---|")
            for arg_name, arg in command.args.items():
                star = "*" if arg.required else ""
                bounds = f" ({arg.min:g} to {arg.max:g})" if arg.min is not None and arg.max is not None else ""
                doc = arg.doc or _DEFAULT_ARG_DOCS.get(arg_name, "")
                lines.append(f"| `{arg_name}`{star} | {_type_name(arg.type)} | {doc}{bounds} |")
            lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    print(reference_markdown())
