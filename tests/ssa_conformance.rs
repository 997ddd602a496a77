//! The test API server's field management and server-side apply, checked against
//! structured-merge-diff: the library kube-apiserver itself uses. Each scenario is a sequence of
//! writes to one Node by several field managers (the kubelet, an admin, edgeplex, the node
//! controller), as applies and updates on the main resource and on `status`. The same sequence
//! runs through the test server's store and through `tests/smd` (a Go driver around the library,
//! built from Debian's golang-k8s-sigs-structured-merge-diff-dev); after every write the two must
//! agree on the object, on who owns which field, and on conflicts.
//!
//! Needs Go and that package (`.ci/run` installs them); without them the tests say so and return,
//! and in CI they fail (`common::tools`).

mod common;
mod kube_api;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use common::tools;
use kube_api::store::{self, PatchType, Store, Target};
use serde_json::{json, Value};

const NODE: &str = "edge-a";

/// One write.
#[derive(Debug, Clone)]
struct Step {
    op: &'static str,
    manager: &'static str,
    sub: &'static str,
    force: bool,
    object: Value,
}

/// Server-side apply of `object` (a Node configuration) by `manager`.
fn apply(manager: &'static str, object: Value) -> Step {
    Step {
        op: "apply",
        manager,
        sub: "",
        force: false,
        object: node(object),
    }
}

fn apply_force(manager: &'static str, object: Value) -> Step {
    Step {
        force: true,
        ..apply(manager, object)
    }
}

fn apply_status(manager: &'static str, object: Value) -> Step {
    Step {
        sub: "status",
        force: true,
        ..apply(manager, object)
    }
}

/// An update (create, PUT, or the result of a merge patch): `object` is the whole new object.
fn update(manager: &'static str, object: Value) -> Step {
    Step {
        op: "update",
        ..apply(manager, object)
    }
}

fn update_status(manager: &'static str, object: Value) -> Step {
    Step {
        sub: "status",
        ..update(manager, object)
    }
}

fn node(mut v: Value) -> Value {
    v["apiVersion"] = json!("v1");
    v["kind"] = json!("Node");
    if v.get("metadata").is_none() {
        v["metadata"] = json!({});
    }
    v["metadata"]["name"] = json!(NODE);
    v
}

/// What one write left.
#[derive(Debug, Clone, PartialEq)]
struct Outcome {
    conflict: bool,
    object: Value,
    managers: Vec<(String, String, String, Value)>,
}

/// The fields both sides must agree on: the object without server-set metadata. An empty
/// `spec` or `status` is left out: Go always serializes a Node's (they are structs), the
/// driver's untyped objects do not.
fn comparable_object(o: &Value) -> Value {
    let mut o = o.clone();
    if let Some(m) = o.get_mut("metadata").and_then(Value::as_object_mut) {
        for k in [
            "uid",
            "resourceVersion",
            "creationTimestamp",
            "managedFields",
            "generation",
        ] {
            m.remove(k);
        }
    }
    if let Some(m) = o.as_object_mut() {
        m.retain(|k, v| {
            !((k == "spec" || k == "status") && v.as_object().is_some_and(|x| x.is_empty()))
        });
    }
    o
}

/// `fieldsV1` without the `"."` entries of maps and structs: the test server tracks the fields
/// and list items a manager owns, not its ownership of the maps that hold them (a map's own
/// `"."` only matters when that manager is the last owner of an emptied map, which the Node
/// fields it serves prune anyway). List items keep their `"."`.
fn without_map_markers(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, child)| {
                    let mut c = without_map_markers(child);
                    if k.starts_with("f:") {
                        if let Some(o) = c.as_object_mut() {
                            o.remove(".");
                        }
                    }
                    (k.clone(), c)
                })
                .collect(),
        ),
        other => other.clone(),
    }
}

