//! The failover controller against the in-process test API server, through the real
//! `kube::Client` built from its kubeconfig.
//!
//! The tests play the agents (heartbeat Leases, conditions, taints), the kubelet and the admin
//! through the server's helpers, and run one or two controllers as tokio tasks with short
//! intervals (agent Lease 2 s, poll 100 ms, leader Lease 1 s). Every wait is bounded by a
//! generous deadline; no test asserts a duration. The handover times are printed (run with
//! `--nocapture` to see them) as figures against the ~6 minutes of default Kubernetes.

mod common;
mod kube_api;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use edgeplex::failover::{Controller, FailoverMetrics, FailoverSettings};
use edgeplex::kube::{KubeMode, KubeSettings};
use edgeplex::shutdown::Shutdown;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube_api::{wait_active, wait_for_async, wait_rounds, Cluster, TestApiServer};
use prometheus::Registry;
use serde_json::{json, Value};

const NS: &str = "edgeplex";
const LEASES: &str = "leases.coordination.k8s.io";
const TAINT: &str = "edgeplex.io/failover";
/// The agents' Lease duration in these tests.
const AGENT_LEASE_SECS: i64 = 2;
/// Watchdog for every wait: generous, only to fail a hang.
const DEADLINE: Duration = Duration::from_secs(30);

fn settings() -> FailoverSettings {
    FailoverSettings {
        lease_duration_secs: 1.0,
        renew_interval_secs: 0.1,
        renew_deadline_secs: 0.6,
        poll_interval_secs: 0.1,
        untaint_after_secs: 1.0,
        agent_lease_duration_secs: AGENT_LEASE_SECS as f64,
        metrics_listen: edgeplex::config::values::Listen::OFF,
        ..FailoverSettings::default()
    }
}

fn kube_settings(server: &TestApiServer) -> KubeSettings {
    KubeSettings {
        mode: KubeMode::Kubeconfig,
        kubeconfig: server.kubeconfig_path().to_owned(),
        request_timeout_secs: 5.0,
        ..KubeSettings::default()
    }
}

/// A controller running as a tokio task.
struct Running {
    identity: String,
    registry: Registry,
    shutdown: Shutdown,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    async fn start(server: &TestApiServer, identity: &str) -> Running {
        let s = settings();
        s.validate("").expect("test settings are valid");
        let kube = kube_settings(server);
        let client = edgeplex::kube::connect_as(&kube, "edgeplex-failover")
            .await
            .expect("client")
            .expect("a cluster");
        let registry = Registry::new();
        let metrics = FailoverMetrics::register(&registry).expect("metrics");
        let shutdown = Shutdown::default();
        let controller = Controller::new(client, s, kube, identity.to_owned(), metrics);
        let task = tokio::spawn(controller.run(shutdown.clone()));
        Running {
            identity: identity.to_owned(),
            registry,
            shutdown,
            task,
        }
    }

    /// The value of a sample, e.g. `edgeplex_failover_leader` or
    /// `edgeplex_failover_handovers_total{group="g",reason="dead"}`; 0 when absent.
    fn metric(&self, sample: &str) -> f64 {
        metric(&self.registry, sample)
    }

    async fn stop(self) {
        self.shutdown.trigger();
        tokio::time::timeout(DEADLINE, self.task)
            .await
            .expect("the controller stops on shutdown")
            .expect("the controller task does not panic");
    }
}

fn metric(registry: &Registry, sample: &str) -> f64 {
    common::prom::value(&edgeplex::metrics::encode(registry), sample).unwrap_or(0.0)
}

/// An agent's heartbeat: renews Lease `edgeplex/<node>` every 200 ms until stopped.
struct Heartbeat {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Instant>>,
}

fn renew_time() -> Value {
    serde_json::to_value(MicroTime(k8s_openapi::jiff::Timestamp::now())).expect("MicroTime")
}

