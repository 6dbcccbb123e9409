//! Keeps the policy current: re-reads the file when it changes, so an agreement can be added,
//! amended or revoked without restarting a service or dropping healthy streams. A file that
//! fails to load is reported and the previous policy stays in force.

use std::{
    path::PathBuf,
    sync::{Arc, RwLock},
    time::{Duration, SystemTime},
};

use tokio_util::sync::CancellationToken;

use serde::Deserialize;

use crate::Policy;

/// The `[agreements]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgreementsConfig {
    /// The data-sharing agreements file (TOML); required.
    pub path: Option<PathBuf>,
    /// How often to check the file for changes, in seconds.
    pub reload_secs: u64,
}

impl Default for AgreementsConfig {
    fn default() -> Self {
        Self {
            path: None,
            reload_secs: 2,
        }
    }
}

/// Loads the agreements file named in `config` and keeps it current until `stop`.
pub fn load_and_watch(
    config: &AgreementsConfig,
    stop: CancellationToken,
) -> Result<PolicyHandle, String> {
    let path = config
        .path
        .clone()
        .ok_or("[agreements] path is required: no data is shared without agreements")?;
    let policy = Policy::load(&path).map_err(|e| e.to_string())?;
    tracing::info!(path = %path.display(), agreements = policy.agreements().len(), "agreements loaded");
    let handle = PolicyHandle::new(policy);
    handle.watch(path, Duration::from_secs(config.reload_secs.max(1)), stop);
    Ok(handle)
}

/// A shared, swappable policy.
#[derive(Debug, Clone, Default)]
pub struct PolicyHandle {
    current: Arc<RwLock<Arc<Policy>>>,
}

impl PolicyHandle {
    /// A handle holding `policy`.
    pub fn new(policy: Policy) -> Self {
        Self {
            current: Arc::new(RwLock::new(Arc::new(policy))),
        }
    }

    /// The policy in force now.
    pub fn get(&self) -> Arc<Policy> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replaces the policy.
    pub fn set(&self, policy: Policy) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(policy);
    }

    /// Re-reads `path` every `every` while its modification time or size changes, until
    /// `stop` is cancelled.
    pub fn watch(&self, path: PathBuf, every: Duration, stop: CancellationToken) {
        let handle = self.clone();
        tokio::spawn(async move {
            let stamp = |p: &PathBuf| {
                std::fs::metadata(p)
                    .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()))
                    .ok()
            };
            let mut last = stamp(&path);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(every) => {}
                }
                let now = stamp(&path);
                if now == last {
                    continue;
                }
                last = now;
                match Policy::load(&path) {
                    Ok(policy) => {
                        tracing::info!(path = %path.display(), agreements = policy.agreements().len(), "agreements reloaded");
                        handle.set(policy);
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "agreements file not reloaded; the previous agreements stay in force")
                    }
                }
            }
        });
    }
}
