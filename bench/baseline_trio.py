"""Baseline (b) of bench/perf.py: the obvious bare trio + trio-websocket streaming loop.

What a developer writes without dgd's design: a trio task reads one ALSA period per
``trio.to_thread.run_sync(pcm.read)`` (a thread hand-off and an event-loop wake-up per
period), joins ``--frame-ms`` worth of periods and sends them with ``ws.send_message``; a
second task reads and JSON-decodes the server's messages. No gate, no keep-alive, no
reconnect. It captures through the same real ALSA path as dgd (a FifoMic-fed ``file`` PCM).
Over ``wss://`` trio-websocket wraps the TCP stream in ``trio.SSLStream`` with
``ssl.create_default_context()`` (a private CA: ``SSL_CERT_FILE``), as dgd does.

"Ready" is defined like dgd's ``READY=1``: imports done and the capture device open, before
the network is touched; it is signalled by sending ``READY=1`` to ``$NOTIFY_SOCKET``.

Runs in the bench venv (``bench/.venv``, built by ``bench/setup``), not the daemon's venv.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from typing import Any, Final

import alsaaudio
import trio
import trio_websocket

RATE_HZ: Final = 16000
SAMPLE_BYTES: Final = 2
#: Same ALSA ring buffer as dgd (capture.ALSA_BUFFER_MS) so the capture side is alike.
ALSA_BUFFER_MS: Final = 500


def notify(state: str) -> None:
    """Send ``state`` to ``$NOTIFY_SOCKET`` (the sd_notify protocol), if it is set."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    address = "\0" + path[1:] if path.startswith("@") else path
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto(state.encode(), address)


def open_pcm(device: str, period_ms: int) -> Any:
    """Open ``device`` for 16 kHz mono S16_LE capture with ``period_ms`` periods."""
    return alsaaudio.PCM(
        type=alsaaudio.PCM_CAPTURE,
        mode=alsaaudio.PCM_NORMAL,
        device=device,
        rate=RATE_HZ,
        channels=1,
        format=alsaaudio.PCM_FORMAT_S16_LE,
        periodsize=RATE_HZ * period_ms // 1000,
        periods=max(4, ALSA_BUFFER_MS // period_ms),
    )


async def send_audio(ws: trio_websocket.WebSocketConnection, pcm: Any, periods: int) -> None:
    """Read periods in a worker thread, send every ``periods`` of them as one message."""
    frame: list[bytes] = []
    while True:
        n_frames, data = await trio.to_thread.run_sync(pcm.read, abandon_on_cancel=True)
        if n_frames <= 0:
            continue  # overrun: pyalsaaudio re-prepares the PCM
        frame.append(data)
        if len(frame) >= periods:
            await ws.send_message(b"".join(frame))
            frame.clear()


async def receive_results(ws: trio_websocket.WebSocketConnection) -> None:
    """Read and decode every server message (what any client does with results)."""
    while True:
        message = await ws.get_message()
        if isinstance(message, str):
            json.loads(message)


async def run(args: argparse.Namespace) -> None:
    pcm = open_pcm(args.device, args.period_ms)
    notify("READY=1")
    headers = [(b"Authorization", f"Token {os.environ['DEEPGRAM_API_KEY']}".encode())]
    query = f"?model=nova-3&encoding=linear16&sample_rate={RATE_HZ}&channels=1"
    async with (
        trio_websocket.open_websocket_url(args.url + query, extra_headers=headers) as ws,
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(receive_results, ws)
        await send_audio(ws, pcm, max(1, args.frame_ms // args.period_ms))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", required=True, help="ALSA capture PCM name")
    parser.add_argument("--url", required=True, help="ws[s]://HOST:PORT/v1/listen")
    parser.add_argument("--period-ms", type=int, default=20)
    parser.add_argument("--frame-ms", type=int, default=20)
    trio.run(run, parser.parse_args())
    return 0


if __name__ == "__main__":
    sys.exit(main())
