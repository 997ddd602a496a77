//! The `edgeplex._edgeplex` extension module: the Python face of the `edgeplex-ring` reader.
//!
//! Everything about the ring protocol lives in `edgeplex-ring`; this crate only converts. It
//! contains no `unsafe`: a message's payload reaches numpy through the `__array_interface__`
//! protocol of a small `SlotView` object that holds a [`MessageHandle`] (and so keeps the ring
//! file mapped) and is the base object of one read-only numpy array per slot (`Views`); each
//! `array()` is a fresh view of that array. The Pythonic wrapper (iteration,
//! the OpenCV helper) is `edgeplex/__init__.py`; the typed API is `edgeplex/_edgeplex.pyi`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use edgeplex_ring::{
    frame_shape, layout, wait_for_ring as ring_wait, MessageHandle, Reader, Recv,
    RingError as Error, Start,
};
use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyDict, PyTuple};

create_exception!(
    edgeplex,
    RingError,
    PyException,
    "Any error reading a ring; the message is the one the edgeplex CLI prints."
);
create_exception!(
    edgeplex,
    RingNotFoundError,
    RingError,
    "No ring at the path (yet): is the agent running, and is the ring directory mounted?"
);
create_exception!(
    edgeplex,
    RingPermissionError,
    RingError,
    "The ring cannot be read with this process's user and groups."
);
create_exception!(
    edgeplex,
    RingCorruptError,
    RingError,
    "The file is not a usable ring: truncated, foreign, hostile or another format version."
);
create_exception!(
    edgeplex,
    LappedError,
    RingError,
    "The writer overwrote a message while it was being copied."
);

/// How long one wait lasts with the GIL released before Python's signal handlers get a chance
/// to run (Ctrl-C interrupts a long `next()` within this).
const WAIT_SLICE: Duration = Duration::from_millis(200);

fn to_py(e: Error) -> PyErr {
    let msg = e.to_string();
    match e {
        Error::NotFound { .. } => RingNotFoundError::new_err(msg),
        Error::PermissionDenied { .. } => RingPermissionError::new_err(msg),
        Error::Corrupt { .. } | Error::NotAFile { .. } => RingCorruptError::new_err(msg),
        _ => RingError::new_err(msg),
    }
}

fn duration(seconds: Option<f64>, what: &str) -> PyResult<Option<Duration>> {
    match seconds {
        None => Ok(None),
        Some(s) => Duration::try_from_secs_f64(s).map(Some).map_err(|_| {
            PyValueError::new_err(format!(
                "{what} must be a number of seconds >= 0 or None, not {s}"
            ))
        }),
    }
}

/// The layout of a ring file; changes when the writer changes the geometry.
#[pyclass(frozen, module = "edgeplex", get_all)]
#[derive(Debug, Clone)]
struct Geometry {
    /// Stream name.
    name: String,
    /// "video", "serial" or "bytes".
    kind: String,
    /// Frame width in pixels (0 unless video).
    width: u32,
    /// Frame height in pixels (0 unless video).
    height: u32,
    /// Pixel format as four characters, e.g. "YUYV" ("" unless video).
    fourcc: String,
    /// Bytes per line of a frame (0 unless video).
    stride: u32,
    /// Number of slots.
    slots: u32,
    /// Payload capacity of one slot, bytes.
    slot_size: u64,
}

#[pymethods]
impl Geometry {
    fn __repr__(&self) -> String {
        format!(
            "Geometry(name={:?}, kind={:?}, width={}, height={}, fourcc={:?}, stride={}, slots={}, slot_size={})",
            self.name, self.kind, self.width, self.height, self.fourcc, self.stride, self.slots, self.slot_size
        )
    }

    fn __eq__(&self, other: &Self) -> bool {
        self.__repr__() == other.__repr__()
    }
}

fn geometry(g: &layout::Geometry) -> Geometry {
    let video = g.kind == layout::StreamKind::Video;
    Geometry {
        name: g.name.clone(),
        kind: g.kind.to_string(),
        width: g.video.width,
        height: g.video.height,
        fourcc: if video {
            layout::fourcc_str(g.video.fourcc)
        } else {
            String::new()
        },
        stride: g.video.stride,
        slots: g.slot_count,
        slot_size: g.slot_size,
    }
}

/// What one wait on the reader produced, owned so it can leave the GIL-free section.
enum Got {
    /// The message, and the payload address of the slot the one after it will be in.
    Message(MessageHandle, usize),
    Reopened,
    TimedOut,
}

