"""Keeping the service's resident memory flat (glibc only; a no-op elsewhere).

Loading and warming a model allocates and frees tens of MB, and glibc keeps freed heap pages mapped:
``malloc_trim(0)`` hands them back (about 70 MB for a MobileNetV2 service). Each thread that calls malloc
can get its own arena, so a service with a thread pool slowly grows one arena per thread;
``M_ARENA_MAX`` caps them. Neither changes what Python or onnxruntime can allocate.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger("andon.service")

_M_ARENA_MAX = -8
_libc = None


def _glibc():
    global _libc
    if _libc is None:
        name = ctypes.util.find_library("c")
        try:
            lib = ctypes.CDLL(name or "libc.so.6")
            _libc = lib if hasattr(lib, "malloc_trim") and hasattr(lib, "mallopt") else False
        except OSError:
            _libc = False
    return _libc or None


def limit_arenas(count: int = 2) -> bool:
    """Cap glibc malloc arenas (call before threads start); True when it took effect."""
    libc = _glibc()
    return bool(libc and libc.mallopt(_M_ARENA_MAX, count) == 1)


def trim() -> None:
    """Return freed heap memory to the operating system."""
    libc = _glibc()
    if libc:
        libc.malloc_trim(0)
