//! Strict checks of the Kubernetes manifests under `manifests/` (agent, failover, examples).
//!
//! 1. **Strict parsing.** Every YAML document is deserialized into its `k8s-openapi` type (by
//!    `apiVersion` and `kind`), serialized back to JSON and compared with the original document.
//!    The generated types ignore unknown fields, so a misspelled field (`imagePullPolcy`,
//!    `readonly`) is dropped on the way through and shows up as a difference. A negative test
//!    proves it.
//! 2. **Consistency.** The agent writes the rings into the hostPath `/dev/shm/edgeplex`; every
//!    consumer mounts that hostPath read-only at the same path; probes hit `/healthz` and
//!    `/readyz` on the port named `metrics`; selectors match template labels; service accounts
//!    exist (that RBAC grants exactly what the code requests is checked end to end, against
//!    recorded requests, in `tests/e2e_failover.rs`); the critical workload does not tolerate
//!    the failover taint; each `kustomization.yaml` lists every file of its directory.
//!
//! `manifests/monitoring/` holds prometheus-operator custom resources (not in k8s-openapi); it is
//! only checked for selecting the agent's and controller's pods and port.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use edgeplex::kube::keys;
use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, Namespace, PodSpec, PodTemplateSpec, ServiceAccount, Toleration,
};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The host directory the agent writes its rings into, and where every pod mounts it.
const RING_DIR: &str = "/dev/shm/edgeplex";
/// The namespace of everything.
const NAMESPACE: &str = "edgeplex";
/// Directories whose manifests are ours and must be fully typed.
const DIRS: &[&str] = &["agent", "failover", "examples"];

fn manifests() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests")
}

/// One parsed Kubernetes object.
#[derive(Debug, Clone)]
enum Obj {
    Namespace(Box<Namespace>),
    ServiceAccount(Box<ServiceAccount>),
    ConfigMap(Box<ConfigMap>),
    ClusterRole(Box<ClusterRole>),
    ClusterRoleBinding(Box<ClusterRoleBinding>),
    Role(Box<Role>),
    RoleBinding(Box<RoleBinding>),
    DaemonSet(Box<DaemonSet>),
    Deployment(Box<Deployment>),
    CronJob(Box<CronJob>),
    AdmissionPolicy(Box<ValidatingAdmissionPolicy>),
    AdmissionPolicyBinding(Box<ValidatingAdmissionPolicyBinding>),
}

/// An object with where it came from.
#[derive(Debug, Clone)]
struct Doc {
    file: String,
    obj: Obj,
}

/// Deserialize into `T`, serialize back, and require the same JSON: any field `T` does not know
/// (a misspelling) would be dropped and so differ.
fn roundtrip<T: DeserializeOwned + Serialize>(doc: &Value) -> Result<T, String> {
    let typed: T = serde_path_to_error::deserialize(doc.clone()).map_err(|e| {
        let path = e.path().to_string();
        format!("{path}: {}", e.into_inner())
    })?;
    let back = serde_json::to_value(&typed).map_err(|e| e.to_string())?;
    if let Some(diff) = first_difference(&normalize(doc), &normalize(&back), String::new()) {
        return Err(diff);
    }
    Ok(typed)
}

/// Drop nulls (absent and null mean the same to the API) and compare numbers as f64.
fn normalize(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), normalize(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(normalize).collect()),
        Value::Number(n) => n
            .as_f64()
            .and_then(serde_json::Number::from_f64)
            .map_or_else(|| v.clone(), Value::Number),
        _ => v.clone(),
    }
}

/// The first place where `orig` and `back` differ, as a message naming the field.
fn first_difference(orig: &Value, back: &Value, at: String) -> Option<String> {
    match (orig, back) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                let here = if at.is_empty() {
                    k.clone()
                } else {
                    format!("{at}.{k}")
                };
                match b.get(k) {
                    None => {
                        return Some(format!(
                            "{here}: unknown field (not in the typed object; misspelled?)"
                        ))
                    }
                    Some(w) => {
                        if let Some(d) = first_difference(v, w, here) {
                            return Some(d);
                        }
                    }
                }
            }
            b.keys()
                .find(|k| !a.contains_key(*k))
                .map(|k| format!("{at}.{k}: appeared on the way through"))
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => a
            .iter()
            .zip(b)
            .enumerate()
            .find_map(|(i, (v, w))| first_difference(v, w, format!("{at}[{i}]"))),
        _ if orig == back => None,
        _ => Some(format!("{at}: {orig} came back as {back}")),
    }
}

/// Parse one document strictly into its type.
fn parse_obj(doc: &Value) -> Result<Obj, String> {
    let api = doc["apiVersion"].as_str().unwrap_or_default();
    let kind = doc["kind"].as_str().unwrap_or_default();
    Ok(match (api, kind) {
        ("v1", "Namespace") => Obj::Namespace(Box::new(roundtrip(doc)?)),
        ("v1", "ServiceAccount") => Obj::ServiceAccount(Box::new(roundtrip(doc)?)),
        ("v1", "ConfigMap") => Obj::ConfigMap(Box::new(roundtrip(doc)?)),
        ("rbac.authorization.k8s.io/v1", "ClusterRole") => {
            Obj::ClusterRole(Box::new(roundtrip(doc)?))
        }
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
            Obj::ClusterRoleBinding(Box::new(roundtrip(doc)?))
        }
        ("rbac.authorization.k8s.io/v1", "Role") => Obj::Role(Box::new(roundtrip(doc)?)),
        ("rbac.authorization.k8s.io/v1", "RoleBinding") => {
            Obj::RoleBinding(Box::new(roundtrip(doc)?))
        }
        ("apps/v1", "DaemonSet") => Obj::DaemonSet(Box::new(roundtrip(doc)?)),
        ("apps/v1", "Deployment") => Obj::Deployment(Box::new(roundtrip(doc)?)),
        ("batch/v1", "CronJob") => Obj::CronJob(Box::new(roundtrip(doc)?)),
        ("admissionregistration.k8s.io/v1", "ValidatingAdmissionPolicy") => {
            Obj::AdmissionPolicy(Box::new(roundtrip(doc)?))
        }
        ("admissionregistration.k8s.io/v1", "ValidatingAdmissionPolicyBinding") => {
            Obj::AdmissionPolicyBinding(Box::new(roundtrip(doc)?))
        }
        _ => {
            return Err(format!(
                "apiVersion {api:?} kind {kind:?} is not a known kind"
            ))
        }
    })
}

/// Every YAML document of `text` as JSON (empty documents skipped).
fn yaml_docs(text: &str) -> Result<Vec<Value>, String> {
    let mut out = Vec::new();
    for de in serde_yaml::Deserializer::from_str(text) {
        let v = Value::deserialize(de).map_err(|e| e.to_string())?;
        if !v.is_null() {
            out.push(v);
        }
    }
    Ok(out)
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.extension().is_some_and(|x| x == "yaml" || x == "yml")
                && p.file_name().is_some_and(|n| n != "kustomization.yaml")
        })
        .collect();
    files.sort();
    files
}

/// Every object of every manifest directory we own; panics listing every failure.
fn all_docs() -> Vec<Doc> {
    let mut docs = Vec::new();
    let mut errors = Vec::new();
    for dir in DIRS {
        for file in yaml_files(&manifests().join(dir)) {
            let name = format!("{dir}/{}", file.file_name().unwrap().to_string_lossy());
            let text = std::fs::read_to_string(&file).unwrap();
            match yaml_docs(&text) {
                Err(e) => errors.push(format!("{name}: not YAML: {e}")),
                Ok(values) => {
                    assert!(!values.is_empty(), "{name} has no documents");
                    for (i, v) in values.iter().enumerate() {
                        match parse_obj(v) {
                            Ok(obj) => docs.push(Doc {
                                file: name.clone(),
                                obj,
                            }),
                            Err(e) => errors.push(format!("{name} document {i}: {e}")),
                        }
                    }
                }
            }
        }
    }
    assert!(errors.is_empty(), "manifests:\n{}", errors.join("\n"));
    docs
}

