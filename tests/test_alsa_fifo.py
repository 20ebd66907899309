"""The FIFO microphone through real alsa-lib and pyalsaaudio (no daemon), and the e2e harness.

Everything tests/test_e2e.py relies on is tested here first: `FifoMic` feeding a ``type file``
PCM byte for byte, its timeline and capture times, stalls, a reader that reopens the device,
the ground truth of the bundled sample, the record and journal helpers, the NOTIFY_SOCKET
listener and `DaemonProcess` (with a stand-in for the daemon).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import alsaaudio
import pytest

from dgd.daemon.alsadevice import DeviceProblem, classify_alsa_error
from dgd.testing.fifomic import alsa_config_path, write_alsa_conf
from tests.harness import (  # the fixtures are imported by name for pytest
    BYTES_PER_S,
    AlsaMic,
    ClipUtterance,
    DaemonProcess,
    FakeServerProcess,
    FifoMic,
    NotifyListener,
    SampleUtterance,
    alsa_mic_fixture,  # noqa: F401
    client_message_gaps_s,
    compose_clip,
    daemon_env,
    find_in_order,
    journal_bool,
    journal_entries,
    journald_fixture,  # noqa: F401
    load_sample,
    notify_listener_fixture,  # noqa: F401
    overlapping,
    parse_rfc3339,
    server_audio,
    server_records,
    write_daemon_config,
)

PERIOD_FRAMES = 320
PERIOD_BYTES = PERIOD_FRAMES * 2
READ_TIMEOUT_S = 20.0


def _noise(n: int, seed: int) -> bytes:
    # Random bytes never contain a long run of zeros, so misplaced silence cannot match.
    return random.Random(seed).randbytes(n)


def _open_pcm(mic: FifoMic, name: str) -> alsaaudio.PCM:
    with mic.reader_placeholder():
        return alsaaudio.PCM(
            type=alsaaudio.PCM_CAPTURE,
            mode=alsaaudio.PCM_NORMAL,
            device=name,
            rate=16000,
            channels=1,
            format=alsaaudio.PCM_FORMAT_S16_LE,
            periodsize=PERIOD_FRAMES,
            periods=4,
        )


class Reader:
    """Reads periods in a thread, recording (time.time() after the read, stream offset)."""

    def __init__(self, pcm: alsaaudio.PCM, n_bytes: int) -> None:
        self.pcm = pcm
        self.n_bytes = n_bytes
        self.data = bytearray()
        self.returns: list[tuple[float, int]] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while len(self.data) < self.n_bytes:
            _n, chunk = self.pcm.read()
            self.data += chunk
            self.returns.append((time.time(), len(self.data)))

    def join(self) -> bytes:
        self.thread.join(READ_TIMEOUT_S)
        assert not self.thread.is_alive(), "the PCM read blocked: the FifoMic stopped writing"
        return bytes(self.data)


@pytest.fixture
def alsa_env(alsa_mic: AlsaMic, monkeypatch: pytest.MonkeyPatch) -> AlsaMic:
    monkeypatch.setenv("ALSA_CONFIG_PATH", alsa_config_path(alsa_mic.conf))
    return alsa_mic


# ---- ALSA + FIFO ---------------------------------------------------------------------------


def test_alsa_conf_defines_the_capture_pcm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conf = tmp_path / "a.conf"
    write_alsa_conf(conf, "dgdconfcheck", tmp_path / "in.raw")
    assert alsa_config_path(conf) == f"/usr/share/alsa/alsa.conf:{conf}"
    monkeypatch.setenv("ALSA_CONFIG_PATH", alsa_config_path(conf))
    assert "dgdconfcheck" in alsaaudio.pcms(alsaaudio.PCM_CAPTURE)


@pytest.mark.parametrize(
    ("chunk_periods", "length"),
    [(1, 6400), (2, 6402), (6, 24_690)],
)
def test_bytes_read_equal_bytes_played(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk_periods: int, length: int
) -> None:
    conf, fifo = tmp_path / "alsa.conf", tmp_path / "mic.fifo"
    write_alsa_conf(conf, "dgdexact", fifo)
    monkeypatch.setenv("ALSA_CONFIG_PATH", alsa_config_path(conf))
    data = _noise(length, seed=chunk_periods)
    with FifoMic(fifo, chunk_periods=chunk_periods, speed=8.0) as mic:
        lead = mic.play(bytes(3 * PERIOD_BYTES))
        start = mic.play(data)
        pcm = _open_pcm(mic, "dgdexact")
        padded = length + (-length % mic.chunk_bytes)
        got = Reader(pcm, start + padded + 2 * PERIOD_BYTES).join()
        pcm.close()
    # Played audio is padded to whole writes (chunks), so the stream never has a short one.
    assert (lead, start) == (0, 3 * PERIOD_BYTES + (-3 * PERIOD_BYTES % mic.chunk_bytes))
    assert got[start : start + length] == data
    assert got[:start] == bytes(start)  # silence before
    assert got[start + length :] == bytes(len(got) - start - length)  # padding, then idle silence


@pytest.mark.parametrize(
    ("lengths", "offsets"),
    [
        ([1, 1], [0, 3200]),
        ([3200, 3200], [0, 3200]),
        ([3201, 10], [0, 6400]),
        ([639, 1, 1280], [0, 3200, 6400]),
    ],
)
def test_play_returns_exact_offsets(tmp_path: Path, lengths: list[int], offsets: list[int]) -> None:
    # No reader: the writer takes nothing, so offsets count only the queue, padded to whole
    # writes (5 periods of 640 bytes by default).
    with FifoMic(tmp_path / "mic.fifo") as mic:
        assert mic.chunk_bytes == 3200
        assert [mic.play(bytes(n)) for n in lengths] == offsets
        assert mic.queued_bytes == offsets[-1] + lengths[-1] + (-lengths[-1] % 3200)
        assert mic.bytes_written == 0
        assert mic.readers_seen == 0


def test_timeline_and_capture_times(alsa_env: AlsaMic) -> None:
    mic = alsa_env.mic
    pcm = _open_pcm(mic, alsa_env.pcm_name)
    start = mic.play(_noise(16_000, seed=7))  # 0.5 s
    got = Reader(pcm, start + 16_000).join()
    pcm.close()
    assert len(got) >= start + 16_000
    timeline = mic.timeline
    offsets = [o for o, _t in timeline]
    times = [t for _o, t in timeline]
    chunk = mic.chunk_bytes
    # Contiguous whole chunks from offset 0, written in order.
    assert offsets == list(range(0, len(offsets) * chunk, chunk))
    assert times == sorted(times)
    assert mic.bytes_written == offsets[-1] + chunk
    # A chunk is written when its last sample has happened.
    k = len(timeline) // 2
    assert mic.capture_time(offsets[k]) == pytest.approx(times[k] - chunk / BYTES_PER_S)
    assert mic.capture_time(offsets[k] + chunk - 2) == pytest.approx(times[k] - 2 / BYTES_PER_S)
    assert mic.capture_time(offsets[k] + chunk) == pytest.approx(times[k + 1] - chunk / BYTES_PER_S)
    with pytest.raises(ValueError, match="wait_written"):
        mic.capture_time(mic.bytes_written + 10_000_000)
    with pytest.raises(ValueError, match="wait_written"):
        mic.capture_time(-1)


def test_speed_factor_scales_capture_times(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conf, fifo = tmp_path / "alsa.conf", tmp_path / "mic.fifo"
    write_alsa_conf(conf, "dgdfast", fifo)
    monkeypatch.setenv("ALSA_CONFIG_PATH", alsa_config_path(conf))
    with FifoMic(fifo, chunk_periods=4, speed=4.0) as mic:
        pcm = _open_pcm(mic, "dgdfast")
        Reader(pcm, 32_000).join()
        pcm.close()
        (o0, t0), (o1, t1) = mic.timeline[2:4]
        assert o1 - o0 == 4 * PERIOD_BYTES
        assert mic.capture_time(o0) == pytest.approx(t0 - 2560 / BYTES_PER_S / 4)
        assert t1 - t0 >= 0  # ordering only; the rate is a benchmark's business


def test_stall_blocks_the_read_until_writing_resumes(alsa_env: AlsaMic) -> None:
    mic = alsa_env.mic
    pcm = _open_pcm(mic, alsa_env.pcm_name)
    before = mic.play(_noise(6400, seed=1))
    assert mic.wait_written(before + 6400, READ_TIMEOUT_S)
    mic.stall(0.4)
    after = mic.play(_noise(6400, seed=2))
    reader = Reader(pcm, after + 6400)
    got = reader.join()
    pcm.close()
    assert got[before : before + 6400] == _noise(6400, seed=1)
    assert got[after : after + 6400] == _noise(6400, seed=2)  # no garbage: the read waited
    timeline = mic.timeline
    gaps = [(timeline[i][1] - timeline[i - 1][1], i) for i in range(1, len(timeline))]
    _gap, resume = max(gaps)
    resume_offset, _resume_time = timeline[resume]
    assert resume_offset <= after  # the stall came before the second clip
    # The period written right after the stall came back only after the stall: the read
    # blocked (ordering, not durations; the writer stamps a chunk just after writing it, so
    # only the "after" side is race-free).
    first_after = next(t for t, end in reader.returns if end > resume_offset)
    assert first_after >= timeline[resume - 1][1]


def test_reopened_reader_continues_the_stream(alsa_env: AlsaMic) -> None:
    mic = alsa_env.mic
    data = _noise(32_000, seed=3)
    start = mic.play(data)
    pcm = _open_pcm(mic, alsa_env.pcm_name)
    first = Reader(pcm, start + 9600).join()
    pcm.close()
    assert mic.wait_reader(READ_TIMEOUT_S, present=False)  # the next write hit EPIPE
    assert mic.readers_seen == 1
    pcm = _open_pcm(mic, alsa_env.pcm_name)
    second = Reader(pcm, start + 32_000 - len(first)).join()
    pcm.close()
    stream = first + second
    assert stream[start : start + 32_000] == data
    assert mic.readers_seen == 2


def test_close_without_a_reader_returns_and_removes_the_fifo(tmp_path: Path) -> None:
    mic = FifoMic(tmp_path / "mic.fifo")
    assert (tmp_path / "mic.fifo").exists()
    assert not mic.wait_reader(0.05)
    assert mic.wait_reader(0.0, present=False)
    mic.close()
    assert not (tmp_path / "mic.fifo").exists()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"chunk_periods": 7}, "chunk_periods=7"),
        ({"chunk_periods": 0}, "chunk_periods=0"),
        ({"period_frames": 1024, "chunk_periods": 3}, "chunk_periods=3 x 2048 B"),
        ({"speed": 0.0}, "speed must be > 0"),
    ],
)
def test_bad_fifo_mic_arguments(tmp_path: Path, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FifoMic(tmp_path / "mic.fifo", **kwargs)
    assert not (tmp_path / "mic.fifo").exists()


# ---- ground truth --------------------------------------------------------------------------


def test_sample_ground_truth_matches_the_audio() -> None:
    data, utterances = load_sample()
    meta = json.loads((Path(__file__).parent.parent / "dgd/data/sample.json").read_text())
    assert len(data) == meta["bytes"] < 1_500_000
    assert 4 <= len(utterances) <= 5
    assert 35 <= len(data) / BYTES_PER_S <= 42
    assert utterances[0].start_byte == BYTES_PER_S  # 1 s of leading silence
    edges = [0] + [b for u in utterances for b in (u.start_byte, u.end_byte)] + [len(data)]
    assert edges == sorted(edges)
    gaps = [(edges[i], edges[i + 1]) for i in range(0, len(edges), 2)]
    for lo, hi in gaps:
        assert data[lo:hi] == bytes(hi - lo)  # pauses are digital silence
    gap_s = [(hi - lo) / BYTES_PER_S for lo, hi in gaps[1:-1]]
    assert sum(g >= 15 for g in gap_s) == 1
    assert all(2 <= g <= 4 for g in gap_s if g < 15)
    for u in utterances:
        assert data[u.start_byte : u.start_byte + 2] != b"\0\0"  # tight: starts on signal
        assert data[u.end_byte - 2 : u.end_byte] != b"\0\0"
        assert u.start_byte % 2 == u.end_byte % 2 == 0


def test_compose_clip_places_utterances_exactly() -> None:
    sample = bytes(range(256)) * 4
    a = SampleUtterance(0, "a", 10, 20)
    b = SampleUtterance(3, "b", 100, 104)
    clip = compose_clip(sample, [(0.001, a), (0.0005, b)], tail_s=0.0001)
    assert clip.utterances == (ClipUtterance(0, 32, 42), ClipUtterance(3, 58, 62))
    assert clip.data == bytes(32) + sample[10:20] + bytes(16) + sample[100:104] + bytes(4)
    assert clip.duration_s == 66 / BYTES_PER_S


# ---- pure helpers --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("haystack", "needles", "expected"),
    [
        (b"abcabc", [b"abc", b"abc"], [0, 3]),
        (b"abcabc", [b"bc", b"a"], [1, 3]),
        (b"abcab", [b"abc", b"abc"], [0, -1]),
        (b"xyz", [b"z", b"x"], [2, -1]),
        (b"xyz", [b"q", b"x"], [-1, 0]),
        (b"", [], []),
    ],
)
def test_find_in_order(haystack: bytes, needles: list[bytes], expected: list[int]) -> None:
    assert find_in_order(haystack, needles) == expected


def _r(conn: int, t: float, kind: str) -> dict[str, Any]:
    return {"conn": conn, "t": t, "kind": kind}


@pytest.mark.parametrize(
    ("records", "expected"),
    [
        ([_r(1, 0.0, "handshake")], {1: 0.0}),
        ([_r(1, 0.0, "handshake"), _r(1, 4.0, "text"), _r(1, 5.5, "binary")], {1: 4.0}),
        ([_r(1, 0.0, "handshake"), _r(1, 11.0, "sent"), _r(1, 12.0, "binary")], {1: 12.0}),
        (
            [
                *(_r(1, 0.0, "handshake"), _r(1, 1.0, "binary"), _r(2, 50.0, "handshake")),
                *(_r(2, 53.0, "text"), _r(1, 60.0, "close")),
            ],
            {1: 1.0, 2: 3.0},
        ),
    ],
)
def test_client_message_gaps(records: list[dict[str, Any]], expected: dict[int, float]) -> None:
    assert client_message_gaps_s(records) == expected


@pytest.mark.parametrize(
    ("interval", "slack", "expected"),
    [
        ((1.0, 2.0), 0.0, [0]),
        ((2.5, 2.6), 0.0, []),
        ((2.5, 2.6), 0.5, [0, 1]),
        ((0.0, 10.0), 0.0, [0, 1, 2]),
        ((5.1, 6.0), 0.0, [2]),
    ],
)
def test_overlapping(interval: tuple[float, float], slack: float, expected: list[int]) -> None:
    assert overlapping(interval, [(1.5, 2.0), (3.0, 4.0), (5.0, 5.5)], slack) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1970-01-01T00:00:01.250Z", 1.25),
        ("1970-01-01T00:00:01.250+00:00", 1.25),
        ("2026-11-23T21:40:01.234Z", 1795470001.234),
        ("1970-01-01T01:00:00+01:00", 0.0),
    ],
)
def test_parse_rfc3339(text: str, expected: float) -> None:
    assert parse_rfc3339(text) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("text", ["1970-01-01T00:00:01", "yesterday", ""])
def test_parse_rfc3339_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_rfc3339(text)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        *[("true", True), ("True", True), ("1", True), ("yes", True)],
        *[("false", False), ("0", False), ("no", False)],
    ],
)
def test_journal_bool(value: str, expected: bool) -> None:
    assert journal_bool(value) is expected


def test_journal_bool_rejects() -> None:
    with pytest.raises(ValueError, match="maybe"):
        journal_bool("maybe")


def test_server_record_readers(tmp_path: Path) -> None:
    (tmp_path / "conn-0002.jsonl").write_text('{"t": 5.0, "kind": "handshake"}\n')
    (tmp_path / "conn-0001.jsonl").write_text(
        '{"t": 1.0, "kind": "handshake"}\n\n{"t": 1.5, "kind": "binary", "len": 3, "offset": 0}\n'
    )
    (tmp_path / "conn-0002.raw").write_bytes(b"DEF")
    (tmp_path / "conn-0001.raw").write_bytes(b"abc")
    assert server_records(tmp_path) == [
        {"t": 1.0, "kind": "handshake", "conn": 1},
        {"t": 1.5, "kind": "binary", "len": 3, "offset": 0, "conn": 1},
        {"t": 5.0, "kind": "handshake", "conn": 2},
    ]
    assert server_audio(tmp_path) == b"abcDEF"


def test_write_daemon_config_writes_the_config_it_returns(tmp_path: Path) -> None:
    from dgd.core.config import Config, loads

    path = tmp_path / "dgd.toml"
    written = write_daemon_config(
        path, url="ws://127.0.0.1:1/v1/listen", device="dgdtest", jsonl=tmp_path / "t.jsonl"
    )
    assert loads(path.read_text()) == written
    defaults = Config()
    assert (written.deepgram.url, written.audio.device, written.output.jsonl) == (
        "ws://127.0.0.1:1/v1/listen",
        "dgdtest",
        str(tmp_path / "t.jsonl"),
    )
    assert written.gate.threshold_dbfs == -50.0
    assert written.stream == defaults.stream


# ---- processes: NOTIFY_SOCKET, DaemonProcess, journald -------------------------------------

STAND_IN = """
import signal, sys, time
from systemd import daemon, journal
def stop(*_):
    daemon.notify("STOPPING=1")
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
journal.send("stand-in ready", DGD_EVENT="stand_in", SYSLOG_IDENTIFIER="dgd")
daemon.notify("READY=1\\nSTATUS=standing in")
while True:
    time.sleep(1)
