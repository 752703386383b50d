"""Resolve a target string ("pkg.mod:func" or "pkg.mod:ServiceClass") and call it."""

from __future__ import annotations

import asyncio
import functools
import importlib
import inspect
import re
from collections.abc import Callable

from supervise.protocol.errors import SuperviseError
from supervise.workers.context import JobContext
from supervise.workers.registry import registry
from supervise.workers.service import Service


class TargetError(SuperviseError):
    """A target string that does not name something callable."""


def resolve_target(spec: str) -> Callable[..., object] | type[Service]:
    """Import `module:attribute` and return the attribute, or `module@job` from the registry.

    Raises:
        TargetError: with what was wrong and how to write it.
    """
    if "@" in spec:
        module_name, _, job = spec.partition("@")
        importlib.import_module(module_name)  # importing it registers its jobs
        return registry.get(job)
    module_name, sep, attr_path = spec.partition(":")
    if not sep or not module_name or not attr_path:
        raise TargetError(f'target "{spec}" must look like "package.module:function"')
    module = importlib.import_module(module_name)
    obj: object = module
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise TargetError(f'target "{spec}": module {module_name} has no attribute "{attr_path}"') from None
    if isinstance(obj, type) and issubclass(obj, Service):
        return obj
    if not callable(obj):
        raise TargetError(f'target "{spec}" is a {type(obj).__name__}, not a function or Service subclass')
    return obj


def call_target(target: Callable[..., object] | type[Service], ctx: JobContext, kwargs: dict[str, object]) -> object:
    """Run the target once in this thread; coroutine functions get their own event loop."""
    if isinstance(target, type) and issubclass(target, Service):
        service = target()
        service.setup()
        try:
            service.run(ctx)
            return None
        finally:
            service.teardown()
    args = (ctx,) if wants_context(target, kwargs) else ()
    result = target(*args, **kwargs)
    if inspect.iscoroutine(result):
        return asyncio.run(result)
    return result


CONTEXT_NAMES = frozenset({"ctx", "context"})
_CONTEXT_TYPE = re.compile(r"\b(JobContext|RunContext)\b")


def wants_context(func: Callable[..., object], kwargs: dict[str, object]) -> bool:
    """True when the target's first positional parameter is for the context.

    That is when it is required, or named `ctx`/`context`, or annotated with
    `JobContext`/`RunContext` (also optional: `ctx: JobContext | None = None`),
    and the run's arguments do not give it by name.
    """
    try:
        first = _context_parameter(func)
    except TypeError:  # an unhashable callable: read it every time
        first = _context_parameter.__wrapped__(func)
    return first is not None and first not in kwargs


@functools.lru_cache(maxsize=64)
def _context_parameter(func: Callable[..., object]) -> str | None:
    """The name of the target's first positional parameter when it is for the context, else None
    (read once per target: inspecting a signature costs more than a short run)."""
    try:
        params = list(inspect.signature(func).parameters.values())
    except (TypeError, ValueError):
        return None
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if not positional:
        return None
    first = positional[0]
    wanted = (
        first.default is inspect.Parameter.empty or first.name in CONTEXT_NAMES or _is_context_type(first.annotation)
    )
    return first.name if wanted else None


def _is_context_type(annotation: object) -> bool:
    """`JobContext`, a subclass, or an annotation (a string too) that names one."""
    if annotation is inspect.Parameter.empty:
        return False
    if isinstance(annotation, type):
        return issubclass(annotation, JobContext)
    return _CONTEXT_TYPE.search(str(annotation)) is not None
