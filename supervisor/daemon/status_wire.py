"""`status` rows as the control socket sends them: each row encoded once, again only when it changed.

Monitoring polls `status` of every service. A row (`status.status_fields`) is a function
of the service's core record, which the state machine replaces at every step and never
mutates, of its config and of its last resource sample, plus three ages (uptime,
heartbeat age, last exit's age). So the row is kept encoded, cut where the ages go, and
re-encoded only when the record, the config or the sample is another object than the
one it was encoded from; a call packs the ages (a float each) between the kept bytes.
A scheduled service's row also shows what the scheduler knows, which changes without a
step: it is encoded whole at every call.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

from supervise.protocol.codec import map_header, pack, pack_float
from supervise.supervisor.daemon.runtime import ServiceRuntime
from supervise.supervisor.daemon.status import Resources, Since, status_fields, status_row

if TYPE_CHECKING:
    from supervise.supervisor.daemon.ports import ScheduleView

SampleOf = Callable[[ServiceRuntime], object]
"""The object a service's CPU and RSS figures are read from (replaced at each sample), or None."""


class _Row:
    """One service's encoded row, `head` then for each age its instant and the bytes after it, and
    what it was encoded from."""

    __slots__ = ("record", "config", "sample", "head", "ages")

    def __init__(self, svc: ServiceRuntime, sample: object, resources: Resources, scheduler: ScheduleView | None):
        self.record = svc.record
        self.config = svc.config
        self.sample = sample
        cuts: list[bytes] = []
        since_ms: list[int] = []
        held: list[bytes] = []
        _encode_map(status_fields(svc, resources, scheduler), held, cuts, since_ms)
        cuts.append(b"".join(held))
        self.head = cuts[0]
        self.ages = tuple(zip(since_ms, cuts[1:], strict=True))


def _encode_map(fields: Mapping[str, object], held: list[bytes], cuts: list[bytes], since_ms: list[int]) -> None:
    """Encode `fields` into `held`; at each `Since`, the bytes so far go to `cuts` and its instant to `since_ms`.

    The entries between two ages are packed as one map whose header is dropped: at every
    sample all rows are encoded again, and one `pack` a stretch costs a tenth of one an entry.
    """
    held.append(map_header(len(fields)))
    plain: dict[str, object] = {}
    for key, value in fields.items():
        if isinstance(value, Since) or (isinstance(value, dict) and any(isinstance(v, Since) for v in value.values())):
            held.append(_entries(plain))
            plain.clear()
            held.append(pack(key))
            if isinstance(value, Since):
                cuts.append(b"".join(held))
                held.clear()
                since_ms.append(value.at_ms)
            else:
                _encode_map(value, held, cuts, since_ms)
        else:
            plain[key] = value
    held.append(_entries(plain))


def _entries(fields: Mapping[str, object]) -> bytes:
    """The key/value pairs of `fields` as msgpack, without the map's header."""
    return pack(fields)[len(map_header(len(fields))) :]


class EncodedRows:
    """The encoded `status` rows of a supervisor's services, kept between calls."""

    def __init__(self) -> None:
        self._rows: dict[str, _Row] = {}

    def encode(
        self,
        services: Sequence[ServiceRuntime],
        now_ms: int,
        sample_of: SampleOf,
        resources: Resources,
        scheduler: ScheduleView | None,
    ) -> tuple[int, bytes]:
        """The rows of `services`, in order, as `status_row` at `now_ms` would be packed: (count, bytes)."""
        rows = self._rows
        out: list[bytes] = []
        append = out.append
        for svc in services:
            row = rows.get(svc.name)
            if row is None or row.config is not svc.config or row.record is not svc.record:
                if svc.config.schedule is not None:
                    append(pack(status_row(svc, now_ms, resources, scheduler)))
                    continue
                row = rows[svc.name] = _Row(svc, sample_of(svc), resources, scheduler)
            elif row.sample is not sample_of(svc):
                row = rows[svc.name] = _Row(svc, sample_of(svc), resources, scheduler)
            append(row.head)
            for at_ms, after in row.ages:
                append(pack_float((now_ms - at_ms) / 1000))
                append(after)
        count = len(services)
        if len(rows) > count:  # services were removed: forget their rows
            kept = {svc.name for svc in services}
            self._rows = {name: row for name, row in rows.items() if name in kept}
        return count, b"".join(out)
