//! End to end: two real `edgeplex run` agents (primary and backup of group `line-1`) and one
//! real `edgeplex failover` controller, all separate processes talking HTTP to the in-process
//! test API server. The agents read their power from sysfs fixtures the test rewrites.
//!
//! 1. The controller starts first, then the backup's agent, then the primary's: the controller
//!    waits for the primary instead of activating the backup that showed up first, and `edge-a`
//!    becomes active; both agents label their nodes battery/power.
//! 2. `edge-a`'s battery drains to critical: its agent puts the `BatteryCritical` condition and
//!    the failover taint on it, and the controller moves `active` to `edge-b`.
//! 3. `edge-b`'s agent is killed (SIGKILL): after its Lease duration the controller sees it dead,
//!    but the only other node is critical, so nothing moves and `NoHealthyBackup` is recorded.
//! 4. Mains returns to `edge-a`: after the hold-down its agent clears its taint and condition, and
//!    the controller hands over from the dead `edge-b` to `edge-a`, tainting `edge-b` node-dead.
//! 5. RBAC: the manifests grant each component exactly the permissions its recorded requests
//!    needed in steps 1-4 (told apart by User-Agent): nothing it was refused, nothing unused.
//!
//! Every wait is bounded by a generous deadline; no duration is asserted. The detection-to-
//! handover times are printed (run with `--nocapture`).

mod common;
mod kube_api;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::agent::{Agent, AgentConfig, Controller};
use common::rbac;
use kube_api::{wait_active, wait_for_async, wait_rounds, Cluster, TestApiServer};
use serde_json::Value;

const GROUP: &str = "line-1";
const NS: &str = "edgeplex";
const TAINT: &str = "edgeplex.io/failover";
const NODES: [&str; 2] = ["edge-a", "edge-b"];
/// The agents' Lease duration (declared in their Leases).
const AGENT_LEASE_SECS: u32 = 2;
/// The controller's assumption for a node whose Lease is missing.
const MISSING_LEASE_SECS: u32 = 20;
/// The agents' hold-down before a cleared cause removes their taint.
const HOLD_DOWN_SECS: f64 = 2.0;
/// Watchdog for every wait: generous, only to fail a hang.
const DEADLINE: Duration = Duration::from_secs(40);
/// Watchdog for the whole test.
const WATCHDOG: Duration = Duration::from_secs(120);

/// An agent of the group with this test's Lease duration and hold-down.
fn start_agent(server: &TestApiServer, node: &str) -> Agent {
    let mut cfg = AgentConfig::new(node, GROUP);
    cfg.lease_namespace = NS.into();
    cfg.lease_duration_secs = AGENT_LEASE_SECS;
    cfg.hold_down_secs = HOLD_DOWN_SECS;
    Agent::start(server.kubeconfig_path(), &cfg)
}

/// The value of the `edgeplex.io/failover` taint on `node`, if any.
fn failover_taint(cluster: &Cluster, node: &str) -> Option<String> {
    cluster
        .taints(node)
        .into_iter()
        .find(|t| t["key"] == TAINT && t["effect"] == "NoExecute")
        .map(|t| t["value"].as_str().unwrap_or_default().to_owned())
}