fn managers_of(entries: &[Value]) -> Vec<(String, String, String, Value)> {
    let mut v: Vec<_> = entries
        .iter()
        .map(|e| {
            let s = |k: &str| e[k].as_str().unwrap_or_default().to_owned();
            (
                s("manager"),
                s("operation"),
                s("subresource"),
                without_map_markers(&e["fieldsV1"]),
            )
        })
        .collect();
    v.sort_by(|a, b| (&a.0, &a.1, &a.2).cmp(&(&b.0, &b.1, &b.2)));
    v
}

fn run_store(steps: &[Step]) -> Vec<Outcome> {
    let mut store = Store::default();
    let res = store::by_id("nodes");
    let mut out = Vec::new();
    for s in steps {
        let sub = (!s.sub.is_empty()).then_some(s.sub);
        let t = Target {
            res,
            ns: "",
            name: NODE,
            sub,
        };
        let result = match (s.op, store.get(&t).ok()) {
            ("update", None) => store.create(res, "", s.object.clone(), s.manager),
            ("update", Some(live)) => {
                let body = if sub.is_some() {
                    // A status write sends the whole object; only its status counts.
                    let mut whole = live;
                    whole["status"] = s.object["status"].clone();
                    whole
                } else {
                    let mut body = s.object.clone();
                    body["metadata"]["resourceVersion"] =
                        live["metadata"]["resourceVersion"].clone();
                    body
                };
                store.replace(&t, body, s.manager)
            }
            ("apply", _) => store.patch(&t, PatchType::Apply, s.object.clone(), s.manager, s.force),
            (op, _) => panic!("unknown op {op}"),
        };
        let conflict = match &result {
            Ok(_) => false,
            Err(e) if e.code == 409 => true,
            Err(e) => panic!("step {s:?}: the test server refused it: {e:?}"),
        };
        let live = store.get(&Target { sub: None, ..t }).expect("the node");
        out.push(Outcome {
            conflict,
            object: comparable_object(&live),
            managers: managers_of(
                live["metadata"]["managedFields"]
                    .as_array()
                    .map_or(&[], |v| v),
            ),
        });
    }
    out
}

const MISSING: &str = "Go and structured-merge-diff: apt-get install golang-go golang-k8s-sigs-structured-merge-diff-dev (.ci/run does)";

/// The Go driver, built once per test run; `None` (said once) when Go or the library is not
/// installed, outside CI. In CI their absence fails the test (`common::tools`).
fn driver() -> Option<&'static Path> {
    static BIN: OnceLock<Option<PathBuf>> = OnceLock::new();
    BIN.get_or_init(|| {
        let debian = Path::new("/usr/share/gocode/src/sigs.k8s.io/structured-merge-diff");
        let go = Command::new("go").arg("version").output();
        if !debian.is_dir() || !go.is_ok_and(|o| o.status.success()) {
            tools::missing(MISSING);
            return None;
        }
        let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("smd");
        let gopath = tmp.join("gopath");
        let link = gopath.join("src/sigs.k8s.io/structured-merge-diff/v4");
        std::fs::create_dir_all(link.parent().expect("parent")).expect("mkdir gopath");
        if std::fs::symlink_metadata(&link).is_err() {
            // GOPATH mode has no major-version directories: map .../v4 onto Debian's tree.
            std::os::unix::fs::symlink(debian, &link).expect("symlink the library as v4");
        }
        let bin = tmp.join("smd");
        let out = Command::new("go")
            .args(["build", "-o"])
            .arg(&bin)
            .arg(".")
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/smd"))
            .env("GOPATH", format!("{}:/usr/share/gocode", gopath.display()))
            .env("GO111MODULE", "off")
            .env("GOFLAGS", "")
            .env("GOCACHE", tmp.join("gocache"))
            .output()
            .expect("run go build");
        assert!(
            out.status.success(),
            "building tests/smd failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Some(bin)
    })
    .as_deref()
}

