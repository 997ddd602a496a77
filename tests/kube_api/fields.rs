//! Field paths, managed fields, server-side apply and the non-apply patch formats.
//!
//! This is a small model of structured-merge-diff, the library kube-apiserver uses: every
//! object is split into leaf field paths; each field manager owns a set of them. Lists are
//! either *list-maps* merged by a key field (`status.conditions` by `type`) or *atomic*
//! (`spec.taints`, every list without a schema key), exactly as the Kubernetes schema says for
//! the fields the tests touch.

use std::collections::BTreeSet;

use serde_json::{Map, Value};

/// One step of a field path.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Seg {
    /// A map or struct field.
    Field(String),
    /// An item of a list-map, by its key field and value (`type=Ready`).
    Key {
        /// The key field name.
        key: String,
        /// The key value.
        value: String,
    },
}

/// A path from the object root to a field.
pub type FieldPath = Vec<Seg>;

fn names(path: &[Seg]) -> Option<Vec<&str>> {
    path.iter()
        .map(|s| match s {
            Seg::Field(f) => Some(f.as_str()),
            Seg::Key { .. } => None,
        })
        .collect()
}

/// The key field of a list-map at `path`, by schema; `None` for atomic lists.
pub fn list_map_key(path: &[Seg]) -> Option<&'static str> {
    let names = names(path)?;
    match names.as_slice() {
        ["status", "conditions"] | ["status", "addresses"] => Some("type"),
        ["metadata", "ownerReferences"] => Some("uid"),
        ["spec", "containers"] | ["spec", "initContainers"] => Some("name"),
        _ => None,
    }
}

/// Whether a map at `path` is owned as a whole (none in the subset served).
fn atomic_map(_path: &[Seg]) -> bool {
    false
}

/// Fields not tracked by field management (identity and system metadata).
fn untracked(path: &[Seg], field: &str) -> bool {
    match path {
        [] => field == "apiVersion" || field == "kind",
        [Seg::Field(m)] if m == "metadata" => !matches!(
            field,
            "labels" | "annotations" | "finalizers" | "ownerReferences"
        ),
        _ => false,
    }
}

fn key_value(item: &Value, key: &str) -> Option<String> {
    match item.get(key)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Every leaf path of `obj` (including list-map item markers, which end in a `Key`).
pub fn leaves(obj: &Value) -> Result<BTreeSet<FieldPath>, String> {
    let mut out = BTreeSet::new();
    walk(obj, &mut Vec::new(), &mut out)?;
    Ok(out)
}

fn walk(v: &Value, path: &mut FieldPath, out: &mut BTreeSet<FieldPath>) -> Result<(), String> {
    match v {
        Value::Object(m) if !atomic_map(path) => {
            if m.is_empty() && !path.is_empty() {
                out.insert(path.clone());
            }
            for (k, child) in m {
                if untracked(path, k) {
                    continue;
                }
                path.push(Seg::Field(k.clone()));
                walk(child, path, out)?;
                path.pop();
            }
        }
        Value::Array(items) if list_map_key(path).is_some() => {
            let key = list_map_key(path).unwrap_or_default();
            if items.is_empty() {
                out.insert(path.clone());
            }
            let mut seen = BTreeSet::new();
            for item in items {
                let value = key_value(item, key).ok_or_else(|| {
                    format!("{}: element omits its key field {key:?}", render_path(path))
                })?;
                if !seen.insert(value.clone()) {
                    return Err(format!(
                        "{}: duplicate entries for key [{key}=\"{value}\"]",
                        render_path(path)
                    ));
                }
                path.push(Seg::Key {
                    key: key.to_owned(),
                    value,
                });
                out.insert(path.clone());
                walk(item, path, out)?;
                path.pop();
            }
        }
        _ => {
            if !path.is_empty() {
                out.insert(path.clone());
            }
        }
    }
    Ok(())
}

/// `.metadata.labels.foo`, `.status.conditions[type="Ready"]`, as the apiserver prints them.
pub fn render_path(path: &[Seg]) -> String {
    let mut s = String::new();
    for seg in path {
        match seg {
            Seg::Field(f) => {
                s.push('.');
                s.push_str(f);
            }
            Seg::Key { key, value } => s.push_str(&format!("[{key}=\"{value}\"]")),
        }
    }
    s
}

/// The value at `path`, if present.
pub fn get<'a>(v: &'a Value, path: &[Seg]) -> Option<&'a Value> {
    let mut cur = v;
    for seg in path {
        cur = match seg {
            Seg::Field(f) => cur.get(f)?,
            Seg::Key { key, value } => cur
                .as_array()?
                .iter()
                .find(|i| key_value(i, key).as_deref() == Some(value.as_str()))?,
        };
    }
    Some(cur)
}

