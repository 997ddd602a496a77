//! An in-process Kubernetes API server for integration tests.
//!
//! It serves, over plain HTTP on 127.0.0.1, the subset of the Kubernetes API edgeplex uses,
//! with the semantics of kube-apiserver that the agent and the failover controller depend on:
//!
//! - **Nodes** (`/api/v1/nodes`, `/status`): GET, LIST (label and field selectors), POST, PUT
//!   (a stale `resourceVersion` is a 409 Conflict; none is an unconditional update), PATCH as
//!   JSON patch (a failed `test` op is a 422, as in kube-apiserver), merge patch, strategic
//!   merge patch (conditions merge by `type`), and server-side apply with field ownership:
//!   labels and annotations per key, `status.conditions` per `type`, `spec.taints` atomic.
//!   The main resource ignores `status`; `/status` ignores `spec` (and, as the real node
//!   status strategy does, keeps metadata changes).
//! - **Leases** (`coordination.k8s.io/v1`): PUT needs `resourceVersion` (422 without it, 409
//!   when stale) and creates a missing Lease, as the lease registry does.
//! - **Pods** (LIST with `fieldSelector=spec.nodeName=...`), the **Eviction** subresource
//!   (deletes the pod), **Events** (core `v1` and `events.k8s.io/v1`, which
//!   `kube::runtime::events::Recorder` uses), **Namespaces** (namespaced writes need one).
//! - `resourceVersion` is one global counter bumped on every write (not on no-op writes);
//!   errors are `Status` objects; watches (`?watch=true`) stream changes, with `labelSelector`
//!   and `fieldSelector`, from a `resourceVersion`, with bookmarks; an object that starts or
//!   stops matching the selectors is sent as ADDED or DELETED, as the real watch cache does.
//!
//! Tests build the real `kube::Client` from [`TestApiServer::kubeconfig_path`], exactly as
//! production does, and use [`Cluster`] helpers to play the kubelet, the node controller or
//! an admin, to inject outages, to run code just before a request (a concurrent writer), and
//! to read the request log.
//!
//! Not modelled: authentication and RBAC, admission webhooks, `dryRun`, YAML bodies (kube
//! sends JSON, which is YAML), graceful pod deletion, PodDisruptionBudgets, and conversion
//! between the two Event APIs (each keeps its own objects).
#![allow(dead_code)]

mod fields;
mod http;
mod resources;
mod selector;
pub mod store;
mod validate;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub use store::{ApiError, Store};

/// One request the server saw.
#[derive(Debug, Clone)]
pub struct RequestRecord {
    /// `GET`, `PUT`, ...
    pub method: String,
    /// URL path.
    pub path: String,
    /// Raw query string.
    pub query: String,
    /// `Content-Type` header.
    pub content_type: String,
    /// `User-Agent` header.
    pub user_agent: String,
    /// `fieldManager` query parameter.
    pub field_manager: String,
    /// The HTTP status answered.
    pub status: u16,
    /// The JSON body, or null.
    pub body: Value,
}

#[derive(Debug)]
struct Fault {
    method: Option<String>,
    path_contains: Option<String>,
    remaining: Option<u32>,
    code: u16,
}

type HookFn = Box<dyn FnOnce(&Cluster) + Send>;

struct Hook {
    method: String,
    path_contains: String,
    f: HookFn,
}

/// Server state behind the lock.
pub struct State {
    /// The objects.
    pub store: Store,
    requests: Vec<RequestRecord>,
    faults: Vec<Fault>,
    hooks: Vec<Hook>,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("rv", &self.store.rv)
            .field("objects", &self.store.objects.len())
            .field("requests", &self.requests.len())
            .finish()
    }
}

/// How the server behaves as a whole: up, or one of two kinds of outage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outage {
    /// Serving.
    Up,
    /// The API server is down: its port is closed (connections are refused) and every open
    /// connection is closed. Ending it listens on the same port again.
    Down,
    /// A black hole (a partition, a hung load balancer): connections are accepted but no
    /// request is read or answered, so clients time out. Ending it closes those connections.
    Hang,
}

/// A handle on the server's state: cheap to clone, usable from any thread.
#[derive(Debug, Clone)]
pub struct Cluster {
    state: Arc<Mutex<State>>,
    outage: Arc<tokio::sync::watch::Sender<Outage>>,
    applied: Arc<tokio::sync::watch::Sender<Outage>>,
}

