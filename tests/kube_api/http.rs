//! The HTTP side: hyper on a tokio listener, URL routing the way kube-apiserver lays out its
//! paths, query parameters, content types, watches, injected faults and the request log.

use std::collections::HashMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

use super::selector::{FieldSelector, LabelSelector};
use super::store::{self, ApiError, PatchType, Resource, Target};
use super::{Cluster, Outage, RequestRecord};

type Body = BoxBody<Bytes, Infallible>;

/// Accept connections until `stop` fires, following the [`Outage`] mode the cluster asks for:
/// `Down` drops the listener (the port refuses connections) and closes every connection, `Hang`
/// stops reading every connection, `Up` listens on `addr` again.
pub async fn serve(
    listener: tokio::net::TcpListener,
    addr: std::net::SocketAddr,
    cluster: Cluster,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let mut mode = cluster.outage_watch();
    let mut listener = Some(listener);
    loop {
        let want = *mode.borrow_and_update();
        match (want, listener.is_some()) {
            (Outage::Down, true) => listener = None,
            (Outage::Up | Outage::Hang, false) => match rebind(addr) {
                Ok(l) => listener = Some(l),
                Err(e) => panic!("the test API server cannot listen on {addr} again: {e}"),
            },
            _ => {}
        }
        cluster.outage_applied(want);
        tokio::select! {
            _ = &mut stop => break,
            changed = mode.changed() => if changed.is_err() { break },
            accepted = accept(listener.as_ref()) => {
                let Ok((stream, _)) = accepted else { continue };
                tokio::spawn(connection(stream, cluster.clone()));
            }
        }
    }
}

/// Bind `addr` again after an outage (the std listener sets SO_REUSEADDR, so connections left
/// in TIME_WAIT do not stop it).
fn rebind(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let l = std::net::TcpListener::bind(addr)?;
    l.set_nonblocking(true)?;
    tokio::net::TcpListener::from_std(l)
}

async fn accept(
    listener: Option<&tokio::net::TcpListener>,
) -> std::io::Result<(tokio::net::TcpStream, std::net::SocketAddr)> {
    match listener {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

/// Serve one connection while the server is up; close it when the server goes down, and stop
/// reading it (then close it when the black hole ends) while the server hangs.
async fn connection(stream: tokio::net::TcpStream, cluster: Cluster) {
    let mut mode = cluster.outage_watch();
    let svc = hyper::service::service_fn(move |req| {
        let cluster = cluster.clone();
        async move { Ok::<_, Infallible>(handle(cluster, req).await) }
    });
    let conn =
        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc);
    tokio::pin!(conn);
    loop {
        let now = *mode.borrow_and_update();
        match now {
            Outage::Up => tokio::select! {
                _ = &mut conn => return,
                changed = mode.changed() => if changed.is_err() { return },
            },
            Outage::Down => return,
            Outage::Hang => {
                // Not polled: nothing is read or written until the hang ends; then the
                // connection is closed, as a middlebox that lost its state would.
                let _ = mode.changed().await;
                return;
            }
        }
    }
}

fn full(status: u16, body: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())).boxed())
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).boxed()))
}

fn error(e: &ApiError) -> Response<Body> {
    full(e.code, &e.to_status())
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_query(q: &str) -> HashMap<String, String> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (percent_decode(k), percent_decode(v)),
            None => (percent_decode(p), String::new()),
        })
        .collect()
}

/// Where a request goes.
enum Endpoint {
    Json(Value),
    Resource {
        res: &'static Resource,
        ns: Option<String>,
        name: Option<String>,
        sub: Option<String>,
    },
    NotFound,
}

fn discovery(group: &str, version: &str) -> Value {
    let resources: Vec<Value> = store::RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version)
        .flat_map(|r| {
            let verbs = json!(["create", "delete", "get", "list", "patch", "update", "watch"]);
            let mut v = vec![json!({
                "name": r.plural, "singularName": r.kind.to_lowercase(), "namespaced": r.namespaced,
                "kind": r.kind, "verbs": verbs,
            })];
            if r.status {
                v.push(json!({"name": format!("{}/status", r.plural), "singularName": "",
                    "namespaced": r.namespaced, "kind": r.kind, "verbs": ["get", "patch", "update"]}));
            }
            if r.plural == "pods" {
                v.push(json!({"name": "pods/eviction", "singularName": "", "namespaced": true,
                    "group": "policy", "version": "v1", "kind": "Eviction", "verbs": ["create"]}));
            }
            v
        })
        .collect();
    let gv = if group.is_empty() {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    };
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources})
}