impl Heartbeat {
    fn start(cluster: &Cluster, node: &str) -> Heartbeat {
        if cluster.lease(NS, node).is_none() {
            cluster
                .create(json!({
                    "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": node, "namespace": NS},
                    "spec": {"holderIdentity": node, "leaseDurationSeconds": AGENT_LEASE_SECS,
                             "renewTime": renew_time()},
                }))
                .expect("create the agent Lease");
        }
        let stop = Arc::new(AtomicBool::new(false));
        let (c, n, s) = (cluster.clone(), node.to_owned(), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            let mut last = Instant::now();
            while !s.load(Ordering::Relaxed) {
                c.update_as("edgeplex", LEASES, NS, &n, None, |l| {
                    l["spec"]["renewTime"] = renew_time();
                });
                last = Instant::now();
                std::thread::sleep(Duration::from_millis(200));
            }
            last
        });
        Heartbeat {
            stop,
            thread: Some(thread),
        }
    }

    /// Stop renewing (the agent dies); returns the time of the last renewal.
    fn stop(mut self) -> Instant {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .map(|t| t.join().expect("heartbeat thread"))
            .unwrap_or_else(Instant::now)
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The agent sets (or clears) a condition on its node.
fn set_condition(cluster: &Cluster, node: &str, type_: &str, on: bool) {
    cluster.apply_status_as(
        "edgeplex",
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": node},
               "status": {"conditions": [{"type": type_,
                 "status": if on { "True" } else { "False" },
                 "reason": if on { "Critical" } else { "Normal" }, "message": "test",
                 "lastHeartbeatTime": null,
                 "lastTransitionTime": "2025-01-01T00:00:00Z"}]}}),
    );
}

