"""Build script for the compiled hot paths.

``P2PFAST_NO_EXTENSIONS=1`` installs the pure-Python package only. Otherwise the
Cython modules are compiled and a failed compile fails the install: there is no
silent fallback at build time.
"""

import os

from setuptools import Extension, setup

NO_EXTENSIONS = os.environ.get("P2PFAST_NO_EXTENSIONS", "") not in ("", "0")

ext_modules = []
if not NO_EXTENSIONS:
    from Cython.Build import cythonize

    ext_modules = cythonize(
        [
            Extension("p2pfast._codec", ["p2pfast/_codec.pyx"]),
            Extension("p2pfast._window", ["p2pfast/_window.pyx"]),
            Extension("p2pfast._receive", ["p2pfast/_receive.pyx"]),
            Extension("p2pfast._sendbatch", ["p2pfast/_sendbatch.pyx"]),
            Extension("p2pfast._congestion", ["p2pfast/_congestion.pyx"]),
            Extension("p2pfast._fragment", ["p2pfast/_fragment.pyx"]),
            Extension("p2pfast._bulk", ["p2pfast/_bulk.pyx"]),
        ],
        compiler_directives={
            "language_level": "3",
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "embedsignature": True,
        },
    )

setup(ext_modules=ext_modules)
