//! The agent's loop: obtain, write, wait for the renewal moment, renew (by mTLS with the current
//! certificate when there is no token), and back off while the CA is unreachable, never deleting
//! a certificate that is still valid.

use std::path::PathBuf;

use meshca_ca::Clock;
use meshca_pki::Certificate;
use time::{Duration, OffsetDateTime};

use crate::client::{self, AgentError, Credential, Request};
use crate::schedule::{Backoff, renew_at_received};

/// What the loop needs besides the request.
pub struct Agent {
    /// The request template; its credential may be replaced by the current certificate.
    pub request: Request,
    /// Where the files go.
    pub output_dir: PathBuf,
    /// istio-agent's SECRET_GRACE_PERIOD_RATIO.
    pub grace_ratio: f64,
    /// Re-read the token file before each request (projected tokens rotate).
    pub token_file: Option<PathBuf>,
    /// Re-read the CA's root bundle from this file before each request (a mounted
    /// `istio-ca-root-cert` ConfigMap changes during a root rotation), in place of
    /// `request.ca_root_pem`.
    pub ca_root_file: Option<PathBuf>,
}

impl Agent {
    fn credential(&self) -> Result<Credential, AgentError> {
        if let Some(f) = &self.token_file {
            let t = std::fs::read_to_string(f).map_err(|e| {
                AgentError::Credential(format!("{}: cannot read: {e}", f.display()))
            })?;
            return Ok(Credential::Token(t.trim().to_owned()));
        }
        if let Some((chain_pem, key_pem, _, _)) = client::current(&self.output_dir) {
            return Ok(Credential::ClientCert { chain_pem, key_pem });
        }
        Ok(self.request.credential.clone())
    }

    /// The roots the CA's serving certificate is checked with: the configured bundle (re-read
    /// from `ca_root_file`), and the root bundle the CA last gave this workload. During a root
    /// rotation the CA gives out both roots before it serves under the new one, so a workload
    /// that has renewed once in between keeps reaching it, as the mesh's own peers do.
    fn ca_roots(&self) -> Result<String, AgentError> {
        let mut roots = match &self.ca_root_file {
            Some(f) => std::fs::read_to_string(f).map_err(|e| {
                AgentError::Credential(format!("{}: cannot read: {e}", f.display()))
            })?,
            None => self.request.ca_root_pem.clone(),
        };
        if let Ok(received) = std::fs::read_to_string(self.output_dir.join(client::ROOT_CERT))
            && Certificate::all_from_pem(received.as_bytes(), client::ROOT_CERT).is_ok()
        {
            if !roots.ends_with('\n') {
                roots.push('\n');
            }
            roots.push_str(&received);
        }
        Ok(roots)
    }

    /// Obtains and writes one certificate; returns the leaf.
    pub async fn once(&self, now: OffsetDateTime) -> Result<Certificate, AgentError> {
        self.once_within(now, client::DEFAULT_TIMEOUT).await
    }

    /// [`Self::once`], the request to the CA taking at most `timeout` ([`client::obtain_within`]).
    pub async fn once_within(
        &self,
        now: OffsetDateTime,
        timeout: std::time::Duration,
    ) -> Result<Certificate, AgentError> {
        let mut req = self.request.clone();
        req.credential = self.credential()?;
        req.ca_root_pem = self.ca_roots()?;
        let issued = client::obtain_within(&req, now, timeout).await?;
        client::write_files(&self.output_dir, &issued)?;
        Ok(issued.leaf().clone())
    }

    /// Runs until the task is dropped; `on_renewed` hears about every new certificate. Every
    /// decision takes `now` from `clock`, and every wait is a wait on it.
    pub async fn run(&self, clock: &dyn Clock, on_renewed: impl FnMut(&Certificate)) {
        self.run_within(clock, client::DEFAULT_TIMEOUT, on_renewed)
            .await;
    }

    /// [`Self::run`], each request to the CA taking at most `timeout`.
    pub async fn run_within(
        &self,
        clock: &dyn Clock,
        timeout: std::time::Duration,
        mut on_renewed: impl FnMut(&Certificate),
    ) {
        let mut backoff = Backoff::new();
        loop {
            let now = clock.now();
            let wait = match self.once_within(now, timeout).await {
                Ok(leaf) => {
                    backoff.succeeded();
                    on_renewed(&leaf);
                    let jitter = random_unit();
                    // Counted from when the request went out, the moment this loop decided on.
                    let at = renew_at_received(
                        now,
                        leaf.not_before(),
                        leaf.not_after(),
                        self.grace_ratio,
                        jitter,
                    );
                    tracing::info!(not_after = %leaf.not_after(), renew_at = %at, "certificate written");
                    at - now
                }
                Err(e) => {
                    let valid_until = client::current(&self.output_dir).map(|(_, _, _, na)| na);
                    let d = backoff.failed(now, valid_until);
                    tracing::warn!(error = %e, retry_in = %d, "certificate not renewed; the current one stays");
                    d
                }
            };
            clock
                .sleep_until(now + wait.max(Duration::milliseconds(100)))
                .await;
        }
    }
}

fn random_unit() -> f64 {
    let mut b = [0u8; 2];
    if aws_lc_rs::rand::fill(&mut b).is_err() {
        return 0.5;
    }
    f64::from(u16::from_be_bytes(b)) / f64::from(u16::MAX)
}
