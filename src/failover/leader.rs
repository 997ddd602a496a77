//! Leader election over a `coordination.k8s.io/v1` Lease, so that one controller acts per
//! cluster however many replicas run.
//!
//! kube-runtime 5 has no leader election, so this is the client-go algorithm, small:
//!
//! - **Acquire** when the Lease does not exist (create), has no holder (released), or has not
//!   changed for its `leaseDurationSeconds` *as observed on this process's clock* (the same
//!   skew-safe test as for agents, via [`LeaseTracker`]). Every write is a PUT carrying the
//!   `resourceVersion` just read, so of two candidates only one wins; the other gets 409.
//! - **Renew** every renew interval by PUT of the last copy written.
//! - **Lead only while fresh:** [`Leadership::is_leader`] is true only within the renew deadline
//!   (shorter than the Lease duration) of the start of the last successful write. A leader cut
//!   off from the API stops acting before anyone else may take over.
//! - **Release** on shutdown: clear the holder, so a standby takes over at its next poll instead
//!   of after the Lease duration.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use kube::Client;

use super::decide::LeaseState;
use super::observe::{LeaseSighting, LeaseTracker};
use super::FIELD_MANAGER;
use crate::shutdown::Shutdown;

/// Leader election parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderConfig {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// This instance's identity, written as `holderIdentity`. Unique per replica.
    pub identity: String,
    /// `leaseDurationSeconds` written; standbys wait this long without a change to take over.
    pub lease_duration: Duration,
    /// How often the leader renews and standbys look.
    pub renew_interval: Duration,
    /// The leader stops acting when its last successful renewal started this long ago.
    pub renew_deadline: Duration,
}

/// Whether this instance currently leads; cheap to clone and check.
#[derive(Debug, Clone)]
pub struct Leadership {
    renewed: Arc<Mutex<Option<Instant>>>,
    deadline: Duration,
}

impl Leadership {
    fn new(deadline: Duration) -> Leadership {
        Leadership {
            renewed: Arc::new(Mutex::new(None)),
            deadline,
        }
    }

    /// True while the last successful acquire or renew started less than the renew deadline ago.
    pub fn is_leader(&self) -> bool {
        self.lock().is_some_and(|t| t.elapsed() < self.deadline)
    }

    fn renewed(&self, started: Instant) {
        *self.lock() = Some(started);
    }

    fn lost(&self) {
        *self.lock() = None;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        self.renewed.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One participant in the election.
#[derive(Debug)]
pub struct LeaderElector {
    api: Api<Lease>,
    config: LeaderConfig,
    leadership: Leadership,
    /// The Lease as we last wrote it while holding it.
    held: Option<Lease>,
    /// Observations of the Lease while someone else holds it.
    tracker: LeaseTracker,
}

fn now_micro() -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::now())
}

fn secs_i32(d: Duration) -> i32 {
    i32::try_from(d.as_secs().max(1)).unwrap_or(i32::MAX)
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.is_conflict() || s.is_already_exists())
}

impl LeaderElector {
    /// A participant that has not yet tried to acquire.
    pub fn new(client: Client, config: LeaderConfig) -> LeaderElector {
        // A standby that could not read the Lease for a while restarts its observation rather
        // than deposing a leader it simply could not see.
        let max_gap = config.renew_interval * 3;
        LeaderElector {
            api: Api::namespaced(client, &config.namespace),
            tracker: LeaseTracker::new(config.lease_duration, max_gap),
            leadership: Leadership::new(config.renew_deadline),
            config,
            held: None,
        }
    }

    /// A handle that says whether this participant leads.
    pub fn leadership(&self) -> Leadership {
        self.leadership.clone()
    }