fn condition_status(cluster: &Cluster, node: &str, type_: &str) -> Option<String> {
    cluster
        .condition(node, type_)
        .and_then(|c| c["status"].as_str().map(str::to_owned))
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

#[tokio::test]
async fn two_agents_and_the_controller_hand_over_on_battery_and_death() {
    tokio::time::timeout(WATCHDOG, scenario())
        .await
        .expect("the end-to-end scenario finishes within the watchdog");
}

async fn scenario() {
    let server = TestApiServer::start();
    let c = server.cluster();
    c.create_namespace(NS);
    c.create_group_node("edge-a", GROUP, "primary");
    c.create_group_node("edge-b", GROUP, "backup");
    let ctl_dir = tempfile::tempdir().expect("controller dir");

    // 1. The controller starts first, then the backup's agent, and the primary's agent only
    //    once the backup's Lease has been renewing for a while. Nobody is active yet, so the
    //    controller waits for the primary (its Lease pending) instead of activating the backup
    //    that happened to show up first; then the primary becomes active.
    let mut ctl = Controller::start(
        server.kubeconfig_path(),
        ctl_dir.path(),
        NS,
        AGENT_LEASE_SECS,
        MISSING_LEASE_SECS,
    );
    let mut b = start_agent(&server, "edge-b");
    wait_for_async("edge-b's heartbeat Lease", DEADLINE, || {
        c.lease(NS, "edge-b").map(|_| ())
    })
    .await;
    // A second of rounds (the poll interval is 0.1 s): edge-b's Lease renews twice meanwhile
    // (heartbeat 0.5 s), so the controller sees the backup healthy and the primary pending.
    wait_rounds(&c, 10, DEADLINE).await;
    assert_eq!(
        c.active_nodes(&NODES),
        Vec::<String>::new(),
        "the controller must wait for the pending primary, not activate the backup"
    );
    let mut a = start_agent(&server, "edge-a");
    for node in NODES {
        wait_for_async(
            &format!("{node}'s battery and power labels"),
            DEADLINE,
            || {
                (c.label(node, "edgeplex.io/battery").as_deref() == Some("true")
                    && c.label(node, "edgeplex.io/power").as_deref() == Some("normal")
                    && c.lease(NS, node).is_some())
                .then_some(())
            },
        )
        .await;
        assert_eq!(failover_taint(&c, node), None);
    }
    wait_active(&c, &NODES, "edge-a", DEADLINE).await;
    let activated: Vec<Value> = c.events_with_reason("Activated");
    assert!(
        activated
            .iter()
            .all(|e| e["involvedObject"]["name"] == "edge-a"),
        "only the primary was ever activated: {activated:?}"
    );
    a.assert_running();
    b.assert_running();
    ctl.assert_running();

    // 2. The primary's battery drains to critical.
    a.power.battery("Discharging", 5, 2_500_000);
    let drained = Instant::now();
    let moved = wait_active(&c, &NODES, "edge-b", DEADLINE).await;
    wait_for_async(
        "edge-a's BatteryCritical condition and taint",
        DEADLINE,
        || {
            (condition_status(&c, "edge-a", "BatteryCritical").as_deref() == Some("True")
                && failover_taint(&c, "edge-a").as_deref() == Some("battery-critical"))
            .then_some(())
        },
    )
    .await;
    assert_eq!(
        c.label("edge-a", "edgeplex.io/power").as_deref(),
        Some("critical")
    );
    assert_eq!(failover_taint(&c, "edge-b"), None);
    eprintln!(
        "e2e: critical battery -> active on the backup: {} ms (fixture change to edge-b active)",
        ms(moved - drained)
    );

    // 3. The backup's agent dies. The only other node is critical: nothing moves, and the
    //    controller records NoHealthyBackup once the backup's Lease has expired.
    a.assert_running();
    let killed = b.kill();
    let warned = wait_for_async(
        "a NoHealthyBackup event for the dead edge-b",
        DEADLINE,
        || {
            c.events_with_reason("NoHealthyBackup")
                .iter()
                .any(|e| e["involvedObject"]["name"] == "edge-b")
                .then(Instant::now)
        },
    )
    .await;
    assert!(
        warned - killed >= Duration::from_secs(1),
        "edge-b declared dead before its Lease could expire"
    );
    eprintln!(
        "e2e: killed agent -> dead detected (NoHealthyBackup, no move): {} ms",
        ms(warned - killed)
    );
    // Rounds pass: the critical edge-a is never activated, the dead edge-b stays active and is
    // not tainted by a handover that did not happen.
    wait_rounds(&c, 20, DEADLINE).await;
    assert_eq!(
        c.active_nodes(&NODES),
        ["edge-b"],
        "no unhealthy node is activated"
    );
    assert_eq!(failover_taint(&c, "edge-b"), None);
    let w = c.events_with_reason("NoHealthyBackup");
    assert_eq!(w.len(), 1, "one NoHealthyBackup event: {w:?}");
    assert_eq!(w[0]["type"], "Warning");
    ctl.assert_running();

    // 4. Mains returns to the primary: after the hold-down its agent clears its taint and
    //    condition; edge-a is healthy again, so the controller hands over from the dead edge-b
    //    and taints it node-dead.
    a.power.mains(true);
    a.power.battery("Charging", 6, 3_000_000);
    let restored = Instant::now();
    let cleared = wait_for_async("edge-a's taint and condition cleared", DEADLINE, || {
        (failover_taint(&c, "edge-a").is_none()
            && condition_status(&c, "edge-a", "BatteryCritical").as_deref() == Some("False"))
        .then(Instant::now)
    })
    .await;
    assert!(
        cleared - restored >= Duration::from_secs_f64(HOLD_DOWN_SECS * 0.9),
        "the taint was cleared before the hold-down"
    );
    let back = wait_active(&c, &NODES, "edge-a", DEADLINE).await;
    let tainted = wait_for_async("edge-b's node-dead taint", DEADLINE, || {
        (failover_taint(&c, "edge-b").as_deref() == Some("node-dead")).then(Instant::now)
    })
    .await;
    assert!(c
        .events_with_reason("FailedOver")
        .iter()
        .any(|e| e["involvedObject"]["name"] == "edge-b"));
    eprintln!(
        "e2e: mains restored -> edge-a untainted after hold-down: {} ms; -> edge-a active: {} ms",
        ms(cleared - restored),
        ms(back - restored)
    );
    eprintln!(
        "e2e: killed agent -> node-dead taint on edge-b (waited for a healthy target): {} ms",
        ms(tainted - killed)
    );
    wait_rounds(&c, 10, DEADLINE).await;
    assert_eq!(c.active_nodes(&NODES), ["edge-a"]);
    a.assert_running();
    ctl.assert_running();

    // 5. The manifests grant exactly what the agent and the controller used.
    let requests = c.requests();
    for (account, user_agent) in [
        ("edgeplex-agent", edgeplex::kube::FIELD_MANAGER),
        ("edgeplex-failover", edgeplex::kube::FAILOVER_FIELD_MANAGER),
    ] {
        let prefix = format!("{user_agent}/");
        let used: BTreeSet<rbac::Permission> = requests
            .iter()
            .filter(|r| r.user_agent.starts_with(&prefix))
            .filter_map(|r| rbac::needed(&r.method, &r.path, &r.query))
            .collect();
        assert!(!used.is_empty(), "no request from {user_agent}");
        rbac::assert_exact(account, &rbac::granted(account, NS), &used);
    }
}

/// A stand-in kubelet's heartbeat: renews `kube-node-lease/<node>` (duration
/// [`KUBELET_LEASE_SECS`]) every 200 ms until stopped or dropped.
struct KubeletLease {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<Instant>>,
}

/// The stand-in kubelets' Lease duration (a real kubelet declares 40 s).
const KUBELET_LEASE_SECS: u32 = 2;

impl KubeletLease {
    fn start(cluster: &Cluster, node: &str) -> KubeletLease {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (c, n, s) = (cluster.clone(), node.to_owned(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut last = Instant::now();
            while !s.load(Ordering::Relaxed) {
                c.renew_lease("kubelet", "kube-node-lease", &n, KUBELET_LEASE_SECS);
                last = Instant::now();
                std::thread::sleep(Duration::from_millis(200));
            }
            last
        });
        KubeletLease {
            stop,
            thread: Some(thread),
        }
    }

    /// The kubelet stops (the node dies); returns the time of its last renewal.
    fn stop(mut self) -> Instant {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread
            .take()
            .map(|t| t.join().expect("kubelet thread"))
            .unwrap_or_else(Instant::now)
    }
}

impl Drop for KubeletLease {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Nothing the failover controller does to a node whose agent is merely down: no failover
/// taint on either node, no eviction, no FailedOver event, `edge-a` still the active node.
fn assert_untouched(c: &Cluster, what: &str) {
    for node in NODES {
        assert_eq!(failover_taint(c, node), None, "{what}: {node} tainted");
    }
    assert_eq!(c.active_nodes(&NODES), ["edge-a"], "{what}: active moved");
    assert!(
        c.events_with_reason("FailedOver").is_empty(),
        "{what}: {:?}",
        c.events_with_reason("FailedOver")
    );
    assert_eq!(c.count("POST", "/eviction"), 0, "{what}: an eviction");
}

/// Start order and rolling updates, with stand-in kubelets renewing the nodes' own Leases in
/// `kube-node-lease` and only the admin's labels on the Nodes:
///
/// 1. Controller first, then the backup's agent, then, long after the controller's
///    `--agent-lease-duration` (what it assumes for a missing agent Lease), the primary's
///    agent: the primary's node is alive, so its agent is waited for, and it becomes active.
/// 2. A rolling update: `edge-a`'s agent is stopped with SIGTERM (it marks its Lease
///    `edgeplex.io/stopped`) for three times its Lease duration, then restarted; then killed
///    (SIGKILL, a crash) for three Lease durations too. The kubelet renews throughout: nothing
///    is tainted or evicted, and `active` stays on `edge-a` (as docs/failover.md says).
/// 3. The kubelet's Lease stops too: `edge-a` is dead, `edge-b` becomes active and `edge-a`
///    is tainted node-dead. The time from the kubelet's last renewal to the handover is
///    printed.
#[tokio::test]
async fn a_rolling_update_is_not_a_failover_and_a_late_primary_still_wins() {
    tokio::time::timeout(WATCHDOG, rolling_update())
        .await
        .expect("the rolling-update scenario finishes within the watchdog");
}

async fn rolling_update() {
    /// What the controller assumes for a missing agent Lease: short, so "much later" is.
    const MISSING: u32 = 2;
    let server = TestApiServer::start();
    let c = server.cluster();
    c.create_group_node("edge-a", GROUP, "primary");
    c.create_group_node("edge-b", GROUP, "backup");
    let kubelet_a = KubeletLease::start(&c, "edge-a");
    let _kubelet_b = KubeletLease::start(&c, "edge-b");
    let ctl_dir = tempfile::tempdir().expect("controller dir");

    // 1. Start order.
    let mut ctl = Controller::start(
        server.kubeconfig_path(),
        ctl_dir.path(),
        NS,
        AGENT_LEASE_SECS,
        MISSING,
    );
    let _b = start_agent(&server, "edge-b");
    wait_for_async("edge-b's heartbeat Lease", DEADLINE, || {
        c.lease(NS, "edge-b").map(|_| ())
    })
    .await;
    let waited = Instant::now();
    // Four times what the controller assumes for the primary's missing Lease.
    tokio::time::sleep(Duration::from_secs(u64::from(MISSING) * 4)).await;
    wait_rounds(&c, 5, DEADLINE).await;
    assert_eq!(
        c.active_nodes(&NODES),
        Vec::<String>::new(),
        "the backup was activated while the primary's node was alive and its agent not started"
    );
    let mut a = start_agent(&server, "edge-a");
    wait_active(&c, &NODES, "edge-a", DEADLINE).await;
    eprintln!(
        "e2e: primary's agent started {} ms after the backup's; the primary became active",
        ms(waited.elapsed())
    );
    assert!(c
        .events_with_reason("Activated")
        .iter()
        .all(|e| e["involvedObject"]["name"] == "edge-a"));

    // 2. Rolling update: a graceful stop, then a crash, each for three agent Lease durations.
    let outage = Duration::from_secs(u64::from(AGENT_LEASE_SECS) * 3);
    let (stopped, clean) = a.terminate();
    assert!(clean, "the agent exits 0 on SIGTERM:\n{}", a.log());
    let marked = c.lease(NS, "edge-a").and_then(|l| {
        l["metadata"]["annotations"]["edgeplex.io/stopped"]
            .as_str()
            .map(str::to_owned)
    });
    assert!(
        marked.is_some(),
        "the graceful stop marked the Lease: {:?}",
        c.lease(NS, "edge-a")
    );
    while stopped.elapsed() < outage {
        assert_untouched(&c, "agent stopped gracefully");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_rounds(&c, 5, DEADLINE).await;
    assert_untouched(&c, "agent stopped gracefully");
    wait_for_async("the controller to log the planned stop", DEADLINE, || {
        ctl.log().contains("agent stopped gracefully").then_some(())
    })
    .await;
    let mut a = start_agent(&server, "edge-a");
    wait_for_async(
        "the marker removed by the restarted agent",
        DEADLINE,
        || {
            c.lease(NS, "edge-a")
                .filter(|l| l["metadata"]["annotations"]["edgeplex.io/stopped"].is_null())
                .map(|_| ())
        },
    )
    .await;
    let crashed = a.kill();
    while crashed.elapsed() < outage {
        assert_untouched(&c, "agent crashed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_rounds(&c, 5, DEADLINE).await;
    assert_untouched(&c, "agent crashed");
    wait_for_async("the controller to log the crash", DEADLINE, || {
        ctl.log()
            .contains("agent down without a graceful stop")
            .then_some(())
    })
    .await;
    eprintln!(
        "e2e: agent-only outages of {} ms (SIGTERM) and {} ms (SIGKILL) with the kubelet renewing: no taint, no eviction, active stayed",
        ms(outage),
        ms(outage)
    );

    // 3. The kubelet stops too: the node is dead.
    let last_kubelet = kubelet_a.stop();
    let moved = wait_active(&c, &NODES, "edge-b", DEADLINE).await;
    let tainted = wait_for_async("edge-a's node-dead taint", DEADLINE, || {
        (failover_taint(&c, "edge-a").as_deref() == Some("node-dead")).then(Instant::now)
    })
    .await;
    assert!(
        moved - last_kubelet >= Duration::from_secs(u64::from(KUBELET_LEASE_SECS)) / 2,
        "declared dead before the kubelet's Lease could expire"
    );
    eprintln!(
        "e2e: kubelet's last renewal -> edge-b active: {} ms; -> edge-a tainted node-dead: {} ms (kubelet Lease {} s)",
        ms(moved - last_kubelet),
        ms(tainted - last_kubelet),
        KUBELET_LEASE_SECS
    );
    assert_eq!(c.count("POST", "/eviction"), 0);
    ctl.assert_running();
}