fn workloads(docs: &[Doc]) -> Vec<(String, String, &PodTemplateSpec)> {
    docs.iter()
        .filter_map(|d| {
            let (name, tpl) = match &d.obj {
                Obj::DaemonSet(x) => (x.metadata.name.clone(), &x.spec.as_ref()?.template),
                Obj::Deployment(x) => (x.metadata.name.clone(), &x.spec.as_ref()?.template),
                Obj::CronJob(x) => (
                    x.metadata.name.clone(),
                    &x.spec.as_ref()?.job_template.spec.as_ref()?.template,
                ),
                _ => return None,
            };
            Some((d.file.clone(), name.unwrap_or_default(), tpl))
        })
        .collect()
}

fn pod_spec(tpl: &PodTemplateSpec) -> &PodSpec {
    tpl.spec.as_ref().expect("pod template has a spec")
}

fn find<'a, T>(docs: &'a [Doc], f: impl Fn(&'a Obj) -> Option<&'a T>, name: &str) -> &'a T
where
    T: k8s_openapi::Metadata<Ty = k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>,
{
    docs.iter()
        .filter_map(|d| f(&d.obj))
        .find(|o| o.metadata().name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("no object named {name:?}"))
}

#[test]
fn every_manifest_parses_strictly() {
    let docs = all_docs();
    assert!(docs.len() >= 15, "only {} objects", docs.len());
    // Everything is in namespace edgeplex (cluster-scoped kinds have none).
    for d in &docs {
        let (ns, scoped) = match &d.obj {
            Obj::Namespace(x) => (x.metadata.namespace.clone(), false),
            Obj::ClusterRole(x) => (x.metadata.namespace.clone(), false),
            Obj::ClusterRoleBinding(x) => (x.metadata.namespace.clone(), false),
            Obj::ServiceAccount(x) => (x.metadata.namespace.clone(), true),
            Obj::ConfigMap(x) => (x.metadata.namespace.clone(), true),
            Obj::Role(x) => (x.metadata.namespace.clone(), true),
            Obj::RoleBinding(x) => (x.metadata.namespace.clone(), true),
            Obj::DaemonSet(x) => (x.metadata.namespace.clone(), true),
            Obj::Deployment(x) => (x.metadata.namespace.clone(), true),
            Obj::CronJob(x) => (x.metadata.namespace.clone(), true),
            Obj::AdmissionPolicy(x) => (x.metadata.namespace.clone(), false),
            Obj::AdmissionPolicyBinding(x) => (x.metadata.namespace.clone(), false),
        };
        if scoped {
            assert_eq!(ns.as_deref(), Some(NAMESPACE), "{}: namespace", d.file);
        } else {
            assert_eq!(
                ns, None,
                "{}: cluster-scoped object with a namespace",
                d.file
            );
        }
    }
}

#[test]
fn a_misspelled_field_is_caught() {
    let text = std::fs::read_to_string(manifests().join("agent/daemonset.yaml")).unwrap();
    let good = yaml_docs(&text).unwrap().remove(0);
    parse_obj(&good).expect("the real DaemonSet parses");

    // A misspelled key deep in the pod template.
    let mut bad = good.clone();
    let container = &mut bad["spec"]["template"]["spec"]["containers"][0];
    let policy = container["imagePullPolicy"].take();
    container.as_object_mut().unwrap().remove("imagePullPolicy");
    container["imagePullPolcy"] = policy;
    let err = parse_obj(&bad).expect_err("imagePullPolcy must be caught");
    assert!(
        err.contains("spec.template.spec.containers[0].imagePullPolcy"),
        "{err}"
    );

    // Case matters: `readonly` is not `readOnly`, and would silently mount read-write.
    let mut bad = good.clone();
    bad["spec"]["template"]["spec"]["containers"][0]["volumeMounts"][0]["readonly"] = true.into();
    let err = parse_obj(&bad).expect_err("readonly must be caught");
    assert!(err.contains("volumeMounts[0].readonly"), "{err}");

    // A misspelled top-level section.
    let mut bad = good.clone();
    let spec = bad.as_object_mut().unwrap().remove("spec").unwrap();
    bad["sepc"] = spec;
    assert!(parse_obj(&bad).unwrap_err().contains("sepc"));

    // A wrong type.
    let mut bad = good;
    bad["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"] = Value::Bool(true);
    assert!(parse_obj(&bad).is_err());

    // An unknown kind.
    let doc = serde_json::json!({"apiVersion": "apps/v1", "kind": "DaemonSett", "metadata": {}});
    assert!(parse_obj(&doc).unwrap_err().contains("DaemonSett"));
}

/// The fields a kustomization.yaml of ours may have.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(dead_code)]
struct Kustomization {
    api_version: String,
    kind: String,
    namespace: Option<String>,
    resources: Vec<String>,
}

#[test]
fn kustomizations_list_every_file() {
    for dir in DIRS {
        let path = manifests().join(dir).join("kustomization.yaml");
        let text = std::fs::read_to_string(&path).unwrap();
        let k: Kustomization =
            serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(k.api_version, "kustomize.config.k8s.io/v1beta1", "{dir}");
        assert_eq!(k.kind, "Kustomization", "{dir}");
        assert_eq!(k.namespace.as_deref(), Some(NAMESPACE), "{dir}");
        let listed: BTreeSet<String> = k.resources.iter().cloned().collect();
        assert_eq!(
            listed.len(),
            k.resources.len(),
            "{dir}: a file listed twice"
        );
        let present: BTreeSet<String> = yaml_files(&manifests().join(dir))
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            listed, present,
            "{dir}/kustomization.yaml resources vs files"
        );
    }
}

fn container<'a>(spec: &'a PodSpec, what: &str) -> &'a Container {
    assert_eq!(spec.containers.len(), 1, "{what}: one container");
    &spec.containers[0]
}

fn metrics_port(c: &Container, port: i32, what: &str) {
    let ports = c.ports.as_deref().unwrap_or_default();
    let named: Vec<_> = ports
        .iter()
        .filter(|p| p.name.as_deref() == Some("metrics"))
        .collect();
    assert_eq!(named.len(), 1, "{what}: one port named metrics");
    assert_eq!(named[0].container_port, port, "{what}: metrics port");
    for (probe, path) in [
        (c.liveness_probe.as_ref(), "/healthz"),
        (c.readiness_probe.as_ref(), "/readyz"),
    ] {
        let get = probe
            .and_then(|p| p.http_get.as_ref())
            .unwrap_or_else(|| panic!("{what}: an HTTP probe for {path}"));
        assert_eq!(get.path.as_deref(), Some(path), "{what}");
        assert_eq!(get.port, IntOrString::String("metrics".into()), "{what}");
    }
}

fn env<'a>(c: &'a Container, name: &str) -> Option<&'a k8s_openapi::api::core::v1::EnvVar> {
    c.env
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find(|e| e.name == name)
}

fn tolerates(t: &[Toleration], key: &str, effect: &str) -> bool {
    t.iter().any(|t| {
        let key_ok = match t.operator.as_deref() {
            Some("Exists") => t.key.as_deref().is_none_or(|k| k.is_empty() || k == key),
            _ => t.key.as_deref() == Some(key),
        };
        key_ok
            && t.effect
                .as_deref()
                .is_none_or(|e| e.is_empty() || e == effect)
    })
}

fn agent_config_text(docs: &[Doc]) -> String {
    let cm = find(
        docs,
        |o| match o {
            Obj::ConfigMap(x) => Some(x.as_ref()),
            _ => None,
        },
        "edgeplex-agent",
    );
    cm.data.as_ref().unwrap()["edgeplex.toml"].clone()
}

