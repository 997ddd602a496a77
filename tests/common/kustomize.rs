//! Rendering manifests the way users apply them: `kubectl kustomize DIR` (kubectl's built-in
//! kustomize, v5 in kubectl 1.27+). kubectl is not in Debian at a version whose kustomize knows
//! components, so it is a host tool (`super::tools`): missing outside CI, the test says so and
//! returns; in CI it fails.

use std::path::Path;
use std::process::Command;

use serde::Deserialize;
use serde_json::Value;

/// The objects `kubectl kustomize dir` renders, or `None` (after [`super::tools::missing`]) when
/// kubectl is not installed. Panics with kubectl's message when the build fails.
pub fn render(dir: &Path) -> Option<Vec<Value>> {
    let kubectl = super::tools::require(
        "kubectl",
        "kubectl 1.27 or later, whose built-in kustomize knows components: https://kubernetes.io/docs/tasks/tools/",
    )?;
    let out = Command::new(kubectl)
        .arg("kustomize")
        .arg(dir)
        .output()
        .expect("run kubectl kustomize");
    assert!(
        out.status.success(),
        "kubectl kustomize {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("UTF-8 YAML");
    let mut docs = Vec::new();
    for de in serde_yaml::Deserializer::from_str(&text) {
        let v = Value::deserialize(de).expect("kubectl kustomize printed YAML");
        if !v.is_null() {
            docs.push(v);
        }
    }
    Some(docs)
}

/// The object of `kind` named `name` among `docs`.
pub fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> Option<&'a Value> {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
}