    fn params() -> PostParams {
        PostParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..PostParams::default()
        }
    }

    /// Acquire or renew once. Returns whether this instance leads afterwards.
    pub async fn step(&mut self) -> Result<bool, kube::Error> {
        let started = Instant::now();
        if let Some(lease) = self.held.take() {
            let mut renewed = lease.clone();
            let spec = renewed.spec.get_or_insert_with(LeaseSpec::default);
            spec.renew_time = Some(now_micro());
            match self
                .api
                .replace(&self.config.name, &Self::params(), &renewed)
                .await
            {
                Ok(l) => {
                    self.held = Some(l);
                    self.leadership.renewed(started);
                    return Ok(true);
                }
                // Someone wrote it: read it and see below.
                Err(e) if is_conflict(&e) => {}
                Err(e) => {
                    self.held = Some(lease);
                    return Err(e);
                }
            }
        }
        let Some(current) = self.api.get_opt(&self.config.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.config.name.clone()),
                    namespace: Some(self.config.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.config.identity.clone()),
                    lease_duration_seconds: Some(secs_i32(self.config.lease_duration)),
                    acquire_time: Some(now_micro()),
                    renew_time: Some(now_micro()),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match self.api.create(&Self::params(), &lease).await {
                Ok(l) => Ok(self.won(l, started)),
                Err(e) if is_conflict(&e) => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = current.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let ours = holder.as_deref() == Some(self.config.identity.as_str());
        if !ours {
            if self.leadership.is_leader() {
                tracing::warn!(holder = ?holder, "lost leadership: another instance holds the Lease");
            }
            self.leadership.lost();
            let now = Instant::now();
            self.tracker.observe(
                now,
                [(self.config.name.as_str(), Some(LeaseSighting::of(&current)))],
            );
            let expired = self
                .tracker
                .observations()
                .get(&self.config.name)
                .is_some_and(|o| o.state(now) == LeaseState::Expired);
            if holder.is_some() && !expired {
                return Ok(false);
            }
        }
        let mut next = current;
        let spec = next.spec.get_or_insert_with(LeaseSpec::default);
        if !ours {
            spec.holder_identity = Some(self.config.identity.clone());
            spec.acquire_time = Some(now_micro());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
        }
        spec.lease_duration_seconds = Some(secs_i32(self.config.lease_duration));
        spec.renew_time = Some(now_micro());
        match self
            .api
            .replace(&self.config.name, &Self::params(), &next)
            .await
        {
            Ok(l) => Ok(self.won(l, started)),
            Err(e) if is_conflict(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn won(&mut self, lease: Lease, started: Instant) -> bool {
        if !self.leadership.is_leader() {
            tracing::info!(
                lease = %self.config.name,
                identity = %self.config.identity,
                "acquired leadership"
            );
        }
        self.held = Some(lease);
        self.leadership.renewed(started);
        true
    }

    /// Give up leadership: stop acting now, then clear the holder so a standby takes over at
    /// once. Does nothing when this instance does not hold the Lease.
    pub async fn release(&mut self) -> Result<(), kube::Error> {
        self.leadership.lost();
        let Some(mut lease) = self.held.take() else {
            return Ok(());
        };
        for _ in 0..3 {
            let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
            if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
                return Ok(());
            }
            spec.holder_identity = None;
            spec.renew_time = Some(now_micro());
            spec.lease_duration_seconds = Some(1);
            match self
                .api
                .replace(&self.config.name, &Self::params(), &lease)
                .await
            {
                Ok(_) => {
                    tracing::info!(lease = %self.config.name, "released leadership");
                    return Ok(());
                }
                Err(e) if is_conflict(&e) => match self.api.get_opt(&self.config.name).await? {
                    Some(l) => lease = l,
                    None => return Ok(()),
                },
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Take part until shutdown (without releasing: call [`LeaderElector::release_logged`] once
    /// the work that leadership guards has stopped). `on_error` is called for each failed step.
    pub async fn participate(&mut self, shutdown: &Shutdown, on_error: impl Fn(&kube::Error)) {
        let timeout = self.config.renew_deadline;
        while !shutdown.requested() {
            match tokio::time::timeout(timeout, self.step()).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    on_error(&e);
                    tracing::warn!(error = %e, "leader election: cannot read or write the Lease");
                }
                Err(_) => tracing::warn!("leader election: the API server did not answer in time"),
            }
            shutdown.sleep(self.config.renew_interval).await;
        }
        self.leadership.lost();
    }

    /// [`LeaderElector::release`] within the renew deadline, logging failures.
    pub async fn release_logged(&mut self, on_error: impl Fn(&kube::Error)) {
        match tokio::time::timeout(self.config.renew_deadline, self.release()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                on_error(&e);
                tracing::warn!(error = %e, "could not release leadership; standbys take over after the Lease duration");
            }
            Err(_) => tracing::warn!(
                "could not release leadership in time; standbys take over after the Lease duration"
            ),
        }
    }
}