#[test]
fn agent_daemonset_writes_the_ring_dir_and_has_probes_devices_and_tolerations() {
    let docs = all_docs();
    let ds = find(
        &docs,
        |o| match o {
            Obj::DaemonSet(x) => Some(x.as_ref()),
            _ => None,
        },
        "edgeplex",
    );
    let spec = ds.spec.as_ref().unwrap();
    let ru = spec.update_strategy.as_ref().unwrap();
    assert_eq!(ru.type_.as_deref(), Some("RollingUpdate"));
    assert_eq!(
        ru.rolling_update.as_ref().unwrap().max_unavailable,
        Some(IntOrString::Int(1))
    );
    let pod = pod_spec(&spec.template);
    let c = container(pod, "agent");
    metrics_port(c, 9464, "agent");

    // The ring directory: hostPath, created if missing, mounted read-write at the same path.
    let vols = pod.volumes.as_deref().unwrap();
    let rings = vols
        .iter()
        .find(|v| v.host_path.as_ref().is_some_and(|h| h.path == RING_DIR))
        .expect("a hostPath volume for the ring dir");
    assert_eq!(
        rings.host_path.as_ref().unwrap().type_.as_deref(),
        Some("DirectoryOrCreate")
    );
    let mount = c
        .volume_mounts
        .as_deref()
        .unwrap()
        .iter()
        .find(|m| m.name == rings.name)
        .expect("the agent mounts the ring dir");
    assert_eq!(mount.mount_path, RING_DIR);
    assert_ne!(mount.read_only, Some(true), "the agent writes the rings");
    assert_eq!(
        env(c, "EDGEPLEX_RING_DIR").and_then(|e| e.value.as_deref()),
        Some(RING_DIR)
    );
    let node_name = env(c, "NODE_NAME").expect("NODE_NAME");
    assert_eq!(
        node_name
            .value_from
            .as_ref()
            .and_then(|v| v.field_ref.as_ref())
            .map(|f| f.field_path.as_str()),
        Some("spec.nodeName")
    );

    // Privileged, so the device cgroup lets it open cameras and serial ports (docs/device-access.md),
    // with the host's /dev read-only and its own root filesystem read-only; memory limited (the
    // limit must include the rings: see the comment).
    let sc = c.security_context.as_ref().unwrap();
    assert_eq!(sc.privileged, Some(true));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_ne!(
        sc.allow_privilege_escalation,
        Some(false),
        "the API server refuses allowPrivilegeEscalation: false with privileged: true"
    );
    let host_dev = vols
        .iter()
        .find(|v| v.host_path.as_ref().is_some_and(|h| h.path == "/dev"))
        .expect("the host's /dev");
    let dev_mount = c
        .volume_mounts
        .as_deref()
        .unwrap()
        .iter()
        .find(|m| m.name == host_dev.name)
        .expect("the agent mounts the host's /dev");
    assert_eq!(
        dev_mount.read_only,
        Some(true),
        "the host's /dev is mounted read-only"
    );
    assert_ne!(
        dev_mount.mount_path, "/dev",
        "not over the container's own /dev"
    );
    let limits = c.resources.as_ref().unwrap().limits.as_ref().unwrap();
    assert!(limits.contains_key("memory"), "a memory limit");
    let requests = c.resources.as_ref().unwrap().requests.as_ref().unwrap();
    assert!(requests.contains_key("memory") && requests.contains_key("cpu"));

    // Runs on tainted nodes: its own failover taint, not-ready and unreachable.
    let t = pod.tolerations.as_deref().unwrap();
    for key in [
        keys::FAILOVER_TAINT,
        "node.kubernetes.io/not-ready",
        "node.kubernetes.io/unreachable",
    ] {
        assert!(tolerates(t, key, "NoExecute"), "agent tolerates {key}");
    }
    assert_eq!(
        pod.service_account_name.as_deref(),
        Some("edgeplex-agent"),
        "agent service account"
    );

    // The agent's config agrees (ring.dir) and the agent itself accepts it.
    let text = agent_config_text(&docs);
    let table: toml::Table = text.parse().unwrap();
    assert!(
        table["ring"].get("dir").is_none(),
        "ring.dir comes from EDGEPLEX_RING_DIR only, so it cannot disagree with the hostPath"
    );
    assert_eq!(
        table["kube"]["lease_namespace"].as_str(),
        Some(NAMESPACE),
        "the Role for leases is in namespace {NAMESPACE}"
    );
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), &text).unwrap();
    let config_mount = c
        .volume_mounts
        .as_deref()
        .unwrap()
        .iter()
        .find(|m| m.name == "config")
        .unwrap();
    let args = c.args.as_deref().unwrap();
    assert_eq!(
        args,
        [
            "run",
            "--config",
            &format!("{}/edgeplex.toml", config_mount.mount_path)
        ]
    );
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_edgeplex"));
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("EDGEPLEX_")) {
        cmd.env_remove(k);
    }
    let out = cmd
        .args(["run", "--check", "--config"])
        .arg(file.path())
        .env("EDGEPLEX_RING_DIR", RING_DIR)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "edgeplex run --check rejects the ConfigMap: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The streams of the agent's ConfigMap.
fn agent_streams(docs: &[Doc]) -> Vec<String> {
    let config: toml::Table = agent_config_text(docs).parse().unwrap();
    config["stream"]
        .as_table()
        .expect("[stream.*] in the ConfigMap")
        .keys()
        .cloned()
        .collect()
}

/// Example consumers get their ring from the device plugin: they request one share of
/// `edgeplex.io/<stream>` for a stream the agent serves and name the ring through the variable
/// Allocate sets, with no ring hostPath. The export CronJob, which keeps state on the node,
/// still mounts the ring directory read-only at the agent's path.
#[test]
fn consumers_get_rings_from_the_device_plugin() {
    use edgeplex::deviceplugin::{env_name, resource_name};
    let docs = all_docs();
    let streams = agent_streams(&docs);
    let mut consumers = 0;
    for (file, name, tpl) in workloads(&docs) {
        if !file.starts_with("examples/") {
            continue;
        }
        let pod = pod_spec(tpl);
        let volumes = pod.volumes.as_deref().unwrap_or_default();
        let ring_vols: Vec<&str> = volumes
            .iter()
            .filter(|v| {
                v.host_path
                    .as_ref()
                    .is_some_and(|h| Path::new(&h.path).starts_with(RING_DIR))
            })
            .map(|v| v.name.as_str())
            .collect();
        for c in pod
            .containers
            .iter()
            .chain(pod.init_containers.as_deref().unwrap_or_default())
        {
            let args = c.args.as_deref().unwrap_or_default();
            let limits = c
                .resources
                .as_ref()
                .and_then(|r| r.limits.clone())
                .unwrap_or_default();
            let vars: Vec<&String> = args
                .iter()
                .filter(|a| a.contains("$(EDGEPLEX_RING_"))
                .collect();
            for var in &vars {
                let stream = streams
                    .iter()
                    .find(|s| **var == format!("$({})", env_name(s)))
                    .unwrap_or_else(|| {
                        panic!("{file} {name}: {var} names no stream of the agent ({streams:?})")
                    });
                let resource = resource_name(stream).unwrap();
                assert_eq!(
                    limits.get(&resource).map(|q| q.0.as_str()),
                    Some("1"),
                    "{file} {name}: {var} without limits {resource}: 1"
                );
                assert!(
                    ring_vols.is_empty(),
                    "{file} {name}: a ring hostPath beside the resource"
                );
                consumers += 1;
            }
            for ring in args.iter().filter(|a| a.ends_with(".ring")) {
                assert_eq!(name, "gps0-export", "{file} {name}: reads {ring} through hostPath; request the stream's resource instead");
                assert!(
                    Path::new(ring).starts_with(RING_DIR),
                    "{file} {name}: {ring}"
                );
                let mounted = c
                    .volume_mounts
                    .as_deref()
                    .unwrap_or_default()
                    .iter()
                    .any(|m| {
                        ring_vols.contains(&m.name.as_str())
                            && m.read_only == Some(true)
                            && m.mount_path == RING_DIR
                            && m.sub_path.is_none()
                    });
                assert!(
                    mounted,
                    "{file} {name}: reads {ring} without a read-only ring mount"
                );
                consumers += 1;
            }
        }
    }
    assert!(
        consumers >= 5,
        "only {consumers} ring consumers in examples/"
    );

    // Two different models on one camera: two Deployments, the same ring, placed by the
    // scheduler (no nodeSelector).
    let models: Vec<_> = ["model-a", "model-b"]
        .iter()
        .map(|n| {
            find(
                &docs,
                |o| match o {
                    Obj::Deployment(x) => Some(x.as_ref()),
                    _ => None,
                },
                n,
            )
        })
        .collect();
    let ring_of = |d: &Deployment| {
        let pod = pod_spec(&d.spec.as_ref().unwrap().template);
        assert_eq!(pod.node_selector, None, "no nodeSelector");
        assert!(pod.affinity.is_none(), "no node affinity");
        container(pod, "model").args.as_deref().unwrap()[2].clone()
    };
    assert_eq!(ring_of(models[0]), ring_of(models[1]));
    assert_eq!(ring_of(models[0]), "$(EDGEPLEX_RING_CAM0)");
    let labels = |d: &Deployment| d.spec.as_ref().unwrap().selector.match_labels.clone();
    assert_ne!(
        labels(models[0]),
        labels(models[1]),
        "two different Deployments"
    );
}