/// Whether `path` is a list-map item marker.
pub fn is_marker(path: &[Seg]) -> bool {
    matches!(path.last(), Some(Seg::Key { .. }))
}

/// Merge `src` into `dst` by the schema: maps recursively, list-maps by key, the rest replaced.
pub fn merge(dst: &mut Value, src: &Value, path: &mut FieldPath) {
    match src {
        Value::Object(s) if !atomic_map(path) => {
            if !dst.is_object() {
                *dst = Value::Object(Map::new());
            }
            let d = dst.as_object_mut().expect("made an object above");
            for (k, sv) in s {
                if untracked(path, k) {
                    continue;
                }
                path.push(Seg::Field(k.clone()));
                merge(d.entry(k.clone()).or_insert(Value::Null), sv, path);
                path.pop();
            }
        }
        Value::Array(s) if list_map_key(path).is_some() => {
            let key = list_map_key(path).unwrap_or_default();
            if !dst.is_array() {
                *dst = Value::Array(Vec::new());
            }
            let d = dst.as_array_mut().expect("made an array above");
            for item in s {
                let kv = key_value(item, key);
                match d
                    .iter_mut()
                    .find(|i| kv.is_some() && key_value(i, key) == kv)
                {
                    Some(existing) => {
                        path.push(Seg::Key {
                            key: key.to_owned(),
                            value: kv.clone().unwrap_or_default(),
                        });
                        merge(existing, item, path);
                        path.pop();
                    }
                    None => d.push(item.clone()),
                }
            }
        }
        _ => *dst = src.clone(),
    }
}

/// Remove the field at `path`; prunes maps and lists it leaves empty (Go's `omitempty`), but
/// never the top-level sections.
pub fn remove(v: &mut Value, path: &[Seg]) {
    fn go(v: &mut Value, path: &[Seg], depth: usize) {
        let Some((seg, rest)) = path.split_first() else {
            return;
        };
        if rest.is_empty() {
            match seg {
                Seg::Field(f) => {
                    if let Some(m) = v.as_object_mut() {
                        m.remove(f);
                    }
                }
                Seg::Key { key, value } => {
                    if let Some(a) = v.as_array_mut() {
                        a.retain(|i| key_value(i, key).as_deref() != Some(value.as_str()));
                    }
                }
            }
            return;
        }
        let child = match seg {
            Seg::Field(f) => v.get_mut(f),
            Seg::Key { key, value } => v.as_array_mut().and_then(|a| {
                a.iter_mut()
                    .find(|i| key_value(i, key).as_deref() == Some(value.as_str()))
            }),
        };
        let Some(child) = child else { return };
        go(child, rest, depth + 1);
        let empty = match child {
            Value::Object(m) => m.is_empty(),
            Value::Array(a) => a.is_empty(),
            _ => false,
        };
        if empty && depth >= 1 {
            if let (Seg::Field(f), Some(m)) = (seg, v.as_object_mut()) {
                m.remove(f);
            }
        }
    }
    go(v, path, 0);
}

/// The `fieldsV1` rendering of a field set.
pub fn fields_v1(paths: &BTreeSet<FieldPath>) -> Value {
    let mut root = Map::new();
    for p in paths {
        let mut node = &mut root;
        for seg in p {
            let k = match seg {
                Seg::Field(f) => format!("f:{f}"),
                Seg::Key { key, value } => format!(
                    "k:{{{}:{}}}",
                    Value::String(key.clone()),
                    Value::String(value.clone())
                ),
            };
            let entry = node.entry(k).or_insert_with(|| Value::Object(Map::new()));
            if !entry.is_object() {
                *entry = Value::Object(Map::new());
            }
            node = entry.as_object_mut().expect("made an object above");
        }
        if is_marker(p) {
            node.insert(".".into(), Value::Object(Map::new()));
        }
    }
    Value::Object(root)
}

