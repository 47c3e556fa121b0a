//! The dashboard `trust run --http` serves: each policy's data as of the manager's latest
//! reconcile of it, taken from the bundles that reconcile verified, and rendered afresh at every
//! request so that today's line and the times left move on between reconciles.

use std::collections::BTreeMap;
use std::sync::Mutex;

use meshca_store::SecretStore;
use time::OffsetDateTime;

use super::{DashboardData, gather, page};
use crate::manager::Event;

/// Each policy's latest dashboard data, by `namespace/name`.
#[derive(Debug, Default)]
pub struct LiveDashboards {
    latest: Mutex<BTreeMap<String, Result<DashboardData, String>>>,
}

impl LiveDashboards {
    /// Nothing yet: the pages say so until the first reconcile.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes in one of the manager's events: a reconcile's outcome replaces the policy's data
    /// (read from `store` at the reconcile's time), a removed policy leaves.
    pub fn record(&self, event: &Event<'_>, store: &dyn SecretStore, mgmt: &str, only: &[String]) {
        let mut latest = self.latest.lock().unwrap_or_else(|p| p.into_inner());
        match event {
            Event::Reconciled {
                policy,
                at,
                bundles,
                ..
            } => {
                if let Some(p) = &policy.policy {
                    let data =
                        gather(bundles, store, p, mgmt, only, *at).map_err(|e| e.to_string());
                    latest.insert(format!("{}/{}", p.namespace, p.name), data);
                }
            }
            Event::Removed(s) => {
                if let Some(p) = &s.policy {
                    latest.remove(&format!("{}/{}", p.namespace, p.name));
                }
            }
            _ => {}
        }
    }

    /// The page at `path` as it stands at `now`: `/` is the dashboard of the one policy (a list
    /// when there are several), `/policy/<namespace>/<name>` a given policy's; `None` for any
    /// other path.
    pub fn page(&self, path: &str, now: OffsetDateTime) -> Option<String> {
        let latest = self.latest.lock().unwrap_or_else(|p| p.into_inner());
        let one = |data: &Result<DashboardData, String>| match data {
            Ok(d) => page::render(d, now),
            Err(e) => page::notice("The dashboard cannot be read", e),
        };
        if path == "/" {
            return Some(match latest.len() {
                0 => page::notice(
                    "No reconcile yet",
                    "the dashboard appears after the manager's first reconcile",
                ),
                1 => latest.values().next().map(one)?,
                _ => page::index(latest.keys().map(String::as_str)),
            });
        }
        let id = path.strip_prefix("/policy/")?;
        latest.get(id).map(one)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn before_the_first_reconcile_the_root_says_so_and_other_paths_are_not_found() {
        let live = LiveDashboards::new();
        let now = OffsetDateTime::UNIX_EPOCH;
        assert!(live.page("/", now).unwrap().contains("No reconcile yet"));
        assert_eq!(live.page("/metrics", now), None);
        assert_eq!(live.page("/policy/gloo-mesh/mesh", now), None);
    }
}
