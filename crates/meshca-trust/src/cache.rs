//! Bundles this process has already loaded and checked, by the SHA-256 of their bytes.
//!
//! Loading a `cacerts` bundle as istiod does (parse every certificate and the key, match the key,
//! verify the chain) is most of what a no-op reconcile costs: about 180 µs a cluster with ECDSA
//! P-256, and milliseconds with RSA-4096, where the signature check alone is a verify. A manager
//! that reconciles every few minutes finds nearly every bundle byte for byte as it left it, so it
//! keeps what it verified: a bundle whose cluster, key names and bytes hash to an entry is the
//! entry, once each certificate of its verified path is checked against the new `now` (the one
//! part of loading that depends on time). Any other byte, in any file, is a miss and a full load.
//! Failed loads are not kept. Each reconcile keeps only the entries it used, so the cache never
//! holds more than the bundles of one reconcile.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use meshca_pki::{CacertsBundle, PkiError};
use time::OffsetDateTime;

use meshca_store::SecretData;

/// A secret's digest: see [`digest`].
pub(crate) type Digest = [u8; 32];

/// Verified bundles, shared by the threads of a reconcile and kept across reconciles.
#[derive(Default)]
pub struct BundleCache {
    inner: Mutex<Inner>,
    hits: AtomicU64,
    misses: AtomicU64,
}

#[derive(Default)]
struct Inner {
    /// The reconcile in progress.
    generation: u64,
    /// Each bundle with the last generation that used it.
    entries: HashMap<Digest, (Arc<CacertsBundle>, u64)>,
}

impl std::fmt::Debug for BundleCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (hits, misses) = self.stats();
        write!(
            f,
            "BundleCache({} bundles, {hits} hits, {misses} misses)",
            self.len()
        )
    }
}

impl BundleCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// How many bundles it holds.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Loads found in the cache and loads that parsed and verified, since it was made.
    pub fn stats(&self) -> (u64, u64) {
        (
            self.hits.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed),
        )
    }

    /// Starts a reconcile: what it does not use is dropped by [`BundleCache::sweep`].
    pub(crate) fn begin(&self) {
        self.lock().generation += 1;
    }

    /// Ends a reconcile: drops every bundle it did not use.
    pub(crate) fn sweep(&self) {
        let mut inner = self.lock();
        let generation = inner.generation;
        inner.entries.retain(|_, (_, g)| *g == generation);
    }

    /// The bundle in `data` (named `where_` in errors), as [`CacertsBundle::from_files`] loads
    /// it at `now`: from the cache when the same bytes were verified before and every
    /// certificate of their path is still valid at `now`, else loaded and kept.
    pub(crate) fn load(
        &self,
        data: &SecretData,
        where_: &str,
        now: OffsetDateTime,
    ) -> Result<Arc<CacertsBundle>, PkiError> {
        self.load_digested(digest(data, where_), data, where_, now)
    }

    /// The bundle kept under `key` (a [`digest`]), if every certificate of its path is valid
    /// at `now`.
    pub(crate) fn get(&self, key: &Digest, now: OffsetDateTime) -> Option<Arc<CacertsBundle>> {
        let mut inner = self.lock();
        let generation = inner.generation;
        let (bundle, g) = inner.entries.get_mut(key)?;
        if !bundle.path().certs().iter().all(|c| c.is_valid_at(now)) {
            return None;
        }
        *g = generation;
        self.hits.fetch_add(1, Ordering::Relaxed);
        Some(Arc::clone(bundle))
    }

    /// [`BundleCache::load`] with the digest of `data` and `where_` already worked out.
    pub(crate) fn load_digested(
        &self,
        key: Digest,
        data: &SecretData,
        where_: &str,
        now: OffsetDateTime,
    ) -> Result<Arc<CacertsBundle>, PkiError> {
        if let Some(bundle) = self.get(&key, now) {
            return Ok(bundle);
        }
        // Loaded outside the lock: the other threads of the reconcile go on meanwhile.
        self.misses.fetch_add(1, Ordering::Relaxed);
        let bundle = CacertsBundle::from_files(data, where_, now)?;
        Ok(self.keep(key, bundle))
    }

    /// Keeps a bundle loaded (or just made and proven) from the bytes with digest `key`.
    pub(crate) fn keep(&self, key: Digest, bundle: CacertsBundle) -> Arc<CacertsBundle> {
        let bundle = Arc::new(bundle);
        let mut inner = self.lock();
        let generation = inner.generation;
        inner.entries.insert(key, (Arc::clone(&bundle), generation));
        bundle
    }
}