/// One numpy array per slot of the current file, made the first time a message in that slot is
/// asked for as an array; `Message.array()` returns a fresh view of it. And the address of the
/// slot the next message is expected in, so that its view can be made *before* the wait.
///
/// Why: a reader waiting for a frame sits idle for tens of milliseconds, and an idle CPU comes
/// back with cold caches (measured here: a 64 KiB working set costs 160 ns a line after a 33 ms
/// sleep, 4 ns when warm), so every object touched between the wake-up and the array in hand
/// costs latency. Building an array from `__array_interface__` (a dict, a dtype parsed from a
/// string, shape and strides parsed from tuples) cost 70 µs of CPU per frame here for a 4 MiB
/// frame, `ndarray.view()` of a ready array about 25 µs after the wake-up, and handing out a view
/// made before the wait about 11 µs (the method call itself).
///
/// Keyed by the payload's address: a cached array keeps its mapping alive, so an address cannot
/// be reused by another mapping while its entry exists; the length is checked because a stream
/// of variable-length messages shapes each view by its length. At most one entry per slot of
/// the current file: emptied when the reader follows a replaced file (a geometry change) or is
/// closed, and only a message of the current generation adds to it, so an old file's mapping
/// is let go once its own messages and arrays are.
#[derive(Default)]
struct Views {
    arrays: Mutex<HashMap<usize, (usize, Py<PyAny>)>>,
    /// Bumped (under the `arrays` lock) by each `clear`.
    generation: AtomicU64,
    /// Payload address of the slot the next message is expected in; 0 when unknown.
    upcoming: AtomicUsize,
    /// Views made before a wait that went to the message, and that did not (a wrong guess).
    hits: AtomicU64,
    misses: AtomicU64,
}

/// A view made before a wait, for the message expected at `addr` with `len` bytes.
struct Prepared {
    addr: usize,
    len: usize,
    view: Py<PyAny>,
}

impl Views {
    fn clear(&self) {
        self.upcoming.store(0, Ordering::Relaxed);
        let mut arrays = self.arrays.lock().unwrap_or_else(|p| p.into_inner());
        self.generation.fetch_add(1, Ordering::Relaxed);
        arrays.clear();
    }

    /// Cache `array` for the payload at `addr`, if the message is of the current generation.
    fn insert(&self, generation: u64, addr: usize, len: usize, array: Py<PyAny>) {
        let mut arrays = self.arrays.lock().unwrap_or_else(|p| p.into_inner());
        if self.generation.load(Ordering::Relaxed) == generation {
            arrays.insert(addr, (len, array));
        }
    }

    /// The cached array of the slot at `addr`, if it was made for a payload of `len` bytes.
    fn cached(
        &self,
        py: Python<'_>,
        addr: usize,
        len: Option<usize>,
    ) -> Option<(usize, Py<PyAny>)> {
        let arrays = self.arrays.lock().unwrap_or_else(|p| p.into_inner());
        arrays
            .get(&addr)
            .filter(|(l, _)| len.is_none_or(|len| *l == len))
            .map(|(l, a)| (*l, a.clone_ref(py)))
    }

    /// Before a wait, with the caches still warm: a fresh view of the array of the slot the next
    /// message is expected in, if that slot has one. `None` costs nothing later: the message
    /// then gets its view in `array()`.
    fn prepare(&self, py: Python<'_>) -> Option<Prepared> {
        let addr = self.upcoming.load(Ordering::Relaxed);
        if addr == 0 {
            return None;
        }
        let (len, base) = self.cached(py, addr, None)?;
        let view = base.bind(py).call_method0(pyo3::intern!(py, "view")).ok()?;
        Some(Prepared {
            addr,
            len,
            view: view.unbind(),
        })
    }
}

/// A reader of one ring (see `edgeplex.Ring`).
#[pyclass(frozen, module = "edgeplex")]
struct Ring {
    path: PathBuf,
    reader: Mutex<Option<Reader>>,
    views: Arc<Views>,
}

