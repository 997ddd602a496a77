//! The node publisher against the in-process test API server, through the real kube client
//! built from the server's kubeconfig exactly as in production.
//!
//! The scenarios run against a [`Env`]: the test API server, or a real cluster when
//! `EDGEPLEX_TEST_KUBECONFIG` names a kubeconfig (`cargo test --test node -- --ignored`; it
//! creates nodes named `edgeplex-test-*` and a namespace `edgeplex-test-PID`, and deletes them).
//! Checks that need the test server's hooks (request log, injected conflicts and outages) run
//! only locally. Every wait is bounded; nothing asserts wall-clock time.

mod common;
mod kube_api;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use edgeplex::kube::{keys, KubeMode, KubeSettings};
use edgeplex::node::{self, decide, Inputs, NodePublisher, NodeSettings};
use edgeplex::power::{EstimateSource, PowerClass, PowerSnapshot, Reason, Status};
use edgeplex::shutdown::Shutdown;
use edgeplex::source::HealthSnapshot;
use k8s_openapi::jiff::Timestamp;
use kube_api::{wait_for, TestApiServer};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------
// Inputs and the agent under test

fn stream(name: &str, kind: &str, up: bool, error: Option<&str>) -> HealthSnapshot {
    HealthSnapshot {
        name: name.into(),
        kind: kind.into(),
        class: Some(match kind {
            "camera" | "test-pattern" => edgeplex::source::kinds::DeviceClass::Camera,
            _ => edgeplex::source::kinds::DeviceClass::Serial,
        }),
        up,
        started: true,
        last_error: error.map(str::to_owned),
        ring: Some((
            PathBuf::from(format!("/dev/shm/edgeplex/{name}/{name}.ring")),
            8,
            4096,
        )),
        ..Default::default()
    }
}

fn battery(class: PowerClass, capacity: f64, tte_s: Option<f64>) -> PowerSnapshot {
    PowerSnapshot {
        battery: true,
        on_battery: true,
        batteries: vec!["BAT0".into()],
        capacity_ratio: Some(capacity),
        status: Some(Status::Discharging),
        voltage_v: Some(11.1),
        power_w: Some(6.0),
        time_to_empty_s: tte_s,
        estimate: EstimateSource::Slope,
        class,
        reason: match class {
            PowerClass::Normal => Reason::Discharging,
            PowerClass::Low => Reason::CapacityLow,
            PowerClass::Critical => Reason::TimeToEmptyCritical,
        },
    }
}

fn mains() -> PowerSnapshot {
    PowerSnapshot {
        on_battery: false,
        status: Some(Status::Charging),
        time_to_empty_s: None,
        reason: Reason::ExternalPower,
        ..battery(PowerClass::Normal, 0.5, None)
    }
}

/// Short intervals so the scenarios run in well under a second each.
fn fast() -> NodeSettings {
    NodeSettings {
        group: "line-1".into(),
        critical_streams: Vec::new(),
        failover_taint: true,
        hold_down_secs: 0.3,
        device_grace_secs: 0.0,
        heartbeat_secs: 0.1,
        lease_duration_secs: 1,
        resync_secs: 0.3,
        poll_interval_secs: 0.02,
        retry_initial_secs: 0.05,
        retry_max_secs: 0.4,
    }
}

/// The node publisher with inputs the test controls.
struct Agent {
    streams: Arc<Mutex<Vec<HealthSnapshot>>>,
    power: tokio::sync::watch::Sender<Option<PowerSnapshot>>,
    registry: prometheus::Registry,
    shutdown: Shutdown,
    publisher: Option<NodePublisher>,
}

impl Agent {
    fn start(
        kube: KubeSettings,
        settings: NodeSettings,
        streams: Vec<HealthSnapshot>,
        power: Option<PowerSnapshot>,
    ) -> Agent {
        let streams = Arc::new(Mutex::new(streams));
        let (tx, rx) = tokio::sync::watch::channel(power);
        let s = Arc::clone(&streams);
        let inputs = Inputs::from_fn(move || s.lock().unwrap_or_else(|e| e.into_inner()).clone())
            .with_power(rx);
        let registry = prometheus::Registry::new();
        let shutdown = Shutdown::default();
        let publisher = node::start(&kube, settings, inputs, &registry, &shutdown)
            .expect("start the node publisher")
            .expect("connected, not standalone");
        Agent {
            streams,
            power: tx,
            registry,
            shutdown,
            publisher: Some(publisher),
        }
    }

    fn set_streams(&self, streams: Vec<HealthSnapshot>) {
        *self.streams.lock().unwrap_or_else(|e| e.into_inner()) = streams;
    }

    fn set_power(&self, power: Option<PowerSnapshot>) {
        self.power.send_replace(power);
    }

    /// Sum of the samples of metric `name` whose labels include `labels`.
    fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        common::prom::sum(&edgeplex::metrics::encode(&self.registry), name, labels)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.shutdown.trigger();
        if let Some(p) = self.publisher.take() {
            p.join();
        }
    }
}

// ---------------------------------------------------------------------------------------
// Where the scenarios run

trait Env {
    /// `[kube]` settings for an agent on node `name`.
    fn kube(&self, name: &str) -> KubeSettings;
    fn create_ready_node(&self, name: &str);
    fn apply_as(&self, manager: &str, status: bool, obj: Value);
    fn add_taint_as(&self, manager: &str, node: &str, taint: Value);
    fn cordon(&self, node: &str);
    fn node(&self, name: &str) -> Value;
    fn lease(&self, name: &str) -> Option<Value>;
    fn remove_node(&self, name: &str);
    /// A taint the node controller owns, which the agent must keep.
    fn controller_taint(&self) -> Value;
}

struct Local(TestApiServer);

impl Env for Local {
    fn kube(&self, name: &str) -> KubeSettings {
        KubeSettings {
            mode: KubeMode::Kubeconfig,
            kubeconfig: self.0.kubeconfig_path().to_path_buf(),
            node_name: name.into(),
            request_timeout_secs: 5.0,
            ..Default::default()
        }
    }

    fn create_ready_node(&self, name: &str) {
        self.0.create_ready_node(name);
    }

    fn apply_as(&self, manager: &str, status: bool, obj: Value) {
        if status {
            self.0.apply_status_as(manager, obj);
        } else {
            self.0.apply_as(manager, obj);
        }
    }

    fn add_taint_as(&self, manager: &str, node: &str, taint: Value) {
        self.0.add_taint_as(manager, node, taint);
    }