#[test]
fn the_agent_serves_the_device_plugin() {
    let docs = all_docs();
    let config: toml::Table = agent_config_text(&docs).parse().unwrap();
    let dp = &config["device_plugin"];
    assert_eq!(dp["enabled"].as_bool(), Some(true));
    let dir = dp["dir"].as_str().unwrap();
    assert_eq!(dir, edgeplex::deviceplugin::DEFAULT_DIR);
    let ds = find(
        &docs,
        |o| match o {
            Obj::DaemonSet(x) => Some(x.as_ref()),
            _ => None,
        },
        "edgeplex",
    );
    let pod = pod_spec(&ds.spec.as_ref().unwrap().template);
    let c = container(pod, "edgeplex");
    let m = c
        .volume_mounts
        .as_deref()
        .unwrap()
        .iter()
        .find(|m| m.mount_path == dir)
        .expect("the device-plugin directory is mounted where the config says");
    assert_ne!(
        m.read_only,
        Some(true),
        "the agent creates its sockets there"
    );
    let v = pod
        .volumes
        .as_deref()
        .unwrap()
        .iter()
        .find(|v| v.name == m.name)
        .unwrap();
    assert_eq!(v.host_path.as_ref().map(|h| h.path.as_str()), Some(dir));
}

#[test]
fn selectors_match_template_labels() {
    let docs = all_docs();
    let check = |what: &str, sel: &LabelSelector, tpl: &PodTemplateSpec| {
        let want = sel.match_labels.as_ref().expect("matchLabels");
        assert!(!want.is_empty(), "{what}: empty selector");
        assert!(
            sel.match_expressions.is_none(),
            "{what}: keep selectors simple"
        );
        let have = tpl.metadata.as_ref().and_then(|m| m.labels.as_ref());
        for (k, v) in want {
            assert_eq!(
                have.and_then(|h| h.get(k)),
                Some(v),
                "{what}: template lacks {k}={v}"
            );
        }
    };
    let mut n = 0;
    for d in &docs {
        match &d.obj {
            Obj::DaemonSet(x) => {
                let s = x.spec.as_ref().unwrap();
                check(&d.file, &s.selector, &s.template);
            }
            Obj::Deployment(x) => {
                let s = x.spec.as_ref().unwrap();
                check(&d.file, &s.selector, &s.template);
            }
            _ => continue,
        }
        n += 1;
    }
    assert!(n >= 6, "{n} workloads with selectors");
    // Workloads' selectors do not overlap: each Deployment/DaemonSet owns its pods.
    let mut seen = BTreeMap::new();
    for (file, name, tpl) in workloads(&docs) {
        let labels = tpl.metadata.as_ref().unwrap().labels.clone().unwrap();
        let key = labels.get("app.kubernetes.io/name").cloned().unwrap();
        assert!(
            seen.insert(key.clone(), name.clone()).is_none(),
            "{file} {name}: app.kubernetes.io/name={key} used twice"
        );
    }
}

/// Service accounts and bindings hang together. (What the roles grant is checked against what
/// the agent and the controller really request, in `tests/e2e_failover.rs` step 5.)
#[test]
fn service_accounts_exist_and_consumers_have_no_api_access() {
    let docs = all_docs();
    // Every service account a pod or binding names exists; every binding's role exists.
    let accounts: BTreeSet<String> = docs
        .iter()
        .filter_map(|d| match &d.obj {
            Obj::ServiceAccount(s) => s.metadata.name.clone(),
            _ => None,
        })
        .collect();
    assert_eq!(
        accounts,
        BTreeSet::from(["edgeplex-agent".into(), "edgeplex-failover".into()])
    );
    for d in &docs {
        match &d.obj {
            Obj::ClusterRoleBinding(b) => {
                assert_eq!(b.role_ref.kind, "ClusterRole", "{}", d.file);
                find(
                    &docs,
                    |o| match o {
                        Obj::ClusterRole(x) => Some(x.as_ref()),
                        _ => None,
                    },
                    &b.role_ref.name,
                );
            }
            Obj::RoleBinding(b) => {
                assert_eq!(b.role_ref.kind, "Role", "bind Roles with RoleBindings");
                let role = find(
                    &docs,
                    |o| match o {
                        Obj::Role(x) => Some(x.as_ref()),
                        _ => None,
                    },
                    &b.role_ref.name,
                );
                assert_eq!(role.metadata.namespace, b.metadata.namespace, "{}", d.file);
            }
            _ => {}
        }
    }
    for (file, name, tpl) in workloads(&docs) {
        if let Some(sa) = pod_spec(tpl).service_account_name.as_deref() {
            assert!(
                accounts.contains(sa),
                "{file} {name}: no ServiceAccount {sa}"
            );
        }
    }
    let failover_pod = find(
        &docs,
        |o| match o {
            Obj::Deployment(x) => Some(x.as_ref()),
            _ => None,
        },
        "edgeplex-failover",
    );
    assert_eq!(
        pod_spec(&failover_pod.spec.as_ref().unwrap().template)
            .service_account_name
            .as_deref(),
        Some("edgeplex-failover")
    );
    // Consumers need no API access.
    for (file, name, tpl) in workloads(&docs) {
        if file.starts_with("examples/") {
            assert_eq!(pod_spec(tpl).service_account_name, None, "{file} {name}");
        }
    }
}

#[test]
fn failover_controller_deployment() {
    let docs = all_docs();
    let d = find(
        &docs,
        |o| match o {
            Obj::Deployment(x) => Some(x.as_ref()),
            _ => None,
        },
        "edgeplex-failover",
    );
    let spec = d.spec.as_ref().unwrap();
    let replicas = spec.replicas.unwrap_or(1);
    assert!((1..=2).contains(&replicas), "{replicas} replicas");
    let pod = pod_spec(&spec.template);
    let c = container(pod, "failover");
    assert_eq!(c.args.as_deref().unwrap()[0], "failover");
    metrics_port(c, 9465, "failover");
    assert!(env(c, "POD_NAME").is_some(), "identity for leader election");
}

