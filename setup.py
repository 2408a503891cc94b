"""Build the compiled core (fastmta._core) with Cython.

Like asyncpg/aiohttp: the extension is cythonized when Cython is available (it is in
build-system.requires).  Set FASTMTA_NO_EXTENSIONS=1 at build time to install the pure
Python package only (it then uses fastmta._core_py), and FASTMTA_DEBUG=1 to build with
annotations, line tracing and bounds checks.
"""

import os

from setuptools import Extension, setup

NO_EXT = os.environ.get("FASTMTA_NO_EXTENSIONS") == "1"
DEBUG = os.environ.get("FASTMTA_DEBUG") == "1"


def extensions():
    if NO_EXT:
        return []
    from Cython.Build import cythonize

    directives = {
        "language_level": 3,
        "boundscheck": DEBUG,
        "wraparound": DEBUG,
        "initializedcheck": DEBUG,
        "cdivision": True,
        "embedsignature": True,
    }
    macros = []
    if DEBUG:
        directives["linetrace"] = True
        macros.append(("CYTHON_TRACE", "1"))
    exts = [
        Extension(
            "fastmta._core",
            ["fastmta/_core.pyx"],
            # the .pyx includes these (one extension module): a change to any rebuilds it
            depends=[
                "fastmta/_core_reply.pxi",
                "fastmta/_core_codes.pxi",
                "fastmta/_core_classifier.pxi",
                "fastmta/_core_body.pxi",
                "fastmta/_core_records.pxi",
                "fastmta/_core_rows.pxi",
            ],
            extra_compile_args=["-O3"] if not DEBUG else ["-O0", "-g"],
            define_macros=macros,
        ),
        Extension(
            "fastmta.dkim._dkim",
            ["fastmta/dkim/_dkim.pyx"],
            extra_compile_args=["-O3"] if not DEBUG else ["-O0", "-g"],
            define_macros=macros,
        ),
    ]
    return cythonize(exts, compiler_directives=directives, annotate=DEBUG)


setup(ext_modules=extensions())
