"""``python -m dgd.testing.fakeserver``: the same as ``dgd fake-server``."""

import sys

from dgd.testing.fakeserver.server import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
