"""Stored files as HTTP answers: only the image's own bytes, never sniffed, never named by a client.

Every route that sends a stored frame or a picture made from one (``/v1/inspections/{id}/image`` and
``/heatmap``, the review station's frame and heat layer, the dashboard's charts) answers through
``file_response``: ``X-Content-Type-Options: nosniff`` (a browser takes the declared type, it does not guess
HTML or a ZIP in the bytes) and ``Content-Disposition: inline`` with a file name the service makes from the
record id (no text from any request). ``image_only`` cuts a stored frame at its format's end: frames are
stored without trailing data since the intake checks, and a frame stored earlier is cut when served.
"""

from __future__ import annotations

import re

from fastapi import Response

from andon.errors import ImageDecodeError, NotFoundError
from andon.inspect.decoding import SUPPORTED_FORMATS, probe

_UNSAFE = re.compile(r"[^0-9A-Za-z_-]")
_EXT = {"JPEG": "jpg", "PNG": "png", "BMP": "bmp", "TIFF": "tif"}


def image_only(data: bytes, what: str) -> bytes:
    """``data`` up to the end of its image (JPEG end marker, PNG IEND, BMP pixel data); TIFF as it is.

    A stored file that is not a valid image (one stored before the intake checks) is not served: it raises
    ``NotFoundError`` (404) naming ``what`` and what is wrong with it.
    """
    try:
        header = probe(data, max_pixels=1 << 62, allowed_formats=SUPPORTED_FORMATS)
    except ImageDecodeError as exc:
        raise NotFoundError(
            f"the stored image of {what} is not served: it is not a valid image ({exc.message})"
        ) from None
    return data if header.end is None else data[: header.end]


def safe_filename(stem: str, image_format_or_ext: str) -> str:
    """``<stem>.<ext>`` with anything but letters, digits, ``_`` and ``-`` replaced: never a request's text."""
    ext = _EXT.get(image_format_or_ext, image_format_or_ext)
    return f"{_UNSAFE.sub('_', stem)[:64] or 'file'}.{_UNSAFE.sub('', ext)[:8] or 'bin'}"


def file_response(data: bytes, media_type: str, filename: str, cache: str) -> Response:
    """The answer for a stored (or generated) file: nosniff, inline, a generated name, ``cache`` control."""
    return Response(
        data,
        media_type=media_type,
        headers={
            "Cache-Control": cache,
            "X-Content-Type-Options": "nosniff",
            "Content-Disposition": f'inline; filename="{filename}"',
        },
    )
