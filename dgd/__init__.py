"""dgd: ALSA capture -> silence gate -> Deepgram live speech-to-text -> journald."""

__version__ = "0.1.0"