#[test]
fn the_critical_workload_does_not_tolerate_the_failover_taint() {
    let docs = all_docs();
    let d = find(
        &docs,
        |o| match o {
            Obj::Deployment(x) => Some(x.as_ref()),
            _ => None,
        },
        "critical-inspector",
    );
    let spec = d.spec.as_ref().unwrap();
    assert_eq!(spec.replicas, Some(1));
    let pod = pod_spec(&spec.template);
    let sel = pod.node_selector.as_ref().unwrap();
    assert!(sel.contains_key(keys::GROUP), "targets a group");
    assert_eq!(sel.get(keys::ACTIVE), Some(&"true".to_owned()));
    let t = pod.tolerations.as_deref().unwrap_or_default();
    assert!(
        !tolerates(t, keys::FAILOVER_TAINT, "NoExecute"),
        "the critical workload must be evicted by {}",
        keys::FAILOVER_TAINT
    );
    // The negative check of the check: the agent does tolerate it.
    assert!(tolerates(
        &[Toleration {
            operator: Some("Exists".into()),
            ..Toleration::default()
        }],
        keys::FAILOVER_TAINT,
        "NoExecute"
    ));
    // Its image is pre-pulled on every node of the group.
    let image = container(pod, "critical").image.clone();
    let prepull = workloads(&docs)
        .into_iter()
        .find(|(_, n, _)| n == "critical-inspector-prepull")
        .expect("a pre-pull DaemonSet");
    let pp = pod_spec(prepull.2);
    assert_eq!(
        pp.node_selector.as_ref().unwrap().get(keys::GROUP),
        sel.get(keys::GROUP)
    );
    assert!(pp
        .init_containers
        .as_deref()
        .unwrap()
        .iter()
        .any(|c| c.image == image));
}

#[test]
fn group_daemonset_and_export_cronjob() {
    let docs = all_docs();
    let (_, _, tpl) = workloads(&docs)
        .into_iter()
        .find(|(_, n, _)| n == "line-1-gps-logger")
        .unwrap();
    let sel = pod_spec(tpl).node_selector.as_ref().unwrap();
    let config: toml::Table = agent_config_text(&docs).parse().unwrap();
    let group = config["node"]["group"].as_str().unwrap();
    assert_eq!(sel.get(keys::GROUP).map(String::as_str), Some(group));

    let cj = find(
        &docs,
        |o| match o {
            Obj::CronJob(x) => Some(x.as_ref()),
            _ => None,
        },
        "gps0-export",
    );
    let spec = cj.spec.as_ref().unwrap();
    assert_eq!(spec.concurrency_policy.as_deref(), Some("Forbid"));
    let pod = pod_spec(&spec.job_template.spec.as_ref().unwrap().template);
    let c = container(pod, "export");
    let args = c.args.as_deref().unwrap();
    assert_eq!(args[0], "export");
    let after = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .map(|i| args[i + 1].as_str())
            .unwrap_or_else(|| panic!("export without {flag}"))
    };
    let out = after("--out");
    assert!(Path::new(after("--state")).starts_with(out));
    assert!(after("--upload").starts_with("http://"));
    // --out is a writable, persistent mount (the state must survive the pod).
    let m = c
        .volume_mounts
        .as_deref()
        .unwrap()
        .iter()
        .find(|m| m.mount_path == out)
        .expect("--out is mounted");
    assert_ne!(m.read_only, Some(true));
    let v = pod
        .volumes
        .as_deref()
        .unwrap()
        .iter()
        .find(|v| v.name == m.name)
        .unwrap();
    assert!(v.host_path.is_some(), "the export state lives on the node");
}

#[test]
fn monitoring_selects_the_agent_and_controller_pods() {
    let docs = all_docs();
    let text = std::fs::read_to_string(manifests().join("monitoring/podmonitor.yaml")).unwrap();
    let pm = yaml_docs(&text).unwrap().remove(0);
    let exprs = pm["spec"]["selector"]["matchExpressions"]
        .as_array()
        .unwrap();
    let wanted: BTreeSet<String> = exprs
        .iter()
        .filter(|e| e["key"] == "app.kubernetes.io/name" && e["operator"] == "In")
        .flat_map(|e| e["values"].as_array().unwrap().iter())
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    let port = pm["spec"]["podMetricsEndpoints"][0]["port"]
        .as_str()
        .unwrap();
    for (file, name, tpl) in workloads(&docs) {
        if file.starts_with("examples/") {
            continue;
        }
        let label =
            &tpl.metadata.as_ref().unwrap().labels.as_ref().unwrap()["app.kubernetes.io/name"];
        assert!(
            wanted.contains(label),
            "{file} {name}: PodMonitor misses {label}"
        );
        let c = container(pod_spec(tpl), &name);
        assert!(
            c.ports
                .as_deref()
                .unwrap()
                .iter()
                .any(|p| p.name.as_deref() == Some(port)),
            "{file} {name}: no port named {port}"
        );
    }
}

/// RBAC cannot limit the agent to its own Node; the admission policy does: it matches the
/// agent's service account and compares the object's name with the token's node-name claim.
#[test]
fn the_agent_may_write_only_its_own_node() {
    let docs = yaml_docs(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/manifests/agent/admission-policy.yaml"
        ))
        .unwrap(),
    )
    .unwrap();
    let mut policy = None;
    let mut binding = None;
    for d in &docs {
        match parse_obj(d).unwrap() {
            Obj::AdmissionPolicy(p) => policy = Some(p),
            Obj::AdmissionPolicyBinding(b) => binding = Some(b),
            _ => panic!("unexpected document in admission-policy.yaml"),
        }
    }
    let (policy, binding) = (policy.expect("a policy"), binding.expect("a binding"));
    let spec = policy.spec.as_ref().unwrap();
    let name = policy.metadata.name.as_deref().unwrap();
    let b = binding.spec.as_ref().unwrap();
    assert_eq!(b.policy_name.as_deref(), Some(name));
    assert_eq!(
        b.validation_actions.as_deref(),
        Some(&["Deny".to_owned()][..])
    );
    let rules = spec
        .match_constraints
        .as_ref()
        .unwrap()
        .resource_rules
        .as_ref()
        .unwrap();
    let resources: Vec<&str> = rules
        .iter()
        .flat_map(|r| r.resources.iter().flatten().map(String::as_str))
        .collect();
    for r in ["nodes", "nodes/status", "leases"] {
        assert!(resources.contains(&r), "the policy must cover {r}");
    }
    let cond = &spec.match_conditions.as_ref().unwrap()[0].expression;
    assert!(
        cond.contains("system:serviceaccount:edgeplex:edgeplex-agent"),
        "matches the agent's service account: {cond}"
    );
    let check = &spec.validations.as_ref().unwrap()[0].expression;
    assert!(
        check.contains("authentication.kubernetes.io/node-name") && check.contains("request.name")
    );
}

