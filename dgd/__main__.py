"""Entry point for ``python -m dgd``."""

from __future__ import annotations

import sys

from dgd.cli import main

sys.exit(main())
