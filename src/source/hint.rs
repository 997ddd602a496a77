//! What to do about a device the agent may not open, worded for where the agent runs: as the
//! snap (connect an interface), in a pod (the container's device cgroup), or on a plain host
//! (a group). Where it runs is read once from the environment ([`Runtime::detect`]).

use std::sync::OnceLock;

use super::kinds::DeviceClass;

/// Where the agent runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    /// A snap service (`SNAP_NAME` is set): interfaces grant devices.
    Snap,
    /// A container in a Kubernetes pod (`KUBERNETES_SERVICE_HOST` is set): the container's
    /// device cgroup decides.
    Pod,
    /// Anything else: file permissions (groups) decide.
    Host,
}

impl Runtime {
    /// Tell from environment variables read by `var`.
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Runtime {
        let set = |name| var(name).is_some_and(|v| !v.is_empty());
        if set("SNAP_NAME") || set("SNAP_INSTANCE_NAME") {
            Runtime::Snap
        } else if set("KUBERNETES_SERVICE_HOST") {
            Runtime::Pod
        } else {
            Runtime::Host
        }
    }

    /// This process's runtime, read once.
    pub fn detect() -> Runtime {
        static RUNTIME: OnceLock<Runtime> = OnceLock::new();
        *RUNTIME.get_or_init(|| Runtime::from_env(|n| std::env::var(n).ok()))
    }
}

/// The pod's fix for a refused device, for every class.
const POD: &str = "in a pod the container's device cgroup must allow the device: run the agent's \
     container privileged with the host's /dev mounted read-only, as manifests/agent/daemonset.yaml \
     does, or give it the device through a device plugin (docs/device-access.md)";

/// What grants access to a device of `class` where the agent runs.
pub fn permission(class: DeviceClass, runtime: Runtime) -> &'static str {
    match (runtime, class) {
        (Runtime::Snap, DeviceClass::Camera) => {
            "connect the camera interface: snap connect edgeplex:camera"
        }
        (Runtime::Snap, DeviceClass::Serial) => {
            "connect the serial-port interface: snap connect edgeplex:serial-port"
        }
        (Runtime::Pod, _) => POD,
        (Runtime::Host, DeviceClass::Camera) => {
            "add the agent's user to the video group (usermod -aG video USER) or run it as root"
        }
        (Runtime::Host, DeviceClass::Serial) => {
            "add the agent's user to the dialout group (usermod -aG dialout USER) or run it as root"
        }
    }
}

/// [`permission`] for this process.
pub fn permission_here(class: DeviceClass) -> &'static str {
    permission(class, Runtime::detect())
}

/// What grants CAP_SYS_NICE (a negative `nice`) where the agent runs.
pub fn sys_nice(runtime: Runtime) -> &'static str {
    match runtime {
        Runtime::Snap => {
            "this snap does not plug process-control (a reserved interface); a device image that needs it adds the plug and runs snap connect edgeplex:process-control (docs/capture.md)"
        }
        Runtime::Pod => "add SYS_NICE to the container's securityContext.capabilities.add",
        Runtime::Host => "run the agent as root or give it CAP_SYS_NICE",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |n| {
            pairs
                .iter()
                .find(|(k, _)| *k == n)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn where_the_agent_runs() {
        assert_eq!(Runtime::from_env(env(&[])), Runtime::Host);
        assert_eq!(
            Runtime::from_env(env(&[("KUBERNETES_SERVICE_HOST", "10.152.183.1")])),
            Runtime::Pod
        );
        assert_eq!(
            Runtime::from_env(env(&[
                ("SNAP_NAME", "edgeplex"),
                ("KUBERNETES_SERVICE_HOST", "10.152.183.1")
            ])),
            Runtime::Snap
        );
        assert_eq!(
            Runtime::from_env(env(&[("KUBERNETES_SERVICE_HOST", "")])),
            Runtime::Host
        );
    }

    /// A pod is never told to run `snap connect`, a snap always is, a host gets a group.
    #[test]
    fn hints_fit_where_the_agent_runs() {
        for class in [DeviceClass::Camera, DeviceClass::Serial] {
            let pod = permission(class, Runtime::Pod);
            assert!(!pod.contains("snap"), "{pod}");
            assert!(
                pod.contains("device cgroup") && pod.contains("privileged"),
                "{pod}"
            );
            assert!(permission(class, Runtime::Snap).contains("snap connect edgeplex:"));
            let host = permission(class, Runtime::Host);
            assert!(!host.contains("snap") && host.contains("group"), "{host}");
        }
        assert!(!sys_nice(Runtime::Pod).contains("snap"));
        assert!(sys_nice(Runtime::Snap).contains("snap connect"));
    }
}
