//! The queue on a file that is not a V4L2 device: every step fails with an error, nothing panics,
//! and dropping a half-built queue is harmless. (Real capture is tested against the kernel's
//! `vivid` driver in the workspace's VM test, `tests/vm_camera.rs`.)

use edgeplex_v4l2::CaptureQueue;

#[test]
fn requesting_buffers_on_dev_null_is_an_error_not_a_panic() {
    let dev = v4l::Device::with_path("/dev/null").expect("open /dev/null");
    let err = CaptureQueue::mmap(&dev, 4).expect_err("/dev/null has no capture queue");
    assert_eq!(err.raw_os_error(), Some(libc::ENOTTY), "{err}");
    let err = CaptureQueue::userptr(&dev, 4).expect_err("/dev/null has no capture queue");
    assert_eq!(err.raw_os_error(), Some(libc::ENOTTY), "{err}");
}
