"""Reload without restart (issue 4 part 4), end to end: SIGHUP to the real daemon capturing
through real ALSA, with journald and NOTIFY_SOCKET.

- gate/log/stream settings apply in place; new Deepgram settings end the stream gracefully
  (CloseStream) and reconnect with the new query, without losing or doubling a word;
- an invalid new config is refused with the reason in the journal, and the old one runs on;
- a new audio device is reopened, and the words spoken into it are transcribed.
Each SIGHUP is answered with RELOADING=1 (with MONOTONIC_USEC) and then READY=1.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import replace
from typing import TYPE_CHECKING

import pytest

from dgd.core.config import dump, loads
from dgd.testing.fifomic import FifoMic, write_alsa_conf
from tests.fault_harness import PCM_NAME, conn_records, fault_rig, handshakes, silence_s
from tests.harness import (
    BYTES_PER_S,
    journald_fixture,  # noqa: F401  (the fixture, by name)
    load_sample,
    sample_utterance,
)

if TYPE_CHECKING:
    from pathlib import Path

    from tests.fault_harness import FaultRig

SAMPLE, UTTERANCES = load_sample()
GAP_S = 2.5
TAIL_S = 2.0


utterance = sample_utterance  # the bytes of sample utterance ``index``


def reload_and_wait(rig: FaultRig, nth: int) -> list[str]:
    """SIGHUP the daemon; wait for its ``nth`` READY=1 after RELOADING=1; return the
    assignments it sent for this reload."""
    before = len(rig.notify.assignments())
    os.kill(rig.daemon.pid, signal.SIGHUP)
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline:
        sent = rig.notify.assignments()[before:]
        # A STATUS= sent between the snapshot and the signal is not part of this reload.
        if "RELOADING=1" in sent:
            sent = sent[sent.index("RELOADING=1") :]
            if "READY=1" in sent:
                return sent
        time.sleep(0.05)
    raise AssertionError(f"no READY=1 after SIGHUP #{nth}\n{rig.diagnostics()}")


def assert_reload_protocol(sent: list[str]) -> None:
    assert sent[0] == "RELOADING=1", sent
    monotonic = [a for a in sent if a.startswith("MONOTONIC_USEC=")]
    assert len(monotonic) == 1, sent
    assert monotonic[0].removeprefix("MONOTONIC_USEC=").isdecimal(), sent
    assert sent.index("READY=1") > sent.index("RELOADING=1"), sent


@pytest.mark.e2e
@pytest.mark.slow
def test_reload_applies_in_place_reconnects_for_deepgram_and_refuses_bad_config(
    tmp_path: Path, journald: None
) -> None:
    with fault_rig(tmp_path, []) as rig:
        rig.wait_ready()
        rig.play_utterance(utterance(0), 1.0)
        first = rig.play(silence_s(GAP_S))
        rig.wait_written(first + round(GAP_S * BYTES_PER_S))

        # 1. New gate threshold (in place) and a new Deepgram query (graceful reconnect).
        config = tmp_path / "dgd.toml"
        running = loads(config.read_text(encoding="utf-8"))
        changed = dump(
            replace(
                running,
                gate=replace(running.gate, threshold_dbfs=-48.0),
                deepgram=replace(running.deepgram, query=(("model", "nova-2"),)),
            )
        )
        config.write_text(changed, encoding="utf-8")
        assert_reload_protocol(reload_and_wait(rig, 1))
        reloaded = rig.events("reloaded", 5.0, 1)
        assert reloaded, rig.diagnostics()
        assert reloaded[-1]["DGD_CHANGED"] == "deepgram,gate", reloaded[-1]

        rig.play_utterance(utterance(3), 1.0)
        after = rig.play(silence_s(GAP_S))
        rig.wait_written(after + round(GAP_S * BYTES_PER_S))

        # 2. An invalid config is refused; the running one (and the stream) carry on. No Config
        # can hold the bad value, so the file is edited as text.
        assert "\nhangover_ms = 1500\n" in changed
        config.write_text(
            changed.replace("\nhangover_ms = 1500\n", "\nhangover_ms = -5\n"), "utf-8"
        )
        assert_reload_protocol(reload_and_wait(rig, 2))
        refused = rig.events("reload_failed", 5.0, 1)
        assert refused, rig.diagnostics()
        assert "gate.hangover_ms: must be >= 0 (got -5)" in refused[-1]["MESSAGE"]
        assert refused[-1]["PRIORITY"] == "3"

        last = rig.play_utterance(utterance(4), 1.0)
        rig.play(silence_s(TAIL_S))
        rig.wait_written(last.end + round(TAIL_S * BYTES_PER_S))
        rig.stop()

        diag = rig.diagnostics()
        shakes = handshakes(rig.record_dir)
        assert [h["status"] for h in shakes] == [101, 101], diag
        assert shakes[0]["query"]["model"] == "nova-3", shakes[0]["query"]
        assert shakes[1]["query"]["model"] == "nova-2", shakes[1]["query"]
        texts = [r["text"] for r in conn_records(rig.record_dir, 1) if r["kind"] == "text"]
        assert texts[-1] == '{"type":"CloseStream"}', texts  # the first stream ended gracefully
        closes = [r for r in conn_records(rig.record_dir, 1) if r["kind"] == "close"]
        assert [c["code"] for c in closes] == [1000], closes
        assert rig.events("disconnected") == [], diag
        rig.check_no_audio_lost()
        rig.check_transcripts()


@pytest.mark.e2e
@pytest.mark.slow
def test_reload_reopens_a_new_audio_device(tmp_path: Path, journald: None) -> None:
    second_fifo = tmp_path / "mic2.fifo"
    with fault_rig(tmp_path, []) as rig:
        rig.wait_ready()
        rig.play_utterance(utterance(0), 1.0)
        first = rig.play(silence_s(GAP_S))
        rig.wait_written(first + round(GAP_S * BYTES_PER_S))

        # A second microphone appears under another name; alsa-lib re-reads its
        # configuration files when they change.
        extra = tmp_path / "mic2.conf"
        write_alsa_conf(extra, PCM_NAME + "2", second_fifo)
        alsa_conf = tmp_path / "alsa.conf"
        alsa_conf.write_text(
            alsa_conf.read_text(encoding="utf-8") + extra.read_text(encoding="utf-8"), "utf-8"
        )
        mic2 = FifoMic(second_fifo)
        try:
            config = tmp_path / "dgd.toml"
            running = loads(config.read_text(encoding="utf-8"))
            assert running.audio.device == PCM_NAME
            moved = replace(running, audio=replace(running.audio, device=PCM_NAME + "2"))
            config.write_text(dump(moved), "utf-8")
            assert_reload_protocol(reload_and_wait(rig, 1))
            assert rig.events("reload_audio", 5.0, 1), rig.diagnostics()
            assert mic2.wait_reader(10.0), "the new device was not opened\n" + rig.diagnostics()
            mic2.play(silence_s(1.0))
            start = mic2.play(utterance(3))
            end = mic2.play(silence_s(TAIL_S))
            assert mic2.wait_written(end + round(TAIL_S * BYTES_PER_S), 30.0)
            truth = (mic2.capture_time(start), mic2.capture_time(start + len(utterance(3)) - 2))
            rig.stop()
        finally:
            mic2.close()

        diag = rig.diagnostics()
        opened = rig.events("device_opened")
        assert [e["DGD_DEVICE"] for e in opened] == [PCM_NAME, PCM_NAME + "2"], diag
        received = b"".join(
            (rig.record_dir / f"conn-{n:04d}.raw").read_bytes()
            for n in (h["attempt"] for h in handshakes(rig.record_dir))
        )
        assert utterance(0) in received, diag
        assert utterance(3) in received, diag  # spoken into the new device, sent whole
        finals = [e for e in rig.events("transcript") if e["DGD_IS_FINAL"] == "true"]
        assert len(finals) == 2, diag
        assert rig.events("stopped")[-1]["DGD_DROPPED_S"] == "0.0"
        assert truth[0] < truth[1]
