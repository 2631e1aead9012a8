"""Picks the compiled hot paths or their pure-Python twins, once, at import time.

The compiled modules are used unless ``P2PFAST_NO_EXTENSIONS`` is set to a true value, the
interpreter is not CPython, or the package was installed without them. If they are present
but cannot be imported, the pure twins are used and a RuntimeWarning says so.
``USE_EXTENSIONS`` tells which set is active (CI asserts it with P2PFAST_REQUIRE_EXTENSIONS=1).
"""

from __future__ import annotations

import importlib.util
import os
import sys
import warnings
from typing import TYPE_CHECKING

_disabled = os.environ.get("P2PFAST_NO_EXTENSIONS", "") not in ("", "0")
_wanted = not _disabled and sys.implementation.name == "cpython"

if TYPE_CHECKING:
    # Type checkers see the compiled modules (described by their .pyi stubs); each pure twin
    # has the same API, which the test suite runs on both.
    from . import _bulk as bulk
    from . import _codec as codec
    from . import _congestion as congestion
    from . import _fragment as fragment
    from . import _receive as receive
    from . import _sendbatch as sendbatch
    from . import _window as window
elif _wanted and importlib.util.find_spec(f"{__package__}._codec") is not None:
    try:
        from . import _bulk as bulk
        from . import _codec as codec
        from . import _congestion as congestion
        from . import _fragment as fragment
        from . import _receive as receive
        from . import _sendbatch as sendbatch
        from . import _window as window
    except ImportError as exc:  # built, but broken (e.g. for another interpreter)
        warnings.warn(
            f"p2pfast: compiled extensions present but not importable ({exc}); "
            "using the pure-Python twins",
            RuntimeWarning,
            stacklevel=2,
        )
        from . import _bulk_py as bulk
        from . import _codec_py as codec
        from . import _fragment_py as fragment
        from . import _receive_py as receive
        from . import _sendbatch_py as sendbatch
        from . import _window_py as window
        from . import congestion
else:  # disabled, not CPython, or installed without them (P2PFAST_NO_EXTENSIONS=1 at build)
    from . import _bulk_py as bulk
    from . import _codec_py as codec
    from . import _fragment_py as fragment
    from . import _receive_py as receive
    from . import _sendbatch_py as sendbatch
    from . import _window_py as window
    from . import congestion

__all__ = [
    "USE_EXTENSIONS",
    "bulk",
    "codec",
    "congestion",
    "fragment",
    "receive",
    "sendbatch",
    "window",
]

#: True when the compiled Cython modules are the ones in use.
USE_EXTENSIONS: bool = codec.__name__.endswith("._codec")
