//! `VIDIOC_QUERYCAP` on a device node, read-only: what a node is before anyone streams from it.
//!
//! The `v4l` crate's `query_caps` returns only the capabilities of the whole physical device
//! (`capabilities`), which for a UVC camera include video capture on its metadata node too;
//! discovery needs the node's own `device_caps`.

use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::Path;

use v4l::v4l2::vidioc;
use v4l::v4l_sys as sys;

/// `V4L2_CAP_VIDEO_CAPTURE`: single-planar video capture.
pub const CAP_VIDEO_CAPTURE: u32 = 0x0000_0001;
/// `V4L2_CAP_VIDEO_CAPTURE_MPLANE`: multi-planar video capture.
pub const CAP_VIDEO_CAPTURE_MPLANE: u32 = 0x0000_1000;
/// `V4L2_CAP_META_CAPTURE`: metadata capture (a UVC camera's second node).
pub const CAP_META_CAPTURE: u32 = 0x0080_0000;
/// `V4L2_CAP_DEVICE_CAPS`: `device_caps` is filled in.
pub const CAP_DEVICE_CAPS: u32 = 0x8000_0000;

/// What `VIDIOC_QUERYCAP` says about one device node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceCaps {
    /// Driver name (`uvcvideo`, `vivid`).
    pub driver: String,
    /// Card name (the camera's product name).
    pub card: String,
    /// Bus information (`usb-0000:00:14.0-1`, `platform:vivid-000`).
    pub bus_info: String,
    /// Capabilities of the whole physical device.
    pub capabilities: u32,
    /// Capabilities of this node; the whole device's when the driver does not set
    /// `V4L2_CAP_DEVICE_CAPS` (drivers older than Linux 3.4).
    pub device_caps: u32,
}

impl DeviceCaps {
    /// Whether this node captures video (single- or multi-planar).
    pub fn is_video_capture(&self) -> bool {
        self.device_caps & (CAP_VIDEO_CAPTURE | CAP_VIDEO_CAPTURE_MPLANE) != 0
    }
}

/// Query the capabilities of the V4L2 node at `path`.
///
/// The node is opened read-only and non-blocking, so a FIFO or a busy device never blocks, and
/// closed before returning. A path that is not a V4L2 node fails with `ENOTTY`.
pub fn query_caps(path: &Path) -> io::Result<DeviceCaps> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(path)?;
    if !file.metadata()?.file_type().is_char_device() {
        return Err(io::Error::from_raw_os_error(libc::ENOTTY));
    }
    // SAFETY: `v4l2_capability` is a plain C struct of byte arrays and integers: all-zero is a
    // valid value.
    let mut cap: sys::v4l2_capability = unsafe { std::mem::zeroed() };
    // SAFETY: VIDIOC_QUERYCAP takes a `v4l2_capability`, which `cap` is; the descriptor stays
    // open (owned by `file`) for the whole call.
    unsafe { crate::queue::ioctl(file.as_raw_fd(), vidioc::VIDIOC_QUERYCAP, &mut cap) }?;
    let text = |b: &[u8]| {
        let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
        String::from_utf8_lossy(&b[..end]).into_owned()
    };
    let device_caps = if cap.capabilities & CAP_DEVICE_CAPS != 0 {
        cap.device_caps
    } else {
        cap.capabilities
    };
    Ok(DeviceCaps {
        driver: text(&cap.driver),
        card: text(&cap.card),
        bus_info: text(&cap.bus_info),
        capabilities: cap.capabilities,
        device_caps,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_regular_file_is_not_a_v4l2_node() {
        let path = std::env::temp_dir().join(format!("edgeplex-v4l2-caps-{}", std::process::id()));
        std::fs::write(&path, b"not a device").unwrap();
        let e = query_caps(&path).unwrap_err();
        let _ = std::fs::remove_file(&path);
        assert_eq!(e.raw_os_error(), Some(libc::ENOTTY), "{e}");
    }

    #[test]
    fn a_char_device_that_is_not_v4l2_refuses_querycap() {
        // /dev/null is a character device whose driver knows no V4L2 ioctl.
        let e = query_caps(Path::new("/dev/null")).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOTTY), "{e}");
    }

    #[test]
    fn a_missing_node_is_not_found() {
        let e = query_caps(Path::new("/nonexistent/video0")).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn capture_is_read_from_device_caps() {
        let meta = DeviceCaps {
            driver: "uvcvideo".into(),
            card: "cam".into(),
            bus_info: "usb-1".into(),
            capabilities: CAP_VIDEO_CAPTURE | CAP_META_CAPTURE | CAP_DEVICE_CAPS,
            device_caps: CAP_META_CAPTURE,
        };
        assert!(!meta.is_video_capture());
        let mplane = DeviceCaps {
            device_caps: CAP_VIDEO_CAPTURE_MPLANE,
            ..meta
        };
        assert!(mplane.is_video_capture());
    }
}
