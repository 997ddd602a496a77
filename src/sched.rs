//! Scheduling priority of latency-sensitive threads: a camera's capture thread, and the writer of
//! `edgeplex bench`. A nice value (`SCHED_OTHER`), or a real-time policy (`SCHED_FIFO`,
//! `SCHED_RR`) where the process may use one, applied to the calling thread only; a refused
//! request falls back to the nice value and says why in one line.
//!
//! It never fails a caller: the thread runs at whatever priority it could get.

use std::fmt;
use std::str::FromStr;

use thread_priority::{
    set_thread_priority_and_policy, thread_native_id, thread_schedule_policy_param,
    NormalThreadSchedulePolicy, RealtimeThreadSchedulePolicy, ThreadPriority, ThreadPriorityValue,
    ThreadSchedulePolicy,
};

/// A real-time scheduling policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RtPolicy {
    /// `SCHED_FIFO`: runs until it blocks or a higher priority thread is runnable.
    Fifo,
    /// `SCHED_RR`: `SCHED_FIFO` with a time slice among threads of the same priority.
    Rr,
}

/// A real-time request, written `fifo:N` or `rr:N` with `N` in 1..=99 (higher runs first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Realtime {
    /// The policy.
    pub policy: RtPolicy,
    /// Its static priority, 1..=99.
    pub priority: u8,
}

impl fmt::Display for Realtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = match self.policy {
            RtPolicy::Fifo => "fifo",
            RtPolicy::Rr => "rr",
        };
        write!(f, "{p}:{}", self.priority)
    }
}

impl FromStr for Realtime {
    type Err = String;

    fn from_str(s: &str) -> Result<Realtime, String> {
        let bad = || {
            format!(
                "{s:?} is not a real-time priority: write fifo:N or rr:N with N in 1..=99, e.g. \"fifo:10\""
            )
        };
        let (p, n) = s.split_once(':').ok_or_else(bad)?;
        let policy = match p.trim() {
            "fifo" => RtPolicy::Fifo,
            "rr" => RtPolicy::Rr,
            _ => return Err(bad()),
        };
        let priority: u8 = n.trim().parse().map_err(|_| bad())?;
        if !(1..=99).contains(&priority) {
            return Err(bad());
        }
        Ok(Realtime { policy, priority })
    }
}

impl serde::Serialize for Realtime {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Realtime {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Realtime, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// What a thread asked for: a real-time policy, else (or when refused) a nice value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Request {
    /// Tried first.
    pub realtime: Option<Realtime>,
    /// Applied when no real-time policy was asked for or it was refused.
    pub nice: Option<i32>,
}

/// What the calling thread got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The policy and priority now in force, e.g. `fifo:10`, `nice:-5`, `unchanged`.
    pub applied: String,
    /// One line per refused request: what was refused and why, with what grants it.
    pub refused: Vec<String>,
}

/// What grants a raised priority, for the messages.
const GRANT_HINT: &str = "it needs CAP_SYS_NICE (snap: connect edgeplex:process-control; pod: \
     securityContext.capabilities.add SYS_NICE) or a RLIMIT_RTPRIO/RLIMIT_NICE that allows it";

/// Apply `req` to the calling thread. Never fails: what could not be applied is in `refused`.
pub fn apply_to_current_thread(req: Request) -> Outcome {
    let mut refused = Vec::new();
    if let Some(rt) = req.realtime {
        match set_realtime(rt) {
            Ok(()) => {
                return Outcome {
                    applied: rt.to_string(),
                    refused,
                }
            }
            Err(e) => refused.push(format!("{rt}: {e}")),
        }
    }
    if let Some(n) = req.nice {
        match set_nice(n) {
            Ok(()) => {
                return Outcome {
                    applied: format!("nice:{n}"),
                    refused,
                }
            }
            Err(e) => refused.push(format!("nice {n}: {e}")),
        }
    }
    Outcome {
        applied: "unchanged".into(),
        refused,
    }
}

/// Set the calling thread's real-time policy. The error says why it was refused.
pub fn set_realtime(rt: Realtime) -> Result<(), String> {
    let policy = ThreadSchedulePolicy::Realtime(match rt.policy {
        RtPolicy::Fifo => RealtimeThreadSchedulePolicy::Fifo,
        RtPolicy::Rr => RealtimeThreadSchedulePolicy::RoundRobin,
    });
    let value = ThreadPriorityValue::try_from(rt.priority).map_err(|e| e.to_string())?;
    match set_thread_priority_and_policy(
        thread_native_id(),
        ThreadPriority::Crossplatform(value),
        policy,
    ) {
        Ok(()) => Ok(()),
        Err(thread_priority::Error::OS(libc::EPERM)) => Err(format!(
            "not permitted (EPERM); {GRANT_HINT}, and, on a kernel built with \
             CONFIG_RT_GROUP_SCHED, real-time runtime for the process's cgroup"
        )),
        Err(thread_priority::Error::OS(e)) => Err(std::io::Error::from_raw_os_error(e).to_string()),
        Err(e) => Err(e.to_string()),
    }
}

/// Set the calling thread's nice value (`SCHED_OTHER`). The error says why it was refused.
pub fn set_nice(nice: i32) -> Result<(), String> {
    let tid = rustix::thread::gettid();
    match rustix::process::setpriority_process(Some(tid), nice) {
        Ok(()) => Ok(()),
        Err(e) if e == rustix::io::Errno::ACCESS || e == rustix::io::Errno::PERM => Err(format!(
            "not permitted ({e}); raising priority (a negative value) {GRANT_HINT}"
        )),
        Err(e) => Err(e.to_string()),
    }
}

