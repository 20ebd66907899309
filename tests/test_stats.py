"""The stats record (dgd.core.stats): exact journal fields, gist and summary."""

from __future__ import annotations

from dgd.core.stats import StatsRecord

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
        "dropped_replay_buffer_full_s": "1.5",
        "reconnects_closed_1011": 1,
    }


def test_gist_and_summary() -> None:
    assert RECORD.gist() == "sent 12 s of 15.2 min captured, 1.5 s dropped, 2 connection(s)"
    assert RECORD.summary() == (
        "captured 912.0 s, sent 12.0 s, gated 900.0 s, replayed 3.2 s, dropped 1.5 s, "
        "220 keep-alives, 5 transcripts"
    )