impl Ring {
    /// Run `f` on the reader with the GIL released (waiting for the lock included, so a thread
    /// blocked in `next()` never deadlocks one asking for `lost`).
    fn with<T: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&mut Reader) -> Result<T, Error> + Send,
    ) -> PyResult<T> {
        py.detach(|| {
            let mut guard = self.reader.lock().unwrap_or_else(|p| p.into_inner());
            match guard.as_mut() {
                Some(r) => f(r).map_err(Some),
                None => Err(None),
            }
        })
        .map_err(|e| match e {
            Some(e) => to_py(e),
            None => RingError::new_err(format!(
                "ring {} is closed; open a new edgeplex.Ring",
                self.path.display()
            )),
        })
    }

    fn wait(
        &self,
        py: Python<'_>,
        timeout: Option<f64>,
        latest: bool,
    ) -> PyResult<Option<Message>> {
        let timeout = duration(timeout, "timeout")?;
        let deadline = timeout.map(|t| Instant::now() + t);
        // Not for a poll (timeout 0): nothing to gain, and a view made for nothing per call.
        let mut prepared = match timeout {
            Some(t) if t.is_zero() => None,
            _ => self.views.prepare(py),
        };
        loop {
            let slice = match deadline {
                None => WAIT_SLICE,
                Some(d) => d.saturating_duration_since(Instant::now()).min(WAIT_SLICE),
            };
            let got = self.with(py, |r| {
                let recv = if latest {
                    r.latest(slice)?
                } else {
                    r.next(slice)?
                };
                Ok(match recv {
                    Recv::Message(m) => {
                        let handle = m.handle();
                        Got::Message(handle, r.upcoming_payload() as usize)
                    }
                    Recv::Reopened => Got::Reopened,
                    Recv::TimedOut => Got::TimedOut,
                })
            })?;
            match got {
                Got::Message(handle, upcoming) => {
                    self.views.upcoming.store(upcoming, Ordering::Relaxed);
                    let (addr, len) = (handle.as_ptr() as usize, handle.len());
                    let first = prepared.and_then(|p| {
                        let hit = p.addr == addr && p.len == len;
                        let count = if hit {
                            &self.views.hits
                        } else {
                            &self.views.misses
                        };
                        count.fetch_add(1, Ordering::Relaxed);
                        hit.then_some(p.view)
                    });
                    return Ok(Some(Message {
                        handle,
                        views: Arc::clone(&self.views),
                        generation: self.views.generation.load(Ordering::Relaxed),
                        first: Mutex::new(first),
                    }));
                }
                // A geometry change: the reader follows the new file; keep waiting in it.
                Got::Reopened => {
                    self.views.clear();
                    prepared = None;
                }
                Got::TimedOut => {
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        return Ok(None);
                    }
                }
            }
            py.check_signals()?;
        }
    }
}

#[pymethods]
impl Ring {
    #[new]
    #[pyo3(signature = (path, start = "newest", wait = None))]
    fn new(py: Python<'_>, path: PathBuf, start: &str, wait: Option<f64>) -> PyResult<Self> {
        let start = match start {
            "newest" => Start::Newest,
            "oldest" => Start::Oldest,
            "next" => Start::Next,
            other => {
                return Err(PyValueError::new_err(format!(
                    "start must be \"newest\", \"oldest\" or \"next\", not {other:?}"
                )))
            }
        };
        let wait = duration(wait, "wait")?;
        let reader = py
            .detach(|| match wait {
                None => Reader::open(&path, start),
                Some(t) => Reader::wait_open(&path, start, t),
            })
            .map_err(to_py)?;
        Ok(Ring {
            path,
            reader: Mutex::new(Some(reader)),
            views: Arc::default(),
        })
    }

    /// The ring's path.
    #[getter]
    fn path(&self) -> PathBuf {
        self.path.clone()
    }

    /// The current file's layout.
    #[getter]
    fn geometry(&self, py: Python<'_>) -> PyResult<Geometry> {
        self.with(py, |r| Ok(geometry(r.geometry())))
    }

    /// Messages lost so far (lapped by the writer, or skipped by `latest()`).
    #[getter]
    fn lost(&self, py: Python<'_>) -> PyResult<u64> {
        self.with(py, |r| Ok(r.lost()))
    }

    /// Messages handed out so far.
    #[getter]
    fn delivered(&self, py: Python<'_>) -> PyResult<u64> {
        self.with(py, |r| Ok(r.delivered()))
    }

    /// How many times the reader followed a replaced file (a geometry change).
    #[getter]
    fn reopened(&self, py: Python<'_>) -> PyResult<u64> {
        self.with(py, |r| Ok(r.reopened()))
    }

    /// Diagnostics: (used, wasted) views made before a wait for the slot the next message was
    /// expected in. A wrong guess (after `latest()` skipped, say) costs one unused view.
    #[getter]
    fn _prepared_views(&self) -> (u64, u64) {
        (
            self.views.hits.load(Ordering::Relaxed),
            self.views.misses.load(Ordering::Relaxed),
        )
    }

