//! The observability endpoint: `/metrics`, `/healthz`, `/readyz` over HTTP/1.1.
//!
//! It runs on its own thread and tokio runtime, so a slow or hostile scraper can only ever
//! cost this thread: capture threads never wait on it. Connections, header sizes and header
//! read time are bounded; request bodies are never read.
//!
//! The port faces the cluster network, so idle and slow clients must never starve the
//! kubelet's probes: a new connection is always accepted, and when [`MAX_CONNECTIONS`] are open
//! one is closed to make room: the oldest that has not yet sent a whole request (an idle or
//! slowloris client), else the oldest. Each new connection is polled once before the next is
//! accepted, so a probe's request, which follows its connect at once, is read before a flood of
//! newer connections could push it out.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus::Registry;
use tokio::net::TcpListener;
use tokio::task::AbortHandle;

use crate::shutdown::Shutdown;

/// Most connections open at once; a new one closes the oldest.
pub const MAX_CONNECTIONS: usize = 64;
/// Time a client gets to send its request headers (slowloris bound).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest request head accepted.
pub const MAX_HEADER_BYTES: usize = 8 * 1024;

/// Whether the process is ready, and if not, why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    /// Everything configured is up.
    Ready,
    /// One line per problem, naming the stream and the reason.
    NotReady(Vec<String>),
}

/// What the endpoint serves.
pub struct Endpoint {
    /// The registry `/metrics` renders.
    pub registry: Registry,
    /// Called before each scrape to copy live state into the registry.
    pub refresh: Box<dyn Fn() + Send + Sync>,
    /// Computes `/readyz`.
    pub readiness: Box<dyn Fn() -> Readiness + Send + Sync>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint").finish_non_exhaustive()
    }
}

/// Bind `addr` now (so a bad address fails at startup), then serve on a new thread until
/// shutdown. Returns the bound address (useful with port 0).
pub fn spawn(
    addr: SocketAddr,
    endpoint: Endpoint,
    shutdown: Shutdown,
) -> std::io::Result<SocketAddr> {
    let std_listener = std::net::TcpListener::bind(addr)?;
    std_listener.set_nonblocking(true)?;
    let local = std_listener.local_addr()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("metrics-http".into())
        .spawn(move || {
            runtime.block_on(async move {
                match TcpListener::from_std(std_listener) {
                    Ok(listener) => serve(listener, Arc::new(endpoint), shutdown).await,
                    Err(e) => tracing::error!(error = %e, "metrics endpoint cannot listen"),
                }
            })
        })?;
    Ok(local)
}

/// One open connection.
struct Conn {
    id: u64,
    task: AbortHandle,
    /// Whether it has sent a whole request.
    served: Arc<AtomicBool>,
}

/// The open connections, oldest first.
type Live = Arc<Mutex<VecDeque<Conn>>>;

async fn serve(listener: TcpListener, endpoint: Arc<Endpoint>, shutdown: Shutdown) {
    let live: Live = Arc::default();
    let mut next_id = 0u64;
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.cancelled() => return,
        };
        let (stream, _) = match accepted {
            Ok(s) => s,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "metrics endpoint accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        admit(&live, next_id, stream, &endpoint);
        next_id += 1;
        // Let the new connection read its request before the next one is accepted.
        tokio::task::yield_now().await;
    }
}

/// Serve `stream` on its own task, closing a connection to make room when too many are open.
fn admit(live: &Live, id: u64, stream: tokio::net::TcpStream, endpoint: &Arc<Endpoint>) {
    let endpoint = Arc::clone(endpoint);
    let done = Arc::clone(live);
    let served = Arc::new(AtomicBool::new(false));
    let seen = Arc::clone(&served);
    // Held across the spawn, so the task's own removal always comes after its insertion.
    let mut open = live.lock().unwrap_or_else(|p| p.into_inner());
    let task = tokio::spawn(async move {
        let service = hyper::service::service_fn(move |req| {
            seen.store(true, Ordering::Relaxed);
            let endpoint = Arc::clone(&endpoint);
            async move { Ok::<_, Infallible>(handle(&endpoint, &req)) }
        });
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(HEADER_TIMEOUT)
            .max_buf_size(MAX_HEADER_BYTES);
        let conn = http.serve_connection(TokioIo::new(stream), service);
        // A connection lives at most this long, whatever the client does.
        let _ = tokio::time::timeout(Duration::from_secs(60), conn).await;
        let mut open = done.lock().unwrap_or_else(|p| p.into_inner());
        open.retain(|c| c.id != id);
    });
    open.push_back(Conn {
        id,
        task: task.abort_handle(),
        served,
    });
    while open.len() > MAX_CONNECTIONS {
        let victim = open
            .iter()
            .position(|c| !c.served.load(Ordering::Relaxed))
            .unwrap_or(0);
        if let Some(c) = open.remove(victim) {
            // The aborted task is dropped, and its socket closed.
            c.task.abort();
        }
    }
}

fn handle(endpoint: &Endpoint, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n".into());
    }
    match req.uri().path() {
        "/metrics" => {
            (endpoint.refresh)();
            let body = crate::metrics::encode(&endpoint.registry);
            let mut r = text(StatusCode::OK, body);
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
        "/healthz" => text(StatusCode::OK, "ok\n".into()),
        "/readyz" => match (endpoint.readiness)() {
            Readiness::Ready => text(StatusCode::OK, "ready\n".into()),
            Readiness::NotReady(why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready\n{}\n", why.join("\n")),
            ),
        },
        "/" => text(
            StatusCode::OK,
            "edgeplex: /metrics /healthz /readyz\n".into(),
        ),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; try /metrics, /healthz or /readyz\n".into(),
        ),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r
}
