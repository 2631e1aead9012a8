"""The version of p2pfast, defined here only: ``p2pfast.__version__``, the wheel's metadata
(``[tool.setuptools.dynamic]`` reads this file without importing the package) and
``--version`` all take it from this line."""

from __future__ import annotations

__version__ = "0.1.0"
