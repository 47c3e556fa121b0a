//! What every secret store is: [`SecretStore`], keyed by [`SecretKey`], whose writes name the
//! [`Version`] they expect, so that a secret changed since it was read is a conflict, never a
//! blind overwrite. The folder store ([`crate::FolderStore`]) and the memory store
//! ([`crate::MemoryStore`]) are here; the Kubernetes store lives in a crate of its own.

use std::collections::BTreeMap;
use std::fmt;

use crate::StoreError;

/// A secret's data: key name to bytes. It derefs to its map; its `Debug` shows each key's name
/// and size, never the bytes, since a secret's data holds private keys.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretData(BTreeMap<String, Vec<u8>>);

impl SecretData {
    /// No keys.
    pub fn new() -> Self {
        SecretData(BTreeMap::new())
    }

    /// The map.
    pub fn into_inner(self) -> BTreeMap<String, Vec<u8>> {
        self.0
    }
}

impl std::ops::Deref for SecretData {
    type Target = BTreeMap<String, Vec<u8>>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for SecretData {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl fmt::Debug for SecretData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut m = f.debug_map();
        for (k, v) in &self.0 {
            m.entry(k, &format_args!("<{} bytes>", v.len()));
        }
        m.finish()
    }
}

impl From<BTreeMap<String, Vec<u8>>> for SecretData {
    fn from(map: BTreeMap<String, Vec<u8>>) -> Self {
        SecretData(map)
    }
}

impl<const N: usize> From<[(String, Vec<u8>); N]> for SecretData {
    fn from(entries: [(String, Vec<u8>); N]) -> Self {
        SecretData(BTreeMap::from(entries))
    }
}

impl FromIterator<(String, Vec<u8>)> for SecretData {
    fn from_iter<I: IntoIterator<Item = (String, Vec<u8>)>>(iter: I) -> Self {
        SecretData(iter.into_iter().collect())
    }
}

impl Extend<(String, Vec<u8>)> for SecretData {
    fn extend<I: IntoIterator<Item = (String, Vec<u8>)>>(&mut self, iter: I) {
        self.0.extend(iter);
    }
}

impl IntoIterator for SecretData {
    type Item = (String, Vec<u8>);
    type IntoIter = std::collections::btree_map::IntoIter<String, Vec<u8>>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'a> IntoIterator for &'a SecretData {
    type Item = (&'a String, &'a Vec<u8>);
    type IntoIter = std::collections::btree_map::Iter<'a, String, Vec<u8>>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// Where a secret is: cluster, namespace, name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SecretKey {
    /// The cluster (a kubeconfig context, or a folder of the folder store).
    pub cluster: String,
    /// The namespace.
    pub namespace: String,
    /// The secret's name.
    pub name: String,
}

impl SecretKey {
    /// The secret `namespace/name` of `cluster`.
    pub fn new(
        cluster: impl Into<String>,
        namespace: impl Into<String>,
        name: impl Into<String>,
    ) -> Self {
        SecretKey {
            cluster: cluster.into(),
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.cluster, self.namespace, self.name)
    }
}

/// A store's token for one state of a secret: Kubernetes' `resourceVersion`, the folder store's
/// `..data` target. Two reads give the same version only if nothing was written in between.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Version(String);

impl Version {
    /// A version from the store's own token.
    pub fn new(token: impl Into<String>) -> Self {
        Version(token.into())
    }

    /// The token, as the store gave it.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A version made from the contents, for secrets a store keeps no version of (a folder made
    /// by hand).
    pub fn of_contents(data: &SecretData) -> Self {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        data.hash(&mut h);
        Version(format!("content:{:016x}", h.finish()))
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A secret as read: its data and the version that data is.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    /// What it holds.
    pub data: SecretData,
    /// The state it was read in.
    pub version: Version,
}

/// The data's names and sizes, never its bytes: a secret holds private keys.
impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Secret")
            .field("data (bytes)", &data_sizes(&self.data))
            .field("version", &self.version)
            .finish()
    }
}

/// What a write expects to find: the precondition that turns a lost update into a conflict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expect {
    /// The secret must not exist.
    Absent,
    /// The secret must still be at this version.
    Version(Version),
}

impl Expect {
    /// What a write of a secret read as `read` expects: that version, or that it is still absent.
    pub fn from_read(read: Option<&Secret>) -> Self {
        match read {
            Some(s) => Expect::Version(s.version.clone()),
            None => Expect::Absent,
        }
    }

    /// Whether a secret found at `found` (None: absent) meets this expectation.
    pub fn is_met_by(&self, found: Option<&Version>) -> bool {
        match (self, found) {
            (Expect::Absent, None) => true,
            (Expect::Version(v), Some(f)) => v == f,
            _ => false,
        }
    }
}

impl fmt::Display for Expect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expect::Absent => f.write_str("absent"),
            Expect::Version(v) => write!(f, "version {v}"),
        }
    }
}

