"""End-to-end fault tests for issue 3 ("Never lose a word"): real ALSA, the real daemon.

Each scenario runs `dgd run` as a process capturing from a FIFO-fed ALSA ``file`` PCM and
streaming to `dgd fake-server` with a fault plan, logging to the journald that
tests/with-journald.sh starts. Each one checks, against what the microphone played, what
reached the server connection by connection (every utterance whole on some connection, the
fault really hitting mid-utterance where the scenario says so) and what the daemon wrote
(one final transcript per utterance in journald and JSONL, none duplicated, the first word
within a quarter second of the true capture time). Run them with:

    tests/with-journald.sh .venv/bin/pytest tests/test_faults_e2e.py -n 4 -v

Timing (faults at "handshake + T s") is steered by waiting for the server's handshake record
and then choosing the silence before the utterance; afterwards the test checks from the
server's records that the fault did land inside the utterance, so a slow machine makes a
scenario fail loudly rather than test less.
"""

from __future__ import annotations

import signal
import time
from typing import TYPE_CHECKING

import pytest

from tests.fault_harness import (
    FAST_STREAM,
    assert_replay_continues,
    audio_before_fault,
    closes,
    conn_records,
    cut_fraction,
    fault_rig,
    files_containing,
    fmt_times,
    fresh_key,
    handshakes,
    journal_dump,
    silence_s,
    wait_handshake,
    within,
)
from tests.harness import (
    BYTES_PER_S,
    client_message_gaps_s,
    journald_fixture,  # noqa: F401  (the fixture, by name)
    load_sample,
    sample_utterance,
)

if TYPE_CHECKING:
    from pathlib import Path

#: The sample's utterances by index (dgd/data/sample.json): 0 "kitchen lights" 1.83 s,
#: 1 "weather in Berlin" 2.54 s, 2 "timer" 1.85 s, 3 "quick brown fox" 3.04 s, 4 "thank you" 2.16 s.
SAMPLE, UTTERANCES = load_sample()
#: Silence between utterances: longer than the gate's hangover (1.5 s) plus pre-roll (0.3 s),
#: so every utterance is its own gated run and its own Deepgram utterance.
GAP_S = 2.5
#: Silence that ends an utterance for the server (endpointing 600 ms) but not for the gate.
SHORT_GAP_S = 1.0
#: Silence after the last utterance, so its final arrives before SIGTERM.
TAIL_S = 2.0
#: When a timed fault fires: after the handshake, leaving time to start playing before it.
FAULT_AT_S = 5.0
#: Gate pre-roll and hangover (etc/dgd.toml defaults) for estimating bytes on a connection.
PREROLL_S = 0.3
HANGOVER_S = 1.5


utterance = sample_utterance  # the bytes of sample utterance ``index``


def assert_mid_utterance(fraction: float, what: str, diagnostics: str) -> None:
    """The fault must have hit while the utterance was being sent, not before or after."""
    assert 0.1 < fraction < 0.9, (
        f"{what}: the fault hit at {fraction:.0%} of the utterance, not inside it; the scenario "
        f"did not test what it should (machine too slow?)\n{diagnostics}"
    )