fn route(path: &str) -> Endpoint {
    let segs: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let (group, version, rest) = match segs.as_slice() {
        ["version"] => {
            return Endpoint::Json(json!({
                "major": "1", "minor": "33", "gitVersion": "v1.33.0-edgeplex-test",
                "platform": "linux/amd64",
            }))
        }
        ["api"] => return Endpoint::Json(json!({"kind": "APIVersions", "versions": ["v1"]})),
        ["apis"] => {
            let groups: Vec<Value> = ["coordination.k8s.io", "events.k8s.io"]
                .iter()
                .map(|g| {
                    let gv = json!({"groupVersion": format!("{g}/v1"), "version": "v1"});
                    json!({"name": g, "versions": [gv.clone()], "preferredVersion": gv})
                })
                .collect();
            return Endpoint::Json(
                json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}),
            );
        }
        ["api", v] => return Endpoint::Json(discovery("", v)),
        ["apis", g, v] => return Endpoint::Json(discovery(g, v)),
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return Endpoint::NotFound,
    };
    let namespaced = |plural: &str| store::find(group, version, plural).filter(|r| r.namespaced);
    let (res, ns, tail) = match rest {
        ["namespaces", ns, plural, tail @ ..] if namespaced(plural).is_some() => {
            (namespaced(plural), Some(ns.to_string()), tail)
        }
        [plural, tail @ ..] => (store::find(group, version, plural), None, tail),
        _ => (None, None, rest),
    };
    let Some(res) = res else {
        return Endpoint::NotFound;
    };
    if res.namespaced && ns.is_none() && !tail.is_empty() {
        return Endpoint::NotFound;
    }
    match tail {
        [] => Endpoint::Resource {
            res,
            ns,
            name: None,
            sub: None,
        },
        [name] => Endpoint::Resource {
            res,
            ns,
            name: Some(name.to_string()),
            sub: None,
        },
        [name, sub] => Endpoint::Resource {
            res,
            ns,
            name: Some(name.to_string()),
            sub: Some(sub.to_string()),
        },
        _ => Endpoint::NotFound,
    }
}

fn patch_type(content_type: &str) -> Option<PatchType> {
    match content_type.split(';').next().unwrap_or_default().trim() {
        "application/json-patch+json" => Some(PatchType::Json),
        "application/merge-patch+json" => Some(PatchType::Merge),
        "application/strategic-merge-patch+json" => Some(PatchType::Strategic),
        "application/apply-patch+yaml" | "application/apply-patch+cbor" => Some(PatchType::Apply),
        _ => None,
    }
}

async fn handle(cluster: Cluster, req: Request<Incoming>) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let raw_query = req.uri().query().unwrap_or_default().to_owned();
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let content_type = header("content-type");
    let user_agent = header("user-agent");
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let query = parse_query(&raw_query);
    let field_manager = query.get("fieldManager").cloned().unwrap_or_default();
    let mut record = RequestRecord {
        method: method.to_string(),
        path: path.clone(),
        query: raw_query.clone(),
        content_type: content_type.clone(),
        user_agent: user_agent.clone(),
        field_manager: field_manager.clone(),
        status: 0,
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
    };
    for hook in cluster.take_hooks(method.as_str(), &path) {
        hook(&cluster);
    }
    if let Some(code) = cluster.take_fault(method.as_str(), &path) {
        record.status = code;
        cluster.record(record);
        return error(&ApiError::injected(code));
    }
    let watch = matches!(query.get("watch").map(String::as_str), Some("true" | "1"));
    if method == Method::GET && watch {
        record.status = 200;
        cluster.record(record);
        return match route(&path) {
            Endpoint::Resource {
                res,
                ns,
                name: None,
                sub: None,
            } => start_watch(cluster, res, ns, &query),
            _ => error(&ApiError::method_not_allowed(
                "watch is served on collections only",
            )),
        };
    }
    // The apiserver names an unnamed writer after its User-Agent, up to the first '/'.
    let manager = if field_manager.is_empty() {
        user_agent.split('/').next().unwrap_or_default().to_owned()
    } else {
        field_manager.clone()
    };
    let result = dispatch(
        &cluster,
        &method,
        &path,
        &query,
        &content_type,
        &body,
        &manager,
    );
    let response = match result {
        Ok((code, v)) => {
            record.status = code;
            full(code, &v)
        }
        Err(e) => {
            record.status = e.code;
            error(&e)
        }
    };
    cluster.record(record);
    response
}