/// SHA-256 over the place and every key and value, each length-prefixed, so that no two
/// different secrets (or one secret in two places) share a digest.
pub(crate) fn digest(data: &SecretData, where_: &str) -> Digest {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    let mut field = |bytes: &[u8]| {
        ctx.update(&(bytes.len() as u64).to_be_bytes());
        ctx.update(bytes);
    };
    field(where_.as_bytes());
    for (k, v) in data {
        field(k.as_bytes());
        field(v);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshca_pki::bundle::{CA_CERT, CA_KEY, CERT_CHAIN, ROOT_CERT};
    use meshca_pki::{CaProfile, CaSigner, KeyType, PrivateKey, Subject};
    use time::Duration;

    fn bundle(now: OffsetDateTime) -> SecretData {
        let profile = |cn: &str, days: i64, path_len| CaProfile {
            subject: Subject {
                organization: Some("test".into()),
                common_name: Some(cn.into()),
                locality: None,
            },
            not_before: now - Duration::hours(1),
            not_after: now + Duration::days(days),
            path_len,
            dns_names: Vec::new(),
        };
        let root_key = PrivateKey::generate(KeyType::EcdsaP256).expect("key");
        let root = profile("Root CA", 3650, None)
            .self_signed(&root_key, "root")
            .expect("root");
        let ca = CaSigner::new(root.clone(), root_key, "root key").expect("signer");
        let key = PrivateKey::generate(KeyType::EcdsaP256).expect("key");
        let inter = ca
            .issue_ca(&profile("Intermediate CA", 30, Some(0)), &key, "inter")
            .expect("inter");
        let mut d = SecretData::new();
        d.insert(CA_CERT.into(), inter.pem().into_bytes());
        d.insert(CA_KEY.into(), key.to_pkcs8_pem().into_bytes());
        d.insert(CERT_CHAIN.into(), (inter.pem() + &root.pem()).into_bytes());
        d.insert(ROOT_CERT.into(), root.pem().into_bytes());
        d
    }

    #[test]
    fn same_bytes_hit_any_other_byte_misses_and_unused_entries_go() {
        let now = OffsetDateTime::now_utc();
        let data = bundle(now);
        let cache = BundleCache::new();
        cache.begin();
        let first = cache
            .load(&data, "c1/istio-system/cacerts", now)
            .expect("loads");
        let again = cache
            .load(&data, "c1/istio-system/cacerts", now)
            .expect("loads");
        assert!(Arc::ptr_eq(&first, &again));
        assert_eq!(cache.stats(), (1, 1));
        // The same bytes in another place are another entry (their messages name that place).
        cache
            .load(&data, "c2/istio-system/cacerts", now)
            .expect("loads");
        assert_eq!(cache.stats(), (1, 2));

        // One byte of the root bundle changed (a comment line added): a miss, a full load.
        let mut edited = data.clone();
        edited
            .get_mut(ROOT_CERT)
            .expect("root")
            .splice(0..0, b"# note\n".iter().copied());
        cache
            .load(&edited, "c1/istio-system/cacerts", now)
            .expect("loads");
        assert_eq!(cache.stats(), (1, 3));

        // A key that does not match: never cached, refused every time.
        let mut other = data.clone();
        other.insert(CA_KEY.into(), bundle(now)[CA_KEY].clone());
        for _ in 0..2 {
            let err = cache
                .load(&other, "c1/istio-system/cacerts", now)
                .expect_err("refused")
                .to_string();
            assert!(err.contains("c1/istio-system/cacerts/ca-key.pem"), "{err}");
        }
        assert_eq!(cache.stats(), (1, 5));
        assert_eq!(cache.len(), 3);

        // The next reconcile uses only c1's bundle: the others are dropped at its end.
        cache.begin();
        cache
            .load(&data, "c1/istio-system/cacerts", now)
            .expect("loads");
        cache.sweep();
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn a_cached_bundle_is_checked_against_the_new_time() {
        let now = OffsetDateTime::now_utc();
        let data = bundle(now);
        let cache = BundleCache::new();
        cache.begin();
        cache.load(&data, "c1", now).expect("loads");
        let later = now + Duration::days(31);
        let err = cache
            .load(&data, "c1", later)
            .expect_err("the intermediate has expired")
            .to_string();
        assert!(err.contains("c1/ca-cert.pem"), "{err}");
        let before = now - Duration::days(1);
        assert!(cache.load(&data, "c1", before).is_err());
        assert_eq!(cache.stats(), (0, 3));
        assert!(cache.load(&data, "c1", now).is_ok());
        assert_eq!(cache.stats(), (1, 3));
    }
}
