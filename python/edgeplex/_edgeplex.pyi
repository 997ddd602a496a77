"""Type stubs of the compiled part of edgeplex (PyO3)."""

from os import PathLike
from pathlib import Path
from typing import Literal, Optional, Tuple, Union

import numpy as np
import numpy.typing as npt

FLAG_TRUNCATED: int
FLAG_CAPTURE_REALTIME: int
FLAG_DEVICE_ERROR: int

class RingError(Exception):
    """Any error reading a ring; the message is the one the edgeplex CLI prints."""

class RingNotFoundError(RingError):
    """No ring at the path (yet)."""

class RingPermissionError(RingError):
    """The ring cannot be read with this process's user and groups."""

class RingCorruptError(RingError):
    """The file is not a usable ring."""

class LappedError(RingError):
    """The writer overwrote a message while it was being copied."""

class Geometry:
    """The layout of a ring file; changes when the writer changes the geometry."""

    name: str
    kind: Literal["video", "serial", "bytes"]
    width: int
    height: int
    fourcc: str
    stride: int
    slots: int
    slot_size: int

class Message:
    """One message, in place in the ring slot."""

    @property
    def seq(self) -> int: ...
    @property
    def epoch(self) -> int: ...
    @property
    def capture_ns(self) -> int: ...
    @property
    def device_seq(self) -> int: ...
    @property
    def publish_ns(self) -> int: ...
    @property
    def flags(self) -> int: ...
    @property
    def lost_before(self) -> int: ...
    @property
    def address(self) -> int: ...
    def __len__(self) -> int: ...
    def intact(self) -> bool:
        """Whether the writer has not overwritten the slot since the message was handed out."""
    def bytes(self) -> bytes:
        """A checked copy of the payload; raises LappedError if it was overwritten meanwhile."""
    def array(self) -> npt.NDArray[np.uint8]:
        """A read-only numpy view of the slot itself (no copy), shaped by the video format:
        YUYV/UYVY (h, w, 2), NV12 (h*3//2, w), RGB3/BGR3 (h, w, 3), GREY (h, w), rows
        `stride` bytes apart; 1-D otherwise. Valid until the writer laps the slot: check
        intact() after use."""

class Ring:
    """A reader of one ring; a context manager and an iterator of messages."""

    def __init__(
        self,
        path: Union[str, PathLike[str]],
        start: Literal["newest", "oldest", "next"] = "newest",
        wait: Optional[float] = None,
    ) -> None: ...
    @property
    def path(self) -> Path: ...
    @property
    def geometry(self) -> Geometry: ...
    @property
    def lost(self) -> int: ...
    @property
    def delivered(self) -> int: ...
    @property
    def reopened(self) -> int: ...
    @property
    def epoch(self) -> int: ...
    @property
    def writer_alive(self) -> bool: ...
    @property
    def _prepared_views(self) -> Tuple[int, int]:
        """Diagnostics: (used, wasted) views made before a wait for the slot the next message
        was expected in."""
    def next(self, timeout: Optional[float] = None) -> Optional[Message]: ...
    def latest(self, timeout: Optional[float] = None) -> Optional[Message]: ...
    def close(self) -> None: ...
    def __enter__(self) -> "Ring": ...
    def __exit__(self, *args: object) -> bool: ...
    def __iter__(self) -> "Ring": ...
    def __next__(self) -> Message: ...

def wait_for_ring(path: Union[str, PathLike[str]], timeout: float) -> Geometry: ...
def fnv1a64(data: bytes) -> int: ...