/// The admission policy, evaluated: its CEL expressions run in a CEL interpreter (the `cel`
/// crate) against admission requests shaped as kube-apiserver builds them, with the policy's
/// matching rules and failure policy applied as the apiserver does. Not kube-apiserver itself:
/// its CEL extension libraries are absent, and the policy uses none of them.
#[test]
fn the_admission_policy_admits_only_writes_to_the_agents_own_node_and_lease() {
    let text = std::fs::read_to_string(manifests().join("agent/admission-policy.yaml")).unwrap();
    let policy = yaml_docs(&text)
        .unwrap()
        .iter()
        .find_map(|d| match parse_obj(d).unwrap() {
            Obj::AdmissionPolicy(p) => Some(p),
            _ => None,
        })
        .expect("a ValidatingAdmissionPolicy");
    let spec = policy.spec.expect("spec");
    const AGENT: &str = "system:serviceaccount:edgeplex:edgeplex-agent";
    const CLAIM: &str = "authentication.kubernetes.io/node-name";
    let on = |node: &'static str| vec![(CLAIM, vec![node])];
    // The whole user extra of the two tokens the agent runs with, as kube-apiserver fills it
    // (k8s.io/apiserver/pkg/authentication/serviceaccount ServiceAccountInfo.UserInfo):
    // the pod's projected token (a DaemonSet pod), bound to the pod, carries the pod's and its
    // node's name and uid; the snap's token, `kubectl create token edgeplex-agent
    // --bound-object-kind Node --bound-object-name NODE` (docs/microk8s.md), carries only the
    // node's. Both carry the token's credential id.
    let pod_token = |node: &'static str| {
        vec![
            (
                "authentication.kubernetes.io/pod-name",
                vec!["edgeplex-x7k2p"],
            ),
            (
                "authentication.kubernetes.io/pod-uid",
                vec!["6f1c2a4e-0000-4000-8000-000000000001"],
            ),
            (CLAIM, vec![node]),
            (
                "authentication.kubernetes.io/node-uid",
                vec!["9b7d3c1a-0000-4000-8000-000000000002"],
            ),
            (
                "authentication.kubernetes.io/credential-id",
                vec!["JTI=2d5e9f70-0000-4000-8000-000000000003"],
            ),
        ]
    };
    let snap_token = |node: &'static str| {
        vec![
            (CLAIM, vec![node]),
            (
                "authentication.kubernetes.io/node-uid",
                vec!["9b7d3c1a-0000-4000-8000-000000000002"],
            ),
            (
                "authentication.kubernetes.io/credential-id",
                vec!["JTI=7a0c4b18-0000-4000-8000-000000000004"],
            ),
        ]
    };
    // The unbound token docs/microk8s.md used to create (`kubectl create token edgeplex-agent
    // --duration=8760h`): a credential id, no node.
    let unbound_token = || {
        vec![(
            "authentication.kubernetes.io/credential-id",
            vec!["JTI=11111111-0000-4000-8000-000000000005"],
        )]
    };
    let node = ("", "v1", "nodes", "");
    let status = ("", "v1", "nodes", "status");
    let lease = ("coordination.k8s.io", "v1", "leases", "");
    use Verdict::*;
    let cases: Vec<(&str, Req, Verdict)> = vec![
        (
            "own node, labels",
            Req::new("UPDATE", node, "edge-a", AGENT, on("edge-a")),
            Allowed,
        ),
        (
            "own node, conditions",
            Req::new("UPDATE", status, "edge-a", AGENT, on("edge-a")),
            Allowed,
        ),
        (
            "own Lease, create",
            Req::new("CREATE", lease, "edge-a", AGENT, on("edge-a")),
            Allowed,
        ),
        (
            "own Lease, renew",
            Req::new("UPDATE", lease, "edge-a", AGENT, on("edge-a")),
            Allowed,
        ),
        (
            "another node",
            Req::new("UPDATE", node, "edge-b", AGENT, on("edge-a")),
            Denied,
        ),
        (
            "another node's status",
            Req::new("UPDATE", status, "edge-b", AGENT, on("edge-a")),
            Denied,
        ),
        (
            "another node's Lease",
            Req::new("UPDATE", lease, "edge-b", AGENT, on("edge-a")),
            Denied,
        ),
        (
            "delete another node",
            Req::new("DELETE", node, "edge-b", AGENT, on("edge-a")),
            Denied,
        ),
        (
            "pod token, own node",
            Req::new("UPDATE", node, "edge-a", AGENT, pod_token("edge-a")),
            Allowed,
        ),
        (
            "pod token, own Lease",
            Req::new("UPDATE", lease, "edge-a", AGENT, pod_token("edge-a")),
            Allowed,
        ),
        (
            "pod token, another node's status",
            Req::new("UPDATE", status, "edge-b", AGENT, pod_token("edge-a")),
            Denied,
        ),
        (
            "snap's node-bound token, own node",
            Req::new("UPDATE", node, "edge-a", AGENT, snap_token("edge-a")),
            Allowed,
        ),
        (
            "snap's node-bound token, own conditions",
            Req::new("UPDATE", status, "edge-a", AGENT, snap_token("edge-a")),
            Allowed,
        ),
        (
            "snap's node-bound token, own Lease",
            Req::new("CREATE", lease, "edge-a", AGENT, snap_token("edge-a")),
            Allowed,
        ),
        (
            "snap's node-bound token, another node",
            Req::new("UPDATE", node, "edge-b", AGENT, snap_token("edge-a")),
            Denied,
        ),
        (
            "snap's node-bound token, another node's Lease",
            Req::new("UPDATE", lease, "edge-b", AGENT, snap_token("edge-a")),
            Denied,
        ),
        (
            "unbound token (the old docs/microk8s.md), own node",
            Req::new("UPDATE", node, "edge-a", AGENT, unbound_token()),
            Denied,
        ),
        // A token without the claim (a legacy Secret token, or a cluster before 1.30).
        (
            "no node-name claim",
            Req::new("UPDATE", node, "edge-a", AGENT, vec![]),
            Denied,
        ),
        (
            "empty claim",
            Req::new("UPDATE", node, "edge-a", AGENT, vec![(CLAIM, vec![])]),
            Denied,
        ),
        // Not the agent: the policy does not apply (RBAC alone decides).
        (
            "failover controller",
            Req::new(
                "UPDATE",
                node,
                "edge-b",
                "system:serviceaccount:edgeplex:edgeplex-failover",
                vec![],
            ),
            NotMatched,
        ),
        (
            "kubelet",
            Req::new("UPDATE", status, "edge-b", "system:node:edge-b", vec![]),
            NotMatched,
        ),
        (
            "admin",
            Req::new("DELETE", node, "edge-b", "kubernetes-admin", vec![]),
            NotMatched,
        ),
        // Not a node or a Lease: out of the policy's rules.
        (
            "the agent's Events",
            Req::new(
                "CREATE",
                ("", "v1", "events", ""),
                "edge-b.1",
                AGENT,
                on("edge-a"),
            ),
            NotMatched,
        ),
    ];
    let mut wrong = Vec::new();
    for (what, req, want) in &cases {
        let got = admit(&spec, req);
        if got != *want {
            wrong.push(format!("{what}: expected {want:?}, got {got:?}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// The policy does not apply to the request.
    NotMatched,
    Allowed,
    Denied,
}

/// The parts of an admission request the policy can see.
struct Req {
    request: Value,
}

impl Req {
    fn new(
        operation: &str,
        (group, version, resource, sub): (&str, &str, &str, &str),
        name: &str,
        username: &str,
        extra: Vec<(&str, Vec<&str>)>,
    ) -> Req {
        let namespace = if resource == "leases" || resource == "events" {
            "edgeplex"
        } else {
            ""
        };
        let extra: serde_json::Map<String, Value> = extra
            .into_iter()
            .map(|(k, v)| (k.to_owned(), serde_json::json!(v)))
            .collect();
        Req {
            request: serde_json::json!({
                "uid": "0c6f7b2e-0000-4000-8000-000000000000",
                "kind": {"group": group, "version": version, "kind": ""},
                "resource": {"group": group, "version": version, "resource": resource},
                "subResource": sub,
                "name": name,
                "namespace": namespace,
                "operation": operation,
                "userInfo": {"username": username, "uid": "u", "groups": ["system:authenticated"], "extra": extra},
                "dryRun": false,
            }),
        }
    }
}

/// One CEL expression on `request`: `Ok(bool)`, or the evaluation error.
fn eval(expression: &str, req: &Req) -> Result<bool, String> {
    let program = cel::Program::compile(expression).map_err(|e| format!("compile: {e}"))?;
    let mut ctx = cel::Context::default();
    ctx.add_variable(
        "request",
        cel::to_value(&req.request).map_err(|e| e.to_string())?,
    )
    .map_err(|e| e.to_string())?;
    match program.execute(&ctx) {
        Ok(cel::Value::Bool(b)) => Ok(b),
        Ok(other) => Err(format!("not a bool: {other:?}")),
        Err(e) => Err(format!("{e:?}")),
    }
}

/// Admission as kube-apiserver runs one ValidatingAdmissionPolicy bound with `Deny`: match the
/// resource rules, then the match conditions (all true to apply), then the validations (all
/// true to admit); an evaluation error counts as the failure policy says.
fn admit(
    spec: &k8s_openapi::api::admissionregistration::v1::ValidatingAdmissionPolicySpec,
    req: &Req,
) -> Verdict {
    let r = &req.request;
    let s = |p: &str| r.pointer(p).and_then(Value::as_str).unwrap_or_default();
    let resource = match s("/subResource") {
        "" => s("/resource/resource").to_owned(),
        sub => format!("{}/{sub}", s("/resource/resource")),
    };
    let any =
        |list: &Option<Vec<String>>, v: &str| list.iter().flatten().any(|x| x == "*" || x == v);
    let rules = spec
        .match_constraints
        .as_ref()
        .and_then(|m| m.resource_rules.as_ref())
        .expect("resource rules");
    let matched = rules.iter().any(|rule| {
        any(&rule.api_groups, s("/resource/group"))
            && any(&rule.api_versions, s("/resource/version"))
            && any(&rule.operations, s("/operation"))
            && any(&rule.resources, &resource)
    });
    if !matched {
        return Verdict::NotMatched;
    }
    let fail_closed = spec.failure_policy.as_deref().unwrap_or("Fail") == "Fail";
    let on_error = |e: String| {
        assert!(
            !e.starts_with("compile:"),
            "the policy does not compile: {e}"
        );
        if fail_closed {
            Verdict::Denied
        } else {
            Verdict::Allowed
        }
    };
    for c in spec.match_conditions.iter().flatten() {
        match eval(&c.expression, req) {
            Ok(true) => {}
            Ok(false) => return Verdict::NotMatched,
            Err(e) => return on_error(e),
        }
    }
    for v in spec.validations.iter().flatten() {
        match eval(&v.expression, req) {
            Ok(true) => {}
            Ok(false) => return Verdict::Denied,
            Err(e) => return on_error(e),
        }
    }
    Verdict::Allowed
}

// ---------------------------------------------------------------------------------------------
// Pod Security Standards, "restricted" profile
// ---------------------------------------------------------------------------------------------

/// Every rule of the Pod Security "restricted" profile (which includes "baseline") that a pod
/// template can break, checked as the `PodSecurity` admission plugin defines them. Returns one
/// line per violation.
fn restricted_violations(pod: &PodSpec) -> Vec<String> {
    let mut v = Vec::new();
    // baseline: host namespaces
    for (field, on) in [
        ("hostNetwork", pod.host_network),
        ("hostPID", pod.host_pid),
        ("hostIPC", pod.host_ipc),
    ] {
        if on == Some(true) {
            v.push(format!("{field}: true"));
        }
    }
    let psc = pod.security_context.clone().unwrap_or_default();
    // baseline: sysctls only from the safe set
    const SAFE_SYSCTLS: &[&str] = &[
        "kernel.shm_rmid_forced",
        "net.ipv4.ip_local_port_range",
        "net.ipv4.ip_unprivileged_port_start",
        "net.ipv4.tcp_syncookies",
        "net.ipv4.ping_group_range",
        "net.ipv4.ip_local_reserved_ports",
        "net.ipv4.tcp_keepalive_time",
        "net.ipv4.tcp_fin_timeout",
        "net.ipv4.tcp_keepalive_intvl",
        "net.ipv4.tcp_keepalive_probes",
    ];
    for s in psc.sysctls.as_deref().unwrap_or_default() {
        if !SAFE_SYSCTLS.contains(&s.name.as_str()) {
            v.push(format!("sysctl {}", s.name));
        }
    }
    // restricted: only these volume types (baseline: no hostPath)
    for vol in pod.volumes.as_deref().unwrap_or_default() {
        let allowed = vol.config_map.is_some()
            || vol.csi.is_some()
            || vol.downward_api.is_some()
            || vol.empty_dir.is_some()
            || vol.ephemeral.is_some()
            || vol.persistent_volume_claim.is_some()
            || vol.projected.is_some()
            || vol.secret.is_some();
        if !allowed {
            v.push(format!(
                "volume {:?} is not of an allowed type (hostPath?)",
                vol.name
            ));
        }
    }
    let seccomp_ok = |t: Option<&str>| matches!(t, Some("RuntimeDefault") | Some("Localhost"));
    let pod_seccomp = psc.seccomp_profile.as_ref().map(|p| p.type_.as_str());
    if pod_seccomp == Some("Unconfined") {
        v.push("pod seccompProfile Unconfined".into());
    }
    if psc.run_as_user == Some(0) {
        v.push("pod runAsUser 0".into());
    }
    if let Some(se) = &psc.se_linux_options {
        if se.user.is_some() || se.role.is_some() {
            v.push("pod seLinuxOptions user/role".into());
        }
    }
    let containers = pod
        .containers
        .iter()
        .chain(pod.init_containers.as_deref().unwrap_or_default());
    for c in containers {
        let n = &c.name;
        let sc = c.security_context.clone().unwrap_or_default();
        if sc.privileged == Some(true) {
            v.push(format!("{n}: privileged"));
        }
        if sc.allow_privilege_escalation != Some(false) {
            v.push(format!("{n}: allowPrivilegeEscalation must be false"));
        }
        let non_root = sc.run_as_non_root.or(psc.run_as_non_root);
        if non_root != Some(true) {
            v.push(format!("{n}: runAsNonRoot must be true (pod or container)"));
        }
        if sc.run_as_user == Some(0) {
            v.push(format!("{n}: runAsUser 0"));
        }
        let seccomp = sc
            .seccomp_profile
            .as_ref()
            .map(|p| p.type_.as_str())
            .or(pod_seccomp);
        if !seccomp_ok(seccomp) {
            v.push(format!(
                "{n}: seccompProfile must be RuntimeDefault or Localhost"
            ));
        }
        let caps = sc.capabilities.clone().unwrap_or_default();
        if !caps.drop.unwrap_or_default().iter().any(|d| d == "ALL") {
            v.push(format!("{n}: capabilities must drop ALL"));
        }
        for add in caps.add.unwrap_or_default() {
            if add != "NET_BIND_SERVICE" {
                v.push(format!("{n}: adds capability {add}"));
            }
        }
        if sc.proc_mount.as_deref().is_some_and(|m| m != "Default") {
            v.push(format!("{n}: procMount"));
        }
        if let Some(se) = &sc.se_linux_options {
            if se.user.is_some() || se.role.is_some() {
                v.push(format!("{n}: seLinuxOptions user/role"));
            }
        }
        if sc.windows_options.as_ref().and_then(|w| w.host_process) == Some(true) {
            v.push(format!("{n}: hostProcess"));
        }
        for p in c.ports.as_deref().unwrap_or_default() {
            if p.host_port.is_some_and(|h| h != 0) {
                v.push(format!("{n}: hostPort {:?}", p.host_port));
            }
        }
    }
    v
}

/// Every example workload passes Pod Security "restricted", except the export CronJob, which
/// keeps its state on the node (hostPath, root): the checker must find exactly that.
#[test]
fn example_consumers_pass_pod_security_restricted() {
    let docs = all_docs();
    let mut checked = 0;
    for (file, name, tpl) in workloads(&docs) {
        if !file.starts_with("examples/") {
            continue;
        }
        let violations = restricted_violations(pod_spec(tpl));
        if name == "gps0-export" {
            assert!(
                violations
                    .iter()
                    .any(|v| v.contains("\"export\" is not of an allowed type")),
                "the checker sees the export's hostPath: {violations:?}"
            );
            continue;
        }
        assert!(
            violations.is_empty(),
            "{file} {name} breaks Pod Security \"restricted\":\n  {}",
            violations.join("\n  ")
        );
        checked += 1;
    }
    assert!(checked >= 5, "checked {checked} workloads");
}

/// The checker catches each kind of violation (on a copy of a passing example).
#[test]
fn the_restricted_checker_catches_violations() {
    let docs = all_docs();
    let (_, _, tpl) = workloads(&docs)
        .into_iter()
        .find(|(_, n, _)| n == "model-a")
        .unwrap();
    let good = pod_spec(tpl).clone();
    assert!(restricted_violations(&good).is_empty());
    let mutate = |f: &dyn Fn(&mut PodSpec)| {
        let mut p = good.clone();
        f(&mut p);
        restricted_violations(&p)
    };
    type Mutation = Box<dyn Fn(&mut PodSpec)>;
    let cases: Vec<(&str, Mutation)> = vec![
        ("hostNetwork", Box::new(|p| p.host_network = Some(true))),
        (
            "allowed type",
            Box::new(|p| {
                p.volumes.get_or_insert_with(Vec::new).push(
                    serde_json::from_value(
                        serde_json::json!({"name": "r", "hostPath": {"path": "/dev/shm/edgeplex"}}),
                    )
                    .unwrap(),
                )
            }),
        ),
        (
            "privileged",
            Box::new(|p| {
                p.containers[0]
                    .security_context
                    .as_mut()
                    .unwrap()
                    .privileged = Some(true)
            }),
        ),
        (
            "allowPrivilegeEscalation",
            Box::new(|p| {
                p.containers[0]
                    .security_context
                    .as_mut()
                    .unwrap()
                    .allow_privilege_escalation = None
            }),
        ),
        (
            "runAsNonRoot",
            Box::new(|p| p.security_context.as_mut().unwrap().run_as_non_root = None),
        ),
        (
            "seccompProfile",
            Box::new(|p| p.security_context.as_mut().unwrap().seccomp_profile = None),
        ),
        (
            "drop ALL",
            Box::new(|p| {
                p.containers[0]
                    .security_context
                    .as_mut()
                    .unwrap()
                    .capabilities = None
            }),
        ),
    ];
    for (what, f) in cases {
        let v = mutate(&*f);
        assert!(!v.is_empty(), "{what} not caught");
    }
}

// ---------------------------------------------------------------------------------------------
// Rendered with `kubectl kustomize`, as users apply them
// ---------------------------------------------------------------------------------------------

/// The snap's ring directory, as its configure hook sets it for the instance `edgeplex`.
fn snap_ring_dir() -> String {
    let hook =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("snap/hooks/configure"))
            .unwrap();
    let line = hook
        .lines()
        .find_map(|l| l.trim().strip_prefix("default_ring_dir="))
        .expect("default_ring_dir= in snap/hooks/configure");
    line.trim_matches('"').replace("$instance", "edgeplex")
}

/// Every hostPath under /dev/shm of every pod template in `docs`, as (object, path).
fn shm_host_paths(docs: &[Value]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for d in docs {
        let spec = d
            .pointer("/spec/template/spec")
            .or_else(|| d.pointer("/spec/jobTemplate/spec/template/spec"));
        let Some(spec) = spec else { continue };
        for v in spec["volumes"].as_array().into_iter().flatten() {
            if let Some(p) = v.pointer("/hostPath/path").and_then(Value::as_str) {
                if p.starts_with("/dev/shm") {
                    out.push((
                        format!("{} {}", d["kind"], d["metadata"]["name"]),
                        p.to_owned(),
                    ));
                }
            }
        }
    }
    out
}

/// `manifests/snap` (agent cluster side + examples + the snap-rings component) mounts the
/// snap's ring directory everywhere and runs no agent of its own.
#[test]
fn the_snap_overlay_switches_every_ring_host_path() {
    let Some(docs) = common::kustomize::render(&manifests().join("snap")) else {
        return;
    };
    let dir = snap_ring_dir();
    assert_eq!(dir, "/dev/shm/snap.edgeplex.rings");
    let paths = shm_host_paths(&docs);
    assert!(!paths.is_empty(), "no ring hostPath rendered at all");
    for (obj, p) in &paths {
        assert_eq!(p, &dir, "{obj} mounts {p}");
    }
    use common::kustomize::find;
    assert!(
        find(&docs, "DaemonSet", "edgeplex").is_none(),
        "the snap is the agent"
    );
    assert!(find(&docs, "ConfigMap", "edgeplex-agent").is_none());
    for (kind, name) in [
        ("ServiceAccount", "edgeplex-agent"),
        ("ClusterRole", "edgeplex-agent"),
        ("ValidatingAdmissionPolicy", "edgeplex-agent-own-node"),
        ("CronJob", "gps0-export"),
    ] {
        assert!(find(&docs, kind, name).is_some(), "{kind} {name} missing");
    }
    // Inside the pod the path stays: the export job's arguments still name /dev/shm/edgeplex.
    let job = find(&docs, "CronJob", "gps0-export").unwrap();
    let c = &job["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0];
    assert!(c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["name"] == "rings" && m["mountPath"] == RING_DIR));
}

/// The component on the agent's own kustomization switches the DaemonSet's three places
/// together (hostPath, mountPath, EDGEPLEX_RING_DIR): the device plugin hands the kubelet host
/// paths, so the agent must see its rings at the host's path.
#[test]
fn the_snap_rings_component_keeps_the_daemonset_consistent() {
    let overlay = tempfile::tempdir().unwrap();
    let root = manifests();
    let up = pathdiff(overlay.path(), &root);
    std::fs::write(
        overlay.path().join("kustomization.yaml"),
        format!("resources:\n  - {up}/agent\ncomponents:\n  - {up}/components/snap-rings\n"),
    )
    .unwrap();
    let Some(docs) = common::kustomize::render(overlay.path()) else {
        return;
    };
    let dir = snap_ring_dir();
    let ds = common::kustomize::find(&docs, "DaemonSet", "edgeplex").expect("the agent");
    let spec = &ds["spec"]["template"]["spec"];
    let c = &spec["containers"][0];
    let env = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "EDGEPLEX_RING_DIR")
        .unwrap();
    assert_eq!(env["value"], dir.as_str());
    let mount = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "rings")
        .unwrap();
    assert_eq!(mount["mountPath"], dir.as_str());
    assert_eq!(
        shm_host_paths(&docs),
        [("\"DaemonSet\" \"edgeplex\"".to_owned(), dir)]
    );
    // Without the component, the same three say /dev/shm/edgeplex.
    let plain = common::kustomize::render(&root.join("agent")).unwrap();
    assert_eq!(
        shm_host_paths(&plain),
        [("\"DaemonSet\" \"edgeplex\"".to_owned(), RING_DIR.to_owned())]
    );
}

