#!/usr/bin/env python3
"""A camera consumer that computes something real with numpy only: once per second, the mean
brightness of the frames and how much they moved (mean absolute luma difference between
consecutive frames, 0-255). One JSON line per second on stdout:

    {"frames": 30, "brightness": 117.2, "motion": 3.41, "lost": 0, "torn": 0}

    pip install ./python    # the edgeplex package (numpy comes with it)
    python3 docs/examples/motion.py /dev/shm/edgeplex/cam0/cam0.ring

It reads with `latest()`: a consumer slower than the camera skips to the newest frame instead
of falling behind. The frames are zero-copy views of the ring; the luma plane is copied once
(downsampled 4x each way) so the next frame can be compared with it, and each result is kept
only if the frame was still intact afterwards.
"""

import argparse
import json
import sys
import time

import numpy as np

import edgeplex


def luma(frame: np.ndarray, fourcc: str) -> np.ndarray:
    """The Y plane of a frame view, 4x downsampled (a view, not a copy)."""
    if fourcc == "YUYV":
        y = frame[:, :, 0]
    elif fourcc == "UYVY":
        y = frame[:, :, 1]
    elif fourcc == "NV12":
        y = frame[: frame.shape[0] * 2 // 3]
    elif fourcc == "GREY":
        y = frame
    elif fourcc in ("RGB3", "BGR3"):
        y = frame[:, :, 1]  # green: close enough to luma for motion
    else:
        raise SystemExit(f"motion.py: cannot take luma from {fourcc!r} frames")
    return y[::4, ::4]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ring", help="path of a video ring, e.g. /dev/shm/edgeplex/cam0/cam0.ring")
    ap.add_argument("--seconds", type=float, default=None, help="stop after this long")
    ap.add_argument("--wait", type=float, default=300, help="wait this long for the ring")
    args = ap.parse_args()
    try:
        ring = edgeplex.Ring(args.ring, start="next", wait=args.wait)
    except edgeplex.RingError as e:
        print(f"motion.py: {e}", file=sys.stderr)
        return 66
    end = None if args.seconds is None else time.monotonic() + args.seconds
    prev = None
    frames = torn = 0
    bright = motion = 0.0
    window = time.monotonic() + 1.0
    with ring:
        while end is None or time.monotonic() < end:
            msg = ring.latest(timeout=1.0)
            if msg is not None:
                y = luma(msg.array(), ring.geometry.fourcc)
                b = float(y.mean())
                cur = y.astype(np.int16)  # the one copy: a small plane to compare with later
                if msg.intact():
                    frames += 1
                    bright += b
                    if prev is not None and prev.shape == cur.shape:
                        motion += float(np.abs(cur - prev).mean())
                    prev = cur
                else:
                    torn += 1
            if time.monotonic() >= window:
                print(json.dumps({"frames": frames,
                                  "brightness": round(bright / frames, 2) if frames else None,
                                  "motion": round(motion / max(frames - 1, 1), 3),
                                  "lost": ring.lost, "torn": torn}), flush=True)
                frames, bright, motion = 0, 0.0, 0.0
                window += 1.0
    return 0


if __name__ == "__main__":
    sys.exit(main())
