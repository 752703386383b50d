"""Worker-channel messages: every kind in both directions, and everything they refuse."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping

import msgpack
import pytest

from supervise.protocol import (
    SUPERVISOR_KINDS,
    WORKER_KINDS,
    DecodeError,
    ErrorCode,
    WorkerMessage,
    decode_worker_message,
    encode_worker_message,
)
from supervise.protocol.messages import SUPERVISOR_FIELDS, WORKER_FIELDS, FieldType

TOKEN = "tok-3f9a"

# One valid message of every kind, with every field present.
WORKER_SAMPLES: dict[str, dict[str, object]] = {
    "hello": {"token": TOKEN, "pid": 4242},
    "heartbeat": {"token": TOKEN},
    "watchdog": {"token": TOKEN},
    "error": {"token": TOKEN, "message": "boom", "traceback": "Traceback ...\nValueError: boom"},
    "run_started": {"token": TOKEN, "run_id": "r-1", "at": 1767225600.25},
    "run_progress": {"token": TOKEN, "run_id": "r-1", "progress": 0.5, "message": "half way"},
    "run_finished": {
        "token": TOKEN,
        "run_id": "r-1",
        "ok": True,
        "result": {"rows": [1, 2, 3]},
        "error": None,
        "traceback": None,
        "at": 1767225601.5,
    },
    "run_lease_expired": {"token": TOKEN, "run_id": "r-1", "at": 1767225601.5},
    "metrics": {"token": TOKEN, "counters": {"jobs": 3}, "gauges": {"queue": 1.5}},
    "log": {"token": TOKEN, "level": "info", "message": "ready"},
}
SUPERVISOR_SAMPLES: dict[str, dict[str, object]] = {
    "heartbeat": {},
    "stop": {},
    "pause": {},
    "resume": {},
    "run": {
        "run_id": "r-1",
        "args": {"n": 1},
        "nominal_time": "2025-01-01T00:00:00Z",
        "attempt": 1,
        "key": "r-0",
        "not_before": 1735689600.0,
        "epoch": 3,
        "lease_until": 12345.5,
        "lease_grace_ms": 200,
    },
    "cancel": {"run_id": "r-1"},
    "lease": {"runs": {"r-1": 12350.5}},
}

# A value of the wrong type for each field type (bool is never a number).
WRONG: Mapping[FieldType, object] = {
    FieldType.STR: 7,
    FieldType.INT: True,
    FieldType.BOOL: 1,
    FieldType.MAP: [1],
    FieldType.NUMBER_MAP: {"x": "1"},
    FieldType.OPT_STR: b"bytes",
    FieldType.OPT_NUMBER: False,
}


def frame(kind: object, **fields: object) -> bytes:
    """A worker-channel frame built by hand, bypassing the encoder's checks."""
    return msgpack.packb({"v": 1, "k": kind, **fields})


def rejects(data: bytes, **kwargs: object) -> DecodeError:
    with pytest.raises(DecodeError) as info:
        decode_worker_message(data, **kwargs)  # type: ignore[arg-type]
    return info.value


def test_the_samples_cover_every_kind() -> None:
    assert set(WORKER_SAMPLES) == WORKER_KINDS == set(WORKER_FIELDS)
    assert set(SUPERVISOR_SAMPLES) == SUPERVISOR_KINDS == set(SUPERVISOR_FIELDS)


@pytest.mark.parametrize("kind", sorted(WORKER_SAMPLES))
def test_worker_message_round_trips(kind: str) -> None:
    fields = WORKER_SAMPLES[kind]
    data = encode_worker_message(kind, **fields)
    assert msgpack.unpackb(data) == {"v": 1, "k": kind, **fields}
    assert decode_worker_message(data, sender="worker") == WorkerMessage(kind, fields)
    assert decode_worker_message(data) == WorkerMessage(kind, fields)


@pytest.mark.parametrize("kind", sorted(SUPERVISOR_SAMPLES))
def test_supervisor_message_round_trips(kind: str) -> None:
    fields = SUPERVISOR_SAMPLES[kind]
    data = encode_worker_message(kind, **fields)
    assert decode_worker_message(data, sender="supervisor") == WorkerMessage(kind, fields)
    assert decode_worker_message(data) == WorkerMessage(kind, fields)


def test_nullable_fields_left_out_decode_as_none() -> None:
    message = decode_worker_message(frame("run_progress", token=TOKEN, run_id="r-1"))
    assert message.fields == {"token": TOKEN, "run_id": "r-1", "progress": None, "message": None}
    encoded = encode_worker_message("run_finished", token=TOKEN, run_id="r-1", ok=False)
    assert msgpack.unpackb(encoded)["error"] is None
    run = decode_worker_message(frame("run", run_id="r", args={}, attempt=2))
    assert run.fields["nominal_time"] is None


def test_progress_accepts_ints_floats_and_nil() -> None:
    for progress in (0, 0.25, None):
        data = encode_worker_message("run_progress", token=TOKEN, run_id="r", progress=progress)
        assert decode_worker_message(data).fields["progress"] == progress


def _wrong_field_cases() -> list[tuple[str, str, str, object]]:
    cases = []
    for sender, table in (("worker", WORKER_FIELDS), ("supervisor", SUPERVISOR_FIELDS)):
        for kind, fields in table.items():
            for name, ftype in fields.items():
                if ftype is not FieldType.ANY:
                    cases.append((sender, kind, name, WRONG[ftype]))
    return cases