/// The running server. Stops when dropped.
#[derive(Debug)]
pub struct TestApiServer {
    cluster: Cluster,
    addr: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    dir: tempfile::TempDir,
    kubeconfig: PathBuf,
}

impl TestApiServer {
    /// Start a server on 127.0.0.1 on its own thread and runtime, with the namespaces
    /// `default`, `kube-system`, `kube-node-lease` and `edgeplex`. Usable from plain `#[test]`
    /// and `#[tokio::test]`.
    pub fn start() -> TestApiServer {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        listener.set_nonblocking(true).expect("set_nonblocking");
        let addr = listener.local_addr().expect("local_addr");
        let cluster = Cluster {
            state: Arc::new(Mutex::new(State {
                store: Store::default(),
                requests: Vec::new(),
                faults: Vec::new(),
                hooks: Vec::new(),
            })),
            outage: Arc::new(tokio::sync::watch::Sender::new(Outage::Up)),
            applied: Arc::new(tokio::sync::watch::Sender::new(Outage::Up)),
        };
        for ns in ["default", "kube-system", "kube-node-lease", "edgeplex"] {
            cluster.create_namespace(ns);
        }
        let (stop, stop_rx) = tokio::sync::oneshot::channel();
        let c = cluster.clone();
        let thread = std::thread::Builder::new()
            .name("test-apiserver".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("test API server runtime");
                rt.block_on(async move {
                    let listener =
                        tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                    http::serve(listener, addr, c, stop_rx).await;
                });
            })
            .expect("spawn the test API server thread");
        let dir = tempfile::tempdir().expect("tempdir for the kubeconfig");
        let kubeconfig = dir.path().join("kubeconfig");
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: http://{addr}\ncontexts:\n- name: test\n  context:\n    cluster: test\n    user: test\n    namespace: default\ncurrent-context: test\nusers:\n- name: test\n  user:\n    token: test-token\n"
        );
        std::fs::write(&kubeconfig, text).expect("write the kubeconfig");
        TestApiServer {
            cluster,
            addr,
            stop: Some(stop),
            thread: Some(thread),
            dir,
            kubeconfig,
        }
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kubeconfig file pointing at this server (context `test`, namespace `default`).
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// A handle on the state, for other threads.
    pub fn cluster(&self) -> Cluster {
        self.cluster.clone()
    }
}

impl std::ops::Deref for TestApiServer {
    type Target = Cluster;

    fn deref(&self) -> &Cluster {
        &self.cluster
    }
}

impl Drop for TestApiServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn resource_of(obj: &Value) -> &'static store::Resource {
    let api_version = obj
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or("v1");
    let kind = obj.get("kind").and_then(Value::as_str).unwrap_or("Node");
    store::RESOURCES
        .iter()
        .find(|r| r.api_version() == api_version && r.kind == kind)
        .unwrap_or_else(|| panic!("the test API server does not serve {api_version} {kind}"))
}