fn leader_holder(cluster: &Cluster) -> Option<String> {
    cluster
        .lease(NS, "edgeplex-failover")?
        .pointer("/spec/holderIdentity")?
        .as_str()
        .map(str::to_owned)
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

#[tokio::test]
async fn leader_election_one_acts_and_the_standby_takes_over() {
    let server = TestApiServer::start();
    let c = server.cluster();
    let nodes = ["p", "b"];
    c.create_group_node("p", "g", "primary");
    c.create_group_node("b", "g", "backup");
    let _hp = Heartbeat::start(&c, "p");
    let _hb = Heartbeat::start(&c, "b");

    let a = Running::start(&server, "ctl-a").await;
    let b = Running::start(&server, "ctl-b").await;
    wait_active(&c, &nodes, "p", DEADLINE).await;
    let holder = wait_for_async("a leader", DEADLINE, || leader_holder(&c)).await;
    let (leader, standby) = if holder == a.identity { (a, b) } else { (b, a) };
    wait_for_async("the leader metric", DEADLINE, || {
        (leader.metric("edgeplex_failover_leader") == 1.0).then_some(())
    })
    .await;
    // Only one acts: the standby reports no leadership and no active node, and every event
    // comes from the leader.
    wait_rounds(&c, 10, DEADLINE).await;
    assert_eq!(leader_holder(&c).as_deref(), Some(leader.identity.as_str()));
    assert_eq!(standby.metric("edgeplex_failover_leader"), 0.0);
    assert_eq!(
        standby.metric("edgeplex_failover_active_node{group=\"g\",node=\"p\"}"),
        0.0
    );
    assert_eq!(
        leader.metric("edgeplex_failover_active_node{group=\"g\",node=\"p\"}"),
        1.0
    );
    let activated = c.events_with_reason("Activated");
    assert_eq!(activated.len(), 1, "{activated:#?}");
    assert_eq!(activated[0]["reportingInstance"], leader.identity.as_str());
    assert_eq!(activated[0]["involvedObject"]["name"], "p");

    // The leader stops (SIGTERM): it releases the Lease and the standby takes over.
    let old = leader.identity.clone();
    leader.stop().await;
    let released = Instant::now();
    wait_for_async("the standby to lead", DEADLINE, || {
        (leader_holder(&c).as_deref() == Some(standby.identity.as_str())
            && standby.metric("edgeplex_failover_leader") == 1.0)
            .then_some(())
    })
    .await;
    eprintln!(
        "leader handover after a clean stop: {} ms",
        ms(released.elapsed())
    );
    assert_ne!(standby.identity, old);
    // The new leader acts: the primary goes critical and it hands over.
    set_condition(&c, "p", "BatteryCritical", true);
    wait_active(&c, &nodes, "b", DEADLINE).await;
    let failed_over = wait_for_async("a FailedOver event", DEADLINE, || {
        let e = c.events_with_reason("FailedOver");
        (!e.is_empty()).then_some(e)
    })
    .await;
    assert_eq!(failed_over.len(), 1, "{failed_over:#?}");
    assert_eq!(
        failed_over[0]["reportingInstance"],
        standby.identity.as_str()
    );
    wait_for_async("the handover count", DEADLINE, || {
        (standby
            .metric("edgeplex_failover_handovers_total{group=\"g\",reason=\"battery_critical\"}")
            == 1.0)
            .then_some(())
    })
    .await;
    standby.stop().await;
    // Both stopped: the Lease is released.
    assert_eq!(leader_holder(&c), None);
}

#[tokio::test]
async fn a_crashed_leader_is_replaced_after_the_lease_duration() {
    let server = TestApiServer::start();
    let c = server.cluster();
    c.create_group_node("p", "g", "primary");
    let _hp = Heartbeat::start(&c, "p");
    let a = Running::start(&server, "ctl-a").await;
    wait_for_async("ctl-a to lead", DEADLINE, || {
        (leader_holder(&c).as_deref() == Some("ctl-a")).then_some(())
    })
    .await;
    let b = Running::start(&server, "ctl-b").await;
    wait_rounds(&c, 5, DEADLINE).await;
    assert_eq!(leader_holder(&c).as_deref(), Some("ctl-a"));
    assert_eq!(b.metric("edgeplex_failover_leader"), 0.0);
    // Crash: no release. ctl-b must wait out the Lease duration, then take over.
    a.task.abort();
    let crashed = Instant::now();
    wait_for_async("ctl-b to lead", DEADLINE, || {
        (leader_holder(&c).as_deref() == Some("ctl-b")
            && b.metric("edgeplex_failover_leader") == 1.0)
            .then_some(())
    })
    .await;
    eprintln!(
        "leader handover after a crash (Lease 1 s): {} ms",
        ms(crashed.elapsed())
    );
    let lease = c.lease(NS, "edgeplex-failover").expect("leader Lease");
    assert_eq!(lease["spec"]["leaseTransitions"], 1, "{lease:#}");
    b.stop().await;
}

#[tokio::test]
async fn critical_primary_hands_over_to_the_healthy_backup_and_keeps_it() {
    let server = TestApiServer::start();
    let c = server.cluster();
    let nodes = ["p", "b1", "b2"];
    c.create_group_node("p", "g", "primary");
    c.create_group_node("b1", "g", "backup");
    c.create_group_node("b2", "g", "backup");
    // b1 is tainted by its own agent: not a healthy backup, so b2 must be picked.
    c.add_taint_as(
        "edgeplex",
        "b1",
        json!({"key": TAINT, "effect": "NoExecute", "value": "battery"}),
    );
    let _hs: Vec<Heartbeat> = nodes.iter().map(|n| Heartbeat::start(&c, n)).collect();
    let ctl = Running::start(&server, "ctl").await;
    wait_active(&c, &nodes, "p", DEADLINE).await;
    wait_rounds(&c, 5, DEADLINE).await;

    set_condition(&c, "p", "BatteryCritical", true);
    let declared = Instant::now();
    let seen = wait_active(&c, &nodes, "b2", DEADLINE).await;
    eprintln!(
        "handover after BatteryCritical=True: {} ms (poll 100 ms)",
        ms(seen - declared)
    );
    wait_for_async("the handover count", DEADLINE, || {
        (ctl.metric("edgeplex_failover_handovers_total{group=\"g\",reason=\"battery_critical\"}")
            == 1.0
            && ctl.metric("edgeplex_failover_active_node{group=\"g\",node=\"b2\"}") == 1.0)
            .then_some(())
    })
    .await;
    // A critical (not dead) node is left to its agent: the controller does not taint it.
    assert!(c.taints("p").is_empty(), "{:?}", c.taints("p"));
    // The label was written by the controller's field manager only.
    let node = c.node("b2");
    let managers: Vec<&str> = node["metadata"]["managedFields"]
        .as_array()
        .map(|m| m.iter().filter_map(|f| f["manager"].as_str()).collect())
        .unwrap_or_default();
    assert!(managers.contains(&"edgeplex-failover"), "{managers:?}");

    // The primary recovers: it does not take `active` back (no flapping).
    set_condition(&c, "p", "BatteryCritical", false);
    wait_rounds(&c, 20, DEADLINE).await;
    assert_eq!(c.active_nodes(&nodes), ["b2"]);
    assert_eq!(
        ctl.metric("edgeplex_failover_handovers_total{group=\"g\",reason=\"battery_critical\"}"),
        1.0
    );
    // Only when the active backup fails does it move again, to the (healthy) primary.
    set_condition(&c, "b2", "DeviceFailure", true);
    wait_active(&c, &nodes, "p", DEADLINE).await;
    wait_for_async("the second handover count", DEADLINE, || {
        (ctl.metric("edgeplex_failover_handovers_total{group=\"g\",reason=\"device_failure\"}")
            == 1.0)
            .then_some(())
    })
    .await;
    ctl.stop().await;
}

#[tokio::test]
async fn dead_primary_is_replaced_and_tainted_keeping_other_taints() {
    let server = TestApiServer::start();
    let c = server.cluster();
    let nodes = ["p", "b"];
    c.create_group_node("p", "g", "primary");
    c.create_group_node("b", "g", "backup");
    // Taints the controller must keep: an admin's and the node lifecycle controller's.
    c.add_taint_as(
        "admin",
        "p",
        json!({"key": "dedicated", "value": "cameras", "effect": "NoSchedule"}),
    );
    let hp = Heartbeat::start(&c, "p");
    let _hb = Heartbeat::start(&c, "b");
    let ctl = Running::start(&server, "ctl").await;
    wait_active(&c, &nodes, "p", DEADLINE).await;
    wait_rounds(&c, 5, DEADLINE).await;

    // A concurrent writer: right before the controller's second PATCH of p (the first clears
    // `active`, the second is the taint), the node controller adds its own taint. The
    // controller's write then carries a stale resourceVersion, gets 409, and must retry.
    c.before_next("PATCH", "/api/v1/nodes/p", |c| {
        c.before_next("PATCH", "/api/v1/nodes/p", |c| {
            c.add_taint_as(
                "node-controller",
                "p",
                json!({"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"}),
            );
        });
    });
    let last_heartbeat = hp.stop();
    let seen = wait_active(&c, &nodes, "b", DEADLINE).await;
    eprintln!(
        "handover after the primary's last heartbeat: {} ms (agent Lease {} s, poll 100 ms)",
        ms(seen - last_heartbeat),
        AGENT_LEASE_SECS
    );
    let taints = wait_for_async("the failover taint on p", DEADLINE, || {
        let t = c.taints("p");
        t.iter().any(|t| t["key"] == TAINT).then_some(t)
    })
    .await;
    eprintln!(
        "dead primary tainted after its last heartbeat: {} ms",
        ms(last_heartbeat.elapsed())
    );
    let has = |key: &str, effect: &str| {
        taints
            .iter()
            .any(|t| t["key"] == key && t["effect"] == effect)
    };
    assert!(has(TAINT, "NoExecute"), "{taints:#?}");
    assert!(taints
        .iter()
        .any(|t| t["key"] == TAINT && t["value"] == "node-dead"));
    assert!(has("dedicated", "NoSchedule"), "{taints:#?}");
    assert!(
        has("node.kubernetes.io/unreachable", "NoExecute"),
        "{taints:#?}"
    );
    assert_eq!(taints.len(), 3, "{taints:#?}");
    assert_eq!(c.hooks_pending(), 0, "both racing writes happened");
    let conflicts = c
        .requests()
        .iter()
        .filter(|r| r.method == "PATCH" && r.path == "/api/v1/nodes/p" && r.status == 409)
        .count();
    assert!(
        conflicts >= 1,
        "the taint write met a conflict and was retried"
    );
    wait_for_async("the handover count", DEADLINE, || {
        (ctl.metric("edgeplex_failover_handovers_total{group=\"g\",reason=\"dead\"}") == 1.0)
            .then_some(())
    })
    .await;
    let failed_over = c.events_with_reason("FailedOver");
    assert_eq!(failed_over.len(), 1, "{failed_over:#?}");
    assert_eq!(failed_over[0]["type"], "Warning");
    assert_eq!(failed_over[0]["involvedObject"]["name"], "p");
    // The dead node is not active and keeps its taint; nothing else moves.
    wait_rounds(&c, 5, DEADLINE).await;
    assert_eq!(c.active_nodes(&nodes), ["b"]);
    assert_eq!(c.taints("p").len(), 3);

    // The node comes back: after renewing for `untaint_after` (1 s here) the controller removes
    // its taint, and only its taint. The node is a backup again; `active` stays on b.
    let _hp = Heartbeat::start(&c, "p");
    let taints = wait_for_async("the dead-node taint to go", DEADLINE, || {
        let t = c.taints("p");
        (!t.iter().any(|t| t["key"] == TAINT)).then_some(t)
    })
    .await;
    assert_eq!(taints.len(), 2, "{taints:#?}");
    wait_for_async("a Recovered event", DEADLINE, || {
        (c.events_with_reason("Recovered").len() == 1).then_some(())
    })
    .await;
    wait_rounds(&c, 10, DEADLINE).await;
    assert_eq!(c.active_nodes(&nodes), ["b"]);
    assert_eq!(c.events_with_reason("Recovered").len(), 1);
    wait_for_async(
        "the group to count a healthy backup again",
        DEADLINE,
        || (ctl.metric("edgeplex_failover_groups_without_healthy_backup") == 0.0).then_some(()),
    )
    .await;
    ctl.stop().await;
}

#[tokio::test]
async fn no_healthy_backup_means_no_move_an_event_and_the_metric() {
    let server = TestApiServer::start();
    let c = server.cluster();
    let nodes = ["p", "b"];
    c.create_group_node("p", "g", "primary");
    c.create_group_node("b", "g", "backup");
    // The backup's kubelet reports NotReady.
    c.apply_status_as(
        "kubelet",
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "b"},
               "status": {"conditions": [{"type": "Ready", "status": "False",
                 "reason": "KubeletNotReady", "message": "container runtime is down",
                 "lastHeartbeatTime": null, "lastTransitionTime": "2025-01-01T00:00:00Z"}]}}),
    );
    let _hp = Heartbeat::start(&c, "p");
    let _hb = Heartbeat::start(&c, "b");
    let ctl = Running::start(&server, "ctl").await;
    wait_active(&c, &nodes, "p", DEADLINE).await;
    wait_for_async("the metric to count the group", DEADLINE, || {
        (ctl.metric("edgeplex_failover_groups_without_healthy_backup") == 1.0).then_some(())
    })
    .await;

    set_condition(&c, "p", "BatteryCritical", true);
    let events = wait_for_async("a NoHealthyBackup event", DEADLINE, || {
        let e = c.events_with_reason("NoHealthyBackup");
        (!e.is_empty()).then_some(e)
    })
    .await;
    assert_eq!(events[0]["type"], "Warning");
    assert_eq!(events[0]["involvedObject"]["kind"], "Node");
    assert_eq!(events[0]["involvedObject"]["name"], "p");
    assert_eq!(events[0]["metadata"]["namespace"], NS);
    // Rounds pass: no move, no second event, the metric still says so.
    wait_rounds(&c, 20, DEADLINE).await;
    assert_eq!(c.active_nodes(&nodes), ["p"]);
    assert_eq!(c.events_with_reason("NoHealthyBackup").len(), 1);
    assert_eq!(
        ctl.metric("edgeplex_failover_groups_without_healthy_backup"),
        1.0
    );
    assert_eq!(
        ctl.metric("edgeplex_failover_handovers_total{group=\"g\",reason=\"battery_critical\"}"),
        0.0
    );

    // The backup becomes Ready: now the handover happens.
    c.apply_status_as(
        "kubelet",
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "b"},
               "status": {"conditions": [{"type": "Ready", "status": "True",
                 "reason": "KubeletReady", "message": "ok",
                 "lastHeartbeatTime": null, "lastTransitionTime": "2025-01-01T00:00:01Z"}]}}),
    );
    wait_active(&c, &nodes, "b", DEADLINE).await;
    wait_for_async("the handover count", DEADLINE, || {
        (ctl.metric("edgeplex_failover_handovers_total{group=\"g\",reason=\"battery_critical\"}")
            == 1.0)
            .then_some(())
    })
    .await;
    ctl.stop().await;
}