@pytest.mark.e2e
@pytest.mark.slow
def test_tcp_drop_mid_utterance(tmp_path: Path, journald: None) -> None:
    """TCP reset half-way through the second utterance: it is replayed from the last final's
    end on connection 2, byte for byte, and transcribed once, at the right time."""
    fox = utterance(3)
    # 1 s between the first two utterances: long enough for the server to end the first one
    # (endpointing, 600 ms), too short for the gate to close (hangover 1.5 s). So no Finalize
    # aligns the last final with a frame: the replay must cut a frame where that final ended.
    # Connection 1 gets: pre-roll, "kitchen lights", 1 s, then half of "quick brown fox".
    first_run_s = PREROLL_S + len(utterance(0)) / BYTES_PER_S + SHORT_GAP_S
    drop_at = round(first_run_s * BYTES_PER_S) + len(fox) // 2
    faults = [{"attempts": [1], "drop_after_bytes": drop_at}]
    with fault_rig(tmp_path, faults) as rig:
        rig.wait_ready()
        rig.play_utterance(utterance(0), 1.5)
        rig.play_utterance(fox, SHORT_GAP_S)
        last = rig.play_utterance(utterance(4), GAP_S)
        rig.play(silence_s(TAIL_S))
        rig.wait_written(last.end + round(TAIL_S * BYTES_PER_S))
        rig.stop()

        diag = rig.diagnostics()
        fraction = cut_fraction(audio_before_fault(rig.record_dir, 1), fox)
        assert_mid_utterance(fraction, "TCP drop", diag)
        assert [h["status"] for h in handshakes(rig.record_dir)] == [101, 101], diag
        cut = assert_replay_continues(rig.record_dir, 1, 2, diag)
        frames = {r["offset"] for r in conn_records(rig.record_dir, 1) if r["kind"] == "binary"}
        assert cut > 0, "no final before the drop: the scenario did not test trimming\n" + diag
        assert cut not in frames, (
            f"the last final ended on a frame boundary ({cut}): the replay needed no trim, so the "
            f"scenario did not test it\n{diag}"
        )
        rig.check_no_audio_lost()
        rig.check_transcripts()
        lost = rig.events("disconnected")
        assert [(e["DGD_CAUSE"], e["DGD_VERDICT"]) for e in lost] == [("network", "transient")]
        assert float(lost[0]["DGD_NEXT_DELAY_S"]) <= FAST_STREAM.backoff_initial_s
        again = [e for e in rig.events("connected") if "DGD_BACKLOG_S" in e]
        assert len(again) == 1, again
        assert float(again[0]["DGD_BACKLOG_S"]) > 0, again


@pytest.mark.e2e
@pytest.mark.slow
def test_repeated_1011_and_three_503(tmp_path: Path, journald: None) -> None:
    """1011 NET-0000 mid-utterance, three 503 rejections, another 1011 during the replay: every
    failure is transient, retried within backoff_max_s, and no word is lost or doubled."""
    fox = utterance(3)
    net0000 = "NET-0000 internal server error (injected)"
    faults = [
        {"attempts": [1], "close_after_s": FAULT_AT_S, "code": 1011, "reason": net0000},
        {"attempts": [2, 3, 4], "reject": 503},
        {"attempts": [5], "close_after_s": 1.5, "code": 1011, "reason": net0000},
    ]
    with fault_rig(tmp_path, faults) as rig:
        rig.wait_ready()
        first = wait_handshake(rig.record_dir, 1, 10.0)
        assert first is not None, rig.diagnostics()
        lead_s = rig.lead_for(fox, first["t"] + FAULT_AT_S)
        assert lead_s > 0.8, f"too late to place the fox before the 1011 (lead {lead_s:.2f} s)"
        rig.play_utterance(fox, lead_s)
        rig.play_utterance(utterance(1), 3.0)
        last = rig.play_utterance(utterance(4), GAP_S)
        rig.play(silence_s(TAIL_S))
        rig.wait_written(last.end + round(TAIL_S * BYTES_PER_S))
        rig.stop()

        diag = rig.diagnostics()
        fraction = cut_fraction(audio_before_fault(rig.record_dir, 1), fox)
        assert_mid_utterance(fraction, "first 1011", diag)
        statuses = [h["status"] for h in handshakes(rig.record_dir)]
        assert statuses == [101, 503, 503, 503, 101, 101], diag
        errors = [(c["attempt"], c["code"], c["by"]) for c in closes(rig.record_dir)]
        assert errors[:2] == [(1, 1011, "server"), (5, 1011, "server")], diag
        assert errors[2:] == [(6, 1000, "server")], diag  # CloseStream at SIGTERM
        assert_replay_continues(rig.record_dir, 1, 5, diag)
        assert_replay_continues(rig.record_dir, 5, 6, diag)
        rig.check_no_audio_lost()
        rig.check_transcripts()
        # Every failure was transient and retried with the short backoff, never longer.
        lost = rig.events("disconnected")
        assert {e["DGD_CAUSE"] for e in lost} == {"closed-1011", "http-503"}, diag
        assert {e["DGD_VERDICT"] for e in lost} == {"transient"}, diag
        delays = [float(e["DGD_NEXT_DELAY_S"]) for e in lost]
        assert max(delays) <= FAST_STREAM.backoff_max_s, delays
        assert any("NET-0000" in e["MESSAGE"] for e in lost), diag


