"""``python -m p2pfast.bench``: the same as ``p2pfast-bench``."""

from __future__ import annotations

from .cli import main

if __name__ == "__main__":  # pragma: no cover
    main()
