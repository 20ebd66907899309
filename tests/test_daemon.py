"""The whole daemon in trio's virtual time: the real composition root (``dgd.daemon.app.Daemon``)
with an in-memory microphone (tests/memory_audio.py), the in-memory WebSocket and a recording
notifier. Behaviours that take minutes of real time end to end are proven here in seconds;
the subprocess tests through real ALSA, journald and sd_notify prove the real parts.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

import pytest
import trio
import trio.testing

from dgd.core.config import (
    ApiKey,
    AudioConfig,
    Config,
    GateConfig,
    LogConfig,
    LogLevel,
    OutputConfig,
    StreamConfig,
)
from dgd.core.pcm import PcmFormat
from dgd.daemon.app import Daemon
from dgd.daemon.logsetup import set_level
from dgd.daemon.sdnotify import Notifier
from dgd.daemon.sinks import TranscriptSinks
from tests.memory_audio import WALL0, MemoryMic, tone
from tests.memory_ws import Attempt, MemoryConnector, MemoryWebSocket, metadata, results

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

FMT = PcmFormat(16000, 1, 20)
CONFIG = Config(gate=GateConfig(threshold_dbfs=-40.0, preroll_ms=200, hangover_ms=1000))
KEY = ApiKey("test-key-0123", "a test")


class RecordingNotifier(Notifier):
    """sd_notify into a list, stamped with trio's clock (WatchdogSec = 2 s: pets every 1 s)."""

    def __init__(self) -> None:
        super().__init__({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())})
        self.sent: list[tuple[float, tuple[str, ...]]] = []

    @property
    def enabled(self) -> bool:
        return True

    def send(self, *fields: str) -> None:
        self.sent.append((trio.current_time(), fields))

    def times(self, assignment: str) -> list[float]:
        return [at for at, fields in self.sent if assignment in fields]


@dataclass
class Rig:
    daemon: Daemon
    mic: MemoryMic
    connector: MemoryConnector
    sockets: list[MemoryWebSocket]
    notifier: RecordingNotifier
    journal: list[dict[str, str]] = field(default_factory=list)
    #: The "config file": what a reload reads (the newest entry); reloads counts the reads.
    file: list[Config] = field(default_factory=list)
    reloads: list[Config] = field(default_factory=list)

    def write(self, config: Config) -> None:
        self.file.append(config)

    def transcripts(self) -> list[tuple[str, str, str]]:
        return [(e["MESSAGE"], e["DGD_START"], e["DGD_END"]) for e in self.journal]


def make_rig(
    config: Config = CONFIG,
    attempts: list[Attempt] | None = None,
    signals_before_start: list[int] | None = None,
    wall_offset: Callable[[], float] = lambda: WALL0,
) -> Rig:
    sockets = [MemoryWebSocket() for _ in range(4)]
    connector = MemoryConnector(attempts or [Attempt(ws=ws) for ws in sockets])
    mic = MemoryMic()
    notifier = RecordingNotifier()
    journal: list[dict[str, str]] = []
    file: list[Config] = [config]
    reloads: list[Config] = []

    def journal_send(MESSAGE: str, **fields: str) -> None:
        journal.append({"MESSAGE": MESSAGE, **fields})

    def reload_config() -> tuple[Config, ApiKey]:
        reloads.append(file[-1])
        return file[-1], KEY

    daemon = Daemon(
        config,
        KEY,
        notifier=notifier,
        reload_config=reload_config,
        sinks=TranscriptSinks(config.output, journal_send, echo_to_log=False),
        open_source=mic.open,
        connect=connector,
        clock=trio.current_time,
        signals_before_start=signals_before_start,
        wall_offset=wall_offset,
    )
    return Rig(daemon, mic, connector, sockets, notifier, journal, file, reloads)


def sent_seconds(ws: MemoryWebSocket, fmt: PcmFormat = FMT) -> float:
    return fmt.seconds(sum(len(b) for b in ws.binaries()))