@pytest.mark.e2e
@pytest.mark.slow
def test_permanent_401_stays_up_spaced_then_sighup(tmp_path: Path, journald: None) -> None:
    """A wrong key (a real 401): the daemon stays up, retries only every rejected_retry_s,
    says so in STATUS= and the journal, never logs the key; SIGHUP after fixing it retries at
    once and streams."""
    good_key, bad_key = fresh_key("good"), fresh_key("bad")
    key_file = tmp_path / "api-key"
    key_file.write_text(bad_key + "\n", encoding="utf-8")
    key_file.chmod(0o600)
    retry_s = FAST_STREAM.rejected_retry_s
    with fault_rig(tmp_path, [], server_key=good_key, key_file=key_file) as rig:
        rig.wait_ready()
        first = wait_handshake(rig.record_dir, 1, 10.0)
        second = wait_handshake(rig.record_dir, 2, retry_s * 1.1 + 10.0)
        diag = rig.diagnostics()
        assert first is not None, diag
        assert second is not None, diag
        assert (first["status"], second["status"]) == (401, 401), diag
        assert second["t"] - first["t"] >= retry_s * 0.9, (
            f"rejected attempts {second['t'] - first['t']:.2f} s apart, want >= {retry_s * 0.9}"
        )
        time.sleep(1.0)
        assert rig.daemon.poll() is None, "the daemon gave up on a 401\n" + rig.diagnostics()
        assert len(handshakes(rig.record_dir)) == 2, rig.diagnostics()
        assert any("auth rejected (401)" in s for _, s in rig.statuses()), rig.statuses()
        rejected = rig.events("disconnected", 5.0, 1)
        assert rejected, rig.diagnostics()
        assert (rejected[0]["DGD_CAUSE"], rejected[0]["DGD_VERDICT"]) == ("http-401", "rejected")
        assert rejected[0]["PRIORITY"] == "3", rejected[0]  # an error: it will not fix itself
        assert "INVALID_AUTH" in rejected[0]["MESSAGE"], rejected[0]
        assert "Invalid credentials." in rejected[0]["MESSAGE"], rejected[0]
        assert float(rejected[0]["DGD_NEXT_DELAY_S"]) >= retry_s * 0.9, rejected[0]

        # The operator fixes the key and reloads: the next attempt happens at once.
        key_file.write_text(good_key + "\n", encoding="utf-8")
        hup_at = time.time()
        rig.daemon.process.send_signal(signal.SIGHUP)
        third = wait_handshake(rig.record_dir, 3, retry_s)
        assert third is not None, rig.diagnostics()
        assert third["status"] == 101, rig.diagnostics()
        assert third["t"] - hup_at < retry_s * 0.5, f"SIGHUP → attempt 3 {third['t'] - hup_at} s"

        last = rig.play_utterance(utterance(0), 1.0)
        rig.play(silence_s(TAIL_S))
        rig.wait_written(last.end + round(TAIL_S * BYTES_PER_S))
        rig.stop()
        rig.check_no_audio_lost()
        rig.check_transcripts()

        # Neither key shows up in any journal entry, the daemon's output or the server's records.
        journal = journal_dump()
        for key in (good_key, bad_key):
            assert key not in journal, "an API key is in the journal"
            assert key not in rig.daemon.output(), "an API key is in the daemon's output"
            assert files_containing(rig.record_dir, key) == []
            assert key not in "".join(rig.server.output)


