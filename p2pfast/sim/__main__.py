"""``python -m p2pfast.sim``: the same as ``p2pfast-sim``."""

from __future__ import annotations

from .cli import main

if __name__ == "__main__":
    main(prog_name="p2pfast-sim")
