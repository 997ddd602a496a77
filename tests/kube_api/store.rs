//! The object store: resourceVersion, create/get/list/replace/patch/delete with the
//! registry strategies of kube-apiserver (which resources allow create-on-update and
//! unconditional update, what the status subresource resets), and field ownership.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Value};

use super::fields::{self, FieldPath, Seg};
pub use super::resources::{by_id, find, ApiError, Resource, RESOURCES};
pub use super::validate::now_seconds;
use super::validate::{normalize_times, validate};

/// Who owns what: one entry of `metadata.managedFields`.
#[derive(Debug, Clone, PartialEq)]
pub struct ManagerEntry {
    /// Field manager name.
    pub manager: String,
    /// `Apply` or `Update`.
    pub apply: bool,
    /// `""` or `"status"`.
    pub subresource: String,
    /// When it last changed its fields.
    pub time: String,
    /// The fields it owns.
    pub fields: BTreeSet<FieldPath>,
}

impl ManagerEntry {
    fn same_owner(&self, manager: &str, apply: bool, subresource: &str) -> bool {
        self.manager == manager && self.apply == apply && self.subresource == subresource
    }

    fn render(&self, api_version: &str) -> Value {
        let mut e = json!({
            "manager": self.manager,
            "operation": if self.apply { "Apply" } else { "Update" },
            "apiVersion": api_version,
            "time": self.time,
            "fieldsType": "FieldsV1",
            "fieldsV1": fields::fields_v1(&self.fields),
        });
        if !self.subresource.is_empty() {
            e["subresource"] = json!(self.subresource);
        }
        e
    }
}

/// A stored object and its field owners.
#[derive(Debug, Clone)]
pub struct Stored {
    /// The object, with `apiVersion`, `kind` and `metadata.resourceVersion`.
    pub obj: Value,
    /// Field managers, in first-write order.
    pub managers: Vec<ManagerEntry>,
}

/// Store key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Key {
    /// Resource id.
    pub res: String,
    /// Namespace; empty for cluster-scoped.
    pub ns: String,
    /// Name.
    pub name: String,
}

/// A recorded change, for watches.
#[derive(Debug, Clone)]
pub struct Change {
    /// resourceVersion after the change.
    pub rv: u64,
    /// `ADDED`, `MODIFIED`, `DELETED`.
    pub kind: &'static str,
    /// Which object.
    pub key: Key,
    /// The object after the change (before, for `DELETED`).
    pub obj: Value,
}

/// Which patch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    /// `application/json-patch+json`
    Json,
    /// `application/merge-patch+json`
    Merge,
    /// `application/strategic-merge-patch+json`
    Strategic,
    /// `application/apply-patch+yaml`
    Apply,
}

/// Where a write goes.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// The resource.
    pub res: &'static Resource,
    /// Namespace (empty for cluster-scoped).
    pub ns: &'a str,
    /// Object name.
    pub name: &'a str,
    /// `None` or `Some("status")`.
    pub sub: Option<&'a str>,
}

/// All objects of the server.
#[derive(Debug, Default)]
pub struct Store {
    /// The global resourceVersion counter, bumped on every write.
    pub rv: u64,
    /// Objects by key.
    pub objects: BTreeMap<Key, Stored>,
    /// Every change, oldest first.
    pub changes: Vec<Change>,
    uid: u64,
}

/// The section the subresource (or main resource) does not write: `status` on the main
/// resource of a type with a status subresource, `spec` on `/status`.
fn reset_section(res: &Resource, sub: Option<&str>) -> Option<&'static str> {
    match sub {
        Some("status") => Some("spec"),
        _ if res.status => Some("status"),
        _ => None,
    }
}

fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    obj.get("metadata")?.get(field)?.as_str()
}

fn stripped(obj: &Value) -> Value {
    let mut o = obj.clone();
    if let Some(m) = o.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("resourceVersion");
        m.remove("managedFields");
    }
    o
}