/// `../..` from `from` up to `/`, then down to `to` (kustomize refuses absolute paths).
fn pathdiff(from: &Path, to: &Path) -> String {
    let from = from.canonicalize().unwrap();
    let ups = from.components().count() - 1;
    let mut s = "..".to_owned();
    for _ in 1..ups {
        s.push_str("/..");
    }
    let to = to.canonicalize().unwrap();
    format!("{s}{}", to.display())
}

/// `kubectl apply -k manifests/monitoring` puts everything in the agent's namespace, and the
/// PodMonitor looks for the agent's and the controller's pods in the namespaces they render
/// into.
#[test]
fn monitoring_renders_into_the_namespace_of_what_it_scrapes() {
    let Some(monitoring) = common::kustomize::render(&manifests().join("monitoring")) else {
        return;
    };
    for d in &monitoring {
        assert_eq!(
            d["metadata"]["namespace"], NAMESPACE,
            "{} {} has no namespace: `kubectl apply -k` would put it in the current one",
            d["kind"], d["metadata"]["name"]
        );
    }
    let pm = common::kustomize::find(&monitoring, "PodMonitor", "edgeplex").unwrap();
    let names: Vec<&str> = pm["spec"]["namespaceSelector"]["matchNames"]
        .as_array()
        .expect("a PodMonitor namespaceSelector")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for (dir, kind, name) in [
        ("agent", "DaemonSet", "edgeplex"),
        ("failover", "Deployment", "edgeplex-failover"),
    ] {
        let docs = common::kustomize::render(&manifests().join(dir)).unwrap();
        let w = common::kustomize::find(&docs, kind, name)
            .unwrap_or_else(|| panic!("{kind} {name} in {dir}"));
        let ns = w["metadata"]["namespace"].as_str().unwrap();
        assert!(
            names.contains(&ns),
            "the PodMonitor does not look in {ns} for {name}"
        );
    }
    assert!(common::kustomize::find(&monitoring, "PrometheusRule", "edgeplex").is_some());
}
