"""Test doubles shipped with the package, because the demo and the benchmarks use them:
the local Deepgram-compatible server (``dgd fake-server``) and the FIFO-fed microphone.
"""
