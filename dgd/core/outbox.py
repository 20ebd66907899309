"""The outbox: audio waiting to be sent, and audio sent but not yet safe.

Audio is *safe* once Deepgram has returned a final result that covers it. Until then it is
kept ("in flight"), so that after a dropped connection it can be sent again on the next one
(replay) without losing a word. While disconnected, captured audio waits here too. Both
together are bounded by ``stream.replay_buffer_s``; past the bound the oldest audio is dropped
and counted.

Audio of two formats can be queued at once after a reload changed ``[audio]``: a
``FormatChange`` marker separates them, and ``format`` is the format of the audio at the head,
which is what the next handshake must declare. This module does no I/O.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dgd.core.events import AudioFrame, FinalizeMarker, FormatChange, OutboxItem

if TYPE_CHECKING:
    from dgd.core.pcm import PcmFormat


@dataclass(frozen=True, slots=True)
class Dropped:
    """Audio dropped because the replay buffer was full."""

    seconds: float
    oldest_start_s: float


@dataclass(slots=True)
class _InFlight:
    item: OutboxItem
    end_offset_s: float  # connection offset just after this item's audio (markers: as sent)


@dataclass(frozen=True, slots=True)
class OutboxStatistics:
    """What the replay buffer did since it was created.

    Attributes:
        dropped_s: audio dropped unsent because the buffer was full.
        released_unconfirmed_s: audio sent but never confirmed by a final result, released to
            make room (it cannot be replayed any more if the connection fails).
        replayed_s: audio sent again after a failed connection.
    """

    dropped_s: float
    released_unconfirmed_s: float
    replayed_s: float


class Outbox:
    """Ordered items to send, plus the unconfirmed tail of what was sent on this connection.

    Args:
        fmt: the format of the audio at the head (to trim frames at sample boundaries, and
            for the next handshake).
        replay_buffer_s: the bound on pending + in-flight audio, in seconds.
    """

    def __init__(self, fmt: PcmFormat, replay_buffer_s: float) -> None:
        self._fmt = fmt
        self.replay_buffer_s = replay_buffer_s
        self._pending: deque[OutboxItem] = deque()
        self._in_flight: deque[_InFlight] = deque()
        self._held_s = 0.0
        self._dropped_s = 0.0
        self._replayed_s = 0.0
        self._released_unconfirmed_s = 0.0
        self._confirmed_offset_s = 0.0

    def statistics(self) -> OutboxStatistics:
        """What was dropped, released unconfirmed and replayed so far."""
        return OutboxStatistics(
            dropped_s=self._dropped_s,
            released_unconfirmed_s=self._released_unconfirmed_s,
            replayed_s=self._replayed_s,
        )

    # -- producer side -------------------------------------------------------------------

    def put(self, item: OutboxItem) -> Dropped | None:
        """Queue an item; if the bound is exceeded, drop the oldest audio and say how much."""
        if isinstance(item, FinalizeMarker):
            # A Finalize only means something after audio; one marker per run of audio.
            last: OutboxItem | None
            if self._pending:
                last = self._pending[-1]
            elif self._in_flight:
                last = self._in_flight[-1].item
            else:
                last = None
            if not isinstance(last, AudioFrame):
                return None
        self._pending.append(item)
        if isinstance(item, AudioFrame):
            self._held_s += item.duration_s
        return self._enforce_bound()

    def _enforce_bound(self) -> Dropped | None:
        # In-flight audio has reached the server; letting go of it only gives up the chance to
        # replay it, so it goes first and is not counted as lost. Pending audio never left: it is.
        while self._held_s > self.replay_buffer_s + 1e-9 and self._in_flight:
            released = self._in_flight.popleft().item
            if isinstance(released, AudioFrame):
                self._held_s -= released.duration_s
                self._released_unconfirmed_s += released.duration_s
        dropped_s = 0.0
        oldest_s: float | None = None
        formats: list[FormatChange] = []  # never dropped: they say what the audio after is
        while self._held_s > self.replay_buffer_s + 1e-9 and self._pending:
            item = self._pending.popleft()
            if isinstance(item, AudioFrame):
                self._held_s -= item.duration_s
                dropped_s += item.duration_s
                oldest_s = item.start_s if oldest_s is None else oldest_s
            elif isinstance(item, FormatChange):
                formats.append(item)
        self._pending.extendleft(reversed(formats))
        if oldest_s is None:
            return None
        self._dropped_s += dropped_s
        return Dropped(dropped_s, oldest_s)

    # -- sender side ---------------------------------------------------------------------

    @property
    def has_pending(self) -> bool:
        """True when something is waiting to be sent."""
        return bool(self._pending)

    def peek(self) -> OutboxItem | None:
        """The next item to send, without taking it."""
        return self._pending[0] if self._pending else None

    def take(self, end_offset_s: float) -> OutboxItem:
        """Take the next item, which the caller is about to send; it stays held in flight.

        Args:
            end_offset_s: the connection offset just after this item once sent.
        """
        item = self._pending.popleft()
        self._in_flight.append(_InFlight(item, end_offset_s))
        return item

    @property
    def format(self) -> PcmFormat:
        """The format of the audio at the head: what the next handshake declares."""
        return self._fmt

    def take_format_change(self) -> PcmFormat:
        """Take the ``FormatChange`` at the head: the audio after it is in its format.

        Called when a stream begins (the handshake will declare it), or mid-stream when the new
        format needs no new handshake (only the period changed).

        Raises:
            ValueError: the head is not a ``FormatChange``.
        """
        head = self.peek()
        if not isinstance(head, FormatChange):
            raise ValueError("the outbox does not begin with a format change")
        self._pending.popleft()
        self._fmt = head.fmt
        return head.fmt

    def confirm(self, offset_s: float) -> None:
        """A final result covered this connection's audio up to ``offset_s``: release it."""
        self._confirmed_offset_s = max(self._confirmed_offset_s, offset_s)
        while self._in_flight:
            head = self._in_flight[0]
            if head.end_offset_s > offset_s + 1e-6:
                break
            self._in_flight.popleft()
            if isinstance(head.item, AudioFrame):
                self._held_s -= head.item.duration_s

    def rewind(self) -> float:
        """The connection is gone: put unconfirmed audio back in front, to be sent again.

        The first in-flight frame is trimmed to start where the last final result ended, so the
        next connection does not hear (and transcribe) those words twice.

        Returns:
            Seconds of audio that will be replayed.
        """
        replay: list[OutboxItem] = []
        for entry in self._in_flight:
            item: OutboxItem | None = entry.item
            if isinstance(item, AudioFrame):
                skip_s = self._confirmed_offset_s - (entry.end_offset_s - item.duration_s)
                if skip_s > 0:
                    item = self._trim_front(item, skip_s)
            if item is not None:
                replay.append(item)
        self._in_flight.clear()
        replayed_s = sum(i.duration_s for i in replay if isinstance(i, AudioFrame))
        self._pending.extendleft(reversed(replay))
        self._held_s = sum(i.duration_s for i in self._pending if isinstance(i, AudioFrame))
        self._confirmed_offset_s = 0.0
        self._replayed_s += replayed_s
        return replayed_s

    def _trim_front(self, frame: AudioFrame, skip_s: float) -> AudioFrame | None:
        frame_bytes = self._fmt.frame_bytes
        skip_bytes = round(skip_s * self._fmt.rate_hz) * frame_bytes
        if skip_bytes >= len(frame.data):
            return None
        data = frame.data[skip_bytes:]
        skipped_s = self._fmt.seconds(skip_bytes)
        return AudioFrame(data, frame.start_s + skipped_s, frame.duration_s - skipped_s)

    # -- introspection -------------------------------------------------------------------

    @property
    def held_s(self) -> float:
        """Seconds of audio held (pending + in flight); exactly 0.0 when nothing is held."""
        if not self._pending and not self._in_flight:
            return 0.0
        return max(0.0, self._held_s)

    @property
    def pending_s(self) -> float:
        """Seconds of audio waiting to be sent."""
        return sum(i.duration_s for i in self._pending if isinstance(i, AudioFrame))

    @property
    def in_flight_s(self) -> float:
        """Seconds of audio sent on this connection and not yet confirmed by a final result."""
        return sum(e.item.duration_s for e in self._in_flight if isinstance(e.item, AudioFrame))