    /// Current writer epoch (bumped by each writer restart).
    #[getter]
    fn epoch(&self, py: Python<'_>) -> PyResult<u64> {
        self.with(py, |r| Ok(r.info().epoch))
    }

    /// Whether a writer holds the ring's lock now (works across PID namespaces).
    #[getter]
    fn writer_alive(&self, py: Python<'_>) -> PyResult<bool> {
        self.with(py, |r| Ok(r.writer_alive()))
    }

    /// The next message, or None after `timeout` seconds (None: wait forever).
    #[pyo3(signature = (timeout = None))]
    fn next(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<Option<Message>> {
        self.wait(py, timeout, false)
    }

    /// The newest message, skipping older ones; None after `timeout` seconds.
    #[pyo3(signature = (timeout = None))]
    fn latest(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<Option<Message>> {
        self.wait(py, timeout, true)
    }

    /// Stop reading. Messages and arrays already handed out stay valid (they keep the file
    /// mapped).
    fn close(&self, py: Python<'_>) {
        py.detach(|| self.reader.lock().unwrap_or_else(|p| p.into_inner()).take());
        self.views.clear();
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, py: Python<'_>, _args: &Bound<'_, PyTuple>) -> bool {
        self.close(py);
        false
    }

    fn __iter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Option<Message>> {
        self.wait(py, None, false)
    }

    fn __repr__(&self) -> String {
        format!("edgeplex.Ring({:?})", self.path.display().to_string())
    }
}

/// One message, in place in the ring (see `edgeplex.Message`).
#[pyclass(frozen, module = "edgeplex")]
struct Message {
    handle: MessageHandle,
    views: Arc<Views>,
    /// The `Views` generation (file) it came from: only the current one's arrays are cached.
    generation: u64,
    /// The view made before the wait for this message's slot (`Views::prepare`), handed out by
    /// the first `array()`.
    first: Mutex<Option<Py<PyAny>>>,
}

#[pymethods]
impl Message {
    /// Message number since the ring was first created.
    #[getter]
    fn seq(&self) -> u64 {
        self.handle.seq()
    }

    /// Epoch of the writer that published it.
    #[getter]
    fn epoch(&self) -> u64 {
        self.handle.epoch()
    }

    /// Capture time, ns (CLOCK_MONOTONIC unless flags has FLAG_CAPTURE_REALTIME).
    #[getter]
    fn capture_ns(&self) -> u64 {
        self.handle.capture_ns()
    }

    /// The device's own sequence number; restarts with each writer.
    #[getter]
    fn device_seq(&self) -> u64 {
        self.handle.device_seq()
    }

    /// When the writer published it, CLOCK_REALTIME ns.
    #[getter]
    fn publish_ns(&self) -> u64 {
        self.handle.publish_ns()
    }

    /// Message flags (edgeplex.FLAG_*).
    #[getter]
    fn flags(&self) -> u32 {
        self.handle.flags()
    }

    /// Messages lost between the previous message and this one.
    #[getter]
    fn lost_before(&self) -> u64 {
        self.handle.lost_before()
    }

    fn __len__(&self) -> usize {
        self.handle.len()
    }

    /// Whether the writer has not overwritten the slot since the message was handed out.
    fn intact(&self) -> bool {
        self.handle.is_intact()
    }

    /// A copy of the payload; raises LappedError if the writer overwrote it meanwhile.
    fn bytes<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let mut buf = Vec::new();
        let ok = py.detach(|| self.handle.copy_to(&mut buf));
        if !ok {
            return Err(lapped(&self.handle, "copied"));
        }
        Ok(PyBytes::new(py, &buf))
    }

    /// A read-only numpy view of the payload in the ring slot itself, shaped by the format.
    fn array<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        if let Some(view) = self.first.lock().unwrap_or_else(|p| p.into_inner()).take() {
            return Ok(view.into_bound(py));
        }
        let (addr, len) = (self.handle.as_ptr() as usize, self.handle.len());
        let base = match self.views.cached(py, addr, Some(len)) {
            Some((_, a)) => a.into_bound(py),
            None => {
                let a = self.new_array(py)?;
                self.views
                    .insert(self.generation, addr, len, a.clone().unbind());
                a
            }
        };
        // A fresh array object each time (its shape or flags may be changed by the caller),
        // sharing the slot's memory and read-only like its base.
        base.call_method0(pyo3::intern!(py, "view"))
    }

