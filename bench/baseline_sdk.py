"""Baseline (a) of bench/perf.py: Deepgram's Python SDK (7.x) sync live client.

The documented way to stream with the SDK: ``client.listen.v1.connect(...)`` gives a socket
client on the ``websockets`` library's sync connection; a thread runs ``start_listening()``
(which parses every result into the SDK's pydantic models) and the main thread reads one
ALSA period per blocking ``pcm.read()`` and calls ``send_media`` every ``--frame-ms``. No
gate, no keep-alive, no reconnect. It captures through the same real ALSA path as dgd (a
FifoMic-fed ``file`` PCM).

The SDK has no URL option: its address comes from the client's environment, so a custom
``DeepgramClientEnvironment`` points every endpoint at the local server (docs/DEEPGRAM.md §7).
Over ``wss://`` the live client (``websockets.sync.client.connect``, called without ``ssl=``)
builds ``ssl.create_default_context()``: a private CA is trusted through ``SSL_CERT_FILE``,
which replaces the system bundle for the process (bench/perf.py sets it).
The SDK's ``websockets`` client offers permessage-deflate; ``dgd fake-server``
(trio-websocket, which accepts no extensions) declines it, so frames go uncompressed, like
dgd's.

"Ready" is defined like dgd's ``READY=1``: imports done, client built and the capture device
open, before the network is touched; it is signalled by sending ``READY=1`` to
``$NOTIFY_SOCKET``.

Runs in the bench venv (``bench/.venv``, built by ``bench/setup``), not the daemon's venv.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import threading
from typing import Any, Final
from urllib.parse import urlsplit

import alsaaudio
from deepgram import DeepgramClient
from deepgram.environment import DeepgramClientEnvironment

RATE_HZ: Final = 16000
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


def local_environment(url: str) -> DeepgramClientEnvironment:
    """An SDK environment whose every endpoint is the server at ``url`` (``ws://HOST:PORT/...``
    or ``wss://``: then the REST endpoints are ``https://``)."""
    parts = urlsplit(url)
    tls = parts.scheme == "wss"
    ws, http = ("wss", "https") if tls else ("ws", "http")
    return DeepgramClientEnvironment(
        base=f"{http}://{parts.netloc}",
        production=f"{ws}://{parts.netloc}",
        agent=f"{ws}://{parts.netloc}",
        agent_rest=f"{http}://{parts.netloc}",
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", required=True, help="ALSA capture PCM name")
    parser.add_argument("--url", required=True, help="ws[s]://HOST:PORT/v1/listen")
    parser.add_argument("--period-ms", type=int, default=20)
    parser.add_argument("--frame-ms", type=int, default=20)
    args = parser.parse_args()
    client = DeepgramClient(
        api_key=os.environ["DEEPGRAM_API_KEY"], environment=local_environment(args.url)
    )
    pcm = open_pcm(args.device, args.period_ms)
    notify("READY=1")
    periods = max(1, args.frame_ms // args.period_ms)
    with client.listen.v1.connect(
        model="nova-3", encoding="linear16", sample_rate=RATE_HZ, channels=1
    ) as connection:
        threading.Thread(target=connection.start_listening, daemon=True).start()
        frame: list[bytes] = []
        while True:
            n_frames, data = pcm.read()
            if n_frames <= 0:
                continue  # overrun: pyalsaaudio re-prepares the PCM
            frame.append(data)
            if len(frame) >= periods:
                connection.send_media(b"".join(frame))
                frame.clear()


if __name__ == "__main__":
    sys.exit(main())
