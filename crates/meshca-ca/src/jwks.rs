//! The JWT issuers' keys: each JWKS file is read at start and watched afterwards
//! ([`crate::watch`]), so that a key rotation at the issuer reaches the server without a
//! restart. A file that cannot be read or holds no valid JWKS is refused, and that file's last
//! good keys stay in use; the verifier is rebuilt from every file's keys whenever one changes.

use std::path::{Path, PathBuf};
use std::time::Duration;

use meshca_token::{Jwks, TokenError, Verifier};

use crate::metrics::Metrics;
use crate::watch::ChangeWatch;

/// Why a JWKS file cannot be used: one line naming the file.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct JwksFileError {
    /// the file
    pub path: String,
    /// what is wrong with it
    pub reason: String,
}

/// The issuers' JWKS files and the keys in use from each.
#[derive(Debug)]
pub(crate) struct JwksFiles {
    audience: String,
    files: Vec<JwksFile>,
}

#[derive(Debug)]
struct JwksFile {
    issuer: String,
    path: PathBuf,
    keys: Jwks,
    /// Fingerprint of the content the keys came from.
    in_use: Vec<u8>,
    watch: ChangeWatch,
}

impl JwksFiles {
    /// Reads every issuer's file; any that cannot be used stops the start.
    pub(crate) fn load(
        audience: &str,
        issuers: &[(String, PathBuf)],
    ) -> Result<Self, JwksFileError> {
        let mut files = Vec::with_capacity(issuers.len());
        for (issuer, path) in issuers {
            let (keys, in_use) = read(path);
            files.push(JwksFile {
                issuer: issuer.clone(),
                path: path.clone(),
                keys: keys?,
                in_use,
                watch: ChangeWatch::default(),
            });
        }
        Ok(JwksFiles {
            audience: audience.to_owned(),
            files,
        })
    }

    /// A verifier trusting every file's keys in use.
    pub(crate) fn verifier(&self) -> Verifier {
        self.files
            .iter()
            .fold(Verifier::new(&self.audience), |v, f| {
                v.trust(&f.issuer, f.keys.clone())
            })
    }

    /// Looks at every file once, taking in the ones that changed and are valid; answers the
    /// new verifier when any did. Each reload and each refusal is logged and counted.
    pub(crate) async fn refresh(
        &mut self,
        debounce: Duration,
        metrics: &Metrics,
    ) -> Option<Verifier> {
        let mut changed = false;
        for f in &mut self.files {
            let path = f.path.clone();
            let Some((keys, fingerprint)) = f
                .watch
                .settled_change(&f.in_use, debounce, move || Some(read(&path)))
                .await
            else {
                continue;
            };
            match keys {
                Ok(keys) => {
                    tracing::info!(issuer = %f.issuer, file = %f.path.display(), keys = keys.keys().len(), "JWKS reloaded");
                    f.keys = keys;
                    f.in_use = fingerprint;
                    f.watch.accepted();
                    metrics.reload_success_count.inc();
                    changed = true;
                }
                Err(e) => {
                    tracing::warn!(issuer = %f.issuer, error = %e, "new JWKS refused; the last good keys stay in use");
                    f.watch.refused(fingerprint);
                    metrics.reload_failure_count.inc();
                }
            }
        }
        changed.then(|| self.verifier())
    }
}

/// Reads one JWKS file: its keys, and a fingerprint of what was read (an unreadable file has
/// one too, so that it is refused once rather than on every look).
fn read(path: &Path) -> (Result<Jwks, JwksFileError>, Vec<u8>) {
    let shown = path.display().to_string();
    let error = |reason: String| JwksFileError {
        path: shown.clone(),
        reason,
    };
    match std::fs::read(path) {
        Ok(bytes) => {
            let keys = Jwks::from_json(&bytes, &shown).map_err(|e| match e {
                TokenError::BadJwks { reason, .. } => error(format!("not a valid JWKS: {reason}")),
                other => error(other.to_string()),
            });
            let mut fingerprint = Vec::with_capacity(bytes.len() + 1);
            fingerprint.push(b'+');
            fingerprint.extend_from_slice(&bytes);
            (keys, fingerprint)
        }
        Err(e) => {
            let fingerprint = format!("-{:?}", e.kind()).into_bytes();
            (Err(error(format!("cannot read: {e}"))), fingerprint)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreadable_and_invalid_files_are_named_and_told_apart_from_content() {
        let t = tempfile::tempdir().unwrap();
        let missing = t.path().join("missing.json");
        let (keys, fp_missing) = read(&missing);
        let err = keys.unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("{}: cannot read: ", missing.display())),
            "{err}"
        );
        assert!(!err.contains('\n'), "{err}");

        let broken = t.path().join("broken.json");
        std::fs::write(&broken, "{\"keys\": [").unwrap();
        let (keys, fp_broken) = read(&broken);
        let err = keys.unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("{}: not a valid JWKS: ", broken.display())),
            "{err}"
        );
        assert_ne!(fp_missing, fp_broken);

        // A file that holds the bytes of the unreadable marker is still content, not an error.
        std::fs::write(&broken, &fp_missing).unwrap();
        assert_ne!(read(&broken).1, fp_missing);
    }
}