#[tokio::test]
async fn an_api_outage_does_not_declare_nodes_dead() {
    let server = TestApiServer::start();
    let c = server.cluster();
    let nodes = ["p", "b"];
    c.create_group_node("p", "g", "primary");
    c.create_group_node("b", "g", "backup");
    // The agents renew in-process (they bypass the HTTP outage), but the primary's renewals
    // stop for the outage, as a real agent's would.
    let hp = Heartbeat::start(&c, "p");
    let _hb = Heartbeat::start(&c, "b");
    let ctl = Running::start(&server, "ctl").await;
    wait_active(&c, &nodes, "p", DEADLINE).await;
    wait_rounds(&c, 5, DEADLINE).await;
    let last_renewal = hp.stop();
    c.set_outage(Some(503));
    // The outage outlasts p's Lease: wait until it has expired, then for the controller to fail
    // a few more rounds, so that it has had every chance to misjudge p dead.
    let lease = Duration::from_secs(AGENT_LEASE_SECS as u64);
    wait_for_async("p's Lease to expire during the outage", DEADLINE, || {
        (last_renewal.elapsed() > lease).then_some(())
    })
    .await;
    let answered = |code: u16| c.requests().iter().filter(|r| r.status == code).count();
    let failed = answered(503);
    wait_for_async("3 more failed requests of the controller", DEADLINE, || {
        (answered(503) >= failed + 3).then_some(())
    })
    .await;
    c.set_outage(None);
    // The primary's agent comes back just after the API server: the controller first gets a
    // round in with p's Lease still expired.
    let ok = answered(200);
    wait_for_async(
        "a request of the controller answered after the outage",
        DEADLINE,
        || (answered(200) > ok).then_some(()),
    )
    .await;
    let _hp = Heartbeat::start(&c, "p");
    wait_rounds(&c, 20, DEADLINE).await;
    assert_eq!(c.active_nodes(&nodes), ["p"], "an outage is not a death");
    assert!(c.taints("p").is_empty());
    ctl.stop().await;
}

