//! Which clusters a server answers for, and who vouches for each one's tokens.
//!
//! As in istiod, the cluster of a request is its `clusterid` metadata, and a request without
//! one is from the server's own cluster. The own cluster's tokens go to its API server; a remote
//! cluster's tokens go to the API server configured for that cluster (istiod takes it from the
//! cluster's remote secret). A remote cluster configured here is served like the own one; a
//! request naming any other cluster is refused before any credential is looked at, since this
//! CA cannot know whose workload it is.
//!
//! The table is generic over what vouches for a cluster's tokens (`A`): the server keeps a
//! [`crate::kube_auth::KubeCluster`] per cluster; the routing rules need none.

use std::collections::BTreeMap;
use std::fmt;

use crate::auth::AuthError;

/// The clusters a server answers for.
#[derive(Debug)]
pub struct Clusters<A> {
    own: Option<String>,
    own_auth: Option<A>,
    remote: BTreeMap<String, A>,
}

/// Why a set of clusters cannot be served.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    /// A remote cluster was given to a server that does not know its own cluster's ID, so it
    /// could not tell a request from its own cluster from one naming an unknown cluster.
    #[error("remote cluster {remote:?} needs this server's own cluster ID to be set")]
    OwnClusterUnnamed {
        /// the remote cluster
        remote: String,
    },
    /// A remote cluster has the server's own cluster ID.
    #[error(
        "remote cluster {0:?} is this server's own cluster; give its API server as the own cluster's"
    )]
    RemoteIsOwn(String),
    /// A remote cluster ID is empty.
    #[error("a remote cluster ID is empty")]
    EmptyId,
    /// A remote cluster is given twice.
    #[error("remote cluster {0:?} is given twice")]
    Duplicate(String),
}

/// The cluster a request comes from, among those the server answers for.
#[derive(Debug)]
pub struct RequestCluster<'a, A> {
    name: Option<&'a str>,
    auth: Option<&'a A>,
}

impl<A> Clone for RequestCluster<'_, A> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<A> Copy for RequestCluster<'_, A> {}

impl<'a, A> RequestCluster<'a, A> {
    /// The cluster's ID; `None` for the own cluster of a server without one.
    pub fn name(&self) -> Option<&'a str> {
        self.name
    }

    /// What vouches for this cluster's tokens, when anything does.
    pub fn auth(&self) -> Option<&'a A> {
        self.auth
    }
}

impl<A> fmt::Display for RequestCluster<'_, A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name {
            Some(name) => write!(f, "cluster {name:?}"),
            None => f.write_str("this server's own cluster"),
        }
    }
}

impl<A> Clusters<A> {
    /// A server in cluster `own` (`None`: unnamed, and then any `clusterid` is taken to be its
    /// own), whose tokens `own_auth` vouches for when given.
    pub fn new(own: Option<String>, own_auth: Option<A>) -> Self {
        Clusters {
            own: own.filter(|id| !id.is_empty()),
            own_auth,
            remote: BTreeMap::new(),
        }
    }

    /// Checks that the remote cluster `id` can be served next to the own one.
    pub fn check_remote(own: Option<&str>, id: &str) -> Result<(), ClusterError> {
        if id.is_empty() {
            return Err(ClusterError::EmptyId);
        }
        match own.filter(|o| !o.is_empty()) {
            None => Err(ClusterError::OwnClusterUnnamed {
                remote: id.to_owned(),
            }),
            Some(own) if own == id => Err(ClusterError::RemoteIsOwn(id.to_owned())),
            Some(_) => Ok(()),
        }
    }

    /// Also serves the remote cluster `id`, whose tokens `auth` vouches for.
    pub fn with_remote(mut self, id: String, auth: A) -> Result<Self, ClusterError> {
        Self::check_remote(self.own.as_deref(), &id)?;
        if self.remote.contains_key(&id) {
            return Err(ClusterError::Duplicate(id));
        }
        self.remote.insert(id, auth);
        Ok(self)
    }

