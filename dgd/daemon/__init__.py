"""The trio shell: the tasks that move bytes between the world and the core.

Capture (ALSA), the WebSocket link and its supervisor, the sinks, logging, sd_notify, and
the composition root that wires them (``dgd.daemon.app``).
"""