fn name_ns(obj: &Value) -> (String, String) {
    let meta = |f: &str| {
        obj.pointer(&format!("/metadata/{f}"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    (meta("name"), meta("namespace"))
}

impl Cluster {
    /// Lock the state (for inspection in tests; don't hold it across awaits).
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn record(&self, r: RequestRecord) {
        self.lock().requests.push(r);
    }

    pub(crate) fn take_hooks(&self, method: &str, path: &str) -> Vec<HookFn> {
        let mut state = self.lock();
        let mut out = Vec::new();
        let mut i = 0;
        while i < state.hooks.len() {
            let h = &state.hooks[i];
            if h.method.eq_ignore_ascii_case(method) && path.contains(&h.path_contains) {
                out.push(state.hooks.remove(i).f);
            } else {
                i += 1;
            }
        }
        out
    }

    pub(crate) fn take_fault(&self, method: &str, path: &str) -> Option<u16> {
        let mut state = self.lock();
        let idx = state.faults.iter().position(|f| {
            f.method
                .as_deref()
                .is_none_or(|m| m.eq_ignore_ascii_case(method))
                && f.path_contains.as_deref().is_none_or(|p| path.contains(p))
        })?;
        let f = &mut state.faults[idx];
        let code = f.code;
        if let Some(n) = f.remaining.as_mut() {
            *n -= 1;
            if *n == 0 {
                state.faults.remove(idx);
            }
        }
        Some(code)
    }

    /// The current global resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.lock().store.rv
    }

    /// An object by kubectl resource name (`nodes`, `leases.coordination.k8s.io`, `pods`,
    /// `events.events.k8s.io`), namespace (ignored for cluster-scoped) and name.
    pub fn object(&self, resource: &str, ns: &str, name: &str) -> Option<Value> {
        let t = store::Target {
            res: store::by_id(resource),
            ns,
            name,
            sub: None,
        };
        self.lock().store.get(&t).ok()
    }

    /// Every object of `resource`, in `ns` or (None) everywhere.
    pub fn list(&self, resource: &str, ns: Option<&str>) -> Vec<Value> {
        let res = store::by_id(resource);
        let list = self
            .lock()
            .store
            .list(res, ns, "", "")
            .expect("an unfiltered list cannot fail");
        list["items"].as_array().cloned().unwrap_or_default()
    }

    /// A snapshot of node `name`; panics if it does not exist.
    pub fn node(&self, name: &str) -> Value {
        self.try_node(name)
            .unwrap_or_else(|| panic!("node {name:?} does not exist on the test API server"))
    }

    /// A snapshot of node `name`, if it exists.
    pub fn try_node(&self, name: &str) -> Option<Value> {
        self.object("nodes", "", name)
    }

    /// A snapshot of Lease `ns/name`, if it exists.
    pub fn lease(&self, ns: &str, name: &str) -> Option<Value> {
        self.object("leases.coordination.k8s.io", ns, name)
    }

    /// Create an object as manager `test-setup`; the resource comes from its `apiVersion`
    /// and `kind`, the namespace from its metadata.
    pub fn create(&self, obj: Value) -> Result<Value, ApiError> {
        let res = resource_of(&obj);
        let (_, ns) = name_ns(&obj);
        self.lock().store.create(res, &ns, obj, "test-setup")
    }

    /// Create a Node from `obj` (`apiVersion`/`kind` may be omitted); panics on error.
    pub fn create_node(&self, mut obj: Value) -> Value {
        obj["apiVersion"] = json!("v1");
        obj["kind"] = json!("Node");
        self.create(obj).expect("create the node")
    }

    /// Create a Node the way a joined node looks: the kubelet (manager `kubelet`) owns a
    /// `Ready=True` condition and the `kubernetes.io/hostname` label.
    pub fn create_ready_node(&self, name: &str) -> Value {
        self.create_node(json!({"metadata": {"name": name}}));
        self.apply_as(
            "kubelet",
            json!({"apiVersion": "v1", "kind": "Node",
                   "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}}}),
        );
        self.apply_status_as(
            "kubelet",
            json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
                   "status": {"conditions": [{"type": "Ready", "status": "True",
                     "reason": "KubeletReady", "message": "kubelet is posting ready status",
                     "lastHeartbeatTime": store::now_seconds(),
                     "lastTransitionTime": store::now_seconds()}]}}),
        )
    }

    /// Create namespace `name` (no-op if it exists).
    pub fn create_namespace(&self, name: &str) {
        let res = store::by_id("namespaces");
        let obj = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
        match self.lock().store.create(res, "", obj, "test-setup") {
            Ok(_) => {}
            Err(e) if e.reason == "AlreadyExists" => {}
            Err(e) => panic!("create namespace {name}: {e:?}"),
        }
    }

    /// Server-side apply `obj` on the main resource as `manager` with `force` (a controller
    /// asserting its fields); panics on error.
    pub fn apply_as(&self, manager: &str, obj: Value) -> Value {
        self.try_apply(manager, None, obj, true)
            .unwrap_or_else(|e| panic!("apply as {manager}: {e:?}"))
    }

    /// Server-side apply `obj` on the `status` subresource as `manager` with `force`.
    pub fn apply_status_as(&self, manager: &str, obj: Value) -> Value {
        self.try_apply(manager, Some("status"), obj, true)
            .unwrap_or_else(|e| panic!("apply status as {manager}: {e:?}"))
    }

    /// Server-side apply with the full set of options; conflicts come back as errors.
    pub fn try_apply(
        &self,
        manager: &str,
        sub: Option<&str>,
        obj: Value,
        force: bool,
    ) -> Result<Value, ApiError> {
        let res = resource_of(&obj);
        let (name, ns) = name_ns(&obj);
        let t = store::Target {
            res,
            ns: &ns,
            name: &name,
            sub,
        };
        self.lock()
            .store
            .patch(&t, store::PatchType::Apply, obj.clone(), manager, force)
    }

    /// Read-modify-write an object as `manager` (an `Update`, like a controller's PUT); `f`
    /// edits the object. Returns the stored result; panics if the object does not exist.
    pub fn update_as(
        &self,
        manager: &str,
        resource: &str,
        ns: &str,
        name: &str,
        sub: Option<&str>,
        f: impl FnOnce(&mut Value),
    ) -> Value {
        let res = store::by_id(resource);
        let t = store::Target { res, ns, name, sub };
        let mut state = self.lock();
        let mut obj = state
            .store
            .get(&t)
            .unwrap_or_else(|e| panic!("update {resource} {ns}/{name}: {e:?}"));
        f(&mut obj);
        state
            .store
            .replace(&t, obj, manager)
            .unwrap_or_else(|e| panic!("update {resource} {ns}/{name}: {e:?}"))
    }

    /// Renew Lease `ns/name` as `manager` (holder `name`, `leaseDurationSeconds` `secs`,
    /// `renewTime` now), creating it if missing: an agent's or a kubelet's heartbeat.
    pub fn renew_lease(&self, manager: &str, ns: &str, name: &str, secs: u32) -> Value {
        let now = serde_json::to_value(k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(
            k8s_openapi::jiff::Timestamp::now(),
        ))
        .expect("MicroTime");
        if self.lease(ns, name).is_none() {
            let res = store::by_id("leases.coordination.k8s.io");
            let obj = json!({
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": name, "namespace": ns},
                "spec": {"holderIdentity": name, "leaseDurationSeconds": secs, "renewTime": now},
            });
            if let Ok(v) = self.lock().store.create(res, ns, obj, manager) {
                return v;
            }
        }
        self.update_as(manager, "leases.coordination.k8s.io", ns, name, None, |l| {
            l["spec"]["renewTime"] = now;
            l["spec"]["leaseDurationSeconds"] = json!(secs);
        })
    }

    /// [`Cluster::update_as`] on node `name`'s main resource.
    pub fn update_node_as(&self, manager: &str, name: &str, f: impl FnOnce(&mut Value)) -> Value {
        self.update_as(manager, "nodes", "", name, None, f)
    }

    /// Add a taint to node `name` as `manager` (the node controller's `unreachable`, say),
    /// keeping the others.
    pub fn add_taint_as(&self, manager: &str, name: &str, taint: Value) -> Value {
        self.update_node_as(manager, name, |n| {
            let taints = n["spec"]
                .as_object_mut()
                .expect("a node has a spec")
                .entry("taints")
                .or_insert_with(|| json!([]));
            taints.as_array_mut().expect("taints is a list").push(taint);
        })
    }

    /// The taints of node `name`.
    pub fn taints(&self, name: &str) -> Vec<Value> {
        self.node(name)
            .pointer("/spec/taints")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    }

    /// Condition `type` of node `name`, if present.
    pub fn condition(&self, name: &str, type_: &str) -> Option<Value> {
        self.node(name)
            .pointer("/status/conditions")
            .and_then(Value::as_array)?
            .iter()
            .find(|c| c["type"] == type_)
            .cloned()
    }

    /// Label `key` of node `name`, if present.
    pub fn label(&self, name: &str, key: &str) -> Option<String> {
        self.node(name)
            .pointer("/metadata/labels")
            .and_then(|l| l.get(key))
            .and_then(Value::as_str)
            .map(str::to_owned)
    }

    /// Delete an object; `Err` if missing.
    pub fn delete(&self, resource: &str, ns: &str, name: &str) -> Result<Value, ApiError> {
        let t = store::Target {
            res: store::by_id(resource),
            ns,
            name,
            sub: None,
        };
        self.lock().store.delete(&t)
    }

    /// Every Event of both APIs (core `v1` and `events.k8s.io/v1`).
    pub fn events(&self) -> Vec<Value> {
        let mut v = self.list("events", None);
        v.extend(self.list("events.events.k8s.io", None));
        v
    }

    /// Events with `reason` (`FailedOver`, `NoHealthyBackup`...).
    pub fn events_with_reason(&self, reason: &str) -> Vec<Value> {
        self.events()
            .into_iter()
            .filter(|e| e["reason"] == reason)
            .collect()
    }

    /// A Ready node (see [`Cluster::create_ready_node`]) that the admin put in `group` with
    /// `role` (`edgeplex.io/group`, `edgeplex.io/role`).
    pub fn create_group_node(&self, name: &str, group: &str, role: &str) {
        self.create_ready_node(name);
        self.apply_as(
            "admin",
            json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name,
                   "labels": {"edgeplex.io/group": group, "edgeplex.io/role": role}}}),
        );
    }

    /// Those of `nodes` labelled `edgeplex.io/active=true`.
    pub fn active_nodes(&self, nodes: &[&str]) -> Vec<String> {
        nodes
            .iter()
            .filter(|n| self.label(n, "edgeplex.io/active").as_deref() == Some("true"))
            .map(|n| n.to_string())
            .collect()
    }

    /// Answer the next `n` requests (any) with HTTP `code` (500, 503, 429...).
    pub fn set_fail(&self, n: u32, code: u16) {
        if n > 0 {
            self.lock().faults.push(Fault {
                method: None,
                path_contains: None,
                remaining: Some(n),
                code,
            });
        }
    }

    /// Answer every request with `code` until called with `None` (an outage).
    pub fn set_outage(&self, code: Option<u16>) {
        let mut state = self.lock();
        state.faults.retain(|f| f.remaining.is_some());
        if let Some(code) = code {
            state.faults.insert(
                0,
                Fault {
                    method: None,
                    path_contains: None,
                    remaining: None,
                    code,
                },
            );
        }
    }

    /// Answer the next `n` requests with `method` whose path contains `path_contains` with
    /// `code`.
    pub fn fail_matching(&self, method: &str, path_contains: &str, n: u32, code: u16) {
        self.lock().faults.push(Fault {
            method: Some(method.to_owned()),
            path_contains: Some(path_contains.to_owned()),
            remaining: Some(n),
            code,
        });
    }

    /// Remove every injected failure.
    pub fn clear_faults(&self) {
        self.lock().faults.clear();
    }

    /// Run `f` once, just before the server handles the next request with `method` whose
    /// path contains `path_contains`: a concurrent writer racing the client.
    pub fn before_next(
        &self,
        method: &str,
        path_contains: &str,
        f: impl FnOnce(&Cluster) + Send + 'static,
    ) {
        self.lock().hooks.push(Hook {
            method: method.to_owned(),
            path_contains: path_contains.to_owned(),
            f: Box::new(f),
        });
    }

    /// Whether a [`Cluster::before_next`] hook is still waiting.
    pub fn hooks_pending(&self) -> usize {
        self.lock().hooks.len()
    }

    /// Put the whole server down, into a black hole, or back up (see [`Outage`]). Returns once
    /// the server has seen the change (for `Down`: once the port is closed; for `Up` after
    /// `Down`: once it listens again).
    pub fn set_server_outage(&self, outage: Outage) {
        self.outage.send_replace(outage);
        wait_for(
            "the test API server to apply the outage",
            Duration::from_secs(10),
            || (*self.applied.borrow() == outage).then_some(()),
        );
    }

    /// The outage mode asked for (the serve loop watches it).
    pub(crate) fn outage_watch(&self) -> tokio::sync::watch::Receiver<Outage> {
        self.outage.subscribe()
    }

    /// The serve loop reports the mode it has put into effect.
    pub(crate) fn outage_applied(&self, outage: Outage) {
        self.applied.send_replace(outage);
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.lock().requests.clone()
    }

    /// Requests with `method` whose path contains `path_contains`.
    pub fn count(&self, method: &str, path_contains: &str) -> usize {
        self.lock()
            .requests
            .iter()
            .filter(|r| r.method.eq_ignore_ascii_case(method) && r.path.contains(path_contains))
            .count()
    }
}

#[allow(unused_imports)] // each test crate uses a different subset
pub use crate::common::wait::{try_wait_for, wait_for, wait_for_async};

/// Wait until `node` is the only active node among `nodes`; returns when it was seen.
pub async fn wait_active(
    cluster: &Cluster,
    nodes: &[&str],
    node: &str,
    timeout: Duration,
) -> Instant {
    wait_for_async(
        &format!("{node} to be the only active node"),
        timeout,
        || (cluster.active_nodes(nodes) == [node]).then(Instant::now),
    )
    .await
}

/// Wait until the failover controllers' leader has renewed its Lease `rounds` more times. The
/// controller watches (it makes no request per round), and decides at least once per poll
/// interval; the tests renew the leader Lease at that same interval, so this lets about that
/// many rounds pass.
pub async fn wait_rounds(cluster: &Cluster, rounds: usize, timeout: Duration) {
    let renewals = || cluster.count("PUT", "/leases/edgeplex-failover");
    let start = renewals();
    wait_for_async(&format!("{rounds} more controller rounds"), timeout, || {
        (renewals() >= start + rounds).then_some(())
    })
    .await
}
