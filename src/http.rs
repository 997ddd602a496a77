//! The observability endpoint: `/metrics`, `/healthz`, `/readyz` over HTTP/1.1.
//!
//! It runs on its own thread and tokio runtime, so a slow or hostile scraper can only ever
//! cost this thread: capture threads never wait on it. Connections, header sizes and header
//! read time are bounded; request bodies are never read.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus::Registry;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::shutdown::Shutdown;

/// Most connections served at once; further clients wait in the listen backlog.
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

async fn serve(listener: TcpListener, endpoint: Arc<Endpoint>, shutdown: Shutdown) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = tick.tick() => { if shutdown.requested() { return } continue }
        };
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = tick.tick() => { if shutdown.requested() { return } continue }
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
        let endpoint = Arc::clone(&endpoint);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
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
            drop(permit);
        });
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