impl Store {
    fn key(t: &Target) -> Key {
        Key {
            res: t.res.id(),
            ns: if t.res.namespaced {
                t.ns.to_owned()
            } else {
                String::new()
            },
            name: t.name.to_owned(),
        }
    }

    /// The object as served: with `metadata.managedFields`.
    pub fn render(res: &Resource, s: &Stored) -> Value {
        let mut obj = s.obj.clone();
        let api_version = res.api_version();
        let managed: Vec<Value> = s.managers.iter().map(|m| m.render(&api_version)).collect();
        if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
            if !managed.is_empty() {
                m.insert("managedFields".into(), Value::Array(managed));
            }
        }
        obj
    }

    /// GET one object.
    pub fn get(&self, t: &Target) -> Result<Value, ApiError> {
        self.objects
            .get(&Self::key(t))
            .map(|s| Self::render(t.res, s))
            .ok_or_else(|| ApiError::not_found(t.res, t.name))
    }

    /// The stored object, if any.
    pub fn stored(&self, t: &Target) -> Option<&Stored> {
        self.objects.get(&Self::key(t))
    }

    /// LIST, in one namespace or all, filtered by label and field selectors.
    pub fn list(
        &self,
        res: &'static Resource,
        ns: Option<&str>,
        label_selector: &str,
        field_selector: &str,
    ) -> Result<Value, ApiError> {
        let labels = super::selector::LabelSelector::parse(label_selector)?;
        let fields = super::selector::FieldSelector::parse(field_selector, res)?;
        let id = res.id();
        let items: Vec<Value> = self
            .objects
            .iter()
            .filter(|(k, _)| k.res == id && ns.is_none_or(|ns| k.ns == ns))
            .filter(|(_, s)| labels.matches(&s.obj) && fields.matches(&s.obj))
            .map(|(_, s)| {
                let mut o = Self::render(res, s);
                if let Some(m) = o.as_object_mut() {
                    m.remove("apiVersion");
                    m.remove("kind");
                }
                o
            })
            .collect();
        Ok(json!({
            "kind": format!("{}List", res.kind),
            "apiVersion": res.api_version(),
            "metadata": {"resourceVersion": self.rv.to_string()},
            "items": items,
        }))
    }

    fn namespace_exists(&self, ns: &str) -> bool {
        self.objects.contains_key(&Key {
            res: "namespaces".into(),
            ns: String::new(),
            name: ns.to_owned(),
        })
    }

    fn check_namespace(&self, res: &Resource, ns: &str) -> Result<(), ApiError> {
        if res.namespaced && !self.namespace_exists(ns) {
            return Err(ApiError::not_found(by_id("namespaces"), ns));
        }
        Ok(())
    }

    fn next_uid(&mut self) -> String {
        self.uid += 1;
        format!("00000000-0000-4000-8000-{:012x}", self.uid)
    }

    /// Store `obj` under `t` with `managers`, bumping the resourceVersion unless nothing
    /// changed. Returns the served object.
    fn commit(
        &mut self,
        t: &Target,
        mut obj: Value,
        managers: Vec<ManagerEntry>,
    ) -> Result<Value, ApiError> {
        normalize_times(t.res, &mut obj)?;
        validate(t.res, t.name, &obj)?;
        let key = Self::key(t);
        let existed = self.objects.get(&key);
        if let Some(old) = existed {
            let same_fields = old.managers.len() == managers.len()
                && old.managers.iter().zip(&managers).all(|(a, b)| {
                    a.same_owner(&b.manager, b.apply, &b.subresource) && a.fields == b.fields
                });
            if same_fields && stripped(&old.obj) == stripped(&obj) {
                return Ok(Self::render(t.res, old));
            }
        }
        let kind = if existed.is_some() {
            "MODIFIED"
        } else {
            "ADDED"
        };
        self.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        obj["apiVersion"] = json!(t.res.api_version());
        obj["kind"] = json!(t.res.kind);
        let stored = Stored { obj, managers };
        let rendered = Self::render(t.res, &stored);
        self.changes.push(Change {
            rv: self.rv,
            kind,
            key: key.clone(),
            obj: rendered.clone(),
        });
        self.objects.insert(key, stored);
        Ok(rendered)
    }

    /// POST: create. `manager` owns every field it set (operation `Update`, as the apiserver
    /// records creates).
    pub fn create(
        &mut self,
        res: &'static Resource,
        ns: &str,
        mut body: Value,
        manager: &str,
    ) -> Result<Value, ApiError> {
        if !body.is_object() {
            return Err(ApiError::bad_request("the body must be a JSON object"));
        }
        if body.get("metadata").is_none_or(|m| !m.is_object()) {
            body["metadata"] = json!({});
        }
        if let Some(body_ns) = meta_str(&body, "namespace") {
            if res.namespaced && body_ns != ns {
                return Err(ApiError::bad_request(format!(
                    "the namespace of the provided object ({body_ns}) does not match the namespace sent on the request ({ns})"
                )));
            }
        }
        let name = match (meta_str(&body, "name"), meta_str(&body, "generateName")) {
            (Some(n), _) if !n.is_empty() => n.to_owned(),
            (_, Some(g)) if !g.is_empty() => format!("{g}{:05x}", self.uid + 1),
            _ => {
                return Err(ApiError::invalid(
                    res,
                    "",
                    &[(
                        "metadata.name".into(),
                        "Required value: name or generateName is required".into(),
                    )],
                ))
            }
        };
        let t = Target {
            res,
            ns,
            name: &name,
            sub: None,
        };
        self.check_namespace(res, ns)?;
        if self.objects.contains_key(&Self::key(&t)) {
            return Err(ApiError::already_exists(res, &name));
        }
        let uid = self.next_uid();
        let meta = body["metadata"]
            .as_object_mut()
            .expect("made an object above");
        meta.insert("name".into(), json!(name));
        if res.namespaced {
            meta.insert("namespace".into(), json!(ns));
        } else {
            meta.remove("namespace");
        }
        meta.insert("uid".into(), json!(uid));
        meta.insert("creationTimestamp".into(), json!(now_seconds()));
        meta.remove("resourceVersion");
        meta.remove("managedFields");
        if res.status || res.plural == "nodes" {
            for section in ["spec", "status"] {
                if body.get(section).is_none() {
                    body[section] = json!({});
                }
            }
        }
        if res.plural == "namespaces" {
            body["status"] = json!({"phase": "Active"});
        }
        // The creator owns what it set, except the section the main resource resets (a Node
        // created with a status does not make its creator an owner of that status).
        let reset = reset_section(res, None);
        let fields = fields::leaves(&body)
            .map_err(ApiError::bad_request)?
            .into_iter()
            .filter(|p| !matches!((p.first(), reset), (Some(Seg::Field(f)), Some(r)) if f == r))
            .collect();
        let managers = vec![ManagerEntry {
            manager: manager.to_owned(),
            apply: false,
            subresource: String::new(),
            time: now_seconds(),
            fields,
        }];
        self.commit(&t, body, managers)
    }

    /// Ownership after a non-apply write by `manager`: changed fields move to it, removed
    /// fields leave every owner.
    fn update_owners(
        old: Option<&Stored>,
        new_obj: &Value,
        t: &Target,
        manager: &str,
    ) -> Result<Vec<ManagerEntry>, ApiError> {
        let old_obj = old.map(|s| s.obj.clone()).unwrap_or(Value::Null);
        let before = fields::leaves(&old_obj).map_err(ApiError::bad_request)?;
        let after = fields::leaves(new_obj).map_err(ApiError::bad_request)?;
        let changed: BTreeSet<FieldPath> = after
            .iter()
            .filter(|p| {
                if fields::is_marker(p) {
                    !before.contains(*p)
                } else {
                    fields::get(&old_obj, p) != fields::get(new_obj, p)
                }
            })
            .cloned()
            .collect();
        let removed: BTreeSet<FieldPath> = before.difference(&after).cloned().collect();
        let sub = t.sub.unwrap_or_default();
        let mut managers = old.map(|s| s.managers.clone()).unwrap_or_default();
        for m in &mut managers {
            m.fields
                .retain(|p| !changed.contains(p) && !removed.contains(p));
        }
        if !changed.is_empty() {
            match managers
                .iter_mut()
                .find(|m| m.same_owner(manager, false, sub))
            {
                Some(m) => {
                    m.fields.extend(changed);
                    m.time = now_seconds();
                }
                None => managers.push(ManagerEntry {
                    manager: manager.to_owned(),
                    apply: false,
                    subresource: sub.to_owned(),
                    time: now_seconds(),
                    fields: changed,
                }),
            }
        }
        managers.retain(|m| !m.fields.is_empty());
        Ok(managers)
    }

    /// Keep the section this endpoint does not write, and the system metadata.
    fn carry_over(old: &Value, new: &mut Value, t: &Target) {
        if let Some(section) = reset_section(t.res, t.sub) {
            match old.get(section) {
                Some(v) => new[section] = v.clone(),
                None => {
                    if let Some(m) = new.as_object_mut() {
                        m.remove(section);
                    }
                }
            }
        }
        for f in [
            "uid",
            "creationTimestamp",
            "name",
            "namespace",
            "generation",
            "deletionTimestamp",
        ] {
            match old.get("metadata").and_then(|m| m.get(f)) {
                Some(v) => new["metadata"][f] = v.clone(),
                None => {
                    if let Some(m) = new.get_mut("metadata").and_then(Value::as_object_mut) {
                        m.remove(f);
                    }
                }
            }
        }
        new["apiVersion"] = old["apiVersion"].clone();
        new["kind"] = old["kind"].clone();
    }

    /// PUT: replace (main resource or `/status`), with the resourceVersion precondition.
    pub fn replace(
        &mut self,
        t: &Target,
        mut body: Value,
        manager: &str,
    ) -> Result<Value, ApiError> {
        if !body.is_object() {
            return Err(ApiError::bad_request("the body must be a JSON object"));
        }
        if let Some(n) = meta_str(&body, "name") {
            if n != t.name {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({n}) does not match the name on the URL ({})",
                    t.name
                )));
            }
        }
        let existing = self.stored(t).cloned();
        let Some(old) = existing else {
            if t.res.create_on_update && t.sub.is_none() {
                body["metadata"]["name"] = json!(t.name);
                return self.create(t.res, t.ns, body, manager);
            }
            return Err(ApiError::not_found(t.res, t.name));
        };
        let current_rv = meta_str(&old.obj, "resourceVersion")
            .unwrap_or_default()
            .to_owned();
        match meta_str(&body, "resourceVersion") {
            None | Some("") if t.res.unconditional_update => {}
            None | Some("") => {
                return Err(ApiError::invalid(
                    t.res,
                    t.name,
                    &[(
                        "metadata.resourceVersion".into(),
                        "Invalid value: 0x0: must be specified for an update".into(),
                    )],
                ))
            }
            Some(rv) if rv != current_rv => return Err(ApiError::conflict(t.res, t.name)),
            Some(_) => {}
        }
        Self::carry_over(&old.obj, &mut body, t);
        let managers = Self::update_owners(Some(&old), &body, t, manager)?;
        self.commit(t, body, managers)
    }

    /// PATCH: JSON, merge, strategic merge, or server-side apply.
    pub fn patch(
        &mut self,
        t: &Target,
        kind: PatchType,
        patch: Value,
        manager: &str,
        force: bool,
    ) -> Result<Value, ApiError> {
        if kind == PatchType::Apply {
            return self.apply(t, patch, manager, force);
        }
        let old = self
            .stored(t)
            .cloned()
            .ok_or_else(|| ApiError::not_found(t.res, t.name))?;
        let mut new = old.obj.clone();
        match kind {
            PatchType::Json => {
                fields::json_patch(&mut new, &patch).map_err(|e| ApiError::unprocessable(e.0))?
            }
            PatchType::Merge => fields::merge_patch(&mut new, &patch),
            PatchType::Strategic => {
                fields::strategic_merge_patch(&mut new, &patch, &mut Vec::new())
            }
            PatchType::Apply => unreachable!("handled above"),
        }
        // A resourceVersion in the patched object is a precondition, as with PUT.
        let current_rv = meta_str(&old.obj, "resourceVersion").unwrap_or_default();
        if let Some(rv) = meta_str(&new, "resourceVersion") {
            if !rv.is_empty() && rv != current_rv {
                return Err(ApiError::conflict(t.res, t.name));
            }
        }
        Self::carry_over(&old.obj, &mut new, t);
        let managers = Self::update_owners(Some(&old), &new, t, manager)?;
        self.commit(t, new, managers)
    }

    /// Server-side apply.
    fn apply(
        &mut self,
        t: &Target,
        applied: Value,
        manager: &str,
        force: bool,
    ) -> Result<Value, ApiError> {
        if !applied.is_object() {
            return Err(ApiError::bad_request(
                "the apply configuration must be an object",
            ));
        }
        let api_version = applied
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let kind = applied
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if api_version != t.res.api_version() || kind != t.res.kind {
            return Err(ApiError::bad_request(format!(
                "the apply configuration must have apiVersion {:?} and kind {:?}; got {api_version:?}, {kind:?}",
                t.res.api_version(),
                t.res.kind
            )));
        }
        if let Some(n) = meta_str(&applied, "name") {
            if n != t.name {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({n}) does not match the name on the URL ({})",
                    t.name
                )));
            }
        }
        let old = self.stored(t).cloned();
        let creating = old.is_none();
        if creating && t.sub.is_some() {
            return Err(ApiError::not_found(t.res, t.name));
        }
        if let (Some(old), Some(rv)) = (&old, meta_str(&applied, "resourceVersion")) {
            if meta_str(&old.obj, "resourceVersion") != Some(rv) {
                return Err(ApiError::conflict(t.res, t.name));
            }
        }
        let mut scoped = applied.clone();
        if let (Some(section), Some(m)) = (reset_section(t.res, t.sub), scoped.as_object_mut()) {
            m.remove(section);
        }
        let set = fields::leaves(&scoped)
            .map_err(|e| ApiError::invalid(t.res, t.name, &[(String::new(), e)]))?;
        let sub = t.sub.unwrap_or_default();
        let mut current = old
            .as_ref()
            .map(|s| s.obj.clone())
            .unwrap_or_else(|| json!({"metadata": {}}));
        let mut managers = old.as_ref().map(|s| s.managers.clone()).unwrap_or_default();

        // Conflicts: fields another manager owns with a different value.
        let mut conflicts: Vec<(String, FieldPath)> = Vec::new();
        for m in managers.iter().filter(|m| m.manager != manager) {
            for p in set.intersection(&m.fields) {
                if !fields::is_marker(p) && fields::get(&current, p) != fields::get(&scoped, p) {
                    conflicts.push((m.manager.clone(), p.clone()));
                }
            }
        }
        if !conflicts.is_empty() {
            if !force {
                return Err(apply_conflict(t, &conflicts));
            }
            for m in managers.iter_mut().filter(|m| m.manager != manager) {
                m.fields.retain(|p| !conflicts.iter().any(|(_, c)| c == p));
            }
        }

        fields::merge(&mut current, &scoped, &mut Vec::new());

        // Fields this manager applied before and no longer asserts leave the object, unless
        // someone else owns them (or something inside them).
        let previous = managers
            .iter()
            .find(|m| m.same_owner(manager, true, sub))
            .map(|m| m.fields.clone())
            .unwrap_or_default();
        let dropped: Vec<&FieldPath> = previous.difference(&set).collect();
        let others_own = |p: &FieldPath| {
            managers
                .iter()
                .filter(|m| !m.same_owner(manager, true, sub))
                .any(|m| m.fields.iter().any(|q| q.starts_with(p)))
        };
        // A list item's key field is its identity: it goes with the item, never on its own
        // (removing it first would leave an anonymous `{}` item behind).
        let item_key = |p: &FieldPath| matches!(p.as_slice(), [.., Seg::Key { key, .. }, Seg::Field(f)] if key == f);
        for p in dropped
            .iter()
            .filter(|p| !fields::is_marker(p) && !item_key(p))
        {
            if !others_own(p) {
                fields::remove(&mut current, p);
            }
        }
        for p in dropped.iter().filter(|p| fields::is_marker(p)) {
            let still_asserted = set.iter().any(|q| q.starts_with(p));
            if !others_own(p) && !still_asserted {
                fields::remove(&mut current, p);
            }
        }

        match managers
            .iter_mut()
            .find(|m| m.same_owner(manager, true, sub))
        {
            Some(m) => {
                if m.fields != set {
                    m.time = now_seconds();
                }
                m.fields = set;
            }
            None => managers.push(ManagerEntry {
                manager: manager.to_owned(),
                apply: true,
                subresource: sub.to_owned(),
                time: now_seconds(),
                fields: set,
            }),
        }
        managers.retain(|m| !m.fields.is_empty());

        if creating {
            let mut obj = current;
            obj["metadata"]["name"] = json!(t.name);
            if t.res.namespaced {
                obj["metadata"]["namespace"] = json!(t.ns);
            }
            self.check_namespace(t.res, t.ns)?;
            let uid = self.next_uid();
            obj["metadata"]["uid"] = json!(uid);
            obj["metadata"]["creationTimestamp"] = json!(now_seconds());
            return self.commit(t, obj, managers);
        }
        let old = old.expect("not creating");
        Self::carry_over(&old.obj, &mut current, t);
        if let Some(m) = current.get_mut("metadata").and_then(Value::as_object_mut) {
            m.insert(
                "resourceVersion".into(),
                old.obj["metadata"]["resourceVersion"].clone(),
            );
        }
        self.commit(t, current, managers)
    }

    /// DELETE. Returns the deleted object for pods (as kube-apiserver does for graceful
    /// types) and a `Success` Status otherwise.
    pub fn delete(&mut self, t: &Target) -> Result<Value, ApiError> {
        let key = Self::key(t);
        let Some(old) = self.objects.remove(&key) else {
            return Err(ApiError::not_found(t.res, t.name));
        };
        self.rv += 1;
        let rendered = Self::render(t.res, &old);
        self.changes.push(Change {
            rv: self.rv,
            kind: "DELETED",
            key,
            obj: rendered.clone(),
        });
        if t.res.plural == "pods" {
            return Ok(rendered);
        }
        let mut details = json!({"name": t.name, "kind": t.res.plural});
        if !t.res.group.is_empty() {
            details["group"] = json!(t.res.group);
        }
        details["uid"] = old.obj["metadata"]["uid"].clone();
        Ok(json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Success",
            "details": details,
        }))
    }

    /// POST `pods/{name}/eviction`: deletes the pod (no PodDisruptionBudgets are modelled).
    pub fn evict(&mut self, ns: &str, name: &str) -> Result<Value, ApiError> {
        let pods = by_id("pods");
        self.delete(&Target {
            res: pods,
            ns,
            name,
            sub: None,
        })?;
        Ok(json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Success",
            "code": 201,
        }))
    }
}

fn apply_conflict(t: &Target, conflicts: &[(String, FieldPath)]) -> ApiError {
    let causes: Vec<Value> = conflicts
        .iter()
        .map(|(m, p)| {
            json!({
                "reason": "FieldManagerConflict",
                "message": format!("conflict with \"{m}\""),
                "field": fields::render_path(p),
            })
        })
        .collect();
    let lines: Vec<String> = conflicts
        .iter()
        .map(|(m, p)| format!("- conflict with \"{m}\": {}", fields::render_path(p)))
        .collect();
    let n = conflicts.len();
    let mut e = ApiError::new(
        409,
        "Conflict",
        format!(
            "Apply failed with {n} conflict{}: {}",
            if n == 1 { "" } else { "s" },
            lines.join("\n")
        ),
    )
    .details(t.res, t.name);
    if let Some(d) = e.details.as_mut() {
        d["causes"] = Value::Array(causes);
    }
    e
}
