"""Today's messages end to end (issue 11 part 6): SIGHUP to the real daemon after changing a
keyterm sends ``Configure`` on the open stream; the real fake server answers as Deepgram does,
or refuses, or ignores the message, or sends an ``Error`` and closes.

- ``ConfigureSuccess``: no reconnect (the server saw one connection), ``configured`` logged;
- ``ConfigureFailure``, or no answer within the link's bound: the stream ends gracefully
  (CloseStream) and the next handshake carries the new keyterm; nothing lost or doubled;
- ``Error`` then 1011: logged with its code, the ``disconnected`` event names it, the daemon
  reconnects and replays; nothing lost or doubled.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import pytest

from dgd.core.config import dump, loads
from dgd.daemon.link import CONFIGURE_ANSWER_TIMEOUT_S
from tests.fault_harness import conn_records, fault_rig, handshakes, silence_s, wait_handshake
from tests.harness import (
    BYTES_PER_S,
    journald_fixture,  # noqa: F401  (the fixture, by name)
    sample_utterance,
)
from tests.test_reload_e2e import assert_reload_protocol, reload_and_wait

if TYPE_CHECKING:
    from pathlib import Path

    from tests.fault_harness import FaultRig

utterance = sample_utterance
GAP_S = 2.5
TAIL_S = 2.0
KEYTERM = "Quillfeather"
CONFIGURE = {"type": "Configure", "keyterms": [KEYTERM]}


def add_keyterm(rig: FaultRig) -> None:
    """Write the running configuration back with one keyterm more."""
    config = rig.tmp / "dgd.toml"
    running = loads(config.read_text(encoding="utf-8"))
    query = (*running.deepgram.query, ("keyterm", KEYTERM))
    config.write_text(dump(replace(running, deepgram=replace(running.deepgram, query=query))))


def configures(rig: FaultRig, attempt: int) -> list[Any]:
    """The Configure messages the server recorded on connection ``attempt``."""
    return [r["message"] for r in conn_records(rig.record_dir, attempt) if r["kind"] == "configure"]


def speak_reload_speak(rig: FaultRig) -> float:
    """An utterance, SIGHUP with a new keyterm (waiting for READY=1), another utterance, a
    tail of silence; then stop the daemon. Returns the time of the SIGHUP."""
    rig.wait_ready()
    rig.play_utterance(utterance(0), 1.0)
    first = rig.play(silence_s(GAP_S))
    rig.wait_written(first + round(GAP_S * BYTES_PER_S))
    add_keyterm(rig)
    reloaded_at = time.time()
    assert_reload_protocol(reload_and_wait(rig, 1))
    reloaded = rig.events("reloaded", 5.0, 1)
    assert reloaded, rig.diagnostics()
    assert reloaded[-1]["DGD_CHANGED"] == "deepgram", reloaded[-1]
    # Long enough for the answer, or for the link's bound when there is none.
    rig.play_utterance(utterance(3), CONFIGURE_ANSWER_TIMEOUT_S + 1.0)
    last = rig.play_utterance(utterance(4), GAP_S)
    rig.play(silence_s(TAIL_S))
    rig.wait_written(last.end + round(TAIL_S * BYTES_PER_S))
    rig.stop()
    return reloaded_at


@pytest.mark.e2e
@pytest.mark.slow
def test_configure_success_changes_the_keyterms_without_reconnecting(
    tmp_path: Path, journald: None
) -> None:
    with fault_rig(tmp_path, []) as rig:
        speak_reload_speak(rig)
        diag = rig.diagnostics()
        shakes = handshakes(rig.record_dir)
        assert [h["status"] for h in shakes] == [101], diag  # one stream throughout
        assert "keyterm" not in shakes[0]["query"], shakes[0]
        assert configures(rig, 1) == [CONFIGURE], diag
        answers = [
            r["message"]
            for r in conn_records(rig.record_dir, 1)
            if r["kind"] == "sent" and r.get("message", {}).get("type") == "ConfigureSuccess"
        ]
        assert answers == [
            {
                "type": "ConfigureSuccess",
                "request_id": shakes[0]["request_id"],
                "keyterms": [KEYTERM],
            }
        ], diag
        configured = rig.events("configured")
        assert len(configured) == 1, diag
        assert configured[0]["MESSAGE"] == (
            f"Deepgram applied the new settings to the open stream (keyterms: {KEYTERM})"
        )
        sent = rig.events("configure_sent")
        assert [e["MESSAGE"] for e in sent] == [
            "new settings sent to the open stream: " + json.dumps(CONFIGURE, separators=(",", ":"))
        ], diag
        assert rig.events("disconnected") == [], diag
        assert rig.events("configure_failed") + rig.events("configure_unanswered") == [], diag
        rig.check_no_audio_lost()
        rig.check_transcripts()


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.parametrize(
    ("answer", "logged", "within_s"),
    [
        ("failure", "configure_failed", 2.0),
        ("ignore", "configure_unanswered", CONFIGURE_ANSWER_TIMEOUT_S + 2.0),
    ],
)
def test_a_refused_or_ignored_configure_reconnects_gracefully(
    tmp_path: Path, journald: None, answer: str, logged: str, within_s: float
) -> None:
    with fault_rig(tmp_path, [{"attempts": [1], "configure": answer}]) as rig:
        reloaded_at = speak_reload_speak(rig)
        diag = rig.diagnostics()
        shakes = handshakes(rig.record_dir)
        assert [h["status"] for h in shakes] == [101, 101], diag
        assert "keyterm" not in shakes[0]["query"], shakes[0]
        assert shakes[1]["query"]["keyterm"] == KEYTERM, shakes[1]  # the new settings, anyway
        assert configures(rig, 1) == [CONFIGURE], diag
        assert configures(rig, 2) == [], diag
        # The first stream ended as asked: CloseStream, its finals, Metadata, 1000.
        first = conn_records(rig.record_dir, 1)
        texts = [r["text"] for r in first if r["kind"] == "text"]
        assert texts[-1] == '{"type":"CloseStream"}', texts
        assert [r["code"] for r in first if r["kind"] == "close"] == [1000], diag
        assert 0.0 < shakes[1]["t"] - reloaded_at < within_s, diag
        fallback = rig.events(logged)
        assert len(fallback) == 1, diag
        assert fallback[0]["PRIORITY"] == "4", fallback[0]  # a warning
        assert "reconnecting so that they take effect" in fallback[0]["MESSAGE"] or (
            "reconnecting so that the new settings take effect" in fallback[0]["MESSAGE"]
        ), fallback[0]
        assert rig.events("configured") == [], diag
        assert rig.events("disconnected") == [], diag
        rig.check_no_audio_lost()
        rig.check_transcripts()


@pytest.mark.e2e
@pytest.mark.slow
def test_an_error_message_is_logged_with_its_code_and_the_daemon_reconnects(
    tmp_path: Path, journald: None
) -> None:
    error_at_s = 4.0
    faults = [
        {
            "attempts": [1],
            "error_after_s": error_at_s,
            "error_code": "INTERNAL_SERVER_ERROR",
            "description": "injected by the test",
        }
    ]
    with fault_rig(tmp_path, faults) as rig:
        rig.wait_ready()
        first = wait_handshake(rig.record_dir, 1, 10.0)
        assert first is not None, rig.diagnostics()
        fox = utterance(3)
        lead_s = rig.lead_for(fox, first["t"] + error_at_s)
        assert lead_s > 0.5, f"too late to place the utterance before the Error ({lead_s:.2f} s)"
        rig.play_utterance(fox, lead_s)
        last = rig.play_utterance(utterance(4), GAP_S)
        rig.play(silence_s(TAIL_S))
        rig.wait_written(last.end + round(TAIL_S * BYTES_PER_S))
        rig.stop()

        diag = rig.diagnostics()
        assert [h["status"] for h in handshakes(rig.record_dir)] == [101, 101], diag
        closes = [r for r in conn_records(rig.record_dir, 1) if r["kind"] == "close"]
        assert [(c["code"], c["by"]) for c in closes] == [(1011, "server")], diag
        errors = rig.events("server_error")
        assert len(errors) == 1, diag
        assert errors[0]["DGD_CODE"] == "INTERNAL_SERVER_ERROR", errors[0]
        assert errors[0]["MESSAGE"] == (
            "Deepgram reported an error on the stream: INTERNAL_SERVER_ERROR: injected by the test"
        )
        lost = rig.events("disconnected")
        assert [(e["DGD_CAUSE"], e["DGD_VERDICT"]) for e in lost] == [
            ("error-INTERNAL_SERVER_ERROR", "transient")
        ], diag
        assert "INTERNAL_SERVER_ERROR: injected by the test" in lost[0]["MESSAGE"], lost[0]
        # The server's 1011; or 1006 when a send raced its close frame on trio-websocket 0.9
        # (Debian 12), which reports the refused send before the reader has seen the frame.
        assert "close 1011" in lost[0]["MESSAGE"] or "close 1006" in lost[0]["MESSAGE"], lost[0]
        rig.check_no_audio_lost()
        rig.check_transcripts()
