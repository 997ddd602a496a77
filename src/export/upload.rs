//! Uploading exported files: one HTTP/1.1 `PUT` per file through hyper's client, each attempt
//! under one total deadline, transient failures retried with backoff.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;

/// A parsed `http://host[:port]/path` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl {
    /// `host:port` to connect to.
    pub authority: String,
    /// Value of the `Host` header.
    pub host: String,
    /// Path prefix without a trailing slash (may be empty).
    pub path: String,
}

impl HttpUrl {
    /// Parse `http://host[:port][/path]`. TLS is not supported.
    pub fn parse(url: &str) -> Option<HttpUrl> {
        let rest = url.strip_prefix("http://")?;
        let (auth, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        if auth.is_empty() || auth.contains('@') || path.contains(['?', '#', ' ']) {
            return None;
        }
        let authority = if auth.rsplit_once(':').is_some_and(|(_, p)| !p.contains(']')) {
            let (_, port) = auth.rsplit_once(':')?;
            port.parse::<u16>().ok()?;
            auth.to_owned()
        } else {
            format!("{auth}:80")
        };
        Some(HttpUrl {
            authority,
            host: auth.to_owned(),
            path: path.trim_end_matches('/').to_owned(),
        })
    }
}

/// Uploads files to one URL, on its own small runtime.
#[derive(Debug)]
pub(super) struct Uploader {
    url: HttpUrl,
    retries: u32,
    limit: Duration,
    runtime: tokio::runtime::Runtime,
}

/// Why one attempt failed, and whether another may succeed.
#[derive(Debug)]
struct Failure {
    error: anyhow::Error,
    transient: bool,
}

impl Uploader {
    /// An uploader to `url` that retries `retries` times, each attempt within `limit`.
    pub(super) fn new(url: HttpUrl, retries: u32, limit: Duration) -> anyhow::Result<Uploader> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("start the upload runtime")?;
        Ok(Uploader {
            url,
            retries,
            limit,
            runtime,
        })
    }

    /// Upload the file at `path` as `name`, retrying transient failures (connection errors,
    /// deadlines, 5xx, 408, 429) with exponential backoff.
    ///
    /// The state file is written only after every file was acknowledged, so an attempt cut off
    /// by its deadline loses nothing: the next attempt (or run) sends the same file under the
    /// same name again, and a PUT of a name replaces it.
    pub(super) fn upload(&self, path: &Path, name: &str) -> anyhow::Result<()> {
        let body = Bytes::from(
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?,
        );
        let hash = crate::ring::fnv1a64(&body);
        let target = format!("{}/{}", self.url.path, name);
        let mut delay = Duration::from_millis(100);
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let put = self.put(&target, body.clone(), hash);
            let failure = match self
                .runtime
                .block_on(async { tokio::time::timeout(self.limit, put).await })
            {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(f)) => f,
                Err(_) => Failure {
                    error: anyhow::anyhow!(
                        "attempt exceeded its deadline of {:.1}s (--attempt-timeout)",
                        self.limit.as_secs_f64()
                    ),
                    transient: true,
                },
            };
            if !failure.transient {
                return Err(failure.error);
            }
            if attempt > self.retries {
                return Err(failure.error.context(format!("{attempt} attempts")));
            }
            tracing::warn!(file = name, attempt, error = %format!("{:#}", failure.error), "upload failed; retrying");
            std::thread::sleep(delay);
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }

    /// One PUT on a new connection; `Ok` for a 2xx answer.
    async fn put(&self, target: &str, body: Bytes, hash: u64) -> Result<(), Failure> {
        let transient = |error: anyhow::Error| Failure {
            error,
            transient: true,
        };
        let stream = tokio::net::TcpStream::connect(&self.url.authority)
            .await
            .map_err(|e| {
                transient(anyhow::anyhow!(
                    "cannot connect to {}: {e}",
                    self.url.authority
                ))
            })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| transient(e.into()))?;
        let driver = tokio::spawn(conn);
        let request = Request::put(target)
            .header(hyper::header::HOST, &self.url.host)
            .header(
                hyper::header::USER_AGENT,
                concat!("edgeplex/", env!("CARGO_PKG_VERSION")),
            )
            .header(hyper::header::CONTENT_TYPE, "application/octet-stream")
            .header("X-Edgeplex-Fnv1a64", format!("{hash:016x}"))
            .body(Full::new(body))
            .map_err(|e| Failure {
                error: anyhow::anyhow!("cannot build the request for {target:?}: {e}"),
                transient: false,
            })?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| transient(e.into()));
        driver.abort();
        let status = response?.status();
        if status.is_success() {
            return Ok(());
        }
        Err(Failure {
            error: anyhow::anyhow!("server answered HTTP {}", status.as_u16()),
            transient: status.is_server_error()
                || status == StatusCode::REQUEST_TIMEOUT
                || status == StatusCode::TOO_MANY_REQUESTS,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = HttpUrl::parse("http://127.0.0.1:8080/up/").expect("valid");
        assert_eq!(u.authority, "127.0.0.1:8080");
        assert_eq!(u.path, "/up");
        let u = HttpUrl::parse("http://example.com").expect("valid");
        assert_eq!(u.authority, "example.com:80");
        assert_eq!(u.path, "");
        assert!(HttpUrl::parse("https://example.com/").is_none());
        assert!(HttpUrl::parse("http://h:99999/").is_none());
        assert!(HttpUrl::parse("http:///x").is_none());
    }
}