/// RFC 7386 JSON merge patch.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = Value::Object(Map::new());
            }
            let t = target.as_object_mut().expect("made an object above");
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        _ => *target = patch.clone(),
    }
}

/// A strategic merge patch for the subset served: a JSON merge patch in which list-maps the
/// schema declares with `patchStrategy: merge` (conditions, addresses by `type`) merge by key.
pub fn strategic_merge_patch(target: &mut Value, patch: &Value, path: &mut FieldPath) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = Value::Object(Map::new());
            }
            let t = target.as_object_mut().expect("made an object above");
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                    continue;
                }
                path.push(Seg::Field(k.clone()));
                let slot = t.entry(k.clone()).or_insert(Value::Null);
                match (list_map_key(path), v) {
                    (Some(key), Value::Array(items)) if slot.is_array() => {
                        let d = slot.as_array_mut().expect("checked is_array");
                        for item in items {
                            let kv = key_value(item, key);
                            match d
                                .iter_mut()
                                .find(|i| kv.is_some() && key_value(i, key) == kv)
                            {
                                Some(existing) => merge_patch(existing, item),
                                None => d.push(item.clone()),
                            }
                        }
                    }
                    _ => strategic_merge_patch(slot, v, path),
                }
                path.pop();
            }
        }
        _ => *target = patch.clone(),
    }
}

/// Why a JSON patch could not be applied (the apiserver answers 422).
#[derive(Debug)]
pub struct JsonPatchError(pub String);

fn pointer_tokens(p: &str) -> Result<Vec<String>, JsonPatchError> {
    if p.is_empty() {
        return Ok(Vec::new());
    }
    let rest = p
        .strip_prefix('/')
        .ok_or_else(|| JsonPatchError(format!("invalid JSON pointer {p:?}")))?;
    Ok(rest
        .split('/')
        .map(|t| t.replace("~1", "/").replace("~0", "~"))
        .collect())
}

fn parent_and_last<'a>(
    doc: &'a mut Value,
    tokens: &[String],
    path: &str,
) -> Result<(&'a mut Value, String), JsonPatchError> {
    let (last, parents) = tokens
        .split_last()
        .ok_or_else(|| JsonPatchError(format!("cannot operate on the document root: {path:?}")))?;
    let mut cur = doc;
    for t in parents {
        cur = match cur {
            Value::Object(m) => m.get_mut(t),
            Value::Array(a) => t.parse::<usize>().ok().and_then(|i| a.get_mut(i)),
            _ => None,
        }
        .ok_or_else(|| JsonPatchError(format!("path {path:?}: missing value")))?;
    }
    Ok((cur, last.clone()))
}

fn jp_get(doc: &Value, path: &str) -> Result<Value, JsonPatchError> {
    doc.pointer(path)
        .cloned()
        .ok_or_else(|| JsonPatchError(format!("path {path:?}: missing value")))
}

fn jp_add(doc: &mut Value, path: &str, value: Value) -> Result<(), JsonPatchError> {
    let tokens = pointer_tokens(path)?;
    if tokens.is_empty() {
        *doc = value;
        return Ok(());
    }
    let (parent, last) = parent_and_last(doc, &tokens, path)?;
    match parent {
        Value::Object(m) => {
            m.insert(last, value);
        }
        Value::Array(a) => {
            let i = if last == "-" {
                a.len()
            } else {
                last.parse::<usize>()
                    .ok()
                    .filter(|i| *i <= a.len())
                    .ok_or_else(|| JsonPatchError(format!("path {path:?}: index out of range")))?
            };
            a.insert(i, value);
        }
        _ => {
            return Err(JsonPatchError(format!(
                "path {path:?}: parent is not a container"
            )))
        }
    }
    Ok(())
}

