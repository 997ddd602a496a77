//! Kubernetes API outages against real `edgeplex run` agents: while the API server is down
//! (port closed) or a black hole (connections accepted, never answered), the agent keeps
//! capturing every frame; when the server returns, the agent publishes again and its Node ends
//! in the same state as a control agent's whose API server never went away.
//!
//! Two test API servers, two agent processes with the same node name, config and power fixture
//! changes: `out` talks to a server that has outages, `ctl` to one that has none. Their Nodes
//! are compared on everything the agent owns (labels, annotations, conditions, taint), with
//! times, versions and the agents' own ring directories left out. A reader of `out`'s camera
//! ring (the library `Reader`, in this process) counts frames and losses throughout.
//!
//! A second test takes the API server away from everyone at once (two agents and the failover
//! controller) for three Lease durations, and checks nobody is taken for dead afterwards.
//!
//! Every wait is bounded by a generous deadline; no duration is asserted.

mod common;
mod kube_api;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::agent::{Agent, AgentConfig, Controller};
use edgeplex::ring::{Reader, Recv, Start};
use kube_api::{wait_for, Outage, TestApiServer};
use serde_json::{json, Value};

const NODE: &str = "edge-a";
const GROUP: &str = "line-1";
const NS: &str = "edgeplex";
/// Frames per second of the test-pattern camera.
const FPS: u32 = 30;
/// Watchdog for every wait: generous, only to fail a hang.
const DEADLINE: Duration = Duration::from_secs(40);

/// A reader following a ring on its own thread, counting what it gets.
struct Follow {
    delivered: Arc<AtomicU64>,
    lost: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Follow {
    fn start(agent: &Agent) -> Follow {
        let path = agent.ring("cam0");
        let mut reader = wait_for("the camera ring", DEADLINE, || {
            Reader::open(&path, Start::Next).ok()
        });
        let delivered = Arc::new(AtomicU64::new(0));
        let lost = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (d, l, s) = (delivered.clone(), lost.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match reader.next(Duration::from_millis(100)) {
                    Ok(Recv::Message(m)) => {
                        assert!(!m.is_empty(), "an empty frame");
                        m.finish();
                    }
                    Ok(Recv::Reopened | Recv::TimedOut) => {}
                    Err(e) => panic!("reading the camera ring: {e}"),
                }
                d.store(reader.delivered(), Ordering::Relaxed);
                l.store(reader.lost(), Ordering::Relaxed);
            }
        });
        Follow {
            delivered,
            lost,
            stop,
            thread: Some(thread),
        }
    }

    fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }

    fn lost(&self) -> u64 {
        self.lost.load(Ordering::Relaxed)
    }

    /// Wait until `n` more frames than `from` have been read.
    fn wait_frames(&self, from: u64, n: u64, what: &str) -> u64 {
        wait_for(&format!("{n} frames {what}"), DEADLINE, || {
            let d = self.delivered();
            (d >= from + n).then_some(d)
        })
    }
}

impl Drop for Follow {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let r = t.join();
            if r.is_err() && !std::thread::panicking() {
                panic!("the ring reader failed");
            }
        }
    }
}