async def test_speech_silence_keepalive_transcript_and_stop(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rig = make_rig()
    ws = rig.sockets[0]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(rig.daemon.run)
        await trio.sleep(1.0)
        assert rig.notifier.times("READY=1") == [pytest.approx(0.0, abs=0.2)]
        rig.mic.play(tone(FMT, 1.0))  # speech from t = 1.0 to 2.0 (the next read's start)
        await trio.sleep(11.0)
        # Pre-roll 0.2 s + 1 s of speech + 1 s hangover, then Finalize, then keep-alives.
        assert sent_seconds(ws) == pytest.approx(2.2, abs=0.11)
        texts = [(at, text) for at, text in ws.texts()]
        assert texts[0][1] == '{"type":"Finalize"}'
        keepalives = [at for at, text in texts if text == '{"type":"KeepAlive"}']
        assert len(keepalives) == 2
        assert keepalives[1] - keepalives[0] == pytest.approx(4.0)
        assert keepalives[0] - texts[0][0] == pytest.approx(4.0, abs=0.15)
        # Deepgram's offsets count only the audio sent: 0.2 s into the stream is t = 1.0.
        ws.push(results(0.2, 1.0, "hello there"))
        await trio.sleep(0.5)
        rig.daemon.request_stop("SIGTERM")
        await trio.sleep(0.5)
        assert ws.texts()[-1][1] == '{"type":"CloseStream"}'
        ws.push(metadata(duration_s=2.2))
    start_s = float(rig.journal[0]["DGD_START"][17:23])  # seconds of the minute
    assert rig.transcripts()[0][0] == "hello there"
    wall_start = WALL0 + 1.0  # when the tone was captured
    assert start_s == pytest.approx(wall_start % 60, abs=0.03)
    assert "STOPPING=1" in rig.notifier.sent[-1][1]


async def test_an_outage_is_replayed_on_the_next_connection(
    autojump_clock: trio.testing.MockClock,
) -> None:
    first, second = MemoryWebSocket(), MemoryWebSocket()
    rig = make_rig(attempts=[Attempt(ws=first), Attempt(network_error="down"), Attempt(ws=second)])
    async with trio.open_nursery() as nursery:
        nursery.start_soon(rig.daemon.run)
        await trio.sleep(1.0)
        rig.mic.play(tone(FMT, 1.0))
        await trio.sleep(0.6)
        first.close(1011, "NET-0000")  # mid-utterance: nothing confirmed
        await trio.sleep(10.0)
        # Everything the first connection got is sent again, then the rest, in order.
        assert second.binaries()[: len(first.binaries())] == first.binaries()
        assert sent_seconds(second) == pytest.approx(2.2, abs=0.11)
        nursery.cancel_scope.cancel()


async def test_a_stall_stops_the_watchdog_and_the_device_is_reopened(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rig = make_rig()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(rig.daemon.run)
        await trio.sleep(5.0)
        rig.mic.stalled = True
        stalled_at = trio.current_time()
        await trio.sleep(11.5)
        assert rig.mic.openings == [CONFIG.audio.device, CONFIG.audio.device]  # reopened
        await trio.sleep(5.0)
        rig.mic.stalled = False
        resumed_at = trio.current_time()
        await trio.sleep(3.0)
        nursery.cancel_scope.cancel()
    pets = rig.notifier.times("WATCHDOG=1")
    assert [p for p in pets if stalled_at + 1.5 < p < resumed_at] == []
    assert any(stalled_at - 1.5 < p <= stalled_at for p in pets)
    assert any(resumed_at < p < resumed_at + 2.0 for p in pets)


async def test_a_lost_device_is_waited_for_with_the_watchdog_fed_and_reopened(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rig = make_rig()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(rig.daemon.run)
        await trio.sleep(2.0)
        rig.mic.present = False
        lost_at = trio.current_time()
        await trio.sleep(20.0)
        rig.mic.present = True
        await trio.sleep(12.0)
        nursery.cancel_scope.cancel()
    assert len(rig.mic.openings) == 2
    pets = rig.notifier.times("WATCHDOG=1")
    # Waiting for a missing device is not a fault a restart would fix: pets go on.
    assert all(
        any(t <= p < t + 1.5 for p in pets) for t in range(int(lost_at) + 1, int(lost_at) + 19)
    )


async def test_a_device_in_another_format_is_tried_again_at_once_on_reload(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # The operator replaces the microphone (or fixes its mixer) without touching the config:
    # `systemctl reload dgd` must not leave it waiting out the 60 s misconfigured retry.
    rig = make_rig()
    rig.mic.wrong_format = True
    async with trio.open_nursery() as nursery:
        nursery.start_soon(rig.daemon.run)
        await trio.sleep(5.0)
        assert rig.mic.openings == []
        rig.mic.wrong_format = False
        await trio.sleep(5.0)
        assert rig.mic.openings == []  # nothing tries it before the 60 s retry ...
        rig.daemon.request_reload()  # ... but a reload does, at once
        await trio.sleep(0.5)
        opened = list(rig.mic.openings)
        nursery.cancel_scope.cancel()
    assert opened == [CONFIG.audio.device]


#: Audio captured in the rate-change test: from start-up to the end, but for the reopen.
CAPTURED_S = 1.0 + 0.3 + 0.5 + 1.0 + 5.0


async def test_a_new_rate_reopens_capture_and_gets_its_own_stream(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rig = make_rig()
    first, second = rig.sockets[0], rig.sockets[1]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(rig.daemon.run)
        await trio.sleep(1.0)
        rig.mic.play(tone(FMT, 0.5))
        await trio.sleep(0.3)  # mid-utterance
        rig.write(dataclasses.replace(CONFIG, audio=AudioConfig(rate=8000)))
        rig.daemon.request_reload()
        await trio.sleep(0.5)
        # Capture stopped only for the reopen (not close_timeout_s): the device is open again.
        assert rig.mic.formats == [FMT, PcmFormat(8000, 1, 20)]
        rig.mic.play(tone(PcmFormat(8000, 1, 20), 1.0))
        await trio.sleep(1.0)
        first.push(metadata(duration_s=0.5))  # the old stream ends as asked
        await trio.sleep(5.0)
        nursery.cancel_scope.cancel()
    urls = [url for _, url, _ in rig.connector.calls]
    assert [u.rsplit("&", 2)[1] for u in urls[:2]] == ["sample_rate=16000", "sample_rate=8000"]
    assert first.texts()[-1][1] == '{"type":"CloseStream"}'
    # 16 kHz audio only on the first stream, 8 kHz only on the second: a tone of 8000
    # square-wave samples in 8 kHz frames is 16000 bytes a second.
    assert sent_seconds(second, PcmFormat(8000, 1, 20)) == pytest.approx(2.2, abs=0.11)
    assert all(len(b) % FMT.period_bytes == 0 for b in first.binaries())
    # The stats count the audio of both formats (a new pipeline does not reset them).
    assert rig.daemon.statistics().captured_s == pytest.approx(CAPTURED_S, abs=0.1)


async def test_reloads_coalesce_and_end_on_the_newest_file(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rig = make_rig()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(rig.daemon.run)
        await trio.sleep(1.0)
        for device in ("hw:B", "hw:C", "hw:D"):
            rig.write(dataclasses.replace(CONFIG, audio=AudioConfig(device=device)))
            rig.daemon.request_reload()  # 3 SIGHUPs 10 ms apart, each after a new file
            await trio.sleep(0.01)
        await trio.sleep(3.0)
        nursery.cancel_scope.cancel()
    assert rig.mic.openings[-1] == "hw:D"
    assert rig.daemon.config.audio.device == "hw:D"
    assert 1 <= len(rig.reloads) <= 3  # coalesced, but never fewer than needed


async def test_a_second_stop_request_does_not_cut_shutdown_short(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rig = make_rig(config=dataclasses.replace(CONFIG, stream=StreamConfig(close_timeout_s=5.0)))
    ws = rig.sockets[0]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(rig.daemon.run)
        await trio.sleep(1.0)
        rig.mic.play(tone(FMT, 1.0))
        await trio.sleep(0.5)
        rig.daemon.request_stop("SIGTERM")
        await trio.sleep(0.1)
        rig.daemon.request_stop("SIGTERM")
        await trio.sleep(1.0)
        ws.push(results(0.2, 0.5, "last words"))
        ws.push(metadata(duration_s=0.7))
    assert [t[0] for t in rig.transcripts()] == ["last words"]


async def test_a_rate_change_while_capture_reopens_still_gets_its_own_stream(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A second reload arriving while the first reopens capture ends with capture in the newest
    format (the race this guards against is reproduced end to end in
    tests/test_reload_cases_e2e.py; trio's scheduling here does not hit it)."""
    rig = make_rig()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(rig.daemon.run)
        await trio.sleep(1.0)
        rig.write(dataclasses.replace(CONFIG, audio=AudioConfig(device="hw:B")))
        rig.daemon.request_reload()
        await trio.sleep(0.01)  # the first reload is reopening capture now
        rig.write(dataclasses.replace(CONFIG, audio=AudioConfig(device="hw:B", rate=8000)))
        rig.daemon.request_reload()
        await trio.sleep(1.0)
        nursery.cancel_scope.cancel()
    assert rig.mic.openings[-1] == "hw:B"
    assert rig.mic.formats[-1] == PcmFormat(8000, 1, 20)
    assert rig.daemon.mic.pipeline.fmt == PcmFormat(8000, 1, 20)
    assert not any("stuck" in " ".join(fields) for _, fields in rig.notifier.sent)


async def test_output_journald_switched_on_by_reload(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rig = make_rig(config=dataclasses.replace(CONFIG, output=OutputConfig(journald=False)))
    ws = rig.sockets[0]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(rig.daemon.run)
        await trio.sleep(1.0)
        rig.mic.play(tone(FMT, 1.0))
        await trio.sleep(3.0)
        ws.push(results(0.2, 0.5, "before the reload"))
        await trio.sleep(0.5)
        rig.write(dataclasses.replace(CONFIG, output=OutputConfig(journald=True)))
        rig.daemon.request_reload()
        await trio.sleep(0.5)
        ws.push(results(0.7, 0.5, "after the reload"))
        await trio.sleep(0.5)
        nursery.cancel_scope.cancel()
    assert [t[0] for t in rig.transcripts()] == ["after the reload"]


@pytest.fixture
def restore_log_level() -> Iterator[None]:
    before = logging.getLogger("dgd").level, logging.getLogger().level
    yield
    logging.getLogger("dgd").setLevel(before[0])
    logging.getLogger().setLevel(before[1])


async def test_log_level_applies_on_reload(
    autojump_clock: trio.testing.MockClock, restore_log_level: None
) -> None:
    set_level(LogConfig().level)
    rig = make_rig()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(rig.daemon.run)
        await trio.sleep(1.0)
        assert logging.getLogger("dgd").level == logging.INFO
        rig.write(dataclasses.replace(CONFIG, log=LogConfig(level=LogLevel.DEBUG)))
        rig.daemon.request_reload()
        await trio.sleep(0.5)
        assert logging.getLogger("dgd").level == logging.DEBUG
        nursery.cancel_scope.cancel()


async def test_a_sighup_before_ready_is_carried_out_once_ready(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rig = make_rig(signals_before_start=[signal.SIGHUP])
    rig.write(dataclasses.replace(CONFIG, audio=AudioConfig(device="hw:B")))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(rig.daemon.run)
        await trio.sleep(2.0)
        nursery.cancel_scope.cancel()
    assert len(rig.reloads) == 1
    ready, reloading = rig.notifier.times("READY=1"), rig.notifier.times("RELOADING=1")
    assert len(reloading) == 1
    assert ready[0] <= reloading[0] < ready[1]
    assert rig.mic.openings == [CONFIG.audio.device, "hw:B"]


async def test_a_wall_clock_step_loses_and_duplicates_nothing_and_relabels(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """The wall clock steps back an hour (NTP fixing a Pi that booted with a stale time) between
    the second and the third of four utterances: all four finals reach the journal once, the
    last two labelled with the new time, and the step is logged once with its size."""
    offset = [WALL0]
    rig = make_rig(wall_offset=lambda: offset[0])
    ws = rig.sockets[0]
    sent_per_utterance_s = 0.2 + 1.0 + 1.0  # pre-roll, speech, hangover
    async with trio.open_nursery() as nursery:
        nursery.start_soon(rig.daemon.run)
        for k in range(4):
            await trio.sleep_until(1.0 + 5 * k)
            rig.mic.play(tone(FMT, 1.0))
            await trio.sleep(3.0)
            ws.push(results(k * sent_per_utterance_s + 0.2, 1.0, f"utterance {k}"))
            await trio.sleep(0.5)
            if k == 1:
                offset[0] = WALL0 - 3600.0
        nursery.cancel_scope.cancel()
    got = [
        (text, datetime.fromisoformat(start).timestamp()) for text, start, _ in rig.transcripts()
    ]
    assert [text for text, _ in got] == [f"utterance {k}" for k in range(4)]
    expected = [WALL0 + 1.0, WALL0 + 6.0, WALL0 - 3600.0 + 11.0, WALL0 - 3600.0 + 16.0]
    # Within 0.1 s: the offsets pushed assume 2.2 s sent per utterance; the frames differ by a
    # few tens of milliseconds. The hour is what matters.
    assert [start for _, start in got] == pytest.approx(expected, abs=0.1)
    steps = [r for r in caplog.records if getattr(r, "DGD_EVENT", "") == "clock_step"]
    assert [r.getMessage().split(" (")[0] for r in steps] == ["the wall clock stepped -3600.000 s"]
