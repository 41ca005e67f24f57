"""Declares fastpath's Cython extensions; metadata lives in pyproject.toml.

FASTPATH_DEBUG=1 builds at -O0 with debug symbols and Cython's bounds, wrap-around and
initialisation checks on (they guard the Python-facing wrappers; the hot loops use pointers whose
bounds the core checks itself), and Numba kernels then run with bounds checks too.
"""

import os

from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("FASTPATH_DEBUG", "") not in ("", "0")

DIRECTIVES = {
    "language_level": 3,
    "boundscheck": DEBUG,
    "wraparound": DEBUG,
    "initializedcheck": DEBUG,
    "cdivision": True,
    "embedsignature": True,
}

CFLAGS = ["-O0", "-g"] if DEBUG else ["-O3", "-DNDEBUG"]

MODULES = ["memory", "split", "packed", "chain", "notify", "net", "clock", "ring", "fdio",
           "guard", "uring", "paging", "vtd", "placement"]

# The system libraries a module links besides libc (the Makefile installs their Debian -dev
# packages): io_uring through liburing (liburing-dev).
LIBRARIES = {"uring": ["uring"]}

extensions = [
    Extension(
        f"fastpath._core.{name}",
        [f"fastpath/_core/{name}.pyx"],
        include_dirs=["fastpath/_core"],
        libraries=LIBRARIES.get(name, []),
        extra_compile_args=CFLAGS,
    )
    for name in MODULES
]

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives=DIRECTIVES,
        # Each mode keeps its own generated C, so switching modes never reuses the other's.
        build_dir="build/cython-debug" if DEBUG else "build/cython",
        compile_time_env={"FASTPATH_DEBUG": DEBUG},
    ),
)
