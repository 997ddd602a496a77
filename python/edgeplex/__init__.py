"""Read edgeplex shared-memory rings from Python.

A ring is one file (``<ring_dir>/<stream>/<stream>.ring``) that one writer, the edgeplex agent,
publishes frames or samples into; any number of readers map it read-only. Open one with
:class:`Ring`, then take messages with :meth:`Ring.next` (every message, in order),
:meth:`Ring.latest` (the newest, skipping older ones) or iteration.

The payload contract
--------------------
:meth:`Message.array` is a read-only numpy view onto the ring slot itself: no copy. It stays
valid until the writer laps the slot (the ring keeps ``slots - 1`` messages safe). Check
:meth:`Message.intact` *after* processing and discard results computed from a message that is
no longer intact; or take :meth:`Message.bytes`, a copy that is checked for you.

Waiting (``next``, ``latest``, ``wait_for_ring``) releases the GIL, so other threads run, and
Ctrl-C interrupts it within a fraction of a second.
"""

from __future__ import annotations

from typing import Any

from ._edgeplex import (
    FLAG_CAPTURE_REALTIME,
    FLAG_DEVICE_ERROR,
    FLAG_TRUNCATED,
    Geometry,
    LappedError,
    Message,
    Ring,
    RingCorruptError,
    RingError,
    RingNotFoundError,
    RingPermissionError,
    fnv1a64,
    wait_for_ring,
)

__all__ = [
    "FLAG_CAPTURE_REALTIME",
    "FLAG_DEVICE_ERROR",
    "FLAG_TRUNCATED",
    "Geometry",
    "LappedError",
    "Message",
    "Ring",
    "RingCorruptError",
    "RingError",
    "RingNotFoundError",
    "RingPermissionError",
    "fnv1a64",
    "to_bgr",
    "wait_for_ring",
]

# cv2 conversion codes by fourcc, looked up by name so that nothing imports cv2 until needed.
_BGR_CODES = {
    "YUYV": "COLOR_YUV2BGR_YUYV",
    "UYVY": "COLOR_YUV2BGR_UYVY",
    "NV12": "COLOR_YUV2BGR_NV12",
    "RGB3": "COLOR_RGB2BGR",
    "GREY": "COLOR_GRAY2BGR",
}


def to_bgr(message: Message, geometry: Geometry) -> Any:
    """The frame as a new ``(h, w, 3)`` BGR array for OpenCV, converted by ``cv2.cvtColor``.

    OpenCV is not a dependency of edgeplex: this raises ``ImportError`` when ``cv2`` cannot be
    imported, and ``ValueError`` for a format it cannot convert (MJPG: use ``cv2.imdecode`` on
    ``message.bytes()``). The result is a copy: check ``message.intact()`` after the call.
    """
    try:
        import cv2  # type: ignore[import-not-found]
    except ImportError as e:
        raise ImportError(
            "edgeplex.to_bgr needs OpenCV: pip install opencv-python-headless"
        ) from e
    import numpy as np

    frame = message.array()
    if geometry.fourcc == "BGR3" and frame.ndim == 3:
        return np.array(frame)
    code = _BGR_CODES.get(geometry.fourcc)
    if code is None or frame.ndim == 1:
        raise ValueError(
            f"cannot convert {geometry.fourcc or geometry.kind} frames to BGR; "
            "supported: YUYV, UYVY, NV12, RGB3, BGR3, GREY"
        )
    return cv2.cvtColor(frame, getattr(cv2, code))
