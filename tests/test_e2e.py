"""End to end: `dgd run` as a process, real alsa-lib capture, real journald, real NOTIFY_SOCKET.

The daemon captures from a ``type file`` ALSA PCM fed at real-time pace by a FifoMic, streams
to `dgd fake-server`, and writes to the journald started by tests/with-journald.sh. One run
of about 30 s of audio (three utterances, one followed by 16 s of silence) checks the whole
contract at once: every utterance reaches the server intact and in order, KeepAlive holds the
stream open through the silence, exactly one final transcript per utterance reaches journald
and the JSONL file, sd_notify says READY, STATUS and STOPPING, and a SIGTERM inside the
gate's hangover still flushes the last utterance. Run it with:

    sudo tests/with-journald.sh .venv/bin/pytest tests/test_e2e.py -m e2e -v
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING

import pytest

from tests.harness import (  # the fixtures are imported by name for pytest
    ONSET_TOLERANCE_S,
    DaemonProcess,
    alsa_mic_fixture,  # noqa: F401
    assert_one_final_per_utterance,
    client_message_gaps_s,
    compose_clip,
    daemon_env,
    fake_server_fixture,  # noqa: F401
    find_in_order,
    journal_bool,
    journal_entries,
    journal_text,
    journald_fixture,  # noqa: F401
    load_sample,
    notify_listener_fixture,  # noqa: F401
    parse_rfc3339,
    write_daemon_config,
)

if TYPE_CHECKING:
    from pathlib import Path

    from tests.harness import AlsaMic, FakeServerProcess, NotifyListener

pytestmark = pytest.mark.e2e

#: Startup (imports, ALSA open) on a slow machine; not a performance claim.
READY_TIMEOUT_S = 30.0
#: SIGTERM → exit: stream.close_timeout_s (5 s default) plus process teardown, with margin.
STOP_TIMEOUT_S = 20.0
#: Deepgram closes a stream that got nothing from the client for this long (1011 NET-0001).
SERVER_IDLE_LIMIT_S = 10.0
LONG_SILENCE_S = 16.0
JOURNAL_FIELDS = (
    "MESSAGE",
    "DGD_EVENT",
    "DGD_IS_FINAL",
    "DGD_SPEECH_FINAL",
    "DGD_CONFIDENCE",
    "DGD_START",
    "DGD_END",
    "DGD_REQUEST_ID",
    "SYSLOG_IDENTIFIER",
    "PRIORITY",
)
JSONL_FIELDS = ("text", "is_final", "speech_final", "confidence", "start", "end", "request_id")


def test_speech_silence_keepalive_and_graceful_stop(
    tmp_path: Path,
    journald: None,
    notify_listener: NotifyListener,
    alsa_mic: AlsaMic,
    fake_server: FakeServerProcess,
) -> None:
    sample, utterances = load_sample()
    # 2 s lead-in, "kitchen lights", 4 s pause, "quick brown fox", 16 s pause, "weather".
    clip = compose_clip(
        sample, [(2.0, utterances[0]), (4.0, utterances[3]), (LONG_SILENCE_S, utterances[1])]
    )
    jsonl = tmp_path / "transcripts.jsonl"
    config = tmp_path / "dgd.toml"
    write_daemon_config(config, url=fake_server.url, device=alsa_mic.pcm_name, jsonl=jsonl)
    env = daemon_env(alsa_conf=alsa_mic.conf, notify_socket=notify_listener.address)
    mic = alsa_mic.mic

    with DaemonProcess(config, env=env, log_dir=tmp_path) as daemon:

        def diagnostics() -> str:
            return daemon.output() + "\n--- journal ---\n" + journal_text(_PID=str(daemon.pid))

        assert notify_listener.wait_for("READY=1", READY_TIMEOUT_S), diagnostics()
        assert mic.readers_seen >= 1, "READY=1 before the daemon opened the audio device"
        base = mic.play(clip.data)
        speech_end = base + clip.utterances[-1].end
        assert mic.wait_written(speech_end, clip.duration_s + 30), diagnostics()
        assert daemon.poll() is None, diagnostics()
        # SIGTERM ~0.3 s after the last utterance's audio was captured: inside the gate's
        # hangover, so the last utterance must be flushed by the shutdown path itself.
        time.sleep(max(0.0, mic.capture_time(speech_end - 2) + 0.3 - time.time()))
        exit_code = daemon.terminate(STOP_TIMEOUT_S)
        assert exit_code == 0, diagnostics()

    # True capture times (wall clock) of each utterance, from the FifoMic's timeline.
    truth = [
        (mic.capture_time(base + u.start), mic.capture_time(base + u.end - 2))
        for u in clip.utterances
    ]

    # -- audio: every utterance reached the server intact and in order; no empty frame --
    received = fake_server.received_audio()
    wanted = [clip.data[u.start : u.end] for u in clip.utterances]
    positions = find_in_order(received, wanted)
    assert -1 not in positions, (
        f"utterance bytes not found in order in what the server received: {positions} "
        f"({len(received)} B received)\n{diagnostics()}"
    )
    records = fake_server.records()
    binary = [r for r in records if r["kind"] == "binary"]
    assert binary, "the server received no audio"
    assert [r for r in binary if r["len"] == 0] == [], "a zero-length binary frame was sent"

    # -- KeepAlive during the long silence, and the server never timed the stream out --
    silence = (truth[1][1], truth[2][0])
    keepalives = [
        r
        for r in records
        if r["kind"] == "text"
        and json.loads(r["text"]).get("type") == "KeepAlive"
        and silence[0] <= r["t"] <= silence[1]
    ]
    assert len(keepalives) >= 2, f"KeepAlives during the {LONG_SILENCE_S} s silence: {keepalives}"
    closes = [r for r in records if r["kind"] == "close"]
    assert [c for c in closes if c.get("code") == 1011] == [], closes
    gaps = client_message_gaps_s(records)
    assert max(gaps.values()) < SERVER_IDLE_LIMIT_S, gaps

    # -- journald: exactly one non-empty final transcript per utterance, with the fields --
    entries = journal_entries(10.0, len(truth), _PID=str(daemon.pid), DGD_EVENT="transcript")
    finals = [e for e in entries if journal_bool(e["DGD_IS_FINAL"]) and e["MESSAGE"].strip()]
    for entry in finals:
        missing = [f for f in JOURNAL_FIELDS if f not in entry]
        assert missing == [], f"journal entry lacks {missing}: {entry}"
        assert (entry["SYSLOG_IDENTIFIER"], entry["PRIORITY"]) == ("dgd", "6")
        journal_bool(entry["DGD_SPEECH_FINAL"])
        assert 0.0 <= float(entry["DGD_CONFIDENCE"]) <= 1.0
    journal_spans = [(parse_rfc3339(e["DGD_START"]), parse_rfc3339(e["DGD_END"])) for e in finals]
    assert_one_final_per_utterance("journald", journal_spans, truth, diagnostics())

    # -- the JSONL file says the same --
    lines = [json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()]
    jsonl_finals = [t for t in lines if t["is_final"] is True and t["text"].strip()]
    for item in jsonl_finals:
        missing = [f for f in JSONL_FIELDS if f not in item]
        assert missing == [], f"JSONL line lacks {missing}: {item}"
        assert isinstance(item["speech_final"], bool)
        for word in item["words"]:
            assert set(word) >= {"word", "start", "end", "confidence"}, word
            parse_rfc3339(word["start"])
            parse_rfc3339(word["end"])
    jsonl_spans = [(parse_rfc3339(t["start"]), parse_rfc3339(t["end"])) for t in jsonl_finals]
    owners = assert_one_final_per_utterance("JSONL", jsonl_spans, truth, diagnostics())
    # The capture-time map, across gated silence: the first word starts at the true onset.
    for item, j in zip(jsonl_finals, owners, strict=True):
        assert item["words"], f"final without words: {item}"
        first_word_s = parse_rfc3339(item["words"][0]["start"])
        onset = truth[j][0]
        assert abs(first_word_s - onset) <= ONSET_TOLERANCE_S, (
            f"utterance {j}: first word at {first_word_s:.3f}, audio onset at {onset:.3f} "
            f"(off by {first_word_s - onset:+.3f} s)"
        )
    assert [t["text"] for t in jsonl_finals] == [e["MESSAGE"] for e in finals]
    flat = [t for span in jsonl_spans for t in span]
    assert flat == pytest.approx([t for span in journal_spans for t in span], abs=0.001)

    # -- sd_notify: READY, STATUS, STOPPING, in that order, all from the main process --
    assignments = notify_listener.assignments()
    assert "READY=1" in assignments, assignments
    assert any(a.startswith("STATUS=") for a in assignments), assignments
    assert "STOPPING=1" in assignments, assignments
    assert assignments.index("READY=1") < assignments.index("STOPPING=1"), assignments
    assert {n.pid for n in notify_listener.notifications} == {daemon.pid}