/// Everything the agent owns on its Node, without times, versions, or the agent's ring
/// directory (each agent has its own).
fn owned(server: &TestApiServer, agent: &Agent) -> Value {
    let node = server.node(NODE);
    let ours = |m: &Value| -> Value {
        m.as_object()
            .map(|o| {
                o.iter()
                    .filter(|(k, _)| k.starts_with("edgeplex.io/"))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut annotations = ours(&node["metadata"]["annotations"]);
    let ring_dir = agent.ring("cam0");
    let ring_dir = ring_dir.parent().expect("ring dir").display().to_string();
    if let Some(Value::String(rings)) = annotations.get_mut("edgeplex.io/rings") {
        *rings = rings.replace(&ring_dir, "<ring dir>");
    }
    let conditions: Vec<Value> = node["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["type"] == "BatteryCritical" || c["type"] == "DeviceFailure")
        .map(|c| {
            json!({"type": c["type"], "status": c["status"], "reason": c["reason"],
                   "message": c["message"], "has_transition_time": c["lastTransitionTime"].is_string()})
        })
        .collect();
    let taints: Vec<Value> = node["spec"]["taints"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| t["key"] == "edgeplex.io/failover")
        .map(|t| json!({"key": t["key"], "value": t["value"], "effect": t["effect"]}))
        .collect();
    json!({
        "labels": ours(&node["metadata"]["labels"]),
        "annotations": annotations,
        "conditions": conditions,
        "taints": taints,
    })
}

/// Both agents' fixtures get the same change at the same time.
fn both(agents: [&Agent; 2], f: impl Fn(&Agent)) {
    for a in agents {
        f(a);
    }
}

/// A battery with the driver's own time to empty, so both agents estimate exactly the same.
fn battery(agent: &Agent, status: &str, capacity: u32, energy_uwh: u64, tte_s: u64) {
    agent.power.battery(status, capacity, energy_uwh);
    agent
        .power
        .supply("BAT0", &[("time_to_empty_now", &tte_s.to_string())]);
}

fn label(v: &Value, key: &str) -> Option<String> {
    v["labels"][key].as_str().map(str::to_owned)
}

/// The longest retry delay the agent logged for `what` ("node sync", "lease renewal").
fn longest_retry(log: &str, what: &str) -> f64 {
    let tag = format!("what=\"{what}\"");
    log.lines()
        .filter(|l| l.contains(&tag))
        .filter_map(|l| {
            let v = l.split("retry_in_secs=").nth(1)?;
            v.split_whitespace().next()?.parse::<f64>().ok()
        })
        .fold(0.0, f64::max)
}

fn count(log: &str, needle: &str) -> usize {
    log.matches(needle).count()
}

/// Wait until `out`'s Node owns exactly what `ctl`'s does and `ctl` shows `settled`.
fn wait_same(
    servers: (&TestApiServer, &TestApiServer),
    agents: (&Agent, &Agent),
    what: &str,
    settled: impl Fn(&Value) -> bool,
) -> Value {
    let mut last = (Value::Null, Value::Null);
    let found = kube_api::try_wait_for(DEADLINE, || {
        let (o, c) = (owned(servers.0, agents.0), owned(servers.1, agents.1));
        let same = o == c && settled(&c);
        last = (o.clone(), c);
        same.then_some(o)
    });
    found.unwrap_or_else(|| {
        panic!(
            "{what}: the Nodes did not converge\n  out: {}\n  ctl: {}",
            last.0, last.1
        )
    })
}

#[test]
fn capture_goes_on_through_api_outages_and_the_node_catches_up() {
    let out_server = TestApiServer::start();
    let ctl_server = TestApiServer::start();
    for s in [&out_server, &ctl_server] {
        s.create_ready_node(NODE);
    }
    let mut cfg = AgentConfig::new(NODE, GROUP);
    cfg.fps = FPS;
    cfg.hold_down_secs = 1.0;
    cfg.request_timeout_secs = 1.0;
    let mut out = Agent::start(out_server.kubeconfig_path(), &cfg);
    let mut ctl = Agent::start(ctl_server.kubeconfig_path(), &cfg);
    both([&out, &ctl], |a| {
        battery(a, "Discharging", 80, 40_000_000, 36_000)
    });
    let servers = (&out_server, &ctl_server);

    // Both publish the same state.
    // The agent connects before its streams start (a bad kubeconfig must fail before any ring
    // is written), so its first sync may precede the camera: wait for the camera label too.
    let start = wait_same(servers, (&out, &ctl), "start", |v| {
        label(v, "edgeplex.io/power").as_deref() == Some("normal")
            && label(v, "edgeplex.io/camera").as_deref() == Some("true")
            && v["annotations"]["edgeplex.io/battery"]
                .as_str()
                .is_some_and(|b| b.contains("\"time_to_empty_minutes\":600"))
    });
    assert_eq!(label(&start, "edgeplex.io/camera").as_deref(), Some("true"));
    assert_eq!(start["taints"], json!([]));
    wait_for("out's Lease", DEADLINE, || out_server.lease(NS, NODE));
    let frames = Follow::start(&out);
    frames.wait_frames(0, 10, "before any outage");

    // Outage 1: the API server goes down (connections refused). The battery drains to
    // critical meanwhile.
    out_server.set_server_outage(Outage::Down);
    let down_at = frames.delivered();
    let down = Instant::now();
    both([&out, &ctl], |a| {
        battery(a, "Discharging", 4, 2_000_000, 90)
    });
    wait_same(
        (&ctl_server, &ctl_server),
        (&ctl, &ctl),
        "the control node goes critical",
        |v| v["taints"].as_array().is_some_and(|t| !t.is_empty()),
    );
    wait_for("out to notice the outage", DEADLINE, || {
        (count(&out.log(), "failing; retrying with capped backoff") >= 1).then_some(())
    });
    // Capture goes on: a second of frames read while the server is down.
    frames.wait_frames(down_at, u64::from(FPS), "during the server-down outage");
    // Stay down until the node sync backs off for at least 2 s: longer than the heartbeat, so
    // what brings the node sync back after the outage can be told apart below.
    wait_for(
        "the node sync to back off for 2 s or more",
        DEADLINE,
        || (longest_retry(&out.log(), "node sync") >= 2.0).then_some(()),
    );
    out.assert_running();
    let stale = owned(&out_server, &out);
    assert_eq!(
        label(&stale, "edgeplex.io/power").as_deref(),
        Some("normal"),
        "nothing reached the server while it was down"
    );
    let served_before_up = out_server.requests().len();
    out_server.set_server_outage(Outage::Up);
    let up = Instant::now();
    let during_down = frames.delivered() - down_at;
    let critical = wait_same(servers, (&out, &ctl), "after the server-down outage", |v| {
        label(v, "edgeplex.io/power").as_deref() == Some("critical")
    });
    let caught_up = Instant::now();
    assert_eq!(
        critical["taints"],
        json!([{"key": "edgeplex.io/failover", "value": "battery-critical", "effect": "NoExecute"}])
    );
    assert_eq!(critical["conditions"][0]["status"], "True");
    assert_eq!(
        frames.lost(),
        0,
        "frames lost around the server-down outage"
    );
    // The first successful heartbeat after the outage shows the server is back: the node sync
    // is retried at once, not at the end of its backoff (which outlasts several heartbeats).
    let lease_path = format!("/leases/{NODE}");
    let node_path = format!("/api/v1/nodes/{NODE}");
    let lease_ok = |r: &kube_api::RequestRecord| {
        r.path.ends_with(&lease_path) && r.method == "PUT" && r.status == 200
    };
    let after = wait_for("two heartbeats after the outage", DEADLINE, || {
        let after: Vec<_> = out_server.requests()[served_before_up..].to_vec();
        (after.iter().filter(|r| lease_ok(r)).count() >= 2).then_some(after)
    });
    let lease_oks: Vec<usize> = after
        .iter()
        .enumerate()
        .filter(|(_, r)| lease_ok(r))
        .map(|(i, _)| i)
        .collect();
    let first_node = after.iter().position(|r| r.path.starts_with(&node_path));
    assert!(
        lease_oks.len() >= 2 && first_node.is_some_and(|n| n < lease_oks[1]),
        "the node sync waited out its backoff after the heartbeat got through: {:?}",
        after
            .iter()
            .map(|r| format!("{} {} {}", r.method, r.path, r.status))
            .collect::<Vec<_>>()
    );
    eprintln!(
        "outage: down {:.1} s, {during_down} frames read meanwhile, 0 lost; node caught up {} ms after the server returned",
        (up - down).as_secs_f64(),
        (caught_up - up).as_millis()
    );

    // Outage 2: a black hole (requests accepted, never answered, so they time out). Mains
    // returns meanwhile; the control agent lifts its taint after the hold-down.
    out_server.set_server_outage(Outage::Hang);
    let hang_at = frames.delivered();
    let hang = Instant::now();
    let failures_before = count(&out.log(), "failing; retrying with capped backoff");
    both([&out, &ctl], |a| {
        a.power.mains(true);
        a.power.battery("Charging", 5, 2_500_000);
        a.power.remove("BAT0", "time_to_empty_now");
    });
    wait_same(
        (&ctl_server, &ctl_server),
        (&ctl, &ctl),
        "the control node lifts its taint",
        |v| v["taints"] == json!([]) && v["conditions"][0]["status"] == "False",
    );
    wait_for(
        "out's requests to time out in the black hole",
        DEADLINE,
        || {
            (count(&out.log(), "failing; retrying with capped backoff") > failures_before)
                .then_some(())
        },
    );
    frames.wait_frames(hang_at, u64::from(FPS), "during the black-hole outage");
    out.assert_running();
    assert_eq!(
        owned(&out_server, &out)["taints"].as_array().map(Vec::len),
        Some(1),
        "nothing reached the server in the black hole"
    );
    let lease_rv =
        out_server.lease(NS, NODE).expect("out's Lease")["metadata"]["resourceVersion"].clone();
    out_server.set_server_outage(Outage::Up);
    let back = Instant::now();
    let during_hang = frames.delivered() - hang_at;
    let normal = wait_same(servers, (&out, &ctl), "after the black-hole outage", |v| {
        label(v, "edgeplex.io/power").as_deref() == Some("normal") && v["taints"] == json!([])
    });
    let caught_up = Instant::now();
    assert_eq!(normal["conditions"][0]["status"], "False");
    wait_for("out's Lease renewed after the outages", DEADLINE, || {
        let l = out_server.lease(NS, NODE)?;
        (l["metadata"]["resourceVersion"] != lease_rv).then_some(())
    });
    frames.wait_frames(frames.delivered(), 10, "after the outages");
    assert_eq!(frames.lost(), 0, "frames lost around the black-hole outage");
    assert!(
        count(&out.log(), "kubernetes node sync recovered") >= 2,
        "the agent logs the node sync's recovery after each outage"
    );
    eprintln!(
        "outage: black hole {:.1} s, {during_hang} frames read meanwhile, 0 lost; node caught up {} ms after the server returned",
        (back - hang).as_secs_f64(),
        (caught_up - back).as_millis()
    );
    out.assert_running();
    ctl.assert_running();
}

/// An outage of the API server is shared by everyone who talks to it: the agents cannot renew
/// their Leases and the controller cannot read them. When it ends, no node may be taken for
/// dead: no handover, no node-dead taint, no eviction of a healthy fleet. The server stays down
/// for several Lease durations; the agents' Lease retries are capped at their heartbeat, so they
/// renew as soon as it is back, and the controller, which lost its leadership during the
/// outage, starts a new term that judges every Lease afresh.
#[test]
fn a_shared_api_outage_is_not_taken_for_dead_nodes() {
    const LEASE: u32 = 2;
    let server = TestApiServer::start();
    server.create_group_node("edge-a", GROUP, "primary");
    server.create_group_node("edge-b", GROUP, "backup");
    let agents: Vec<Agent> = ["edge-a", "edge-b"]
        .into_iter()
        .map(|n| {
            let mut cfg = AgentConfig::new(n, GROUP);
            cfg.lease_duration_secs = LEASE;
            cfg.request_timeout_secs = 1.0;
            Agent::start(server.kubeconfig_path(), &cfg)
        })
        .collect();
    let dir = tempfile::tempdir().expect("controller dir");
    let mut ctl = Controller::start(server.kubeconfig_path(), dir.path(), NS, LEASE, 20);
    let nodes = ["edge-a", "edge-b"];
    wait_for("edge-a active", DEADLINE, || {
        (server.active_nodes(&nodes) == ["edge-a"]).then_some(())
    });
    let frames = Follow::start(&agents[0]);
    frames.wait_frames(0, 10, "before the outage");

    server.set_server_outage(Outage::Down);
    let down_at = frames.delivered();
    // Three Lease durations without a renewal anyone could see, counted by the camera, which
    // goes on capturing meanwhile.
    frames.wait_frames(
        down_at,
        u64::from(FPS) * u64::from(LEASE) * 3,
        "during three Lease durations of outage",
    );
    server.set_server_outage(Outage::Up);

    // Both Leases renew again, and the controller goes on acting.
    for n in nodes {
        let before = server.lease(NS, n).expect("a Lease")["metadata"]["resourceVersion"].clone();
        wait_for(
            &format!("{n}'s Lease renewed after the outage"),
            DEADLINE,
            || {
                let l = server.lease(NS, n)?;
                (l["metadata"]["resourceVersion"] != before).then_some(())
            },
        );
    }
    // The controller leads again (it renews its leader Lease every 0.1 s, and decides from its
    // watches at least that often): twice a Lease duration of leading.
    let renewals = || server.count("PUT", "/leases/edgeplex-failover");
    let renewed = renewals();
    wait_for(
        "the controller to lead again, twice a Lease duration",
        DEADLINE,
        || (renewals() >= renewed + 40).then_some(()),
    );
    assert_eq!(
        server.active_nodes(&nodes),
        ["edge-a"],
        "active moved after a shared outage"
    );
    for n in nodes {
        let taints = server.taints(n);
        assert!(
            !taints.iter().any(|t| t["key"] == "edgeplex.io/failover"),
            "{n} was tainted after a shared outage: {taints:?}"
        );
    }
    let mut moved = server.events_with_reason("FailedOver");
    moved.extend(server.events_with_reason("NoHealthyBackup"));
    assert!(
        moved.is_empty(),
        "failover events after a shared outage: {moved:?}"
    );
    assert_eq!(frames.lost(), 0);
    ctl.assert_running();
}
