//! RBAC as it is granted and as it is used: the permissions the manifests under `manifests/`
//! give a service account, the permission each API request needs (from its method, path and
//! query, as kube-apiserver's request-info resolver derives them), and a comparison of the two.
//!
//! The end-to-end test records every request the real agent and controller make against the
//! test API server, and checks that the manifests grant each component exactly what it used:
//! nothing it would be refused (a 403 in production), nothing it never asks for.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

/// One permission: in `namespace` (empty: every namespace, as a ClusterRole grants), on
/// `resource` (with `/subresource`) of API group `group`, the verb `verb`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Permission {
    pub namespace: String,
    pub group: String,
    pub resource: String,
    pub verb: String,
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let group = if self.group.is_empty() {
            "core"
        } else {
            &self.group
        };
        let ns = if self.namespace.is_empty() {
            "cluster-wide".to_owned()
        } else {
            format!("in namespace {}", self.namespace)
        };
        write!(f, "{} {group}/{} {ns}", self.verb, self.resource)
    }
}

fn manifests() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests")
}

/// Every YAML document under `manifests/`, as JSON.
fn documents() -> Vec<Value> {
    let mut out = Vec::new();
    let mut dirs = vec![manifests()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.expect("read_dir entry").path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            if !path.extension().is_some_and(|x| x == "yaml" || x == "yml") {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("read a manifest");
            for de in serde_yaml::Deserializer::from_str(&text) {
                let v = Value::deserialize(de)
                    .unwrap_or_else(|e| panic!("{}: not YAML: {e}", path.display()));
                if !v.is_null() {
                    out.push(v);
                }
            }
        }
    }
    out
}

fn names(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// The permissions the manifests grant service account `account` of namespace `namespace`:
/// the rules of every ClusterRole a ClusterRoleBinding binds it to (namespace ""), and of every
/// Role a RoleBinding binds it to (that namespace). Wildcards are refused: least privilege.
pub fn granted(account: &str, namespace: &str) -> BTreeSet<Permission> {
    let docs = documents();
    let role = |kind: &str, name: &str, ns: Option<&str>| -> &Value {
        docs.iter()
            .find(|d| {
                d["kind"] == kind
                    && d["metadata"]["name"] == name
                    && ns.is_none_or(|ns| d["metadata"]["namespace"] == ns)
            })
            .unwrap_or_else(|| panic!("no {kind} {name} in manifests/"))
    };
    let mut out = BTreeSet::new();
    for binding in &docs {
        let kind = binding["kind"].as_str().unwrap_or_default();
        if kind != "ClusterRoleBinding" && kind != "RoleBinding" {
            continue;
        }
        let bound = binding["subjects"].as_array().is_some_and(|s| {
            s.iter().any(|s| {
                s["kind"] == "ServiceAccount" && s["name"] == account && s["namespace"] == namespace
            })
        });
        if !bound {
            continue;
        }
        let role_kind = binding["roleRef"]["kind"].as_str().unwrap_or_default();
        let role_name = binding["roleRef"]["name"].as_str().unwrap_or_default();
        let (rules, ns) = if kind == "ClusterRoleBinding" {
            assert_eq!(
                role_kind, "ClusterRole",
                "a ClusterRoleBinding binds a ClusterRole"
            );
            (&role(role_kind, role_name, None)["rules"], String::new())
        } else {
            let ns = binding["metadata"]["namespace"]
                .as_str()
                .unwrap_or_else(|| panic!("RoleBinding {role_name} has no namespace"));
            assert_eq!(role_kind, "Role", "bind Roles with RoleBindings");
            (
                &role(role_kind, role_name, Some(ns))["rules"],
                ns.to_owned(),
            )
        };
        for rule in rules.as_array().map_or(&[][..], Vec::as_slice) {
            assert!(
                rule.get("resourceNames").is_none() && rule.get("nonResourceURLs").is_none(),
                "{role_name}: resourceNames and nonResourceURLs are not modelled here: {rule}"
            );
            for group in names(&rule["apiGroups"]) {
                for resource in names(&rule["resources"]) {
                    for verb in names(&rule["verbs"]) {
                        assert!(
                            ![&group, &resource, &verb].contains(&&"*".to_owned()),
                            "{role_name}: a wildcard grants more than any code uses: {rule}"
                        );
                        out.insert(Permission {
                            namespace: ns.clone(),
                            group: group.clone(),
                            resource: resource.clone(),
                            verb: verb.clone(),
                        });
                    }
                }
            }
        }
    }
    out
}

/// The permission a request needs, from its method, URL path and query string; `None` for a
/// discovery request (`/api`, `/apis/GROUP/VERSION`, `/version`, ...), which every
/// authenticated user may make (the built-in `system:discovery` role).
///
/// # Panics
/// On a non-resource path that is not a discovery GET.
pub fn needed(method: &str, path: &str, query: &str) -> Option<Permission> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, rest) = match segs.as_slice() {
        ["api", _version, rest @ ..] if !rest.is_empty() => ("", rest),
        ["apis", group, _version, rest @ ..] if !rest.is_empty() => (*group, rest),
        ["api" | "apis" | "version", ..] if method.eq_ignore_ascii_case("GET") => return None,
        _ => panic!("{method} {path}: not a resource request"),
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (*ns, rest),
        _ => ("", rest),
    };
    let (resource, name) = match rest {
        [res] => (res.to_string(), None),
        [res, name] => (res.to_string(), Some(*name)),
        [res, name, sub] => (format!("{res}/{sub}"), Some(*name)),
        _ => panic!("{method} {path}: no resource in it"),
    };
    let watch = query
        .split('&')
        .any(|kv| kv == "watch=true" || kv == "watch=1");
    let verb = match (method.to_ascii_uppercase().as_str(), name) {
        ("GET", _) if watch => "watch",
        ("GET", Some(_)) => "get",
        ("GET", None) => "list",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", Some(_)) => "delete",
        ("DELETE", None) => "deletecollection",
        (m, _) => panic!("{m} {path}: a method RBAC does not know"),
    };
    Some(Permission {
        namespace: namespace.to_owned(),
        group: group.to_owned(),
        resource,
        verb: verb.to_owned(),
    })
}

/// Whether `grant` allows `need`: same group, resource and verb, and a cluster-wide grant or
/// one in the request's namespace.
fn allows(grant: &Permission, need: &Permission) -> bool {
    grant.group == need.group
        && grant.resource == need.resource
        && grant.verb == need.verb
        && (grant.namespace.is_empty() || grant.namespace == need.namespace)
}

/// Require that `granted` allows every permission in `used` and that every grant is used by
/// some request; the panic lists both kinds of difference.
#[track_caller]
pub fn assert_exact(account: &str, granted: &BTreeSet<Permission>, used: &BTreeSet<Permission>) {
    let refused: Vec<String> = used
        .iter()
        .filter(|u| !granted.iter().any(|g| allows(g, u)))
        .map(|u| format!("  {u}"))
        .collect();
    let unused: Vec<String> = granted
        .iter()
        .filter(|g| !used.iter().any(|u| allows(g, u)))
        .map(|g| format!("  {g}"))
        .collect();
    assert!(
        refused.is_empty() && unused.is_empty(),
        "the manifests' RBAC for {account} is not what it uses\n\
         used but not granted (403 in a real cluster):\n{}\n\
         granted but never used (drop it, or exercise it in the end-to-end test):\n{}\n\
         used:\n{}",
        refused.join("\n"),
        unused.join("\n"),
        used.iter()
            .map(|u| format!("  {u}"))
            .collect::<Vec<_>>()
            .join("\n"),
    );
}
