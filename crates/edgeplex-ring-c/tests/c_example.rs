//! The C library as a C program uses it: `examples/read.c` compiled with `cc` against
//! `include/edgeplex_ring.h` and `libedgeplex_ring_c.a`, reading a ring a real writer fills.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use edgeplex_ring::layout::{fourcc_from_str, VideoFormat};
use edgeplex_ring::{fnv1a64, CreateOptions, Meta, RingSpec, StreamKind, Writer};

const DIR: &str = env!("CARGO_MANIFEST_DIR");

/// `target/debug`, where cargo put the static library this test depends on.
fn lib_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().to_path_buf()
}

fn compile_example(out: &Path) {
    let lib = lib_dir().join("libedgeplex_ring_c.a");
    assert!(
        lib.exists(),
        "{} missing: build the crate first",
        lib.display()
    );
    let status = Command::new("cc")
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-I"])
        .arg(format!("{DIR}/include"))
        .arg(format!("{DIR}/examples/read.c"))
        .arg(&lib)
        .args(["-lpthread", "-ldl", "-lm", "-o"])
        .arg(out)
        .status()
        .expect("run cc (Debian: gcc)");
    assert!(status.success(), "cc failed to build examples/read.c");
}

#[test]
fn c_example_reads_what_a_writer_published() {
    let dir = tempfile::tempdir_in("/dev/shm").unwrap();
    let exe = dir.path().join("read");
    compile_example(&exe);
    let ring = dir.path().join("cam0.ring");
    let (w, h) = (32u32, 8u32);
    let spec = RingSpec {
        name: "cam0".into(),
        kind: StreamKind::Video,
        slot_count: 16,
        slot_size: u64::from(w * h * 2),
        video: Some(VideoFormat {
            width: w,
            height: h,
            fourcc: fourcc_from_str("YUYV").unwrap(),
            stride: w * 2,
        }),
    };
    let mut writer = Writer::open(&ring, &spec, &CreateOptions::default()).unwrap();
    let mut expected = Vec::new();
    for i in 0..10u32 {
        let frame: Vec<u8> = (0..w * h * 2).map(|b| (b * 7 + i * 13) as u8).collect();
        let seq = writer
            .publish(
                &frame,
                Meta {
                    device_seq: u64::from(i),
                    ..Meta::default()
                },
            )
            .unwrap();
        expected.push(format!(
            "{{\"seq\":{seq},\"epoch\":{},\"len\":{},\"lost_before\":0,\"fnv1a64\":\"{:016x}\"}}",
            writer.epoch(),
            frame.len(),
            fnv1a64(&frame)
        ));
    }
    let out = Command::new(&exe)
        .arg(&ring)
        .args(["10", "oldest"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines[..10],
        expected.iter().map(String::as_str).collect::<Vec<_>>()[..]
    );
    assert_eq!(lines[10], "{\"event\":\"end\",\"lost\":0}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("video 32x8 stride 64, 16 slots"));
}

#[test]
fn c_example_reports_a_missing_ring_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("read");
    compile_example(&exe);
    let out = Command::new(&exe)
        .arg(dir.path().join("nope.ring"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(66));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("read: no ring at "), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

/// Every function the library exports is declared in the header, and every declared function
/// exists.
#[test]
fn header_declares_exactly_the_exported_functions() {
    let lib = lib_dir().join("libedgeplex_ring_c.a");
    let nm = Command::new("nm")
        .args(["-g", "--defined-only"])
        .arg(&lib)
        .output()
        .expect("run nm (Debian: binutils)");
    let exported: BTreeSet<String> = String::from_utf8_lossy(&nm.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2))
        .filter(|s| s.starts_with("edgeplex_"))
        .map(str::to_owned)
        .collect();
    let header = std::fs::read_to_string(format!("{DIR}/include/edgeplex_ring.h")).unwrap();
    let declared: BTreeSet<String> = header
        .lines()
        .filter(|l| !l.starts_with(' ') && !l.starts_with('#') && l.contains('('))
        .filter_map(|l| {
            let name = l.split('(').next()?.rsplit([' ', '*']).next()?;
            name.starts_with("edgeplex_").then(|| name.to_owned())
        })
        .collect();
    assert!(declared.len() >= 20, "{declared:?}");
    assert_eq!(exported, declared);
}