fn jp_remove(doc: &mut Value, path: &str) -> Result<Value, JsonPatchError> {
    let tokens = pointer_tokens(path)?;
    let (parent, last) = parent_and_last(doc, &tokens, path)?;
    let missing = || JsonPatchError(format!("path {path:?}: missing value"));
    match parent {
        Value::Object(m) => m.remove(&last).ok_or_else(missing),
        Value::Array(a) => {
            let i = last
                .parse::<usize>()
                .ok()
                .filter(|i| *i < a.len())
                .ok_or_else(missing)?;
            Ok(a.remove(i))
        }
        _ => Err(missing()),
    }
}

/// RFC 6902 JSON patch: add, remove, replace, move, copy, test.
pub fn json_patch(doc: &mut Value, ops: &Value) -> Result<(), JsonPatchError> {
    let ops = ops
        .as_array()
        .ok_or_else(|| JsonPatchError("a JSON patch must be an array of operations".into()))?;
    for op in ops {
        let name = op.get("op").and_then(Value::as_str).unwrap_or_default();
        let path = op
            .get("path")
            .and_then(Value::as_str)
            .ok_or_else(|| JsonPatchError(format!("operation {op} has no path")))?;
        let value = || {
            op.get("value")
                .cloned()
                .ok_or_else(|| JsonPatchError(format!("operation {name} {path:?} has no value")))
        };
        let from = || {
            op.get("from")
                .and_then(Value::as_str)
                .ok_or_else(|| JsonPatchError(format!("operation {name} {path:?} has no from")))
        };
        match name {
            "add" => jp_add(doc, path, value()?)?,
            "remove" => {
                jp_remove(doc, path)?;
            }
            "replace" => {
                jp_remove(doc, path)?;
                jp_add(doc, path, value()?)?;
            }
            "move" => {
                let v = jp_remove(doc, from()?)?;
                jp_add(doc, path, v)?;
            }
            "copy" => {
                let v = jp_get(doc, from()?)?;
                jp_add(doc, path, v)?;
            }
            "test" => {
                let want = value()?;
                let got = jp_get(doc, path)?;
                if got != want {
                    return Err(JsonPatchError(format!(
                        "testing value {path} failed: test failed"
                    )));
                }
            }
            other => {
                return Err(JsonPatchError(format!(
                "unexpected operation {other:?}; allowed: add, remove, replace, move, copy, test"
            )))
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn conditions_are_a_list_map_and_taints_atomic() {
        let node = json!({
            "metadata": {"name": "n", "labels": {"a": "1"}},
            "spec": {"taints": [{"key": "k", "effect": "NoExecute"}]},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}
        });
        let l = leaves(&node).unwrap();
        let f = |s: &str| Seg::Field(s.into());
        assert!(l.contains(&vec![f("metadata"), f("labels"), f("a")]));
        assert!(l.contains(&vec![f("spec"), f("taints")]));
        let ready = Seg::Key {
            key: "type".into(),
            value: "Ready".into(),
        };
        assert!(l.contains(&vec![f("status"), f("conditions"), ready.clone()]));
        assert!(l.contains(&vec![f("status"), f("conditions"), ready, f("status")]));
        assert!(!l.iter().any(|p| p == &vec![f("metadata"), f("name")]));
    }

    #[test]
    fn json_patch_test_op_fails_on_mismatch() {
        let mut doc = json!({"metadata": {"resourceVersion": "5"}, "spec": {}});
        let ops = json!([
            {"op": "test", "path": "/metadata/resourceVersion", "value": "4"},
            {"op": "add", "path": "/spec/taints", "value": []}
        ]);
        assert!(json_patch(&mut doc, &ops).is_err());
        let ops = json!([
            {"op": "test", "path": "/metadata/resourceVersion", "value": "5"},
            {"op": "add", "path": "/spec/taints", "value": [{"key": "a"}]},
            {"op": "add", "path": "/spec/taints/-", "value": {"key": "b"}}
        ]);
        json_patch(&mut doc, &ops).unwrap();
        assert_eq!(doc["spec"]["taints"][1]["key"], "b");
    }
}