fn parse_body(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!(
            "the body of the request is not JSON ({e}); the test API server accepts JSON, and the JSON form of YAML for apply"
        ))
    })
}

fn dispatch(
    cluster: &Cluster,
    method: &Method,
    path: &str,
    query: &HashMap<String, String>,
    content_type: &str,
    body: &[u8],
    manager: &str,
) -> Result<(u16, Value), ApiError> {
    let (res, ns, name, sub) = match route(path) {
        Endpoint::Json(v) if method == Method::GET => return Ok((200, v)),
        Endpoint::Resource { res, ns, name, sub } => (res, ns, name, sub),
        _ => {
            return Err(ApiError {
                code: 404,
                reason: "NotFound",
                message: "the server could not find the requested resource".into(),
                details: None,
            })
        }
    };
    if query.get("dryRun").is_some_and(|d| !d.is_empty()) {
        return Err(ApiError::bad_request(
            "dryRun is not supported by the test API server",
        ));
    }
    let q = |k: &str| query.get(k).map(String::as_str).unwrap_or_default();
    let ns_str = ns.clone().unwrap_or_default();
    let mut state = cluster.lock();
    let st = &mut state.store;
    let sub_ok = |sub: &Option<String>| match sub.as_deref() {
        None => true,
        Some("status") => res.status,
        _ => false,
    };
    match (method.clone(), name.as_deref()) {
        (Method::GET, None) => {
            let scope = if res.namespaced { ns.as_deref() } else { None };
            st.list(res, scope, q("labelSelector"), q("fieldSelector"))
                .map(|v| (200, v))
        }
        (Method::POST, None) => {
            if res.namespaced && ns.is_none() {
                return Err(ApiError::method_not_allowed(format!(
                    "POST {path}: create {} in a namespace: /namespaces/{{ns}}/{}",
                    res.plural, res.plural
                )));
            }
            st.create(res, &ns_str, parse_body(body)?, manager)
                .map(|v| (201, v))
        }
        (m, Some(name)) => {
            let t = Target {
                res,
                ns: &ns_str,
                name,
                sub: sub.as_deref(),
            };
            if m == Method::POST && res.plural == "pods" && sub.as_deref() == Some("eviction") {
                let ev = parse_body(body)?;
                if let Some(n) = ev.pointer("/metadata/name").and_then(Value::as_str) {
                    if n != name {
                        return Err(ApiError::bad_request(format!(
                            "name in URL does not match name in Eviction object: {n} != {name}"
                        )));
                    }
                }
                return st.evict(&ns_str, name).map(|v| (201, v));
            }
            if !sub_ok(&sub) {
                return Err(ApiError::not_found(res, name));
            }
            let existed = st.stored(&t).is_some();
            let created = |v: Value, st: &store::Store| {
                let now = st.stored(&t).is_some();
                ((if !existed && now { 201 } else { 200 }), v)
            };
            match m {
                Method::GET => st.get(&t).map(|v| (200, v)),
                Method::PUT => {
                    let v = st.replace(&t, parse_body(body)?, manager)?;
                    Ok(created(v, st))
                }
                Method::PATCH => {
                    let kind = patch_type(content_type)
                        .ok_or_else(|| ApiError::unsupported_media(content_type))?;
                    let force = q("force") == "true";
                    if kind == PatchType::Apply && q("fieldManager").is_empty() {
                        return Err(ApiError::bad_request(
                            "PATCH with application/apply-patch+yaml: fieldManager is required for apply requests",
                        ));
                    }
                    if force && kind != PatchType::Apply {
                        return Err(ApiError::unprocessable(
                            "force: Forbidden: may not be specified for non-apply patch",
                        ));
                    }
                    let v = st.patch(&t, kind, parse_body(body)?, manager, force)?;
                    Ok(created(v, st))
                }
                Method::DELETE if sub.is_none() => st.delete(&t).map(|v| (200, v)),
                _ => Err(ApiError::method_not_allowed(format!(
                    "{m} {path} is not supported"
                ))),
            }
        }
        (m, None) => Err(ApiError::method_not_allowed(format!(
            "{m} {path} is not supported"
        ))),
    }
}

