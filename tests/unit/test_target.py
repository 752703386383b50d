"""Which targets receive the context: `call_target` with real functions."""

from __future__ import annotations

from typing import Optional

from supervise.workers.context import JobContext, RunContext
from supervise.workers.target import call_target


def _ctx() -> JobContext:
    return JobContext(service="t", worker_id="t/1")


def optional_ctx(ctx=None):  # type: ignore[no-untyped-def]  # the untyped idiom is the point
    return ctx


def optional_context(context: object = None) -> object:
    return context


def annotated_optional(c: JobContext | None = None) -> object:
    return c


def annotated_typing_optional(c: Optional[JobContext] = None) -> object:  # noqa: UP045 - the old spelling on purpose
    return c


def annotated_run_context(c: "RunContext | None" = None) -> object:  # noqa: UP037 - a string annotation on purpose
    return c


def required_first(anything: object) -> object:
    return anything


def optional_other(limit: int = 3) -> object:
    return limit


def no_params() -> object:
    return "none"


async def async_optional(ctx: object = None) -> object:
    return ctx


def test_an_optional_parameter_named_ctx_or_context_gets_the_context() -> None:
    ctx = _ctx()
    assert call_target(optional_ctx, ctx, {}) is ctx
    assert call_target(optional_context, ctx, {}) is ctx
    assert call_target(async_optional, ctx, {}) is ctx


def test_an_optional_parameter_annotated_with_the_context_type_gets_it() -> None:
    ctx = _ctx()
    assert call_target(annotated_optional, ctx, {}) is ctx
    assert call_target(annotated_typing_optional, ctx, {}) is ctx
    assert call_target(annotated_run_context, ctx, {}) is ctx


def test_a_required_first_parameter_gets_it_whatever_its_name() -> None:
    ctx = _ctx()
    assert call_target(required_first, ctx, {}) is ctx


def test_other_optional_parameters_keep_their_default() -> None:
    ctx = _ctx()
    assert call_target(optional_other, ctx, {}) == 3
    assert call_target(no_params, ctx, {}) == "none"


def test_an_argument_given_by_name_wins() -> None:
    ctx = _ctx()
    assert call_target(optional_ctx, ctx, {"ctx": "given"}) == "given"
    assert call_target(optional_other, ctx, {"limit": 7}) == 7