    /// The payload's address, for tests and for code that hands it to C.
    #[getter]
    fn address(&self) -> usize {
        self.handle.as_ptr() as usize
    }

    fn __repr__(&self) -> String {
        format!(
            "edgeplex.Message(seq={}, epoch={}, len={}, lost_before={})",
            self.handle.seq(),
            self.handle.epoch(),
            self.handle.len(),
            self.handle.lost_before()
        )
    }
}

impl Message {
    /// A numpy array over this message's payload, made through `__array_interface__`.
    fn new_array<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let video = self.handle.video();
        let (shape, strides) = match frame_shape(&video, self.handle.len()) {
            Some(s) if self.handle.kind() == layout::StreamKind::Video => {
                (s.shape, Some(s.strides))
            }
            _ => (vec![self.handle.len()], None),
        };
        let view = SlotView {
            handle: self.handle.clone(),
            shape,
            strides,
        };
        static ASARRAY: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
        ASARRAY.import(py, "numpy", "asarray")?.call1((view,))
    }
}

fn lapped(h: &MessageHandle, what: &str) -> PyErr {
    LappedError::new_err(format!(
        "message {} was overwritten by the writer while being {what}; read faster, use \
         latest(), or give the ring more slots",
        h.seq()
    ))
}

/// The base object of a numpy view: keeps the ring file mapped while the array lives, and
/// describes the memory through numpy's `__array_interface__` (read-only).
#[pyclass(frozen, module = "edgeplex")]
struct SlotView {
    handle: MessageHandle,
    shape: Vec<usize>,
    strides: Option<Vec<usize>>,
}

#[pymethods]
impl SlotView {
    #[getter(__array_interface__)]
    fn array_interface<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        d.set_item("version", 3)?;
        d.set_item("typestr", "|u1")?;
        d.set_item("shape", PyTuple::new(py, &self.shape)?)?;
        match &self.strides {
            Some(s) => d.set_item("strides", PyTuple::new(py, s)?)?,
            None => d.set_item("strides", py.None())?,
        }
        // (address, read-only): numpy marks the array read-only and refuses to make it
        // writable; the mapping is PROT_READ anyway.
        d.set_item("data", (self.handle.as_ptr() as usize, true))?;
        Ok(d)
    }
}

/// Wait up to `timeout` seconds for a ring to appear at `path`; returns its geometry.
#[pyfunction]
#[pyo3(signature = (path, timeout))]
fn wait_for_ring(py: Python<'_>, path: PathBuf, timeout: f64) -> PyResult<Geometry> {
    let t = duration(Some(timeout), "timeout")?.unwrap_or_default();
    let mut left = t;
    loop {
        // In slices, so that Ctrl-C works during a long wait.
        let slice = left.min(WAIT_SLICE);
        match py.detach(|| ring_wait(&path, slice)) {
            Ok(info) => return Ok(geometry(&info.geometry)),
            Err(Error::NotFound { .. }) if left > slice => {
                left -= slice;
                py.check_signals()?;
            }
            Err(e) => return Err(to_py(e)),
        }
    }
}

/// FNV-1a 64 of `data`: the hash `edgeplex ring cat --meta --hash` prints.
#[pyfunction]
fn fnv1a64(data: &[u8]) -> u64 {
    edgeplex_ring::fnv1a64(data)
}

#[pymodule]
fn _edgeplex(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_class::<Ring>()?;
    m.add_class::<Message>()?;
    m.add_class::<Geometry>()?;
    m.add_class::<SlotView>()?;
    m.add_function(wrap_pyfunction!(wait_for_ring, m)?)?;
    m.add_function(wrap_pyfunction!(fnv1a64, m)?)?;
    m.add("RingError", py.get_type::<RingError>())?;
    m.add("RingNotFoundError", py.get_type::<RingNotFoundError>())?;
    m.add("RingPermissionError", py.get_type::<RingPermissionError>())?;
    m.add("RingCorruptError", py.get_type::<RingCorruptError>())?;
    m.add("LappedError", py.get_type::<LappedError>())?;
    m.add("FLAG_TRUNCATED", layout::FLAG_TRUNCATED)?;
    m.add("FLAG_CAPTURE_REALTIME", layout::FLAG_CAPTURE_REALTIME)?;
    m.add("FLAG_DEVICE_ERROR", layout::FLAG_DEVICE_ERROR)?;
    Ok(())
}
