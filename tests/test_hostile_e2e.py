"""End-to-end: a server that sends hostile content between good results ("Never lose a word",
part 2: server content is bounded at the door). Real ALSA, the real daemon.

One run of `dgd run` captures from a FIFO-fed ALSA ``file`` PCM and streams to `dgd fake-server`,
whose fault plan sends, after the first utterance's final, one final ``Results`` of every
hostile kind (docs/FAKE_SERVER.md): a time that is NaN, negative, 1e20, a duration of 1e9, an
end beyond the audio received, an end before its start, a word ending before it starts, a word
outside its result; and it spoils the next real final with a lone surrogate. Two utterances
follow. The daemon must keep running on the same connection, write every utterance's final
exactly once (the spoiled one repaired with U+FFFD), write nothing of the hostile ones, and log
each kind of problem once as ``unrecognized_message``, counting all nine. Run it with:

    tests/with-journald.sh .venv/bin/pytest tests/test_hostile_e2e.py -v
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import pytest

from dgd.testing.fakeserver import HOSTILE_KINDS
from dgd.testing.fakeserver.malformed import LONE_SURROGATE
from tests.fault_harness import (
    conn_records,
    fault_rig,
    handshakes,
    read_finals,
    silence_s,
    wait_handshake,
)
from tests.harness import (
    BYTES_PER_S,
    journald_fixture,  # noqa: F401  (the fixture, by name)
    load_sample,
    sample_utterance,
)

if TYPE_CHECKING:
    from pathlib import Path

#: The sample's utterances by index (dgd/data/sample.json): 0 "kitchen lights" 1.83 s,
#: 3 "quick brown fox" 3.04 s, 4 "thank you" 2.16 s.
SAMPLE, UTTERANCES = load_sample()
#: When the hostile messages are sent, after the handshake: the first utterance (1 s of
#: silence, 1.83 s of speech, 0.6 s of endpointing) has had its final by then.
HOSTILE_AT_S = 6.0
#: Silence between utterances: more than the gate's hangover plus pre-roll.
GAP_S = 2.5
#: Silence after the last utterance, so its final arrives before SIGTERM.
TAIL_S = 2.0
#: What the daemon logs, once per kind of problem (the link's repeat filter keys on the first
#: 40 characters of the reason): the three times beyond the audio sent share one line.
LOGGED = [
    "Results: field start is not a finite number",
    "Results: negative time in field start: -1",
    "Results: time beyond the audio sent on this connection: 1e+20 s, ",
    "Results: end before start: field duration = -1",
    "Results: end before start: field channel.alternatives[0].words[0].end = ",
    "Results: word outside its result: channel.alternatives[0].words[0] spans [",
    "Results: text is not valid Unicode: lone surrogates replaced by U+FFFD in "
    "channel.alternatives[0].transcript, channel.alternatives[0].words[0].punctuated_word",
]


utterance = sample_utterance  # the bytes of sample utterance ``index``


def wait_fault(record_dir: Path, attempt: int, timeout_s: float) -> bool:
    """Wait until the first fault of ``attempt`` has fired (its record is written)."""
    deadline = time.monotonic() + timeout_s
    while not any(r.get("kind") == "fault" for r in conn_records(record_dir, attempt)):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def sent_finals(records: list[dict[str, Any]]) -> list[str]:
    """The transcripts of the non-empty finals among ``records``, and ``"FAULT"`` where the
    fault fired, in the order the server sent them."""
    out = []
    for record in records:
        message = record.get("message") if record.get("kind") == "sent" else None
        if record.get("kind") == "fault":
            out.append("FAULT")
        elif isinstance(message, dict) and message.get("is_final") is True:
            text = message["channel"]["alternatives"][0]["transcript"]
            if text:
                out.append(text)
    return out


@pytest.mark.e2e
@pytest.mark.slow
def test_hostile_content_between_good_results(tmp_path: Path, journald: None) -> None:
    faults = [{"attempts": [1], "malformed_after_s": HOSTILE_AT_S, "kinds": list(HOSTILE_KINDS)}]
    with fault_rig(tmp_path, faults) as rig:
        rig.wait_ready()
        first = wait_handshake(rig.record_dir, 1, 10.0)
        assert first is not None, rig.diagnostics()
        rig.play_utterance(utterance(0), 1.0)
        assert wait_fault(rig.record_dir, 1, HOSTILE_AT_S + 10.0), rig.diagnostics()
        rig.play_utterance(utterance(3), GAP_S)  # its final is the one spoiled
        last = rig.play_utterance(utterance(4), GAP_S)
        rig.play(silence_s(TAIL_S))
        rig.wait_written(last.end + round(TAIL_S * BYTES_PER_S))
        rig.stop()

        diag = rig.diagnostics()
        # The server sent what the scenario says: a good final, the hostile ones, the spoiled
        # final, a good final, all on one connection.
        order = sent_finals(conn_records(rig.record_dir, 1))
        hostile = [f"[hostile {kind}]" for kind in HOSTILE_KINDS if kind != "lone_surrogate"]
        at = order.index("FAULT")
        assert order[at + 1 : at + 1 + len(hostile)] == hostile, order
        good = order[:at] + order[at + 1 + len(hostile) :]
        assert len(good) == 3, f"the scenario did not run as planned: {order}\n{diag}"
        assert order.index(good[0]) < at, f"no good final before the hostile ones: {order}"
        assert good[1].endswith(" " + LONE_SURROGATE), order
        assert not good[2].endswith(LONE_SURROGATE), order

        # The daemon kept going on that connection and wrote each utterance's final once, on
        # time, in journald and JSONL alike; the spoiled one repaired, no hostile one at all.
        assert [h["status"] for h in handshakes(rig.record_dir)] == [101], diag
        assert rig.events("disconnected") == [], diag
        assert rig.events("crashed") == [], diag
        assert rig.events("sink_error") == [], diag
        rig.check_no_audio_lost()
        rig.check_transcripts()
        finals = read_finals(rig.daemon.pid, rig.jsonl)
        repaired = good[1].replace(LONE_SURROGATE, "\ufffd")
        assert [e["MESSAGE"] for e in finals.journal] == [good[0], repaired, good[2]], diag
        written = [e["MESSAGE"] for e in rig.events("transcript")]
        assert not [text for text in written if "[hostile" in text], written

        # Each kind of problem logged once, as a warning; all nine counted.
        ignored = rig.events("unrecognized_message")
        messages = [e["MESSAGE"] for e in ignored]
        assert len(messages) == len(LOGGED), "\n".join(messages)
        for message, prefix in zip(messages, LOGGED, strict=True):
            assert message.startswith(f"bad server message: {prefix}"), (message, prefix)
        assert {e["PRIORITY"] for e in ignored} == {"4"}, ignored
        stopped = rig.events("stopped", 10.0, 1)
        assert stopped, diag
        assert stopped[-1]["DGD_UNRECOGNIZED"] == str(len(HOSTILE_KINDS)), stopped[-1]