/// One secret to replace, for [`SecretStore::write_all`].
#[derive(Clone, Copy)]
pub struct SecretWrite<'a> {
    /// Which secret.
    pub key: &'a SecretKey,
    /// What it is to hold.
    pub data: &'a SecretData,
    /// What the writer read before deciding to write.
    pub expect: &'a Expect,
}

impl fmt::Debug for SecretWrite<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretWrite")
            .field("key", self.key)
            .field("data (bytes)", &data_sizes(self.data))
            .field("expect", self.expect)
            .finish()
    }
}

/// The names and sizes of a secret's data, for `Debug`: never its bytes, which hold private keys.
fn data_sizes(data: &SecretData) -> BTreeMap<&str, usize> {
    data.iter().map(|(k, v)| (k.as_str(), v.len())).collect()
}

/// Where clusters' secrets live: clusters listed, secrets read with their version and replaced
/// whole under a version precondition.
pub trait SecretStore: Send + Sync {
    /// Cluster names, sorted.
    fn clusters(&self) -> Result<Vec<String>, StoreError>;

    /// Reads a secret and its version; `None` if it does not exist.
    fn get(&self, key: &SecretKey) -> Result<Option<Secret>, StoreError>;

    /// Replaces a secret whole, if it is still as `expect` says: a reader sees the old data or
    /// the new, never a mix. A secret changed since is [`StoreError::VersionConflict`] and is
    /// left as it is. Returns the new version.
    fn write(
        &self,
        key: &SecretKey,
        data: &SecretData,
        expect: &Expect,
    ) -> Result<Version, StoreError>;

    /// Replaces several secrets, each whole and under its own precondition as
    /// [`SecretStore::write`] does; one failing does not stop the others. Returns each write's
    /// result, in order. The default writes them one by one.
    fn write_all(&self, writes: &[SecretWrite<'_>]) -> Vec<Result<Version, StoreError>> {
        writes
            .iter()
            .map(|w| self.write(w.key, w.data, w.expect))
            .collect()
    }

    /// Replaces whatever the secret holds now, reading its version first: what a person's
    /// `kubectl apply` does. The reconciler never uses it; tests and operators' tools do.
    fn replace(&self, key: &SecretKey, data: &SecretData) -> Result<Version, StoreError> {
        let expect = Expect::from_read(self.get(key)?.as_ref());
        self.write(key, data, &expect)
    }

    /// Reads a secret's data only.
    fn read(&self, key: &SecretKey) -> Result<Option<SecretData>, StoreError> {
        Ok(self.get(key)?.map(|s| s.data))
    }

    /// A secret's version alone: what a manager compares to notice a change. Stores that can
    /// answer without reading the data override it.
    fn version(&self, key: &SecretKey) -> Result<Option<Version>, StoreError> {
        Ok(self.get(key)?.map(|s| s.version))
    }

    /// Where a secret is, for messages.
    fn describe(&self, key: &SecretKey) -> String {
        key.to_string()
    }
}

/// Shared stores are stores.
impl<S: SecretStore + ?Sized> SecretStore for std::sync::Arc<S> {
    fn clusters(&self) -> Result<Vec<String>, StoreError> {
        (**self).clusters()
    }
    fn get(&self, key: &SecretKey) -> Result<Option<Secret>, StoreError> {
        (**self).get(key)
    }
    fn write(
        &self,
        key: &SecretKey,
        data: &SecretData,
        expect: &Expect,
    ) -> Result<Version, StoreError> {
        (**self).write(key, data, expect)
    }
    fn write_all(&self, writes: &[SecretWrite<'_>]) -> Vec<Result<Version, StoreError>> {
        (**self).write_all(writes)
    }
    fn read(&self, key: &SecretKey) -> Result<Option<SecretData>, StoreError> {
        (**self).read(key)
    }
    fn version(&self, key: &SecretKey) -> Result<Option<Version>, StoreError> {
        (**self).version(key)
    }
    fn describe(&self, key: &SecretKey) -> String {
        (**self).describe(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expectations_are_met_only_by_what_was_read() {
        let v1 = Version::new("1");
        let v2 = Version::new("2");
        assert!(Expect::Absent.is_met_by(None));
        assert!(!Expect::Absent.is_met_by(Some(&v1)));
        let e = Expect::Version(v1.clone());
        assert!(e.is_met_by(Some(&v1)));
        assert!(!e.is_met_by(Some(&v2)));
        assert!(!e.is_met_by(None));
        let read = Secret {
            data: SecretData::new(),
            version: v2.clone(),
        };
        assert_eq!(Expect::from_read(Some(&read)), Expect::Version(v2));
        assert_eq!(Expect::from_read(None), Expect::Absent);
        assert_eq!(
            SecretKey::new("c1", "istio-system", "cacerts").to_string(),
            "c1/istio-system/cacerts"
        );
    }
}
