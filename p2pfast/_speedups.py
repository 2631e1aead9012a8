"""Picks the compiled hot paths or their pure-Python twins, once, at import time.

The compiled modules are used unless ``P2PFAST_NO_EXTENSIONS`` is set to a true value or the
interpreter is not CPython. If they were asked for but cannot be imported (e.g. a source
checkout that was never built), the pure twins are used and a RuntimeWarning says so;
``USE_EXTENSIONS`` tells which set is active.
"""

from __future__ import annotations

import os
import sys
import warnings
from types import ModuleType

_disabled = os.environ.get("P2PFAST_NO_EXTENSIONS", "") not in ("", "0")
_wanted = not _disabled and sys.implementation.name == "cpython"

codec: ModuleType
window: ModuleType

if _wanted:
    try:
        from . import _codec as codec
        from . import _window as window
    except ImportError as exc:  # pragma: no cover - exercised by an unbuilt checkout
        warnings.warn(
            f"p2pfast: compiled extensions unavailable ({exc}); using the pure-Python twins",
            RuntimeWarning,
            stacklevel=2,
        )
        from . import _codec_py as codec
        from . import _window_py as window
else:
    from . import _codec_py as codec
    from . import _window_py as window

#: True when the compiled Cython modules are the ones in use.
USE_EXTENSIONS: bool = codec.__name__.endswith("._codec")