/// A response body fed from a channel (a watch stream).
struct ChannelBody(tokio::sync::mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

fn start_watch(
    cluster: Cluster,
    res: &'static Resource,
    ns: Option<String>,
    query: &HashMap<String, String>,
) -> Response<Body> {
    let q = |k: &str| query.get(k).cloned().unwrap_or_default();
    let labels = match LabelSelector::parse(&q("labelSelector")) {
        Ok(l) => l,
        Err(e) => return error(&e),
    };
    let fields = match FieldSelector::parse(&q("fieldSelector"), res) {
        Ok(f) => f,
        Err(e) => return error(&e),
    };
    let timeout = q("timeoutSeconds").parse::<u64>().unwrap_or(1800).min(1800);
    let bookmarks = q("allowWatchBookmarks") == "true";
    let from = q("resourceVersion");
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    let id = res.id();
    let ns = if res.namespaced { ns } else { None };
    tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
        let in_scope = |k: &store::Key| k.res == id && ns.as_ref().is_none_or(|n| &k.ns == n);
        // The keys of the objects this watch has shown as matching its selectors, so that an
        // object that stops matching is sent as DELETED and one that starts as ADDED, as the
        // real API server's watch cache does.
        let mut shown: std::collections::BTreeSet<store::Key> = std::collections::BTreeSet::new();
        let mut last: u64 = match from.parse() {
            Ok(rv) if rv > 0 => {
                // Which objects matched at `rv`: replay the change log up to it.
                let state = cluster.lock();
                for c in state
                    .store
                    .changes
                    .iter()
                    .filter(|c| c.rv <= rv && in_scope(&c.key))
                {
                    if c.kind != "DELETED" && labels.matches(&c.obj) && fields.matches(&c.obj) {
                        shown.insert(c.key.clone());
                    } else {
                        shown.remove(&c.key);
                    }
                }
                rv
            }
            _ => {
                // No resourceVersion (or 0): start with the current state as ADDED events.
                let initial: Vec<Value> = {
                    let state = cluster.lock();
                    state
                        .store
                        .objects
                        .iter()
                        .filter(|(k, s)| {
                            in_scope(k) && labels.matches(&s.obj) && fields.matches(&s.obj)
                        })
                        .map(|(k, s)| {
                            shown.insert(k.clone());
                            json!({"type": "ADDED", "object": store::Store::render(res, s)})
                        })
                        .collect()
                };
                for ev in initial {
                    if tx.send(Bytes::from(format!("{ev}\n"))).await.is_err() {
                        return;
                    }
                }
                cluster.lock().store.rv
            }
        };
        let mut since_bookmark = tokio::time::Instant::now();
        while tokio::time::Instant::now() < deadline {
            let (events, rv): (Vec<Value>, u64) = {
                let state = cluster.lock();
                let mut evs = Vec::new();
                for c in state
                    .store
                    .changes
                    .iter()
                    .filter(|c| c.rv > last && in_scope(&c.key))
                {
                    let matches =
                        c.kind != "DELETED" && labels.matches(&c.obj) && fields.matches(&c.obj);
                    let was = shown.contains(&c.key);
                    let kind = match (was, matches) {
                        (true, true) => c.kind,
                        (false, true) => "ADDED",
                        (true, false) => "DELETED",
                        (false, false) => continue,
                    };
                    if matches {
                        shown.insert(c.key.clone());
                    } else {
                        shown.remove(&c.key);
                    }
                    evs.push(json!({"type": kind, "object": c.obj}));
                }
                (evs, state.store.rv)
            };
            last = rv;
            for ev in events {
                if tx.send(Bytes::from(format!("{ev}\n"))).await.is_err() {
                    return;
                }
            }
            if bookmarks && since_bookmark.elapsed() > Duration::from_secs(1) {
                since_bookmark = tokio::time::Instant::now();
                let bm = json!({"type": "BOOKMARK", "object": {
                    "kind": res.kind, "apiVersion": res.api_version(),
                    "metadata": {"resourceVersion": last.to_string()}}});
                if tx.send(Bytes::from(format!("{bm}\n"))).await.is_err() {
                    return;
                }
            }
            if tx.is_closed() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .body(ChannelBody(rx).boxed())
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).boxed()))
}