@pytest.mark.e2e
@pytest.mark.slow
def test_server_stall_30s(tmp_path: Path, journald: None) -> None:
    """The server stops reading, sending and answering pings for 30 s mid-utterance: the ping
    timeout ends the link, the audio is replayed on a new connection, and the stalled one
    waking up later changes nothing."""
    fox = utterance(3)
    stall_s = 30.0
    faults = [{"attempts": [1], "stall_after_s": FAULT_AT_S, "stall_for_s": stall_s}]
    with fault_rig(tmp_path, faults) as rig:
        rig.wait_ready()
        first = wait_handshake(rig.record_dir, 1, 10.0)
        assert first is not None, rig.diagnostics()
        stall_at = first["t"] + FAULT_AT_S
        lead_s = rig.lead_for(fox, stall_at)
        assert lead_s > 0.8, f"too late to place the fox before the stall (lead {lead_s:.2f} s)"
        rig.play_utterance(fox, lead_s)
        weather = rig.play_utterance(utterance(1), 3.0)
        # The last utterance comes after the stalled connection woke up on the server side and
        # found the client gone: nothing from it may reach the transcripts.
        rig.wait_written(weather.end)
        resume_gap_s = stall_at + stall_s + 1.0 - time.time()
        last = rig.play_utterance(utterance(4), max(GAP_S, resume_gap_s))
        rig.play(silence_s(TAIL_S))
        rig.wait_written(last.end + round(TAIL_S * BYTES_PER_S))
        rig.stop()

        diag = rig.diagnostics()
        fraction = cut_fraction(audio_before_fault(rig.record_dir, 1), fox)
        assert_mid_utterance(fraction, "stall", diag)
        found = handshakes(rig.record_dir)
        assert [h["status"] for h in found] == [101, 101], diag
        # Ping interval 1 s + timeout 2 s, the close handshake (2 s at most), backoff 0.2 s.
        assert found[1]["t"] - stall_at < 7.0, f"reconnected {found[1]['t'] - stall_at:.2f} s in"
        assert_replay_continues(rig.record_dir, 1, 2, diag)
        lost = rig.events("disconnected")
        assert [(e["DGD_CAUSE"], e["DGD_VERDICT"]) for e in lost] == [("timeout", "transient")]
        # The new connection kept the server happy for the whole stall and after it.
        gaps = client_message_gaps_s(rig.server.records())
        assert gaps[2] < 10.0, gaps
        rig.check_no_audio_lost()
        rig.check_transcripts()


@pytest.mark.e2e
@pytest.mark.slow
def test_malformed_messages(tmp_path: Path, journald: None) -> None:
    """Invalid JSON, unknown types, a 1 MB message and broken Results mid-utterance are logged
    and skipped without dropping the connection or a word."""
    fox = utterance(3)
    faults = [{"attempts": [1], "malformed_after_s": FAULT_AT_S}]
    with fault_rig(tmp_path, faults) as rig:
        rig.wait_ready()
        first = wait_handshake(rig.record_dir, 1, 10.0)
        assert first is not None, rig.diagnostics()
        lead_s = rig.lead_for(fox, first["t"] + FAULT_AT_S)
        assert lead_s > 0.8, f"too late to place the fox before the garbage (lead {lead_s:.2f} s)"
        rig.play_utterance(fox, lead_s)
        last = rig.play_utterance(utterance(0), GAP_S)
        rig.play(silence_s(TAIL_S))
        rig.wait_written(last.end + round(TAIL_S * BYTES_PER_S))
        rig.stop()

        diag = rig.diagnostics()
        fraction = cut_fraction(audio_before_fault(rig.record_dir, 1), fox)
        assert_mid_utterance(fraction, "malformed messages", diag)
        # Garbage is logged and skipped; it is no reason to drop the connection.
        assert [h["status"] for h in handshakes(rig.record_dir)] == [101], diag
        assert rig.events("disconnected") == [], diag
        ignored = rig.events("unrecognized_message")
        assert ignored, "no unrecognized_message in the journal\n" + diag
        assert all(e["PRIORITY"] == "4" for e in ignored), ignored
        rig.check_no_audio_lost()
        rig.check_transcripts()


