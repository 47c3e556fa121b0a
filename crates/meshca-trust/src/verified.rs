//! The reconciler's record of the bundles it has verified, kept in the management cluster.
//!
//! Verifying a cluster's bundle means parsing its key, matching it and checking a signature:
//! about 180 µs with ECDSA P-256, milliseconds with RSA-4096. A manager started afresh (`trust
//! apply` from cron, a restarted `trust run`) would pay that for every cluster although nearly
//! all are as it left them. So each reconcile writes down, for each cluster it found fresh or
//! made so, what it verified: the bundle's digest (SHA-256 of its place, key names and bytes)
//! and the validity windows it depends on, under a MAC that also covers the CA the bundle is
//! signed by and the root bundle it carries. A later reconcile that computes the same digest, and
//! the same MAC for its own target CA and roots, knows what loading would tell it without
//! loading: the bundle is signed by that CA and has those roots; only time is checked again.
//!
//! The MAC key is derived from the policy CA's private key, which is in the same management
//! cluster: whoever could forge a record could as well sign any bundle. A policy whose CA key
//! is elsewhere (an external signer) keeps no record. A record whose digest or MAC does not
//! match (a bundle changed in any byte, another CA or root bundle, a rotated root, a record
//! edited by hand) is ignored, and the bundle is loaded and verified as if there were none.
//!
//! The secret is `<policy>.verified` in the policy's namespace, one line per cluster:
//! `<cluster> <digest: 16 bytes hex> <signer notBefore> <signer notAfter> <path notBefore>
//! <path notAfter> <MAC: 16 bytes hex>`, times in Unix seconds. It is rewritten only when a line
//! changes, so a no-op reconcile writes nothing.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;

use aws_lc_rs::hmac;
use meshca_pki::{CacertsBundle, Certificate};
use time::OffsetDateTime;

use crate::cache::Digest;
use crate::policy::TrustPolicy;
use crate::reconcile::TrustError;
use meshca_store::{Expect, SecretData, SecretKey, SecretStore};

/// The key of the records in their secret.
pub const RECORDS_KEY: &str = "bundles";

/// The records secret's name.
pub fn records_secret(policy: &TrustPolicy) -> String {
    format!("{}.verified", policy.name)
}

fn records_key(policy: &TrustPolicy, mgmt: &str) -> SecretKey {
    SecretKey::new(mgmt, policy.namespace.as_str(), records_secret(policy))
}

/// The times a reconcile's decisions about a bundle depend on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Facts {
    /// The signing certificate's window: when it falls due for renewal.
    pub(crate) signer_not_before: OffsetDateTime,
    pub(crate) signer_not_after: OffsetDateTime,
    /// The window in which every certificate of its verified path is valid.
    pub(crate) path_not_before: OffsetDateTime,
    pub(crate) path_not_after: OffsetDateTime,
}

impl Facts {
    pub(crate) fn of(bundle: &CacertsBundle) -> Facts {
        let path = bundle.path().certs();
        let signer = bundle.signer().cert();
        Facts {
            signer_not_before: signer.not_before(),
            signer_not_after: signer.not_after(),
            path_not_before: path
                .iter()
                .map(Certificate::not_before)
                .max()
                .unwrap_or(signer.not_before()),
            path_not_after: path
                .iter()
                .map(Certificate::not_after)
                .min()
                .unwrap_or(signer.not_after()),
        }
    }

    /// Whether the bundle would still load at `now`: every certificate of its path is valid.
    pub(crate) fn valid_at(&self, now: OffsetDateTime) -> bool {
        self.path_not_before <= now && now <= self.path_not_after
    }

    fn times(&self) -> [i64; 4] {
        [
            self.signer_not_before,
            self.signer_not_after,
            self.path_not_before,
            self.path_not_after,
        ]
        .map(OffsetDateTime::unix_timestamp)
    }
}

/// What a record is checked against: the target's signing CA and root bundle.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Against {
    pub(crate) ca: [u8; 32],
    pub(crate) roots: [u8; 32],
}