/// Put the calling thread back to `SCHED_OTHER` with nice value `nice`.
pub fn reset_current_thread(nice: i32) -> Result<(), String> {
    set_thread_priority_and_policy(
        thread_native_id(),
        ThreadPriority::Min,
        ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Other),
    )
    .map_err(|e| e.to_string())?;
    set_nice(nice)
}

/// The calling thread's policy and priority as [`Outcome::applied`] writes them.
pub fn current_thread() -> String {
    match thread_schedule_policy_param(thread_native_id()) {
        Ok((ThreadSchedulePolicy::Realtime(p), params)) => {
            let p = match p {
                RealtimeThreadSchedulePolicy::Fifo => "fifo",
                RealtimeThreadSchedulePolicy::RoundRobin => "rr",
                _ => "deadline",
            };
            format!("{p}:{}", params.sched_priority)
        }
        Ok((ThreadSchedulePolicy::Normal(_), _)) => {
            let tid = rustix::thread::gettid();
            match rustix::process::getpriority_process(Some(tid)) {
                Ok(n) => format!("nice:{n}"),
                Err(e) => format!("unknown: {e}"),
            }
        }
        Err(e) => format!("unknown: {e}"),
    }
}

/// The calling thread's nice value (0 if it cannot be read).
pub fn current_nice() -> i32 {
    rustix::process::getpriority_process(Some(rustix::thread::gettid())).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn realtime_parses_and_refuses_nonsense() {
        assert_eq!(
            "fifo:10".parse::<Realtime>(),
            Ok(Realtime {
                policy: RtPolicy::Fifo,
                priority: 10
            })
        );
        assert_eq!("rr:99".parse::<Realtime>().unwrap().to_string(), "rr:99");
        for bad in [
            "fifo", "fifo:0", "fifo:100", "idle:3", "fifo:-1", "", "rr:x",
        ] {
            let e = bad.parse::<Realtime>().unwrap_err();
            assert!(e.contains("fifo:N or rr:N"), "{bad}: {e}");
        }
    }

    /// Whether the calling thread holds CAP_SYS_NICE in its effective set.
    fn has_sys_nice() -> bool {
        rustix::thread::capabilities(None)
            .map(|c| {
                c.effective
                    .contains(rustix::thread::CapabilitySet::SYS_NICE)
            })
            .unwrap_or(false)
    }

    #[test]
    fn realtime_applies_to_the_calling_thread_only_when_permitted() {
        let before = current_thread();
        let (outcome, now) = std::thread::spawn(|| {
            let may = has_sys_nice();
            let o = apply_to_current_thread(Request {
                realtime: Some("fifo:7".parse().unwrap()),
                nice: Some(3),
            });
            (o, may)
        })
        .join()
        .unwrap();
        if now {
            assert_eq!(outcome.applied, "fifo:7", "{outcome:?}");
            assert!(outcome.refused.is_empty());
        } else {
            // Without CAP_SYS_NICE the fallback path runs (or RLIMIT_RTPRIO allowed it).
            assert!(
                outcome.applied == "fifo:7" || outcome.applied == "nice:3",
                "{outcome:?}"
            );
        }
        assert_eq!(
            current_thread(),
            before,
            "other threads keep their priority"
        );
    }

    /// The fallback path: a thread without CAP_SYS_NICE (dropped from its own effective set;
    /// capabilities are per thread) and with RLIMIT_RTPRIO 0 is refused SCHED_FIFO with EPERM,
    /// says why in one line, and gets the nice value instead.
    #[test]
    fn refused_realtime_falls_back_to_nice_with_a_reason() {
        use rustix::process::{getrlimit, setrlimit, Resource};
        // RLIMIT_RTPRIO would let an unprivileged thread use SCHED_FIFO: make sure it cannot.
        let rt = getrlimit(Resource::Rtprio);
        if rt.current != Some(0) {
            let lim = rustix::process::Rlimit {
                current: Some(0),
                maximum: rt.maximum,
            };
            setrlimit(Resource::Rtprio, lim).expect("lower RLIMIT_RTPRIO");
        }
        let outcome = std::thread::spawn(|| {
            let mut caps = rustix::thread::capabilities(None).expect("capget");
            caps.effective
                .remove(rustix::thread::CapabilitySet::SYS_NICE);
            rustix::thread::set_capabilities(None, caps).expect("drop CAP_SYS_NICE");
            let o = apply_to_current_thread(Request {
                realtime: Some("rr:20".parse().unwrap()),
                // Lowering priority needs no privilege.
                nice: Some(4),
            });
            assert_eq!(
                current_thread(),
                "nice:4",
                "the thread runs at the fallback"
            );
            o
        })
        .join()
        .unwrap();
        assert_eq!(outcome.applied, "nice:4", "{outcome:?}");
        assert_eq!(outcome.refused.len(), 1, "{outcome:?}");
        let why = &outcome.refused[0];
        assert!(why.starts_with("rr:20: not permitted (EPERM)"), "{why}");
        assert!(
            why.contains("CAP_SYS_NICE") && why.contains("process-control"),
            "{why}"
        );
        assert!(!why.contains('\n'), "one line: {why}");
    }

    #[test]
    fn nothing_asked_changes_nothing() {
        let o = std::thread::spawn(|| apply_to_current_thread(Request::default()))
            .join()
            .unwrap();
        assert_eq!(o.applied, "unchanged");
        assert!(o.refused.is_empty());
    }
}