@pytest.mark.parametrize(
    ("sender", "kind", "name", "bad"),
    _wrong_field_cases(),
    ids=[f"{s}-{k}-{n}" for s, k, n, _ in _wrong_field_cases()],
)
def test_a_field_of_the_wrong_type_is_rejected(sender: str, kind: str, name: str, bad: object) -> None:
    samples = WORKER_SAMPLES if sender == "worker" else SUPERVISOR_SAMPLES
    fields = {**samples[kind], name: bad}
    error = rejects(frame(kind, **fields), sender=sender)
    assert error.code == ErrorCode.BAD_REQUEST
    assert error.message.startswith(f'{kind}: field "{name}" must be ')
    with pytest.raises(ValueError, match=f'field "{name}" must be'):
        encode_worker_message(kind, **fields)


@pytest.mark.parametrize("kind", sorted(WORKER_KINDS))
def test_every_worker_message_requires_a_token(kind: str) -> None:
    fields = {k: v for k, v in WORKER_SAMPLES[kind].items() if k != "token"}
    error = rejects(frame(kind, **fields), sender="worker")
    assert error.code == ErrorCode.BAD_REQUEST
    assert error.message == f'{kind}: missing field "token" (str)'


def test_without_a_sender_a_tokenless_heartbeat_is_the_supervisors() -> None:
    assert decode_worker_message(frame("heartbeat")) == WorkerMessage("heartbeat", {})
    assert decode_worker_message(frame("heartbeat", token=TOKEN)).fields == {"token": TOKEN}
    with pytest.raises(DecodeError, match='heartbeat: field "token" must be str, got int'):
        decode_worker_message(frame("heartbeat", token=5))


def test_a_token_must_be_a_string() -> None:
    error = rejects(frame("hello", token=None, pid=1), sender="worker")
    assert error.message == 'hello: field "token" must be str, got nil'


def test_missing_required_field_is_named() -> None:
    assert rejects(frame("hello", token=TOKEN)).message == 'hello: missing field "pid" (int)'


def test_unknown_field_is_rejected_and_the_allowed_ones_listed() -> None:
    error = rejects(frame("hello", token=TOKEN, pid=1, pdi=2))
    assert error.message == 'hello: unknown field "pdi"; allowed: token, pid'
    error = rejects(frame("stop", token=TOKEN), sender="supervisor")
    assert error.message == 'stop: unknown field "token"; allowed: none'


def test_unknown_kind_is_rejected() -> None:
    error = rejects(frame("x", token=TOKEN))
    assert (error.code, error.message) == (ErrorCode.BAD_REQUEST, 'unknown worker message kind "x"')
    with pytest.raises(ValueError, match='unknown worker message kind "x"'):
        encode_worker_message("x", token=TOKEN)


def test_a_kind_from_the_wrong_direction_is_rejected_when_the_sender_is_known() -> None:
    error = rejects(encode_worker_message("stop"), sender="worker")
    assert error.message.startswith('unknown worker message kind "stop"; allowed: error, heartbeat')
    error = rejects(encode_worker_message("hello", token=TOKEN, pid=1), sender="supervisor")
    assert error.message.startswith('unknown supervisor message kind "hello"; allowed: cancel')


def test_metrics_values_must_be_numbers() -> None:
    assert rejects(frame("metrics", token=TOKEN, counters={"a": True}, gauges={})).message == (
        'metrics: field "counters" must be map of str to number, got map'
    )


@pytest.mark.parametrize(
    ("data", "code", "text"),
    [
        (
            msgpack.packb({"k": "heartbeat", "token": TOKEN}),
            ErrorCode.VERSION,
            'no protocol version "v"',
        ),
        (
            msgpack.packb({"v": 2, "k": "heartbeat"}),
            ErrorCode.VERSION,
            "unsupported protocol version 2",
        ),
        (msgpack.packb({"v": 1, "token": TOKEN}), ErrorCode.BAD_REQUEST, 'field "k"'),
        (
            msgpack.packb({"v": 1, "k": 3}),
            ErrorCode.BAD_REQUEST,
            'field "k" (the message kind) is required',
        ),
        (msgpack.packb(["heartbeat"]), ErrorCode.MALFORMED, "message must be a map, got array"),
        (b"\x81\xa1v", ErrorCode.MALFORMED, "message is not valid msgpack"),
        (
            msgpack.packb({"v": 1, "k": "log", "x": "y" * 70_000}),
            ErrorCode.TOO_LARGE,
            "string of 70000",
        ),
        (msgpack.packb({1: 1}), ErrorCode.MALFORMED, "map keys must be strings"),
    ],
    ids=[
        "no-version",
        "version-2",
        "no-kind",
        "kind-int",
        "not-a-map",
        "truncated",
        "too-large",
        "int-key",
    ],
)
def test_malformed_worker_frames_are_rejected(data: bytes, code: ErrorCode, text: str) -> None:
    error = rejects(data)
    assert error.code == code
    assert text in error.message


def test_run_finished_result_may_be_anything_msgpack_carries() -> None:
    for result in (None, 1, "x", [1, {"a": b"\x00"}], {"nested": {"deep": [1.5]}}):
        data = encode_worker_message("run_finished", token=TOKEN, run_id="r", ok=True, result=result)
        assert decode_worker_message(data).fields["result"] == result


def test_importing_the_protocol_package_does_not_import_zmq() -> None:
    code = (
        "import sys, supervise.protocol as p;"
        "p.decode_worker_message(p.encode_worker_message('stop'));"
        "assert 'zmq' not in sys.modules, 'zmq imported';"
        "assert p.Client.__name__ == 'Client' and 'zmq' in sys.modules;"
        "assert 'zmq.asyncio' not in sys.modules, 'zmq.asyncio imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
