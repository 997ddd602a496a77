//! The resources served, with the strategy flags of their kube-apiserver registries, and
//! Kubernetes errors as `Status` objects.

use serde_json::{json, Value};

/// A resource the server serves, with the strategy flags of its kube-apiserver registry.
#[derive(Debug)]
pub struct Resource {
    /// API group; empty for the core group.
    pub group: &'static str,
    /// API version.
    pub version: &'static str,
    /// Plural resource name in URLs.
    pub plural: &'static str,
    /// Kind.
    pub kind: &'static str,
    /// Namespaced or cluster-scoped.
    pub namespaced: bool,
    /// `AllowCreateOnUpdate`: a PUT to a missing object creates it.
    pub create_on_update: bool,
    /// `AllowUnconditionalUpdate`: a PUT without `metadata.resourceVersion` is accepted.
    pub unconditional_update: bool,
    /// Has a `status` subresource (the main resource then ignores status changes).
    pub status: bool,
    /// Field selectors supported besides `metadata.name` and `metadata.namespace`.
    pub field_labels: &'static [&'static str],
}

impl Resource {
    /// `nodes`, `leases.coordination.k8s.io`: the kubectl name and store id.
    pub fn id(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_owned()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// `v1`, `coordination.k8s.io/v1`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_owned()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
}

/// Every resource served.
pub static RESOURCES: &[Resource] = &[
    Resource {
        group: "",
        version: "v1",
        plural: "namespaces",
        kind: "Namespace",
        namespaced: false,
        create_on_update: false,
        unconditional_update: true,
        status: true,
        field_labels: &["status.phase"],
    },
    Resource {
        group: "",
        version: "v1",
        plural: "nodes",
        kind: "Node",
        namespaced: false,
        create_on_update: false,
        unconditional_update: true,
        status: true,
        field_labels: &["spec.unschedulable"],
    },
    Resource {
        group: "",
        version: "v1",
        plural: "pods",
        kind: "Pod",
        namespaced: true,
        create_on_update: false,
        unconditional_update: true,
        status: true,
        field_labels: &[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "status.phase",
            "status.podIP",
        ],
    },
    Resource {
        group: "coordination.k8s.io",
        version: "v1",
        plural: "leases",
        kind: "Lease",
        namespaced: true,
        create_on_update: true,
        unconditional_update: false,
        status: false,
        field_labels: &[],
    },
    Resource {
        group: "",
        version: "v1",
        plural: "events",
        kind: "Event",
        namespaced: true,
        create_on_update: true,
        unconditional_update: true,
        status: false,
        field_labels: &[
            "involvedObject.kind",
            "involvedObject.name",
            "involvedObject.namespace",
            "involvedObject.uid",
            "reason",
            "reportingComponent",
            "source",
            "type",
        ],
    },
    Resource {
        group: "events.k8s.io",
        version: "v1",
        plural: "events",
        kind: "Event",
        namespaced: true,
        create_on_update: true,
        unconditional_update: true,
        status: false,
        field_labels: &[
            "regarding.kind",
            "regarding.name",
            "regarding.namespace",
            "reason",
            "reportingController",
            "type",
        ],
    },
];

/// The resource `plural` in `group`/`version`.
pub fn find(group: &str, version: &str, plural: &str) -> Option<&'static Resource> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
}

/// The resource with kubectl name `id` (`nodes`, `leases.coordination.k8s.io`).
pub fn by_id(id: &str) -> &'static Resource {
    RESOURCES
        .iter()
        .find(|r| r.id() == id)
        .unwrap_or_else(|| panic!("the test API server does not serve {id:?}"))
}

/// A Kubernetes error, rendered as a `Status` object.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// HTTP status code.
    pub code: u16,
    /// `NotFound`, `Conflict`, `AlreadyExists`, `Invalid`, ...
    pub reason: &'static str,
    /// The message.
    pub message: String,
    /// `details`, if any.
    pub details: Option<Value>,
}

impl ApiError {
    /// An error with `code`, `reason` and `message`.
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    fn qualified(res: &Resource) -> String {
        res.id()
    }

    /// Add `details` naming the object.
    pub fn details(mut self, res: &Resource, name: &str) -> ApiError {
        let mut d = json!({"name": name, "kind": res.plural});
        if !res.group.is_empty() {
            d["group"] = json!(res.group);
        }
        self.details = Some(d);
        self
    }

    /// 404 `nodes "x" not found`.
    pub fn not_found(res: &Resource, name: &str) -> ApiError {
        ApiError::new(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", Self::qualified(res)),
        )
        .details(res, name)
    }

    /// 409 optimistic-lock conflict.
    pub fn conflict(res: &Resource, name: &str) -> ApiError {
        ApiError::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                Self::qualified(res)
            ),
        )
        .details(res, name)
    }

    /// 409 AlreadyExists.
    pub fn already_exists(res: &Resource, name: &str) -> ApiError {
        ApiError::new(
            409,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", Self::qualified(res)),
        )
        .details(res, name)
    }

    /// 422 Invalid.
    pub fn invalid(res: &Resource, name: &str, causes: &[(String, String)]) -> ApiError {
        let text: Vec<String> = causes.iter().map(|(f, m)| format!("{f}: {m}")).collect();
        let mut e = ApiError::new(
            422,
            "Invalid",
            format!(
                "{}.{} \"{name}\" is invalid: {}",
                res.kind,
                if res.group.is_empty() { "" } else { res.group },
                text.join(", ")
            )
            .replace(". \"", " \""),
        )
        .details(res, name);
        if let Some(d) = e.details.as_mut() {
            d["kind"] = json!(res.kind);
            d["causes"] = causes
                .iter()
                .map(|(f, m)| json!({"reason": "FieldValueInvalid", "message": m, "field": f}))
                .collect();
        }
        e
    }

    /// 422 from a JSON patch that could not be applied (a failed `test` operation).
    pub fn unprocessable(message: impl Into<String>) -> ApiError {
        ApiError::new(422, "Invalid", message)
    }

    /// 400 BadRequest.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(400, "BadRequest", message)
    }

    /// 405 MethodNotAllowed.
    pub fn method_not_allowed(message: impl Into<String>) -> ApiError {
        ApiError::new(405, "MethodNotAllowed", message)
    }

    /// 415 UnsupportedMediaType.
    pub fn unsupported_media(content_type: &str) -> ApiError {
        ApiError::new(
            415,
            "UnsupportedMediaType",
            format!("the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml; got {content_type:?}"),
        )
    }

    /// An injected failure: 500 InternalError, 503 ServiceUnavailable, 429 TooManyRequests.
    pub fn injected(code: u16) -> ApiError {
        let reason = match code {
            429 => "TooManyRequests",
            503 => "ServiceUnavailable",
            504 => "Timeout",
            _ => "InternalError",
        };
        ApiError::new(
            code,
            reason,
            format!("injected failure ({code}) by the test API server"),
        )
    }

    /// The `Status` body.
    pub fn to_status(&self) -> Value {
        let mut s = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(d) = &self.details {
            s["details"] = d.clone();
        }
        s
    }
}
