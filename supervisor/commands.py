"""The control commands: an explicit table of names, argument schemas and handlers.

Nothing is looked up by attribute name from client input: a command is in
`COMMANDS` or it is unknown. Each entry's `doc` is the reference text of
docs/protocol.md.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from supervise.protocol.errors import ErrorCode, ProtocolError

if TYPE_CHECKING:
    from supervise.supervisor.supervisor import Supervisor


@dataclass(frozen=True, slots=True)
class Arg:
    type: type | tuple[type, ...]
    required: bool = False
    doc: str = ""
    min: float | None = None
    max: float | None = None


Handler = Callable[["Supervisor", Mapping[str, object]], Awaitable[object]]


@dataclass(frozen=True, slots=True)
class Command:
    name: str
    handler: Handler
    doc: str
    args: Mapping[str, Arg] = field(default_factory=dict)
    changes_state: bool = False  # for read-only client keys later: False means safe to allow

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
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false", dict: "a map", list: "an array"}
    return " or ".join(names.get(t, t.__name__) for t in types)


def _wire_type(value: object) -> str:
    return {bool: "boolean", int: "integer", float: "float", str: "string", bytes: "binary", list: "array", dict: "map"}.get(
        type(value), "nil" if value is None else type(value).__name__
    )


def _did_you_mean(word: str, choices: Mapping[str, object] | list[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f'; did you mean "{close[0]}"?' if close else ""


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


async def _ping(sup: Supervisor, args: Mapping[str, object]) -> object:
    return sup.ping()


async def _help(sup: Supervisor, args: Mapping[str, object]) -> object:
    return {
        name: {"doc": cmd.doc, "args": {k: a.doc for k, a in cmd.args.items()}} for name, cmd in sorted(COMMANDS.items())
    }


async def _status(sup: Supervisor, args: Mapping[str, object]) -> object:
    name = args.get("name")
    return sup.status(name if isinstance(name, str) else None)


def _targets(sup: Supervisor, command: str, args: Mapping[str, object]) -> list[str]:
    name = args.get("name")
    if args.get("all") is True:
        if name is not None:
            raise ProtocolError(ErrorCode.BAD_ARGS, f'{command}: give "name" or "all", not both')
        return sup.service_names()
    if not isinstance(name, str):
        raise ProtocolError(ErrorCode.BAD_ARGS, f'{command}: missing required argument "name" (or "all": true)')
    sup.require(name)
    return [name]


def _service_action(command: str) -> Handler:
    async def handler(sup: Supervisor, args: Mapping[str, object]) -> object:
        names = _targets(sup, command, args)
        return await sup.act(command, names, wait=args.get("wait", True) is True)

    return handler


async def _shutdown(sup: Supervisor, args: Mapping[str, object]) -> object:
    sup.request_shutdown()
    return {"shutting_down": True}


COMMANDS: dict[str, Command] = {
    c.name: c
    for c in [
        Command("ping", _ping, "Liveness of the supervisor: its pid, version and uptime."),
        Command("help", _help, "The commands this supervisor understands, with their arguments."),
        Command(
            "status",
            _status,
            "State of every service, or of one: state, pid, restarts, uptime, last exit and error.",
            {"name": Arg(str, doc="only this service")},
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
    ]
}