/// A child process killed if the test fails before it exits.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// The binary: `edgeplex failover` with flags, /metrics on its own port, SIGTERM releases.
#[tokio::test]
async fn the_binary_leads_serves_metrics_and_releases_on_sigterm() {
    let server = TestApiServer::start();
    let c = server.cluster();
    c.create_group_node("p", "g", "primary");
    let _hp = Heartbeat::start(&c, "p");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let mut child = KillOnDrop(
        std::process::Command::new(env!("CARGO_BIN_EXE_edgeplex"))
            .args(["failover", "--identity", "bin", "--lease-duration", "1"])
            .args(["--renew-interval", "0.1", "--renew-deadline", "0.6"])
            .args(["--poll-interval", "0.1", "--agent-lease-duration", "2"])
            .arg("--kubeconfig")
            .arg(server.kubeconfig_path())
            .args(["--metrics-listen", &format!("127.0.0.1:{port}")])
            .env_remove("EDGEPLEX_FAILOVER_CONFIG")
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn edgeplex failover"),
    );
    wait_active(&c, &["p"], "p", DEADLINE).await;
    assert_eq!(leader_holder(&c).as_deref(), Some("bin"));
    let scrape = || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
            .ok()?;
        let mut body = String::new();
        s.read_to_string(&mut body).ok()?;
        Some(body)
    };
    let body = wait_for_async("the leader's metrics on /metrics", DEADLINE, || {
        scrape().filter(|b| {
            b.contains("edgeplex_failover_leader 1")
                && b.contains("edgeplex_failover_active_node{group=\"g\",node=\"p\"} 1")
        })
    })
    .await;
    assert!(body.contains("edgeplex_build_info"), "{body}");
    // User-Agent and field manager name the controller.
    let writes: Vec<_> = c
        .requests()
        .into_iter()
        .filter(|r| r.method == "PATCH" && r.path == "/api/v1/nodes/p")
        .collect();
    assert!(!writes.is_empty());
    assert!(writes
        .iter()
        .all(|r| r.field_manager == "edgeplex-failover"));
    assert!(writes
        .iter()
        .all(|r| r.user_agent.starts_with("edgeplex-failover/")));

    let pid = child.0.id();
    let rc = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill -TERM");
    assert!(rc.success());
    let status = wait_for_async("the binary to exit", DEADLINE, || {
        child.0.try_wait().ok().flatten()
    })
    .await;
    assert!(status.success(), "{status:?}");
    assert_eq!(leader_holder(&c), None, "leadership released on SIGTERM");
}

