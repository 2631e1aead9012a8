"""``python -m p2pfast``: the same as ``p2pfast-server``."""

from __future__ import annotations

import sys

try:
    from .cli import main
except KeyboardInterrupt:  # Ctrl-C while the command loads: no traceback
    sys.exit(130)

if __name__ == "__main__":
    main()