    /// The cluster a request whose `clusterid` metadata is `asked` comes from.
    pub fn resolve<'a>(&'a self, asked: Option<&str>) -> Result<RequestCluster<'a, A>, AuthError> {
        let own = RequestCluster {
            name: self.own.as_deref(),
            auth: self.own_auth.as_ref(),
        };
        let Some(asked) = asked.filter(|a| !a.is_empty()) else {
            return Ok(own);
        };
        if let Some((name, auth)) = self.remote.get_key_value(asked) {
            return Ok(RequestCluster {
                name: Some(name),
                auth: Some(auth),
            });
        }
        match &self.own {
            Some(ours) if ours != asked => Err(AuthError::WrongCluster {
                asked: asked.to_owned(),
                served: self.served(),
            }),
            // Ours, or a server that does not know its own cluster's name (it has no remote
            // clusters then): the request is taken to be from this cluster.
            _ => Ok(own),
        }
    }

    /// What vouches for each cluster's tokens, own first.
    pub fn all(&self) -> impl Iterator<Item = &A> {
        self.own_auth.iter().chain(self.remote.values())
    }

    /// The IDs of the clusters served, own first.
    pub fn served(&self) -> Vec<String> {
        self.own.iter().chain(self.remote.keys()).cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The API server URL stands for what vouches for a cluster.
    fn reviewer(url: &str) -> String {
        url.to_owned()
    }

    fn api(c: &RequestCluster<'_, String>) -> Option<String> {
        c.auth().cloned()
    }

    #[test]
    fn requests_go_to_the_api_server_of_the_cluster_they_name() {
        let clusters = Clusters::new(Some("c1".into()), Some(reviewer("http://own:1")))
            .with_remote("c2".into(), reviewer("http://remote:2"))
            .unwrap();
        for asked in [None, Some(""), Some("c1")] {
            let c = clusters.resolve(asked).unwrap();
            assert_eq!(c.name(), Some("c1"), "{asked:?}");
            assert_eq!(api(&c).as_deref(), Some("http://own:1"), "{asked:?}");
        }
        let c = clusters.resolve(Some("c2")).unwrap();
        assert_eq!(c.to_string(), "cluster \"c2\"");
        assert_eq!(api(&c).as_deref(), Some("http://remote:2"));
        let err = clusters.resolve(Some("c3")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "request is for cluster \"c3\", this CA serves [\"c1\", \"c2\"]"
        );
    }

    #[test]
    fn the_own_cluster_may_have_no_reviewer() {
        let clusters = Clusters::<String>::new(Some("c1".into()), None)
            .with_remote("c2".into(), reviewer("http://remote:2"))
            .unwrap();
        let c = clusters.resolve(None).unwrap();
        assert!(c.auth().is_none());
        assert_eq!(c.to_string(), "cluster \"c1\"");
    }

    #[test]
    fn an_unnamed_server_takes_every_request_as_its_own() {
        let clusters = Clusters::new(None, Some(reviewer("http://own:1")));
        let c = clusters.resolve(Some("anything")).unwrap();
        assert_eq!(c.name(), None);
        assert_eq!(c.to_string(), "this server's own cluster");
        assert_eq!(api(&c).as_deref(), Some("http://own:1"));
    }

    #[test]
    fn remote_clusters_that_cannot_be_told_apart_are_refused() {
        let r = || reviewer("http://remote:2");
        assert!(matches!(
            Clusters::<String>::new(None, None).with_remote("c2".into(), r()),
            Err(ClusterError::OwnClusterUnnamed { .. })
        ));
        let named = || Clusters::<String>::new(Some("c1".into()), None);
        assert!(matches!(
            named().with_remote("c1".into(), r()),
            Err(ClusterError::RemoteIsOwn(_))
        ));
        assert!(matches!(
            named().with_remote(String::new(), r()),
            Err(ClusterError::EmptyId)
        ));
        let err = named()
            .with_remote("c2".into(), r())
            .and_then(|c| c.with_remote("c2".into(), r()))
            .unwrap_err();
        assert_eq!(err.to_string(), "remote cluster \"c2\" is given twice");
    }
}