/// Renews the agent Leases (`edgeplex/<node>`) and the kubelet Leases (`kube-node-lease/<node>`)
/// of `nodes` in-process (not in the request log) every `every`, until dropped.
struct Fleet {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Fleet {
    fn start(cluster: &Cluster, nodes: Vec<String>, every: Duration) -> Fleet {
        let stop = Arc::new(AtomicBool::new(false));
        let (c, s) = (cluster.clone(), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                for n in &nodes {
                    c.renew_lease("edgeplex", NS, n, AGENT_LEASE_SECS as u32);
                    c.renew_lease("kubelet", "kube-node-lease", n, 40);
                }
                std::thread::sleep(every);
            }
        });
        Fleet {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A controller task whose requests carry User-Agent `<user_agent>/...`, with the default
/// intervals (poll 1 s, leader renewals every 2 s): what a real deployment does.
async fn start_with_defaults(server: &TestApiServer, identity: &str, user_agent: &str) -> Running {
    let s = FailoverSettings {
        agent_lease_duration_secs: AGENT_LEASE_SECS as f64,
        metrics_listen: edgeplex::config::values::Listen::OFF,
        ..FailoverSettings::default()
    };
    let kube = kube_settings(server);
    let client = edgeplex::kube::connect_as(&kube, user_agent)
        .await
        .expect("client")
        .expect("a cluster");
    let registry = Registry::new();
    let metrics = FailoverMetrics::register(&registry).expect("metrics");
    let shutdown = Shutdown::default();
    let controller = Controller::new(client, s, kube, identity.to_owned(), metrics);
    let task = tokio::spawn(controller.run(shutdown.clone()));
    Running {
        identity: identity.to_owned(),
        registry,
        shutdown,
        task,
    }
}

/// Whether a request lists or watches Nodes or Leases other than the leader Lease itself.
fn reads_the_fleet(r: &kube_api::RequestRecord) -> bool {
    r.method == "GET"
        && (r.path == "/api/v1/nodes"
            || r.path.starts_with("/api/v1/nodes/")
            || (r.path.contains("/leases") && !r.path.ends_with("/leases/edgeplex-failover")))
}

fn is_watch(r: &kube_api::RequestRecord) -> bool {
    r.query
        .split('&')
        .any(|p| p == "watch=true" || p == "watch=1")
}

/// Controller load with 100 Nodes (50 groups of a primary and a backup), 100 agent Leases and
/// 100 kubelet Leases renewing every second, at the default intervals: the leader follows them
/// through watches and makes no periodic list; the standby makes no request about Nodes or
/// Leases at all, only its look at the leader Lease. The requests per second of each are
/// printed (run with `--nocapture`), counted from the server's request log by User-Agent.
#[tokio::test]
async fn controller_load_with_100_nodes_watches_and_a_quiet_standby() {
    const NODES: usize = 100;
    const WINDOW: Duration = Duration::from_secs(10);
    let server = TestApiServer::start();
    let c = server.cluster();
    let names: Vec<String> = (0..NODES).map(|i| format!("n{i:03}")).collect();
    for (i, n) in names.iter().enumerate() {
        let role = if i % 2 == 0 { "primary" } else { "backup" };
        c.create_group_node(n, &format!("g{:02}", i / 2), role);
    }
    let _fleet = Fleet::start(&c, names.clone(), Duration::from_secs(1));
    let leader = start_with_defaults(&server, "ctl-a", "load-leader").await;
    let primaries: Vec<&str> = names.iter().step_by(2).map(String::as_str).collect();
    wait_for_async(
        "every group's primary active",
        Duration::from_secs(60),
        || (c.active_nodes(&primaries).len() == NODES / 2).then_some(()),
    )
    .await;
    let standby = start_with_defaults(&server, "ctl-b", "load-standby").await;
    // Steady state: both running for a few seconds, then the measured window.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let from = c.requests().len();
    let t0 = Instant::now();
    tokio::time::sleep(WINDOW).await;
    let window = c.requests()[from..].to_vec();
    let elapsed = t0.elapsed().as_secs_f64();
    assert_eq!(leader_holder(&c).as_deref(), Some("ctl-a"));
    let of = |ua: &str| -> Vec<kube_api::RequestRecord> {
        let prefix = format!("{ua}/");
        window
            .iter()
            .filter(|r| r.user_agent.starts_with(&prefix))
            .cloned()
            .collect()
    };
    let (l, s) = (of("load-leader"), of("load-standby"));
    let describe = |rs: &[kube_api::RequestRecord]| -> String {
        let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
        for r in rs {
            let what = if is_watch(r) {
                "watch"
            } else {
                r.method.as_str()
            };
            *kinds.entry(format!("{what} {}", r.path)).or_default() += 1;
        }
        format!("{kinds:?}")
    };
    eprintln!(
        "controller load, {NODES} nodes + {NODES} agent Leases + {NODES} kubelet Leases, over {elapsed:.1} s: leader {:.2} req/s {}; standby {:.2} req/s {}",
        l.len() as f64 / elapsed,
        describe(&l),
        s.len() as f64 / elapsed,
        describe(&s)
    );
    // The standby only looks at the leader Lease.
    let standby_reads: Vec<_> = s.iter().filter(|r| reads_the_fleet(r)).collect();
    assert!(
        standby_reads.is_empty(),
        "the standby read Nodes or Leases: {standby_reads:#?}"
    );
    assert!(!s.is_empty(), "the standby looks at the leader Lease");
    // The leader makes no periodic list: at steady state, watches stay open.
    let leader_lists: Vec<_> = l
        .iter()
        .filter(|r| reads_the_fleet(r) && !is_watch(r))
        .collect();
    assert!(
        leader_lists.is_empty(),
        "the leader listed at steady state: {leader_lists:#?}"
    );
    // It watches Nodes by label and both kinds of Lease.
    let all = c.requests();
    let watched = |path: &str, selector: Option<&str>| {
        all.iter().any(|r| {
            r.user_agent.starts_with("load-leader/")
                && is_watch(r)
                && r.path == path
                && selector.is_none_or(|s| r.query.replace("%2F", "/").contains(s))
        })
    };
    assert!(watched(
        "/api/v1/nodes",
        Some("labelSelector=edgeplex.io/group")
    ));
    assert!(watched(
        "/api/v1/nodes",
        Some("labelSelector=edgeplex.io/active")
    ));
    assert!(watched(
        &format!("/apis/coordination.k8s.io/v1/namespaces/{NS}/leases"),
        None
    ));
    assert!(watched(
        "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases",
        None
    ));
    standby.stop().await;
    leader.stop().await;
}

/// A watch that fails ends the leader's term: it starts over after a backoff, lists everything
/// again and judges every Lease afresh. Here the list of `kube-node-lease` fails three times
/// (a 403 until an admin fixes the RBAC, say): nothing is decided meanwhile, and once it
/// succeeds the primary is activated; nothing is taken for dead.
#[tokio::test]
async fn a_failing_watch_starts_the_term_over_and_nothing_is_judged_meanwhile() {
    let server = TestApiServer::start();
    let c = server.cluster();
    let nodes = ["p", "b"];
    c.create_group_node("p", "g", "primary");
    c.create_group_node("b", "g", "backup");
    let _fleet = Fleet::start(
        &c,
        nodes.iter().map(|n| n.to_string()).collect(),
        Duration::from_millis(200),
    );
    c.fail_matching("GET", "/namespaces/kube-node-lease/leases", 3, 403);
    let ctl = Running::start(&server, "ctl").await;
    wait_for_async("three failed lists of kube-node-lease", DEADLINE, || {
        (ctl.metric("edgeplex_failover_api_errors_total{op=\"node_leases\"}") >= 3.0).then_some(())
    })
    .await;
    assert_eq!(
        c.active_nodes(&nodes),
        Vec::<String>::new(),
        "decided without the kubelets"
    );
    wait_active(&c, &nodes, "p", DEADLINE).await;
    let lists = c
        .requests()
        .into_iter()
        .filter(|r| r.path.ends_with("/namespaces/kube-node-lease/leases") && !is_watch(r))
        .count();
    assert!(lists >= 4, "listed kube-node-lease {lists} times");
    wait_rounds(&c, 10, DEADLINE).await;
    assert_eq!(c.active_nodes(&nodes), ["p"]);
    assert!(c.taints("p").is_empty() && c.taints("b").is_empty());
    assert_eq!(
        ctl.metric("edgeplex_failover_api_errors_total{op=\"node_leases\"}"),
        3.0
    );
    ctl.stop().await;
}