impl Against {
    pub(crate) fn new(ca: &Certificate, roots: &[Certificate]) -> Against {
        let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        for r in roots {
            ctx.update(&(r.der().len() as u64).to_be_bytes());
            ctx.update(r.der());
        }
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.finish().as_ref());
        Against {
            ca: ca.sha256_fingerprint(),
            roots: out,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Line {
    digest: [u8; 16],
    times: [i64; 4],
    mac: [u8; 16],
}

/// The records of one reconcile: those it found, and those it notes for the next.
pub(crate) struct Records {
    key: Option<hmac::Key>,
    found: BTreeMap<String, Line>,
    raw: Option<Vec<u8>>,
    /// The records secret as read: a save expects to find it still so.
    expect: Expect,
    noted: Mutex<BTreeMap<String, Line>>,
}

impl Records {
    /// No records: nothing found, nothing kept.
    pub(crate) fn none() -> Records {
        Records {
            key: None,
            found: BTreeMap::new(),
            raw: None,
            expect: Expect::Absent,
            noted: Mutex::new(BTreeMap::new()),
        }
    }

    /// The records in the management cluster, checked with a key derived from `ca_key` (the
    /// policy CA's PKCS#8 key; `None` keeps no records). Lines that cannot be read are ignored.
    pub(crate) fn load(
        store: &dyn SecretStore,
        policy: &TrustPolicy,
        mgmt: &str,
        ca_key: Option<&[u8]>,
    ) -> Result<Records, TrustError> {
        let Some(ca_key) = ca_key else {
            return Ok(Records::none());
        };
        let derive = hmac::Key::new(hmac::HMAC_SHA256, b"meshca trust: verified bundles v1");
        let key = hmac::Key::new(hmac::HMAC_SHA256, hmac::sign(&derive, ca_key).as_ref());
        let read = store.get(&records_key(policy, mgmt))?;
        let expect = Expect::from_read(read.as_ref());
        let raw = read.and_then(|mut d| d.data.remove(RECORDS_KEY));
        let found = raw
            .as_deref()
            .map(|r| parse(&String::from_utf8_lossy(r)))
            .unwrap_or_default();
        Ok(Records {
            key: Some(key),
            found,
            raw,
            expect,
            noted: Mutex::new(BTreeMap::new()),
        })
    }

    fn mac(&self, cluster: &str, digest: &Digest, times: &[i64; 4], a: Against) -> [u8; 16] {
        let mut msg = Vec::with_capacity(160 + cluster.len());
        msg.extend_from_slice(&(cluster.len() as u64).to_be_bytes());
        msg.extend_from_slice(cluster.as_bytes());
        msg.extend_from_slice(digest);
        msg.extend_from_slice(&a.ca);
        msg.extend_from_slice(&a.roots);
        for t in times {
            msg.extend_from_slice(&t.to_be_bytes());
        }
        let mut out = [0u8; 16];
        if let Some(key) = &self.key {
            out.copy_from_slice(&hmac::sign(key, &msg).as_ref()[..16]);
        }
        out
    }

    /// What the record of `cluster` says of the bundle with `digest`, if it is a record of
    /// those very bytes verified against `a`.
    pub(crate) fn lookup(&self, cluster: &str, digest: &Digest, a: Against) -> Option<Facts> {
        self.key.as_ref()?;
        let line = self.found.get(cluster)?;
        if line.digest[..] != digest[..16] {
            return None;
        }
        let expected = self.mac(cluster, digest, &line.times, a);
        aws_lc_rs::constant_time::verify_slices_are_equal(&expected, &line.mac).ok()?;
        let t = |i: usize| OffsetDateTime::from_unix_timestamp(line.times[i]).ok();
        Some(Facts {
            signer_not_before: t(0)?,
            signer_not_after: t(1)?,
            path_not_before: t(2)?,
            path_not_after: t(3)?,
        })
    }

    /// Notes that the bundle of `cluster` with `digest` was verified against `a` (a later note
    /// of the same cluster in the reconcile replaces it).
    pub(crate) fn note(&self, cluster: &str, digest: &Digest, facts: &Facts, a: Against) {
        if self.key.is_none() {
            return;
        }
        let times = facts.times();
        let mut d = [0u8; 16];
        d.copy_from_slice(&digest[..16]);
        let line = Line {
            digest: d,
            times,
            mac: self.mac(cluster, digest, &times, a),
        };
        self.noted
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(cluster.to_owned(), line);
    }

    /// Writes the records for the next reconcile: those noted, and those found for clusters
    /// still in the store that this reconcile did not look at. Nothing is written when they are
    /// what was found.
    pub(crate) fn save(
        &self,
        store: &dyn SecretStore,
        policy: &TrustPolicy,
        mgmt: &str,
        present: &[String],
    ) -> Result<(), TrustError> {
        if self.key.is_none() {
            return Ok(());
        }
        let noted = self
            .noted
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut all: BTreeMap<&str, &Line> = self
            .found
            .iter()
            .filter(|(c, _)| present.binary_search(c).is_ok())
            .map(|(c, l)| (c.as_str(), l))
            .collect();
        all.extend(noted.iter().map(|(c, l)| (c.as_str(), l)));
        let text = render(&all);
        if self.raw.as_deref() == Some(text.as_bytes()) || (self.raw.is_none() && all.is_empty()) {
            return Ok(());
        }
        let mut data = SecretData::new();
        data.insert(RECORDS_KEY.to_owned(), text.into_bytes());
        match store.write(&records_key(policy, mgmt), &data, &self.expect) {
            // Another manager wrote records since these were read: theirs stand, and what this
            // reconcile verified is verified again next time. Records only spare work.
            Err(e) if e.is_conflict() => Ok(()),
            r => r.map(|_| ()).map_err(Into::into),
        }
    }
}

fn render(all: &BTreeMap<&str, &Line>) -> String {
    let mut text = String::with_capacity(all.len() * 128);
    for (cluster, l) in all {
        let [a, b, c, d] = l.times;
        let _ = writeln!(
            text,
            "{cluster} {} {a} {b} {c} {d} {}",
            hex(&l.digest),
            hex(&l.mac)
        );
    }
    text
}

fn parse(text: &str) -> BTreeMap<String, Line> {
    let mut out = BTreeMap::new();
    for l in text.lines() {
        // The cluster comes first and is whatever is left: the six fields after it have no spaces.
        let mut f: Vec<&str> = l.rsplitn(7, ' ').collect();
        if f.len() != 7 {
            continue;
        }
        f.reverse();
        let (Some(digest), Some(mac)) = (unhex(f[1]), unhex(f[6])) else {
            continue;
        };
        let mut times = [0i64; 4];
        if f[2..6]
            .iter()
            .zip(times.iter_mut())
            .any(|(s, t)| s.parse().map(|v| *t = v).is_err())
        {
            continue;
        }
        out.insert(f[0].to_owned(), Line { digest, times, mac });
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn unhex(s: &str) -> Option<[u8; 16]> {
    if s.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_trip_and_bad_lines_are_skipped() {
        let line = Line {
            digest: [7; 16],
            times: [1, 2, -3, 4_000_000_000],
            mac: [0xab; 16],
        };
        let mut all = BTreeMap::new();
        all.insert("cluster one", &line);
        all.insert("c2", &line);
        let text = render(&all);
        let mut back = parse(&text);
        assert_eq!(back.remove("cluster one"), Some(line.clone()));
        assert_eq!(back.remove("c2"), Some(line));
        assert!(back.is_empty());
        let broken = "c1 zz 1 2 3 4 abab\nc2 0707\n\nc3 07070707070707070707070707070707 1 2 x 4 abababababababababababababababab\n";
        assert!(parse(broken).is_empty());
    }
}