fn run_smd(driver: &Path, steps: &[Step]) -> Vec<Outcome> {
    let input = json!({"steps": steps.iter().map(|s| json!({
        "op": s.op, "manager": s.manager, "subresource": s.sub, "force": s.force, "object": s.object,
    })).collect::<Vec<_>>()});
    let mut child = Command::new(driver)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the smd driver");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.to_string().as_bytes())
        .expect("write the steps");
    let out = child.wait_with_output().expect("smd output");
    assert!(
        out.status.success(),
        "smd failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let results: Vec<Value> = serde_json::from_slice(&out.stdout).expect("smd JSON");
    results
        .iter()
        .map(|r| Outcome {
            conflict: r["conflict"].as_bool().unwrap_or(false),
            object: comparable_object(&r["object"]),
            managers: managers_of(r["managedFields"].as_array().map_or(&[], |v| v)),
        })
        .collect()
}

/// Run `steps` both ways and compare after each; `conflicts` are the steps both must refuse.
fn check(name: &str, steps: Vec<Step>, conflicts: &[usize]) {
    let Some(driver) = driver() else { return };
    let ours = run_store(&steps);
    let reference = run_smd(driver, &steps);
    for (i, (o, r)) in ours.iter().zip(&reference).enumerate() {
        assert!(
            o == r,
            "{name}: step {i} ({} {} by {}{}) differs from structured-merge-diff\n  step:    {}\n  server:  {}\n  smd:     {}\n  server managers: {}\n  smd managers:    {}",
            steps[i].op,
            if steps[i].sub.is_empty() { "node" } else { "node/status" },
            steps[i].manager,
            if steps[i].force { " (force)" } else { "" },
            steps[i].object,
            o.object,
            r.object,
            json!(o.managers),
            json!(r.managers),
        );
    }
    let refused: Vec<usize> = ours
        .iter()
        .enumerate()
        .filter(|(_, o)| o.conflict)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(
        refused, conflicts,
        "{name}: the steps refused with a conflict"
    );
}

/// How a joined node looks: created by the kubelet, which then reports its conditions.
fn joined() -> Vec<Step> {
    vec![
        update(
            "kubelet",
            json!({"metadata": {"labels": {"kubernetes.io/hostname": NODE, "kubernetes.io/os": "linux"}},
                   "spec": {"podCIDR": "10.1.0.0/24"}}),
        ),
        update_status(
            "kubelet",
            json!({"status": {"conditions": [
                {"type": "MemoryPressure", "status": "False", "reason": "KubeletHasSufficientMemory"},
                {"type": "Ready", "status": "True", "reason": "KubeletReady"}]}}),
        ),
    ]
}

fn then(mut steps: Vec<Step>, more: Vec<Step>) -> Vec<Step> {
    steps.extend(more);
    steps
}

#[test]
fn labels_edgeplex_stops_asserting_disappear_and_others_stay() {
    check(
        "labels",
        then(
            joined(),
            vec![
                apply_force(
                    "edgeplex",
                    json!({"metadata": {
                        "labels": {"edgeplex.io/group": "line-1", "edgeplex.io/camera": "true", "edgeplex.io/power": "normal"},
                        "annotations": {"edgeplex.io/rings": "[]"}}}),
                ),
                apply_force(
                    "admin",
                    json!({"metadata": {"labels": {"edgeplex.io/role": "primary"}}}),
                ),
                // The camera is gone: edgeplex applies without it.
                apply_force(
                    "edgeplex",
                    json!({"metadata": {"labels": {"edgeplex.io/group": "line-1", "edgeplex.io/power": "low"}}}),
                ),
                // edgeplex asserts nothing any more: every key of its own goes.
                apply_force("edgeplex", json!({})),
            ],
        ),
        &[],
    );
}

#[test]
fn conflicts_on_a_label_someone_else_set() {
    check(
        "conflicts",
        then(
            joined(),
            vec![
                // `kubectl label` (an update by another manager).
                update(
                    "kubectl-label",
                    json!({"metadata": {"labels": {"kubernetes.io/hostname": NODE, "kubernetes.io/os": "linux", "edgeplex.io/group": "old"}},
                           "spec": {"podCIDR": "10.1.0.0/24"}}),
                ),
                apply(
                    "edgeplex",
                    json!({"metadata": {"labels": {"edgeplex.io/group": "line-1"}}}),
                ),
                // The same value is no conflict: both own it.
                apply(
                    "edgeplex",
                    json!({"metadata": {"labels": {"edgeplex.io/group": "old"}}}),
                ),
                apply_force(
                    "edgeplex",
                    json!({"metadata": {"labels": {"edgeplex.io/group": "line-1"}}}),
                ),
                // Two appliers share a label; one lets go, it stays.
                apply_force(
                    "admin",
                    json!({"metadata": {"labels": {"edgeplex.io/group": "line-1"}}}),
                ),
                apply_force(
                    "edgeplex",
                    json!({"metadata": {"labels": {"edgeplex.io/power": "normal"}}}),
                ),
            ],
        ),
        &[3],
    );
}

#[test]
fn conditions_merge_by_type_and_the_kubelets_stay() {
    let cond = |t: &str, s: &str, r: &str| {
        json!({"type": t, "status": s, "reason": r, "message": "m",
        "lastTransitionTime": "2026-11-29T10:00:00Z", "lastHeartbeatTime": "2026-11-29T10:00:00Z"})
    };
    check(
        "conditions",
        then(
            joined(),
            vec![
                apply_status(
                    "edgeplex",
                    json!({"status": {"conditions": [cond("BatteryCritical", "False", "OnMains")]}}),
                ),
                apply_status(
                    "edgeplex",
                    json!({"status": {"conditions": [cond("BatteryCritical", "True", "CapacityCritical"), cond("DeviceFailure", "False", "DevicesUp")]}}),
                ),
                update_status(
                    "kubelet",
                    json!({"status": {"conditions": [
                        {"type": "MemoryPressure", "status": "False", "reason": "KubeletHasSufficientMemory"},
                        {"type": "Ready", "status": "False", "reason": "KubeletNotReady"},
                        cond("BatteryCritical", "True", "CapacityCritical"),
                        cond("DeviceFailure", "False", "DevicesUp")]}}),
                ),
                // No battery any more: BatteryCritical is no longer asserted.
                apply_status(
                    "edgeplex",
                    json!({"status": {"conditions": [cond("DeviceFailure", "False", "DevicesUp")]}}),
                ),
                // Labels by the same manager on the main resource are a separate owner.
                apply_force(
                    "edgeplex",
                    json!({"metadata": {"labels": {"edgeplex.io/group": "line-1"}}}),
                ),
            ],
        ),
        &[],
    );
}

#[test]
fn taints_are_one_atomic_list() {
    let base = |taints: Value| {
        json!({"metadata": {"labels": {"kubernetes.io/hostname": NODE, "kubernetes.io/os": "linux"}},
               "spec": {"podCIDR": "10.1.0.0/24", "taints": taints}})
    };
    let ours =
        json!({"key": "edgeplex.io/failover", "value": "battery-critical", "effect": "NoExecute"});
    let admin = json!({"key": "dedicated", "value": "cameras", "effect": "NoSchedule"});
    let unreachable = json!({"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"});
    check(
        "taints",
        then(
            joined(),
            vec![
                update("admin", base(json!([admin]))),
                // edgeplex's read-modify-write keeps the admin's taint.
                update("edgeplex", base(json!([admin, ours]))),
                update("node-controller", base(json!([admin, ours, unreachable]))),
                update("edgeplex", base(json!([admin, unreachable]))),
                // An applier of the list takes all of it (an atomic list has one owner set).
                apply_force("admin", json!({"spec": {"taints": [admin]}})),
                update("admin", base(json!([]))),
            ],
        ),
        &[],
    );
}

#[test]
fn cordon_and_spec_fields_change_owner() {
    check(
        "spec",
        then(
            joined(),
            vec![
                update(
                    "kubectl-cordon",
                    json!({"metadata": {"labels": {"kubernetes.io/hostname": NODE, "kubernetes.io/os": "linux"}},
                           "spec": {"podCIDR": "10.1.0.0/24", "unschedulable": true}}),
                ),
                apply("admin", json!({"spec": {"unschedulable": false}})),
                apply_force("admin", json!({"spec": {"unschedulable": false}})),
                apply_force("admin", json!({})),
            ],
        ),
        &[3],
    );
}