"""

STUBBORN = """
import signal, time
from systemd import daemon
signal.signal(signal.SIGTERM, signal.SIG_IGN)
daemon.notify("READY=1")
time.sleep(60)
"""


def _stand_in(tmp_path: Path, listener: NotifyListener, source: str) -> DaemonProcess:
    env = daemon_env(alsa_conf=tmp_path / "none.conf", notify_socket=listener.address)
    return DaemonProcess(
        tmp_path / "unused.toml",
        env=env,
        log_dir=tmp_path,
        argv=[sys.executable, "-c", source],
    )


def test_notify_listener_and_daemon_process(
    tmp_path: Path, notify_listener: NotifyListener
) -> None:
    with _stand_in(tmp_path, notify_listener, STAND_IN) as proc:
        assert notify_listener.wait_for("READY=1", 20), proc.output()
        assert proc.poll() is None
        assert proc.terminate(timeout_s=20) == 0
    assert notify_listener.wait_for("STOPPING=1", 5)
    assert notify_listener.assignments() == ["READY=1", "STATUS=standing in", "STOPPING=1"]
    assert {n.pid for n in notify_listener.notifications} == {proc.pid}
    notes = notify_listener.notifications
    assert notes[0].t == notes[1].t <= notes[2].t  # one datagram, then another


def test_notify_listener_abstract_address_for_long_paths(tmp_path: Path) -> None:
    long_dir = tmp_path / ("d" * 100)
    long_dir.mkdir()
    with NotifyListener(long_dir / "notify.sock") as listener:
        assert listener.address.startswith("@dgd-test-")
        env = {**os.environ, "NOTIFY_SOCKET": listener.address}
        code = "from systemd import daemon; assert daemon.notify('STATUS=abstract')"
        subprocess.run([sys.executable, "-c", code], env=env, check=True)
        assert listener.wait_for("STATUS=abstract", 5)


def test_terminate_kills_a_daemon_that_ignores_sigterm(
    tmp_path: Path, notify_listener: NotifyListener
) -> None:
    with _stand_in(tmp_path, notify_listener, STUBBORN) as proc:
        assert notify_listener.wait_for("READY=1", 20), proc.output()
        with pytest.raises(TimeoutError, match=r"did not exit within 0\.3 s"):
            proc.terminate(timeout_s=0.3)
        assert proc.poll() is not None


def test_journal_entries_of_a_child_process(
    tmp_path: Path, journald: None, notify_listener: NotifyListener
) -> None:
    with _stand_in(tmp_path, notify_listener, STAND_IN) as proc:
        assert notify_listener.wait_for("READY=1", 20), proc.output()
        entries = journal_entries(10.0, 1, _PID=str(proc.pid), DGD_EVENT="stand_in")
        assert proc.terminate() == 0
    assert [(e["MESSAGE"], e["SYSLOG_IDENTIFIER"]) for e in entries] == [("stand-in ready", "dgd")]
    assert journal_entries(0.0, 1, _PID=str(proc.pid), DGD_EVENT="no_such_event") == []


# ---- the fake server (written by the lead) -------------------------------------------------


def _fake_server_reason() -> str | None:
    probe = subprocess.run(
        [sys.executable, "-m", "dgd", "fake-server", "--help"],
        capture_output=True,
        cwd=Path(__file__).parent.parent,
        check=False,
    )
    if probe.returncode != 0:
        return "`python -m dgd fake-server` is not available yet: " + probe.stderr.decode()[-300:]
    return None


async def test_fake_server_records_what_the_client_sent(tmp_path: Path) -> None:
    reason = _fake_server_reason()
    if reason is not None:
        pytest.skip(reason)
    import trio
    from trio_websocket import ConnectionClosed, open_websocket_url

    server = FakeServerProcess(tmp_path / "rec", api_key="k")
    try:
        url = server.url + "?encoding=linear16&sample_rate=16000&channels=1"
        async with open_websocket_url(url, extra_headers=[(b"Authorization", b"Token k")]) as ws:
            await ws.send_message(b"\x01\x02\x03\x04")
            await ws.send_message('{"type": "KeepAlive"}')
            await ws.send_message('{"type": "CloseStream"}')
            with trio.fail_after(10):
                try:
                    while True:
                        await ws.get_message()
                except ConnectionClosed:
                    pass
        deadline = time.monotonic() + 10
        while not any(r["kind"] == "close" for r in server.records()):
            assert time.monotonic() < deadline, "the fake server recorded no close"
            await trio.sleep(0.05)  # polling a file the server writes: no event to wait on
    finally:
        server.stop()
    records = server.records()
    kinds = [r["kind"] for r in records]
    assert kinds[0] == "handshake"
    binary = [r for r in records if r["kind"] == "binary"]
    assert [(r["len"], r["offset"]) for r in binary] == [(4, 0)]
    texts = [r["text"] for r in records if r["kind"] == "text"]
    assert [json.loads(t)["type"] for t in texts] == ["KeepAlive", "CloseStream"]
    assert server.received_audio() == b"\x01\x02\x03\x04"
    assert {r["conn"] for r in records} == {1}


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("No such file or directory [hw:CARD=Mic]", DeviceProblem.MISSING),
        ("Unknown PCM nosuch", DeviceProblem.MISSING),
        ("Device or resource busy [hw:0]", DeviceProblem.BUSY),
        ("Permission denied [hw:0]", DeviceProblem.PERMISSION),
        ("No such device [hw:1]", DeviceProblem.UNPLUGGED),
        ("Input/output error [hw:1]", DeviceProblem.UNPLUGGED),
        ("Invalid argument [hw:1]", DeviceProblem.OTHER),
    ],
)
def test_alsa_errors_are_classified_for_the_operator(text: str, problem: DeviceProblem) -> None:
    error = classify_alsa_error("hw:1", alsaaudio.ALSAAudioError(text))
    assert (error.problem, error.detail) == (problem, text)
