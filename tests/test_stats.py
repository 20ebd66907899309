"""The stats record (dgd.core.stats): composed from the parts' statistics; exact journal
fields, gist and summary."""

from __future__ import annotations

import pytest

from dgd.core.outbox import OutboxStatistics
from dgd.core.pipeline import CaptureStatistics
from dgd.core.session import SessionStatistics
from dgd.core.stats import LinkStatistics, StatsRecord, compose

RECORD = StatsRecord(
    captured_s=912.04,
    sent_s=12.0,
    gated_s=900.0,
    replayed_s=3.25,
    overruns=1,
    invalid_buffers=0,
    keepalives=220,
    finalizes=4,
    connects=2,
    duplicates=0,
    transcripts=5,
    dropped_by_cause_s={"replay_buffer_full": 1.5},
    reconnects_by_cause={"closed-1011": 1},
    unrecognized=2,
)


def test_fields() -> None:
    assert RECORD.fields() == {
        "captured_s": "912.0",
        "sent_s": "12.0",
        "gated_s": "900.0",
        "replayed_s": "3.2",
        "dropped_s": "1.5",
        "overruns": 1,
        "invalid_buffers": 0,
        "keepalives": 220,
        "finalizes": 4,
        "connects": 2,
        "duplicates": 0,
        "transcripts": 5,
        "unrecognized": 2,
        "dropped_replay_buffer_full_s": "1.5",
        "reconnects_closed_1011": 1,
    }


def test_gist_and_summary() -> None:
    assert RECORD.gist() == "sent 12 s of 15.2 min captured, 1.5 s dropped, 2 connection(s)"
    assert RECORD.summary() == (
        "captured 912.0 s, sent 12.0 s, gated 900.0 s, replayed 3.2 s, dropped 1.5 s, "
        "220 keep-alives, 5 transcripts"
    )


def test_compose_takes_each_figure_from_its_part() -> None:
    record = compose(
        capture=CaptureStatistics(captured_s=912.04, gated_s=900.0, invalid_buffers=0, overruns=1),
        link=LinkStatistics(
            streams=SessionStatistics(
                sent_s=12.0, keepalives=220, finalizes=4, results=9, unrecognized=2
            ),
            connects=2,
            reconnects_by_cause={"closed-1011": 1},
        ),
        outbox=OutboxStatistics(dropped_s=1.5, released_unconfirmed_s=0.25, replayed_s=3.25),
        duplicates=0,
        transcripts=5,
    )
    assert record == RECORD


def test_compose_reports_no_drop_cause_when_nothing_was_dropped() -> None:
    record = compose(
        capture=CaptureStatistics(),
        link=LinkStatistics(),
        outbox=OutboxStatistics(dropped_s=0.0, released_unconfirmed_s=0.0, replayed_s=0.0),
        duplicates=0,
        transcripts=0,
    )
    assert record.dropped_by_cause_s == {}
    assert record.fields()["dropped_s"] == "0.0"


@pytest.mark.parametrize(
    ("left", "right", "total"),
    [
        (SessionStatistics(), SessionStatistics(), SessionStatistics()),
        (
            SessionStatistics(sent_s=1.5, keepalives=1, finalizes=2, results=3, unrecognized=4),
            SessionStatistics(
                sent_s=0.25, keepalives=10, finalizes=20, results=30, unrecognized=40
            ),
            SessionStatistics(
                sent_s=1.75, keepalives=11, finalizes=22, results=33, unrecognized=44
            ),
        ),
    ],
)
def test_session_statistics_add_up(
    left: SessionStatistics, right: SessionStatistics, total: SessionStatistics
) -> None:
    assert left + right == total


@pytest.mark.parametrize(
    ("left", "right", "total"),
    [
        (CaptureStatistics(), CaptureStatistics(), CaptureStatistics()),
        (
            CaptureStatistics(captured_s=10.0, gated_s=8.5, invalid_buffers=1, overruns=2),
            CaptureStatistics(captured_s=0.5, gated_s=0.25, invalid_buffers=3, overruns=4),
            CaptureStatistics(captured_s=10.5, gated_s=8.75, invalid_buffers=4, overruns=6),
        ),
    ],
)
def test_capture_statistics_add_up(
    left: CaptureStatistics, right: CaptureStatistics, total: CaptureStatistics
) -> None:
    assert left + right == total