    fn cordon(&self, node: &str) {
        // kubectl cordon sets spec.unschedulable; the node lifecycle controller adds the taint.
        self.0.update_node_as("kubectl", node, |n| {
            n["spec"]["unschedulable"] = json!(true);
        });
        self.0.add_taint_as(
            "kube-controller-manager",
            node,
            json!({"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}),
        );
    }

    fn node(&self, name: &str) -> Value {
        self.0.node(name)
    }

    fn lease(&self, name: &str) -> Option<Value> {
        self.0.lease("edgeplex", name)
    }

    fn remove_node(&self, name: &str) {
        let _ = self.0.delete("nodes", "", name);
    }

    fn controller_taint(&self) -> Value {
        json!({"key": "node.kubernetes.io/unreachable", "effect": "NoExecute",
               "timeAdded": "2025-01-01T00:00:00Z"})
    }
}

fn label(node: &Value, key: &str) -> Option<String> {
    node.pointer("/metadata/labels")
        .and_then(|l| l.get(key))
        .and_then(Value::as_str)
        .map(str::to_owned)
}

fn annotation(node: &Value, key: &str) -> Option<String> {
    node.pointer("/metadata/annotations")
        .and_then(|l| l.get(key))
        .and_then(Value::as_str)
        .map(str::to_owned)
}

fn condition(node: &Value, type_: &str) -> Option<Value> {
    node.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .cloned()
}

fn taints(node: &Value) -> Vec<Value> {
    node.pointer("/spec/taints")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

fn has_taint(node: &Value, key: &str) -> bool {
    taints(node).iter().any(|t| t["key"] == key)
}

fn time(v: &Value) -> Timestamp {
    v.as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not a timestamp: {v}"))
}

// ---------------------------------------------------------------------------------------
// Scenarios

/// Labels appear, disappear when no longer asserted, and never touch another manager's.
fn scenario_labels(env: &dyn Env, name: &str) {
    env.create_ready_node(name);
    env.apply_as(
        "admin",
        false,
        json!({"apiVersion": "v1", "kind": "Node",
               "metadata": {"name": name, "labels": {"example.com/rack": "r1", keys::ROLE: "primary"}}}),
    );
    let agent = Agent::start(
        env.kube(name),
        fast(),
        vec![
            stream("cam0", "camera", true, None),
            stream("gps0", "serial", true, None),
        ],
        Some(battery(PowerClass::Normal, 0.8, Some(7200.0))),
    );
    let n = wait_for("the agent's labels", WAIT, || {
        let n = env.node(name);
        let want = [
            (keys::GROUP, "line-1"),
            (keys::CAMERA, "true"),
            (keys::SERIAL, "true"),
            (keys::BATTERY, "true"),
            (keys::POWER, "normal"),
        ];
        want.iter()
            .all(|(k, v)| label(&n, k).as_deref() == Some(*v))
            .then_some(n)
    });
    let rings: Value =
        serde_json::from_str(&annotation(&n, keys::RINGS_ANNOTATION).expect("rings"))
            .expect("rings annotation is JSON");
    assert_eq!(rings[0]["stream"], "cam0");
    assert_eq!(rings[0]["path"], "/dev/shm/edgeplex/cam0/cam0.ring");
    let detail: Value =
        serde_json::from_str(&annotation(&n, keys::BATTERY_ANNOTATION).expect("battery"))
            .expect("battery annotation is JSON");
    assert_eq!(detail["capacity_percent"], 80);

    // The camera goes down and the power monitor goes away: those labels disappear.
    agent.set_streams(vec![
        stream("cam0", "camera", false, Some("/dev/video0 disconnected")),
        stream("gps0", "serial", true, None),
    ]);
    agent.set_power(None);
    let n = wait_for("camera, battery and power labels removed", WAIT, || {
        let n = env.node(name);
        (label(&n, keys::CAMERA).is_none()
            && label(&n, keys::BATTERY).is_none()
            && label(&n, keys::POWER).is_none()
            && annotation(&n, keys::BATTERY_ANNOTATION).is_none()
            && condition(&n, keys::BATTERY_CRITICAL).is_none())
        .then_some(n)
    });
    assert_eq!(label(&n, keys::SERIAL).as_deref(), Some("true"));
    assert_eq!(label(&n, keys::GROUP).as_deref(), Some("line-1"));
    assert_eq!(
        label(&n, "example.com/rack").as_deref(),
        Some("r1"),
        "admin's label"
    );
    assert_eq!(
        label(&n, keys::ROLE).as_deref(),
        Some("primary"),
        "admin's label"
    );
    assert_eq!(
        label(&n, "kubernetes.io/hostname").as_deref(),
        Some(name),
        "kubelet's label"
    );
    assert!(condition(&n, keys::DEVICE_FAILURE).is_some());
    let managers: Vec<(String, String)> = n["metadata"]["managedFields"]
        .as_array()
        .expect("managedFields")
        .iter()
        .map(|m| {
            (
                m["manager"].as_str().unwrap_or_default().to_owned(),
                m["operation"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert!(
        managers.contains(&("edgeplex".into(), "Apply".into())),
        "{managers:?}"
    );
    assert!(
        !managers.iter().any(|(m, _)| m.is_empty()),
        "no unnamed writer: {managers:?}"
    );
    drop(agent);
    env.remove_node(name);
}

/// Conditions merge with the kubelet's; lastTransitionTime is stable until the status flips.
fn scenario_conditions(env: &dyn Env, name: &str) {
    env.create_ready_node(name);
    let settings = NodeSettings {
        critical_streams: vec!["cam0".into()],
        ..fast()
    };
    let agent = Agent::start(
        env.kube(name),
        settings,
        vec![stream("cam0", "camera", true, None)],
        Some(battery(PowerClass::Normal, 0.80, Some(7200.0))),
    );
    let (bc, df) = wait_for("both conditions", WAIT, || {
        let n = env.node(name);
        Some((
            condition(&n, keys::BATTERY_CRITICAL)?,
            condition(&n, keys::DEVICE_FAILURE)?,
        ))
    });
    assert_eq!(bc["status"], "False");
    assert_eq!(bc["reason"], "Discharging");
    assert_eq!(df["status"], "False");
    assert_eq!(df["reason"], "CriticalDevicesUp");
    let first = bc["lastTransitionTime"].as_str().expect("ltt").to_owned();
    // Several updates without a status change: the message changes, the transition stays.
    for pct in [79, 78, 77] {
        agent.set_power(Some(battery(
            PowerClass::Normal,
            f64::from(pct) / 100.0,
            Some(7000.0),
        )));
        let want = format!("capacity {pct}%");
        let c = wait_for(&format!("message with {want}"), WAIT, || {
            let c = condition(&env.node(name), keys::BATTERY_CRITICAL)?;
            c["message"].as_str()?.contains(&want).then_some(c)
        });
        let ltt = c["lastTransitionTime"].as_str().expect("ltt");
        assert!(
            decide::same_instant(ltt, &first),
            "{ltt} moved from {first}"
        );
        let n = env.node(name);
        let ready = condition(&n, "Ready").expect("the kubelet's Ready condition is intact");
        assert!(ready["reason"].is_string());
    }
    // Critical: the status flips and so does the transition time.
    agent.set_power(Some(battery(PowerClass::Critical, 0.06, Some(400.0))));
    let c = wait_for("BatteryCritical=True", WAIT, || {
        condition(&env.node(name), keys::BATTERY_CRITICAL).filter(|c| c["status"] == "True")
    });
    assert_eq!(c["reason"], "TimeToEmptyCritical");
    assert!(
        c["message"]
            .as_str()
            .unwrap_or_default()
            .contains("to empty"),
        "{c}"
    );
    assert!(time(&c["lastTransitionTime"]) >= time(&json!(first)));
    // A critical device goes down.
    agent.set_streams(vec![stream(
        "cam0",
        "camera",
        false,
        Some("/dev/video0 disconnected"),
    )]);
    let c = wait_for("DeviceFailure=True", WAIT, || {
        condition(&env.node(name), keys::DEVICE_FAILURE).filter(|c| c["status"] == "True")
    });
    assert!(
        c["message"].as_str().unwrap_or_default().contains("cam0"),
        "{c}"
    );
    assert!(condition(&env.node(name), "Ready").is_some());
    drop(agent);
    env.remove_node(name);
}

/// The failover taint goes on beside the node controller's taint and a cordon, and comes off
/// after the hold-down, leaving them.
fn scenario_taint(env: &dyn Env, name: &str, before_taint_write: impl FnOnce()) {
    env.create_ready_node(name);
    env.add_taint_as("node-controller", name, env.controller_taint());
    env.cordon(name);
    let others: Vec<Value> = taints(&env.node(name));
    let agent = Agent::start(env.kube(name), fast(), vec![], Some(mains()));
    wait_for("the agent's first sync", WAIT, || {
        condition(&env.node(name), keys::BATTERY_CRITICAL)
    });
    before_taint_write();
    agent.set_power(Some(battery(PowerClass::Critical, 0.05, Some(300.0))));
    let n = wait_for("the failover taint", WAIT, || {
        let n = env.node(name);
        has_taint(&n, keys::FAILOVER_TAINT).then_some(n)
    });
    let ours = taints(&n)
        .into_iter()
        .find(|t| t["key"] == keys::FAILOVER_TAINT)
        .expect("ours");
    assert_eq!(ours["effect"], "NoExecute");
    assert_eq!(ours["value"], decide::TAINT_BATTERY);
    for t in &others {
        assert!(
            has_taint(&n, t["key"].as_str().unwrap_or_default()),
            "{t} was kept"
        );
    }
    assert_eq!(n["spec"]["unschedulable"], true, "the cordon stays");
    let c = condition(&n, keys::BATTERY_CRITICAL).expect("condition");
    assert_eq!(c["status"], "True", "the condition goes with the taint");
    wait_for("tainted gauge", WAIT, || {
        (agent.metric("edgeplex_node_failover_tainted", &[]) == 1.0).then_some(())
    });

    // Back on mains: the condition clears, then the taint after the hold-down.
    agent.set_power(Some(mains()));
    wait_for("BatteryCritical=False", WAIT, || {
        condition(&env.node(name), keys::BATTERY_CRITICAL).filter(|c| c["status"] == "False")
    });
    let n = wait_for("the failover taint removed", WAIT, || {
        let n = env.node(name);
        (!has_taint(&n, keys::FAILOVER_TAINT)).then_some(n)
    });
    for t in &others {
        assert!(
            has_taint(&n, t["key"].as_str().unwrap_or_default()),
            "{t} was kept"
        );
    }
    assert_eq!(n["spec"]["unschedulable"], true);
    wait_for("untainted gauge", WAIT, || {
        (agent.metric("edgeplex_node_failover_tainted", &[]) == 0.0).then_some(())
    });
    drop(agent);
    env.remove_node(name);
}

/// The Lease is created, then renewed: renewTime advances with each new resourceVersion.
fn scenario_lease(env: &dyn Env, name: &str) {
    env.create_ready_node(name);
    let agent = Agent::start(env.kube(name), fast(), vec![], None);
    let lease = wait_for("the lease", WAIT, || env.lease(name));
    assert_eq!(lease["spec"]["holderIdentity"], name);
    assert_eq!(lease["spec"]["leaseDurationSeconds"], 1);
    let mut prev = lease;
    for _ in 0..3 {
        prev = wait_for("a renewal", WAIT, || {
            let l = env.lease(name)?;
            let newer = l["metadata"]["resourceVersion"] != prev["metadata"]["resourceVersion"]
                && time(&l["spec"]["renewTime"]) > time(&prev["spec"]["renewTime"]);
            newer.then_some(l)
        });
    }
    drop(agent);
    env.remove_node(name);
}

// ---------------------------------------------------------------------------------------
// Against the test API server

fn local() -> Local {
    Local(TestApiServer::start())
}

#[test]
fn labels_are_applied_and_removed_and_others_survive() {
    let env = local();
    scenario_labels(&env, "n-labels");
    let reqs = env.0.requests();
    let applies: Vec<_> = reqs
        .iter()
        .filter(|r| r.method == "PATCH" && r.content_type.starts_with("application/apply-patch"))
        .collect();
    assert!(!applies.is_empty());
    for r in &applies {
        assert_eq!(r.field_manager, "edgeplex", "{r:?}");
        assert!(r.query.contains("force=true"), "{r:?}");
    }
    assert!(reqs
        .iter()
        .filter(|r| r.path.contains("n-labels"))
        .all(|r| r.user_agent.starts_with("edgeplex/")));
}

#[test]
fn conditions_keep_the_kubelets_and_their_transition_time() {
    let env = local();
    scenario_conditions(&env, "n-conditions");
    // The status applies went to the status subresource, under edgeplex.
    let status_applies = env
        .0
        .requests()
        .iter()
        .filter(|r| r.method == "PATCH" && r.path.ends_with("/n-conditions/status"))
        .count();
    assert!(status_applies >= 4, "{status_applies}");
}

#[test]
fn taint_survives_a_concurrent_write_and_keeps_other_taints() {
    let env = local();
    let cluster = env.0.cluster();
    let name = "n-taint";
    // The node controller writes the node between the agent's read and its write.
    scenario_taint(&env, name, || {
        cluster.before_next("PUT", &format!("/api/v1/nodes/{name}"), move |c| {
            c.add_taint_as(
                "node-controller",
                "n-taint",
                json!({"key": "node.kubernetes.io/not-ready", "effect": "NoExecute"}),
            );
        });
    });
    assert_eq!(env.0.hooks_pending(), 0, "the concurrent write happened");
    let puts: Vec<u16> = env
        .0
        .requests()
        .iter()
        .filter(|r| r.method == "PUT" && r.path == format!("/api/v1/nodes/{name}"))
        .map(|r| r.status)
        .collect();
    assert_eq!(
        puts.first(),
        Some(&409),
        "the first taint write lost the race: {puts:?}"
    );
    assert!(puts[1..].iter().all(|s| *s == 200), "{puts:?}");
    // The taint written after the retry is next to the concurrent one; removal kept it too.
    // (The node is gone by now; the request log shows the bodies.)
    let last_put = env
        .0
        .requests()
        .into_iter()
        .rfind(|r| {
            r.method == "PUT" && r.path == format!("/api/v1/nodes/{name}") && r.status == 200
        })
        .expect("a successful PUT");
    let keys_left: Vec<String> = last_put.body["spec"]["taints"]
        .as_array()
        .expect("taints")
        .iter()
        .map(|t| t["key"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert!(
        keys_left.contains(&"node.kubernetes.io/not-ready".to_owned()),
        "{keys_left:?}"
    );
    assert!(
        keys_left.contains(&"node.kubernetes.io/unreachable".to_owned()),
        "{keys_left:?}"
    );
    assert!(
        keys_left.contains(&"node.kubernetes.io/unschedulable".to_owned()),
        "{keys_left:?}"
    );
    assert!(
        !keys_left.contains(&keys::FAILOVER_TAINT.to_owned()),
        "{keys_left:?}"
    );
    // No write ever sent taints by apply or merge patch (that would replace the whole list).
    for r in env.0.requests() {
        if r.method == "PATCH" {
            assert!(r.body.pointer("/spec/taints").is_none(), "{r:?}");
        }
    }
}

#[test]
fn taint_removal_waits_for_the_condition_to_clear() {
    let env = local();
    let name = "n-order";
    scenario_taint(&env, name, || {});
    // In the request log, the condition went False before the taint came off.
    let reqs = env.0.requests();
    let node_path = format!("/api/v1/nodes/{name}");
    let has_ours = |r: &kube_api::RequestRecord| {
        taints(&r.body)
            .iter()
            .any(|t| t["key"] == keys::FAILOVER_TAINT)
    };
    let tainted = reqs
        .iter()
        .position(|r| r.method == "PUT" && r.path == node_path && r.status == 200 && has_ours(r))
        .expect("the taint write");
    let untainted = tainted
        + reqs[tainted..]
            .iter()
            .position(|r| {
                r.method == "PUT" && r.path == node_path && r.status == 200 && !has_ours(r)
            })
            .expect("the untaint write");
    let cleared = tainted
        + reqs[tainted..]
            .iter()
            .position(|r| {
                r.method == "PATCH"
                    && r.path == format!("{node_path}/status")
                    && r.status == 200
                    && condition(&r.body, keys::BATTERY_CRITICAL)
                        .is_some_and(|c| c["status"] == "False")
            })
            .expect("BatteryCritical=False applied");
    assert!(
        cleared < untainted,
        "the condition cleared before the taint came off"
    );
    // The taint edits start from the node our own patches returned: no conflict with ourselves.
    let conflicts: Vec<_> = reqs
        .iter()
        .filter(|r| r.path == node_path && r.status == 409)
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert_eq!(conflicts, Vec::<String>::new(), "the agent raced itself");
}

#[test]
fn lease_is_created_then_renewed_with_its_resource_version() {
    let env = local();
    scenario_lease(&env, "n-lease");
    let puts: Vec<_> = env
        .0
        .requests()
        .into_iter()
        .filter(|r| r.method == "PUT" && r.path.ends_with("/leases/n-lease"))
        .collect();
    assert!(puts.len() >= 3);
    for r in &puts {
        assert!(r.body["metadata"]["resourceVersion"].is_string(), "{r:?}");
        assert_eq!(r.status, 200, "{r:?}");
    }
}

#[test]
fn lease_survives_a_concurrent_writer_and_deletion() {
    let env = local();
    let name = "n-lease-race";
    env.create_ready_node(name);
    let agent = Agent::start(env.kube(name), fast(), vec![], None);
    wait_for("the lease", WAIT, || env.lease(name));
    // Someone else writes the Lease: the agent's next PUT is stale (409), then it re-reads.
    env.0.update_as(
        "someone",
        "leases.coordination.k8s.io",
        "edgeplex",
        name,
        None,
        |l| l["metadata"]["labels"] = json!({"touched": "yes"}),
    );
    wait_for("a 409 on the lease", WAIT, || {
        env.0
            .requests()
            .iter()
            .any(|r| r.method == "PUT" && r.path.ends_with(name) && r.status == 409)
            .then_some(())
    });
    let after = env.0.resource_version();
    wait_for("a renewal after the conflict", WAIT, || {
        let l = env.lease(name)?;
        let rv: u64 = l["metadata"]["resourceVersion"].as_str()?.parse().ok()?;
        (rv > after && l["metadata"]["labels"]["touched"] == "yes").then_some(())
    });
    assert!(
        agent.metric(
            "edgeplex_kube_requests_total",
            &[("verb", "replace"), ("result", "conflict")]
        ) >= 1.0
    );
    // Deleted: it is created again.
    env.0
        .delete("leases.coordination.k8s.io", "edgeplex", name)
        .expect("delete");
    wait_for("the lease recreated", WAIT, || env.lease(name));
}

#[test]
fn an_api_outage_is_retried_with_backoff_counted_and_recovers() {
    let env = local();
    let name = "n-outage";
    env.create_ready_node(name);
    let agent = Agent::start(
        env.kube(name),
        fast(),
        vec![stream("cam0", "camera", true, None)],
        Some(mains()),
    );
    wait_for("camera label", WAIT, || {
        label(&env.node(name), keys::CAMERA)
    });
    wait_for("the lease", WAIT, || env.lease(name));
    env.0.set_outage(Some(503));
    let served_before = env.0.requests().len();
    // During the outage the camera goes down (so the node must change) and power goes low.
    agent.set_streams(vec![stream("cam0", "camera", false, Some("gone"))]);
    agent.set_power(Some(battery(PowerClass::Low, 0.15, Some(2000.0))));
    wait_for("failures counted", WAIT, || {
        (agent.metric(
            "edgeplex_kube_requests_total",
            &[("result", "server_error")],
        ) >= 8.0)
            .then_some(())
    });
    let after: Vec<_> = env.0.requests()[served_before..].to_vec();
    // A request the server took before the outage began may be logged just after it: at most
    // one per kind in flight (the node and the Lease). Everything after those failed.
    let in_flight = after.iter().take_while(|r| r.status != 503).count();
    assert!(
        in_flight <= 2,
        "{in_flight} requests answered during the outage"
    );
    let failed = after[in_flight..].to_vec();
    assert!(failed.iter().all(|r| r.status == 503));
    // Backoff, not a busy loop: the node sync retries start with a GET and never go further.
    let node_path = format!("/api/v1/nodes/{name}");
    assert!(failed
        .iter()
        .filter(|r| r.path == node_path)
        .all(|r| r.method == "GET"));
    let labels_before = label(&env.node(name), keys::CAMERA);
    assert_eq!(
        labels_before.as_deref(),
        Some("true"),
        "nothing was written during the outage"
    );
    env.0.set_outage(None);
    let n = wait_for("the node caught up", WAIT, || {
        let n = env.node(name);
        let reason = condition(&n, keys::BATTERY_CRITICAL).map(|c| c["reason"].clone());
        (label(&n, keys::CAMERA).is_none()
            && label(&n, keys::POWER).as_deref() == Some("low")
            && reason == Some(json!("CapacityLow")))
        .then_some(n)
    });
    // The same state as if there had been no outage.
    assert_eq!(label(&n, keys::GROUP).as_deref(), Some("line-1"));
    assert_eq!(label(&n, keys::BATTERY).as_deref(), Some("true"));
    let bc = condition(&n, keys::BATTERY_CRITICAL).expect("condition");
    assert_eq!(
        (bc["status"].as_str(), bc["reason"].as_str()),
        (Some("False"), Some("CapacityLow"))
    );
    let rv = env.0.resource_version();
    wait_for("a renewal after the outage", WAIT, || {
        let l = env.lease(name)?;
        (l["metadata"]["resourceVersion"]
            .as_str()?
            .parse::<u64>()
            .ok()?
            > rv)
            .then_some(())
    });
    assert!(agent.metric("edgeplex_kube_last_sync_timestamp_seconds", &[]) > 0.0);
}

#[test]
fn a_missing_node_is_retried_until_it_exists() {
    let env = local();
    let name = "n-late";
    let agent = Agent::start(env.kube(name), fast(), vec![], Some(mains()));
    wait_for("404s counted", WAIT, || {
        (agent.metric(
            "edgeplex_kube_requests_total",
            &[("verb", "get"), ("result", "not_found")],
        ) >= 2.0)
            .then_some(())
    });
    assert!(
        env.0.try_node(name).is_none(),
        "the agent never creates its node"
    );
    env.create_ready_node(name);
    wait_for("labels once the node exists", WAIT, || {
        label(&env.node(name), keys::POWER)
    });
}

#[test]
fn the_active_label_is_reported() {
    let env = local();
    let name = "n-active";
    env.create_ready_node(name);
    let agent = Agent::start(env.kube(name), fast(), vec![], None);
    wait_for("synced", WAIT, || {
        condition(&env.node(name), keys::DEVICE_FAILURE)
    });
    assert_eq!(agent.metric("edgeplex_node_active", &[]), 0.0);
    env.0.apply_as(
        "edgeplex-failover",
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": {keys::ACTIVE: "true"}}}),
    );
    wait_for("active gauge", WAIT, || {
        (agent.metric("edgeplex_node_active", &[]) == 1.0).then_some(())
    });
    // The agent's later applies leave the controller's label alone.
    agent.set_streams(vec![stream("cam0", "camera", true, None)]);
    wait_for("camera label", WAIT, || {
        label(&env.node(name), keys::CAMERA)
    });
    assert_eq!(
        label(&env.node(name), keys::ACTIVE).as_deref(),
        Some("true")
    );
    // The admin's role label is read and reported, one series at a time.
    assert_eq!(
        agent.metric("edgeplex_node_role_info", &[("role", "")]),
        1.0
    );
    env.0.apply_as(
        "admin",
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": {keys::ROLE: "backup"}}}),
    );
    wait_for("role gauge", WAIT, || {
        (agent.metric("edgeplex_node_role_info", &[("role", "backup")]) == 1.0).then_some(())
    });
    assert_eq!(
        agent.metric("edgeplex_node_role_info", &[("role", "")]),
        0.0,
        "the old role's series is gone"
    );
}

#[test]
fn standalone_mode_starts_nothing() {
    let server = TestApiServer::start();
    let registry = prometheus::Registry::new();
    let shutdown = Shutdown::default();
    for kube in [
        KubeSettings {
            mode: KubeMode::Off,
            ..Default::default()
        },
        KubeSettings {
            mode: KubeMode::Auto,
            kubeconfig: "/nonexistent/kubeconfig".into(),
            node_name: "n".into(),
            ..Default::default()
        },
    ] {
        let started = node::start(
            &kube,
            fast(),
            Inputs::from_fn(Vec::new),
            &registry,
            &shutdown,
        )
        .expect("standalone is not an error");
        assert!(started.is_none(), "{kube:?}");
    }
    let bad = KubeSettings {
        mode: KubeMode::Kubeconfig,
        kubeconfig: "/nonexistent/kubeconfig".into(),
        node_name: "n".into(),
        ..Default::default()
    };
    let e = node::start(
        &bad,
        fast(),
        Inputs::from_fn(Vec::new),
        &prometheus::Registry::new(),
        &shutdown,
    )
    .expect_err("an explicit kubeconfig must exist");
    assert!(e.to_string().contains("kube.kubeconfig"), "{e}");
    assert!(server.requests().is_empty());
}

// ---------------------------------------------------------------------------------------
// Against a real cluster (EDGEPLEX_TEST_KUBECONFIG)

mod real {
    use super::*;
    use k8s_openapi::api::coordination::v1::Lease;
    use k8s_openapi::api::core::v1::{Namespace, Node};
    use kube::api::{
        Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, PostParams,
    };

    pub struct Real {
        rt: tokio::runtime::Runtime,
        client: kube::Client,
        kubeconfig: PathBuf,
        ns: String,
    }

    impl Real {
        pub fn from_env() -> Option<Real> {
            let Some(path) = std::env::var_os("EDGEPLEX_TEST_KUBECONFIG") else {
                eprintln!("skipping: set EDGEPLEX_TEST_KUBECONFIG to a cluster-admin kubeconfig");
                return None;
            };
            Some(Real::connect(PathBuf::from(path)))
        }

        /// Connect through the kubeconfig at `path` and create this run's namespace.
        pub fn connect(path: PathBuf) -> Real {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            let kube = KubeSettings {
                mode: KubeMode::Kubeconfig,
                kubeconfig: PathBuf::from(&path),
                ..Default::default()
            };
            let client = rt
                .block_on(edgeplex::kube::connect_as(&kube, "edgeplex-test"))
                .expect("connect")
                .expect("a client");
            let ns = format!("edgeplex-test-{}", std::process::id());
            let obj: Namespace =
                serde_json::from_value(json!({"metadata": {"name": ns}})).expect("namespace");
            let api: Api<Namespace> = Api::all(client.clone());
            let _ = rt.block_on(api.create(&PostParams::default(), &obj));
            Real {
                rt,
                client,
                kubeconfig: path,
                ns,
            }
        }

        fn nodes(&self) -> Api<DynamicObject> {
            Api::all_with(self.client.clone(), &ApiResource::erase::<Node>(&()))
        }

        pub fn name(&self, scenario: &str) -> String {
            format!("edgeplex-test-{}-{scenario}", std::process::id())
        }
    }

    impl Drop for Real {
        fn drop(&mut self) {
            let api: Api<Namespace> = Api::all(self.client.clone());
            let _ = self
                .rt
                .block_on(api.delete(&self.ns, &DeleteParams::default()));
        }
    }

    impl Env for Real {
        fn kube(&self, name: &str) -> KubeSettings {
            KubeSettings {
                mode: KubeMode::Kubeconfig,
                kubeconfig: self.kubeconfig.clone(),
                node_name: name.into(),
                lease_namespace: self.ns.clone(),
                ..Default::default()
            }
        }

        fn create_ready_node(&self, name: &str) {
            let node: DynamicObject = serde_json::from_value(
                json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}}),
            )
            .expect("node");
            self.rt
                .block_on(self.nodes().create(&PostParams::default(), &node))
                .expect("create node");
            self.apply_as(
                "kubelet",
                true,
                json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
                       "status": {"conditions": [{"type": "Ready", "status": "True",
                         "reason": "KubeletReady", "message": "test node"}]}}),
            );
            self.apply_as(
                "kubelet",
                false,
                json!({"apiVersion": "v1", "kind": "Node",
                       "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}}}),
            );
        }

        fn apply_as(&self, manager: &str, status: bool, obj: Value) {
            let name = obj["metadata"]["name"].as_str().expect("name").to_owned();
            let pp = PatchParams::apply(manager).force();
            let nodes = self.nodes();
            let r = if status {
                self.rt
                    .block_on(nodes.patch_status(&name, &pp, &Patch::Apply(&obj)))
            } else {
                self.rt
                    .block_on(nodes.patch(&name, &pp, &Patch::Apply(&obj)))
            };
            r.expect("apply");
        }

        fn add_taint_as(&self, manager: &str, node: &str, taint: Value) {
            for _ in 0..10 {
                let mut n = self.rt.block_on(self.nodes().get(node)).expect("get node");
                n.metadata.managed_fields = None;
                let mut t = taints(&serde_json::to_value(&n).expect("json"));
                t.push(taint.clone());
                n.data["spec"]["taints"] = Value::Array(t);
                let pp = PostParams {
                    field_manager: Some(manager.into()),
                    ..Default::default()
                };
                match self.rt.block_on(self.nodes().replace(node, &pp, &n)) {
                    Ok(_) => return,
                    Err(kube::Error::Api(s)) if s.code == 409 => continue,
                    Err(e) => panic!("add taint: {e}"),
                }
            }
            panic!("add taint: too many conflicts");
        }

        fn cordon(&self, node: &str) {
            let pp = PatchParams {
                field_manager: Some("kubectl".into()),
                ..Default::default()
            };
            let patch = json!({"spec": {"unschedulable": true}});
            self.rt
                .block_on(self.nodes().patch(node, &pp, &Patch::Merge(&patch)))
                .expect("cordon");
        }

        fn node(&self, name: &str) -> Value {
            let n = self.rt.block_on(self.nodes().get(name)).expect("get node");
            serde_json::to_value(n).expect("json")
        }

        fn lease(&self, name: &str) -> Option<Value> {
            let api: Api<Lease> = Api::namespaced(self.client.clone(), &self.ns);
            let l = self.rt.block_on(api.get_opt(name)).expect("get lease")?;
            Some(serde_json::to_value(l).expect("json"))
        }

        fn remove_node(&self, name: &str) {
            let _ = self
                .rt
                .block_on(self.nodes().delete(name, &DeleteParams::default()));
        }

        fn controller_taint(&self) -> Value {
            // The real node controller reconciles its own keys; a stand-in it leaves alone.
            json!({"key": "example.com/controller-owned", "effect": "NoExecute"})
        }
    }
}

/// The real-cluster path itself (node creation, namespaces, kubelet stand-in, cleanup through
/// `kube::Client`) runs in every test run, against the test API server, so the `#[ignore]`d
/// tests below are known to work up to the cluster they are pointed at.
#[test]
fn the_real_cluster_scenarios_run_against_the_test_server() {
    let server = TestApiServer::start();
    {
        let env = real::Real::connect(server.kubeconfig_path().to_path_buf());
        scenario_labels(&env, &env.name("labels"));
        scenario_conditions(&env, &env.name("conditions"));
        scenario_taint(&env, &env.name("taint"), || {});
        scenario_lease(&env, &env.name("lease"));
    }
    // Cleanup: the run's namespace is gone (nodes are removed by the scenarios).
    let ns = format!("edgeplex-test-{}", std::process::id());
    assert!(
        server.object("namespaces", "", &ns).is_none(),
        "the test namespace {ns} was left behind"
    );
}

#[test]
#[ignore = "needs a cluster: EDGEPLEX_TEST_KUBECONFIG"]
fn real_cluster_labels() {
    if let Some(env) = real::Real::from_env() {
        scenario_labels(&env, &env.name("labels"));
    }
}

#[test]
#[ignore = "needs a cluster: EDGEPLEX_TEST_KUBECONFIG"]
fn real_cluster_conditions() {
    if let Some(env) = real::Real::from_env() {
        scenario_conditions(&env, &env.name("conditions"));
    }
}

#[test]
#[ignore = "needs a cluster: EDGEPLEX_TEST_KUBECONFIG"]
fn real_cluster_taint() {
    if let Some(env) = real::Real::from_env() {
        scenario_taint(&env, &env.name("taint"), || {});
    }
}

#[test]
#[ignore = "needs a cluster: EDGEPLEX_TEST_KUBECONFIG"]
fn real_cluster_lease() {
    if let Some(env) = real::Real::from_env() {
        scenario_lease(&env, &env.name("lease"));
    }
}

// ---------------------------------------------------------------------------------------
// The test API server's own semantics, through the real client

mod api_server {
    use super::*;
    use k8s_openapi::api::coordination::v1::Lease;
    use k8s_openapi::api::core::v1::{Node, Pod};
    use kube::api::{Api, EvictParams, ListParams, Patch, PatchParams, PostParams};

    async fn client(server: &TestApiServer) -> kube::Client {
        let kube = KubeSettings {
            mode: KubeMode::Kubeconfig,
            kubeconfig: server.kubeconfig_path().to_path_buf(),
            ..Default::default()
        };
        edgeplex::kube::connect(&kube)
            .await
            .expect("connect")
            .expect("client")
    }

    fn code(e: kube::Error) -> (u16, String) {
        match e {
            kube::Error::Api(s) => (s.code, s.reason),
            e => panic!("not an API error: {e}"),
        }
    }

    fn node_labels(name: &str, labels: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels}})
    }

    #[tokio::test]
    async fn apply_owns_labels_per_key_and_reports_conflicts() {
        let server = TestApiServer::start();
        server.create_ready_node("n1");
        let nodes: Api<Node> = Api::all(client(&server).await);
        let apply = |m: &str| PatchParams::apply(m);
        let p = node_labels("n1", json!({"a": "1", "b": "1"}));
        nodes
            .patch("n1", &apply("A"), &Patch::Apply(&p))
            .await
            .expect("A");
        let p = node_labels("n1", json!({"c": "1"}));
        nodes
            .patch("n1", &apply("B"), &Patch::Apply(&p))
            .await
            .expect("B");
        let p = node_labels("n1", json!({"a": "1"}));
        nodes
            .patch("n1", &apply("A"), &Patch::Apply(&p))
            .await
            .expect("A drops b");
        assert_eq!(server.label("n1", "b"), None);
        assert_eq!(server.label("n1", "c").as_deref(), Some("1"));
        assert_eq!(
            server.label("n1", "kubernetes.io/hostname").as_deref(),
            Some("n1")
        );
        let p = node_labels("n1", json!({"a": "2"}));
        let e = nodes
            .patch("n1", &apply("B"), &Patch::Apply(&p))
            .await
            .expect_err("conflict");
        let kube::Error::Api(s) = e else {
            panic!("api error")
        };
        assert_eq!((s.code, s.reason.as_str()), (409, "Conflict"));
        assert!(s.message.contains(".metadata.labels.a"), "{}", s.message);
        nodes
            .patch("n1", &apply("B").force(), &Patch::Apply(&p))
            .await
            .expect("forced");
        let p = node_labels("n1", json!({}));
        nodes
            .patch("n1", &apply("A"), &Patch::Apply(&p))
            .await
            .expect("A lets go");
        assert_eq!(
            server.label("n1", "a").as_deref(),
            Some("2"),
            "B owns it now"
        );
        // A no-op apply does not bump the resourceVersion.
        let rv = server.resource_version();
        nodes
            .patch("n1", &apply("A"), &Patch::Apply(&p))
            .await
            .expect("again");
        assert_eq!(server.resource_version(), rv);
        // Label values cannot hold '/'.
        let p = node_labels("n1", json!({"dev": "/dev/video0"}));
        let e = nodes
            .patch("n1", &apply("A"), &Patch::Apply(&p))
            .await
            .expect_err("invalid");
        assert_eq!(code(e).0, 422);
        // Apply needs a field manager.
        let e = nodes
            .patch("n1", &PatchParams::default(), &Patch::Apply(&p))
            .await
            .expect_err("no manager");
        assert_eq!(code(e).0, 400);
    }

    #[tokio::test]
    async fn conditions_merge_by_type_and_status_ignores_spec() {
        let server = TestApiServer::start();
        server.create_ready_node("n1");
        let nodes: Api<Node> = Api::all(client(&server).await);
        let pp = PatchParams::apply("edgeplex");
        let conds = |types: &[&str]| {
            let cs: Vec<Value> = types
                .iter()
                .map(|t| {
                    json!({"type": t, "status": "False", "reason": "R", "message": "m",
                                "lastTransitionTime": "2025-01-01T00:00:00.123Z"})
                })
                .collect();
            json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"},
                   "spec": {"unschedulable": true}, "status": {"conditions": cs}})
        };
        nodes
            .patch_status("n1", &pp, &Patch::Apply(&conds(&["X", "Y"])))
            .await
            .expect("X Y");
        let x = server.condition("n1", "X").expect("X");
        assert_eq!(
            x["lastTransitionTime"], "2025-01-01T00:00:00Z",
            "truncated to seconds"
        );
        nodes
            .patch_status("n1", &pp, &Patch::Apply(&conds(&["Y"])))
            .await
            .expect("Y");
        assert!(server.condition("n1", "X").is_none(), "no longer asserted");
        assert!(server.condition("n1", "Y").is_some());
        assert!(server.condition("n1", "Ready").is_some(), "the kubelet's");
        assert!(
            server.node("n1")["spec"].get("unschedulable").is_none(),
            "status ignores spec"
        );
        // And the main resource ignores status.
        let p = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"},
                       "status": {"conditions": [{"type": "Z", "status": "True"}]}});
        nodes
            .patch("n1", &PatchParams::apply("x"), &Patch::Apply(&p))
            .await
            .expect("main");
        assert!(server.condition("n1", "Z").is_none());
    }

    #[tokio::test]
    async fn taints_are_an_atomic_list() {
        let server = TestApiServer::start();
        server.create_ready_node("n1");
        server.add_taint_as(
            "node-controller",
            "n1",
            json!({"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"}),
        );
        let nodes: Api<Node> = Api::all(client(&server).await);
        let ours = json!({"key": "edgeplex.io/failover", "effect": "NoExecute"});
        let p = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"},
                       "spec": {"taints": [ours]}});
        // Without force: the node controller owns the list.
        let e = nodes
            .patch("n1", &PatchParams::apply("edgeplex"), &Patch::Apply(&p))
            .await
            .expect_err("conflict");
        assert_eq!(code(e).0, 409);
        // With force, or by merge patch, the whole list is replaced: the bite README.md's Kubernetes section warns of.
        nodes
            .patch(
                "n1",
                &PatchParams::apply("edgeplex").force(),
                &Patch::Apply(&p),
            )
            .await
            .expect("forced");
        assert_eq!(server.taints("n1"), vec![ours.clone()]);
        server.add_taint_as(
            "node-controller",
            "n1",
            json!({"key": "k", "effect": "NoSchedule"}),
        );
        let m = json!({"spec": {"taints": [ours]}});
        nodes
            .patch("n1", &PatchParams::default(), &Patch::Merge(&m))
            .await
            .expect("merge");
        assert_eq!(server.taints("n1").len(), 1);
    }

    #[tokio::test]
    async fn preconditions_json_patch_and_put() {
        let server = TestApiServer::start();
        server.create_ready_node("n1");
        let c = client(&server).await;
        let nodes: Api<Node> = Api::all(c.clone());
        let rv = server.node("n1")["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .to_owned();
        // JSON patch with a `test` op (raw: kube's Patch::Json needs its jsonpatch feature).
        let json_patch = |rv: &str| {
            let ops = json!([
                {"op": "test", "path": "/metadata/resourceVersion", "value": rv},
                {"op": "add", "path": "/spec/taints", "value": [{"key": "a", "effect": "NoSchedule"}]}
            ]);
            hyper::Request::builder()
                .method("PATCH")
                .uri("/api/v1/nodes/n1?fieldManager=test")
                .header("content-type", "application/json-patch+json")
                .body(ops.to_string().into_bytes())
                .expect("request")
        };
        let e = c.request_text(json_patch("1")).await.expect_err("stale");
        assert_eq!(code(e), (422, "Invalid".into()));
        c.request_text(json_patch(&rv)).await.expect("fresh");
        assert_eq!(server.taints("n1").len(), 1);
        // Merge patch with a stale resourceVersion: 409.
        let m = json!({"metadata": {"resourceVersion": rv, "labels": {"x": "y"}}});
        let e = nodes
            .patch("n1", &PatchParams::default(), &Patch::Merge(&m))
            .await
            .expect_err("stale");
        assert_eq!(code(e), (409, "Conflict".into()));
        // PUT: stale is 409, none is unconditional for nodes.
        let mut n = nodes.get("n1").await.expect("get");
        n.metadata.resource_version = Some(rv.clone());
        let e = nodes
            .replace("n1", &PostParams::default(), &n)
            .await
            .expect_err("stale");
        assert_eq!(code(e).0, 409);
        n.metadata.resource_version = None;
        nodes
            .replace("n1", &PostParams::default(), &n)
            .await
            .expect("unconditional");
        let e = nodes.get("ghost").await.expect_err("missing");
        assert_eq!(code(e), (404, "NotFound".into()));
        // Leases: PUT needs a resourceVersion (422), creates a missing lease.
        let leases: Api<Lease> = Api::namespaced(c.clone(), "edgeplex");
        let l: Lease = serde_json::from_value(json!({"metadata": {"name": "l1"},
            "spec": {"holderIdentity": "a", "leaseDurationSeconds": 10,
                     "renewTime": "2025-01-01T00:00:00.123456789Z"}}))
        .unwrap();
        let created = leases
            .replace("l1", &PostParams::default(), &l)
            .await
            .expect("create on update");
        let stored = server.lease("edgeplex", "l1").expect("lease");
        assert_eq!(
            stored["spec"]["renewTime"], "2025-01-01T00:00:00.123456Z",
            "MicroTime"
        );
        let e = leases
            .replace("l1", &PostParams::default(), &l)
            .await
            .expect_err("no rv");
        assert_eq!(code(e).0, 422);
        leases
            .replace("l1", &PostParams::default(), &created)
            .await
            .expect("with rv");
        let e = leases
            .create(&PostParams::default(), &l)
            .await
            .expect_err("exists");
        assert_eq!(code(e), (409, "AlreadyExists".into()));
        let elsewhere: Api<Lease> = Api::namespaced(c, "nowhere");
        let e = elsewhere
            .create(&PostParams::default(), &l)
            .await
            .expect_err("no namespace");
        assert_eq!(code(e).0, 404);
    }

    #[tokio::test]
    async fn pods_by_node_eviction_and_events() {
        let server = TestApiServer::start();
        for (name, node) in [("a", "n1"), ("b", "n2"), ("c", "n1")] {
            server
                .create(json!({"apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": name, "namespace": "default", "labels": {"app": "x"}},
                    "spec": {"nodeName": node, "containers": [{"name": "c", "image": "i"}]}}))
                .expect("pod");
        }
        let c = client(&server).await;
        let all: Api<Pod> = Api::all(c.clone());
        let on_n1 = all
            .list(&ListParams::default().fields("spec.nodeName=n1"))
            .await
            .expect("list");
        let mut names: Vec<_> = on_n1
            .items
            .iter()
            .filter_map(|p| p.metadata.name.clone())
            .collect();
        names.sort();
        assert_eq!(names, ["a", "c"]);
        let e = all
            .list(&ListParams::default().fields("spec.bogus=1"))
            .await
            .expect_err("unsupported");
        assert_eq!(code(e).0, 400);
        let sel = all
            .list(&ListParams::default().labels("app=x,app notin (y)"))
            .await
            .expect("labels");
        assert_eq!(sel.items.len(), 3);
        let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
        pods.evict("a", &EvictParams::default())
            .await
            .expect("evict");
        assert!(server.object("pods", "default", "a").is_none());
        let e = pods
            .evict("a", &EvictParams::default())
            .await
            .expect_err("gone");
        assert_eq!(code(e).0, 404);
        // kube's event recorder (events.k8s.io/v1).
        let recorder = kube::runtime::events::Recorder::new(c, "edgeplex-failover".into());
        let node_ref = k8s_openapi::api::core::v1::ObjectReference {
            kind: Some("Node".into()),
            name: Some("n1".into()),
            api_version: Some("v1".into()),
            ..Default::default()
        };
        let ev = kube::runtime::events::Event {
            type_: kube::runtime::events::EventType::Warning,
            reason: "NoHealthyBackup".into(),
            note: Some("group line-1 has no healthy backup".into()),
            action: "Failover".into(),
            secondary: None,
        };
        recorder.publish(&ev, &node_ref).await.expect("publish");
        recorder
            .publish(&ev, &node_ref)
            .await
            .expect("publish again (a series)");
        let events = server.events();
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(events[0]["reason"], "NoHealthyBackup");
        assert_eq!(events[0]["series"]["count"], 2);
    }

    #[tokio::test]
    async fn watches_stream_changes() {
        use futures::StreamExt;
        let server = TestApiServer::start();
        server.create_ready_node("n1");
        let nodes: Api<Node> = Api::all(client(&server).await);
        let mut stream = Box::pin(kube::runtime::watcher(nodes, Default::default()));
        let cluster = server.cluster();
        // The change comes once the watcher has listed and started watching (from the list's
        // resourceVersion), so it arrives as a watch event, not in the initial list.
        std::thread::spawn(move || {
            crate::common::wait_until("the watcher's watch request", || {
                cluster
                    .requests()
                    .iter()
                    .any(|r| r.query.split('&').any(|kv| kv == "watch=true"))
            });
            cluster.apply_as("admin", node_labels("n1", json!({"seen": "yes"})));
        });
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let ev = tokio::time::timeout_at(deadline, stream.next())
                .await
                .expect("an event before the deadline")
                .expect("the stream goes on")
                .expect("no watch error");
            if let kube::runtime::watcher::Event::Apply(n) = ev {
                if n.metadata
                    .labels
                    .unwrap_or_default()
                    .get("seen")
                    .map(String::as_str)
                    == Some("yes")
                {
                    break;
                }
            }
        }
    }
}
