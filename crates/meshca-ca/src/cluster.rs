//! Which clusters a server answers for, and whose API server reviews each one's tokens.
//!
//! As in istiod, the cluster of a request is its `clusterid` metadata, and a request without
//! one is from the server's own cluster. The own cluster's tokens go to its API server; a remote
//! cluster's tokens go to the API server configured for that cluster (istiod takes it from the
//! cluster's remote secret). A remote cluster configured here is served like the own one; a
//! request naming any other cluster is refused before any credential is looked at, since this
//! CA cannot know whose workload it is.

use std::collections::BTreeMap;
use std::fmt;

use crate::auth::AuthError;
use crate::tokenreview::TokenReviewer;

/// The clusters a server answers for.
#[derive(Debug, Default)]
pub struct Clusters {
    own: Option<String>,
    own_reviewer: Option<TokenReviewer>,
    remote: BTreeMap<String, TokenReviewer>,
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
#[derive(Clone, Copy, Debug)]
pub struct RequestCluster<'a> {
    name: Option<&'a str>,
    reviewer: Option<&'a TokenReviewer>,
}

impl<'a> RequestCluster<'a> {
    /// The cluster's ID; `None` for the own cluster of a server without one.
    pub fn name(&self) -> Option<&'a str> {
        self.name
    }

    /// The API server that reviews this cluster's tokens, when there is one.
    pub fn reviewer(&self) -> Option<&'a TokenReviewer> {
        self.reviewer
    }
}

impl fmt::Display for RequestCluster<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name {
            Some(name) => write!(f, "cluster {name:?}"),
            None => f.write_str("this server's own cluster"),
        }
    }
}

impl Clusters {
    /// A server in cluster `own` (`None`: unnamed, and then any `clusterid` is taken to be its
    /// own), whose tokens `own_reviewer` reviews when given.
    pub fn new(own: Option<String>, own_reviewer: Option<TokenReviewer>) -> Self {
        Clusters {
            own: own.filter(|id| !id.is_empty()),
            own_reviewer,
            remote: BTreeMap::new(),
        }
    }

    /// Also serves the remote cluster `id`, whose tokens `reviewer` reviews.
    pub fn with_remote(
        mut self,
        id: String,
        reviewer: TokenReviewer,
    ) -> Result<Self, ClusterError> {
        if id.is_empty() {
            return Err(ClusterError::EmptyId);
        }
        match &self.own {
            None => return Err(ClusterError::OwnClusterUnnamed { remote: id }),
            Some(own) if *own == id => return Err(ClusterError::RemoteIsOwn(id)),
            Some(_) => {}
        }
        if self.remote.contains_key(&id) {
            return Err(ClusterError::Duplicate(id));
        }
        self.remote.insert(id, reviewer);
        Ok(self)
    }

    /// The cluster a request whose `clusterid` metadata is `asked` comes from.
    pub fn resolve<'a>(&'a self, asked: Option<&str>) -> Result<RequestCluster<'a>, AuthError> {
        let own = RequestCluster {
            name: self.own.as_deref(),
            reviewer: self.own_reviewer.as_ref(),
        };
        let Some(asked) = asked.filter(|a| !a.is_empty()) else {
            return Ok(own);
        };
        if let Some((name, reviewer)) = self.remote.get_key_value(asked) {
            return Ok(RequestCluster {
                name: Some(name),
                reviewer: Some(reviewer),
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

    /// The IDs of the clusters served, own first.
    pub fn served(&self) -> Vec<String> {
        self.own.iter().chain(self.remote.keys()).cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenreview::DEFAULT_TIMEOUT;

    fn reviewer(url: &str) -> TokenReviewer {
        TokenReviewer::new(url, None, "t".into(), vec![], DEFAULT_TIMEOUT).unwrap()
    }

    fn api(c: &RequestCluster<'_>) -> Option<String> {
        c.reviewer().map(|r| r.api_server().to_owned())
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
        let clusters = Clusters::new(Some("c1".into()), None)
            .with_remote("c2".into(), reviewer("http://remote:2"))
            .unwrap();
        let c = clusters.resolve(None).unwrap();
        assert!(c.reviewer().is_none());
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
            Clusters::new(None, None).with_remote("c2".into(), r()),
            Err(ClusterError::OwnClusterUnnamed { .. })
        ));
        let named = || Clusters::new(Some("c1".into()), None);
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
