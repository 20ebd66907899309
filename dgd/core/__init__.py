"""The pure core: no trio, no sockets, no ALSA, no systemd, no clock reads, no file I/O.

Every decision dgd makes is here, as synchronous objects with ``now`` passed in, tested
table-driven with exact values; ``tests/test_architecture.py`` enforces the rule.
"""
