//! How a video frame's bytes are laid out as an array: the shape and byte strides that the
//! bindings (numpy, C) use to view a payload in place, from the ring's fourcc and stride.
//!
//! Pure arithmetic; it never touches a mapping.

use crate::layout::{fourcc_from_str, VideoFormat};

/// An array view of a frame: `shape[i]` elements of one byte along axis `i`, `strides[i]` bytes
/// apart. Every element it addresses lies within the payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameShape {
    /// Extent along each axis (rows first).
    pub shape: Vec<usize>,
    /// Byte distance between neighbours along each axis.
    pub strides: Vec<usize>,
}

/// The array view of a `len`-byte frame in `video`'s format, or `None` when the format has no
/// fixed pixel layout (MJPG, an unknown fourcc) or the header's numbers do not fit the payload;
/// a binding then offers a flat byte view.
///
/// | fourcc | shape | |
/// | --- | --- | --- |
/// | `YUYV`, `UYVY` | `(h, w, 2)` | packed 4:2:2 |
/// | `NV12` | `(h * 3 / 2, w)` | Y plane, then interleaved UV rows at the same stride |
/// | `RGB3`, `BGR3` | `(h, w, 3)` | packed 24-bit |
/// | `GREY` | `(h, w)` | 8-bit luma |
pub fn frame_shape(video: &VideoFormat, len: usize) -> Option<FrameShape> {
    let (w, h) = (video.width as usize, video.height as usize);
    let stride = video.stride as usize;
    let code = video.fourcc;
    let is = |s: &str| fourcc_from_str(s) == Some(code);
    let (rows, mut shape, channels) = if is("YUYV") || is("UYVY") {
        (h, vec![h, w, 2], 2)
    } else if is("RGB3") || is("BGR3") {
        (h, vec![h, w, 3], 3)
    } else if is("GREY") {
        (h, vec![h, w], 1)
    } else if is("NV12") && h.is_multiple_of(2) {
        (h / 2 * 3, vec![h / 2 * 3, w], 1)
    } else {
        return None;
    };
    let row_bytes = w.checked_mul(channels)?;
    if w == 0 || rows == 0 || stride < row_bytes {
        return None;
    }
    let needed = (rows - 1).checked_mul(stride)?.checked_add(row_bytes)?;
    if needed > len {
        return None;
    }
    let mut strides = vec![stride, channels];
    if shape.len() == 3 {
        strides.push(1);
    } else {
        strides[1] = 1;
    }
    shape.truncate(strides.len());
    Some(FrameShape { shape, strides })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn video(fourcc: &str, width: u32, height: u32, stride: u32) -> VideoFormat {
        VideoFormat {
            width,
            height,
            fourcc: fourcc_from_str(fourcc).unwrap(),
            stride,
        }
    }

    fn shape(v: VideoFormat, len: usize) -> Option<(Vec<usize>, Vec<usize>)> {
        frame_shape(&v, len).map(|s| (s.shape, s.strides))
    }

    #[test]
    fn each_format_has_its_shape() {
        let s = |a: &[usize], b: &[usize]| Some((a.to_vec(), b.to_vec()));
        assert_eq!(shape(video("YUYV", 4, 2, 8), 16), s(&[2, 4, 2], &[8, 2, 1]));
        assert_eq!(
            shape(video("UYVY", 4, 2, 10), 18),
            s(&[2, 4, 2], &[10, 2, 1])
        );
        assert_eq!(shape(video("NV12", 4, 2, 4), 12), s(&[3, 4], &[4, 1]));
        assert_eq!(shape(video("RGB3", 2, 2, 6), 12), s(&[2, 2, 3], &[6, 3, 1]));
        assert_eq!(shape(video("BGR3", 2, 2, 8), 14), s(&[2, 2, 3], &[8, 3, 1]));
        assert_eq!(shape(video("GREY", 3, 2, 4), 7), s(&[2, 3], &[4, 1]));
    }

    #[test]
    fn what_does_not_fit_is_flat() {
        assert_eq!(shape(video("MJPG", 4, 2, 0), 100), None);
        assert_eq!(shape(video("YUYV", 4, 2, 8), 15), None, "payload too short");
        assert_eq!(shape(video("YUYV", 4, 2, 6), 100), None, "stride < row");
        assert_eq!(shape(video("NV12", 4, 3, 4), 100), None, "odd height");
        assert_eq!(shape(video("GREY", 0, 2, 0), 100), None);
        assert_eq!(shape(VideoFormat::default(), 100), None);
        let huge = video("RGB3", u32::MAX, u32::MAX, u32::MAX);
        assert_eq!(shape(huge, usize::MAX), None);
    }
}