@pytest.mark.e2e
@pytest.mark.slow
def test_microphone_missing_then_appearing(tmp_path: Path, journald: None) -> None:
    """No microphone at start: READY, STATUS and the watchdog say the daemon waits for it;
    once it appears it is opened and streamed from."""
    with fault_rig(tmp_path, [], mic_present=False, watchdog_usec=2_000_000) as rig:
        # Ready without a microphone: the daemon waits for it and says so.
        rig.wait_ready()
        missing = rig.events("device_unavailable", 10.0, 1)
        assert missing, rig.diagnostics()
        assert missing[0]["DGD_PROBLEM"] == "missing", missing[0]
        assert "audio.device" in missing[0]["MESSAGE"], missing[0]
        time.sleep(2.0)
        assert rig.daemon.poll() is None, rig.diagnostics()
        waiting = [s for _, s in rig.statuses() if 'waiting for audio device "dgdfault"' in s]
        assert waiting, rig.statuses()
        # A missing microphone is not a hang: the watchdog keeps being fed while waiting.
        pets = [n.t for n in rig.notify.notifications if n.assignment == "WATCHDOG=1"]
        assert len(pets) >= 2, rig.notify.assignments()

        mic = rig.start_mic()
        assert mic.wait_reader(15.0), "the daemon never opened the microphone\n" + rig.diagnostics()
        opened = rig.events("device_opened", 5.0, 1)
        assert len(opened) == 1, rig.diagnostics()
        rig.play_utterance(utterance(2), 1.0)
        last = rig.play_utterance(utterance(0), GAP_S)
        rig.play(silence_s(TAIL_S))
        rig.wait_written(last.end + round(TAIL_S * BYTES_PER_S))
        rig.stop()
        rig.check_no_audio_lost()
        rig.check_transcripts()


@pytest.mark.e2e
@pytest.mark.slow
def test_microphone_stall_with_watchdog(tmp_path: Path, journald: None) -> None:
    """The microphone stalls for 3 s mid-utterance (resumes by itself) and for 12.5 s in
    silence (reopened after 10 s): WATCHDOG=1 stops while no audio arrives and resumes with it."""
    fox = utterance(3)
    short_stall_s, long_stall_s = 3.0, 12.5
    with fault_rig(tmp_path, [], watchdog_usec=2_000_000) as rig:
        rig.wait_ready()
        mic = rig.the_mic()
        placed_fox = rig.play_utterance(fox, 1.0)
        weather = rig.play_utterance(utterance(1), GAP_S)
        last = rig.play_utterance(utterance(4), 3.0)
        rig.play(silence_s(TAIL_S))

        # A short stall in the middle of the fox: no reopen, the byte stream stays intact.
        rig.wait_written(placed_fox.start + len(fox) // 2)
        short_at = time.time()
        mic.stall(short_stall_s)
        # A long stall in the silence after "weather" (gate closed): the device is reopened.
        rig.wait_written(weather.end + round(2.0 * BYTES_PER_S))
        long_at = time.time()
        mic.stall(long_stall_s)
        rig.wait_written(last.end + round(TAIL_S * BYTES_PER_S))
        rig.stop()

        diag = rig.diagnostics()
        pets = [n.t for n in rig.notify.notifications if n.assignment == "WATCHDOG=1"]
        where = (
            f"WATCHDOG=1 at {fmt_times(pets, short_at)} s from the short stall, "
            f"{fmt_times(pets, long_at)} s from the long one\n{diag}"
        )
        # Fed every second while audio flows; silent while the stall lasts (stale > 1 s).
        assert within(pets, short_at - 3.0, short_at), where
        assert within(pets, short_at + 1.5, short_at + short_stall_s) == [], where
        assert within(pets, short_at + short_stall_s, short_at + short_stall_s + 2.5), where
        # Including the second after the reopen (at 10 s), while the device still stalls.
        assert within(pets, long_at + 1.5, long_at + long_stall_s - 0.1) == [], where
        # After the reopen, audio flows again and the watchdog is fed again.
        long_end = long_at + long_stall_s
        assert within(pets, long_end, long_end + 3.0), where
        assert len(within(pets, long_end, time.time())) >= 2, where

        stalled = rig.events("device_stalled")
        assert len(stalled) >= 2, diag  # the long stall outlasts the reopen by 2.5 s
        assert len(rig.events("device_resumed")) >= 1, diag
        assert len(rig.events("device_opened")) == 2, "the long stall did not reopen\n" + diag
        assert any("stalled" in s for _, s in rig.statuses()), rig.statuses()
        rig.check_no_audio_lost()
        rig.check_transcripts()
