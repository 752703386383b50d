"""The notifications journal: lines of earlier starts come back in order; a torn line is left out."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from supervise.supervisor.daemon.observation import Observation
from supervise.supervisor.daemon.outbox_journal import COMPACT_BYTES, ObservationJournal


def obs(n: int) -> Observation:
    return Observation(
        rule="default",
        subject="web",
        event="failure",
        fact=f"svc:web:i:{n}",
        on=frozenset({"failure", "fatal"}),
        min_interval_ms=300_000,
        targets=("chat",),
        detail={"code": 1, "signal": None},
        wall=datetime(2026, 12, 1, 12, 0, n, tzinfo=UTC),
        last_error="exited with code 1",
        incarnation=n,
        log_path=Path("/state/logs/web.log"),
        log_backups=5,
    )


def test_an_earlier_starts_lines_come_back_in_order_and_a_torn_last_line_is_left_out(tmp_path: Path) -> None:
    first = ObservationJournal(tmp_path)
    first.start()
    assert [first.append(obs(n)) for n in (1, 2, 3)] == [1, 2, 3]
    first.close()
    with first.path.open("a") as f:
        f.write('{"seq": 4, "obs": {"rule": "def')  # the killed supervisor's last, half-written line

    second = ObservationJournal(tmp_path)
    (left,) = second.leftovers()
    assert (left.journal, left.path) == (first.journal, first.path)
    assert left.lines == [(1, obs(1)), (2, obs(2)), (3, obs(3))]
    second.start()
    assert [x.journal for x in ObservationJournal(tmp_path).leftovers()] == [first.journal, second.journal]
    second.close()


def test_a_journal_without_its_header_is_dropped(tmp_path: Path) -> None:
    (tmp_path / "notify-bad.journal").write_text("not json\n")
    assert ObservationJournal(tmp_path).leftovers() == []
    assert not (tmp_path / "notify-bad.journal").exists()


def test_the_journal_is_cut_back_to_its_header_once_every_line_is_committed(tmp_path: Path) -> None:
    journal = ObservationJournal(tmp_path)
    journal.start()
    header = journal.path.stat().st_size
    seqs = []
    while journal.path.stat().st_size <= COMPACT_BYTES:
        seqs.append(journal.append(obs(1)))
    journal.committed(seqs[-2])  # one line still waiting: nothing is cut
    assert journal.path.stat().st_size > COMPACT_BYTES
    journal.committed(seqs[-1])
    assert journal.path.stat().st_size == header
    assert journal.append(obs(2)) == seqs[-1] + 1, "the numbering goes on"
    journal.close()
    (left,) = ObservationJournal(tmp_path).leftovers()
    assert left.lines == [(seqs[-1] + 1, obs(2))]
    assert oct(journal.path.stat().st_mode & 0o777) == "0o600"
