//! The kernel boundary of edgeplex's camera: a V4L2 capture queue that owns its buffers.
//!
//! A [`CaptureQueue`] asks the driver for buffers (`VIDIOC_REQBUFS`), maps them
//! (`VIDIOC_QUERYBUF` + `mmap`), and tracks the state of every buffer itself: it queues a buffer
//! (`VIDIOC_QBUF`) only after the driver gave it back (`VIDIOC_DQBUF`), treats "no frame yet" as
//! waiting, never as an error, and stops streaming (`VIDIOC_STREAMOFF`) without panicking when
//! the device is already gone.
//!
//! [`query_caps`] reads a node's own capabilities (`device_caps`), which the `v4l` crate does not
//! expose, so discovery can tell a capture node from a metadata node.
//!
//! Format negotiation, capabilities and controls stay with the `v4l` crate, whose safe API does
//! those correctly; this crate takes over the negotiated [`v4l::Device`] for streaming, because
//! `v4l`'s own streams re-queue a buffer that is still queued after a poll timeout (`EINVAL`,
//! "invalid buffer state active" from vb2) and panic in `Drop` when `VIDIOC_STREAMOFF` fails.
//!
//! [`RingCapture`] is the zero-copy path: a `USERPTR` queue whose buffers are the next slots of
//! an `edgeplex-ring` ring, lent by its writer, so the driver writes each frame where readers read
//! it.
//!
//! This crate and `edgeplex-ring` are the only crates of edgeplex with `unsafe` code: ioctls with
//! pointers to kernel structs, and `mmap` of driver buffers. Every `unsafe` block carries a
//! `// SAFETY:` comment. It must not know about rings, configuration or metrics.

mod caps;
mod queue;
mod ring;

pub use caps::{
    query_caps, DeviceCaps, CAP_DEVICE_CAPS, CAP_META_CAPTURE, CAP_VIDEO_CAPTURE,
    CAP_VIDEO_CAPTURE_MPLANE,
};
pub use queue::{CaptureQueue, Frame};
pub use ring::{Committed, RingCapture, StartError};
