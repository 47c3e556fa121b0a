//! SPIFFE vocabulary: trust domains and workload identities, as Istio spells them
//! (`spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`).

use std::fmt;
use std::str::FromStr;

use crate::error::PkiError;

/// A SPIFFE trust domain, such as `cluster.local`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrustDomain(String);

impl TrustDomain {
    /// Checks `value` against the SPIFFE rules: lowercase letters, digits, `.`, `-` and `_`.
    pub fn new(value: &str) -> Result<Self, PkiError> {
        let bad = |reason: &str| PkiError::InvalidName {
            field: "trust domain".to_owned(),
            value: value.to_owned(),
            reason: reason.to_owned(),
        };
        if value.is_empty() {
            return Err(bad("must not be empty"));
        }
        if value.len() > 255 {
            return Err(bad("longer than 255 characters"));
        }
        if !value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b".-_".contains(&b))
        {
            return Err(bad(
                "only lowercase letters, digits, '.', '-' and '_' are allowed",
            ));
        }
        Ok(TrustDomain(value.to_owned()))
    }

    /// The trust domain as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Checks a Kubernetes namespace or service-account name: what may stand in one path segment
/// of a SPIFFE ID.
pub fn check_k8s_name(field: &str, value: &str) -> Result<(), PkiError> {
    let bad = |reason: &str| PkiError::InvalidName {
        field: field.to_owned(),
        value: value.to_owned(),
        reason: reason.to_owned(),
    };
    if value.is_empty() {
        return Err(bad("must not be empty"));
    }
    if value.len() > 253 {
        return Err(bad("longer than 253 characters"));
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    {
        return Err(bad(
            "only lowercase letters, digits, '-' and '.' are allowed",
        ));
    }
    if value.starts_with(['-', '.']) || value.ends_with(['-', '.']) {
        return Err(bad("must start and end with a letter or digit"));
    }
    Ok(())
}

/// A SPIFFE ID: a trust domain and a path.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    trust_domain: TrustDomain,
    path: String,
}

impl SpiffeId {
    /// The identity Istio gives a Kubernetes service account.
    pub fn workload(
        trust_domain: &TrustDomain,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, PkiError> {
        check_k8s_name("namespace", namespace)?;
        check_k8s_name("service account", service_account)?;
        Ok(SpiffeId {
            trust_domain: trust_domain.clone(),
            path: format!("/ns/{namespace}/sa/{service_account}"),
        })
    }

    /// The trust domain part.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The path part, starting with `/`.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The namespace and service account, when the path has Istio's `/ns/<ns>/sa/<sa>` shape.
    pub fn namespace_and_service_account(&self) -> Option<(&str, &str)> {
        let rest = self.path.strip_prefix("/ns/")?;
        let (ns, rest) = rest.split_once('/')?;
        let sa = rest.strip_prefix("sa/")?;
        (!sa.contains('/')).then_some((ns, sa))
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "spiffe://{}{}", self.trust_domain, self.path)
    }
}

impl FromStr for SpiffeId {
    type Err = PkiError;

    fn from_str(s: &str) -> Result<Self, PkiError> {
        let bad = |reason: &str| PkiError::InvalidName {
            field: "SPIFFE ID".to_owned(),
            value: s.to_owned(),
            reason: reason.to_owned(),
        };
        let rest = s
            .strip_prefix("spiffe://")
            .ok_or_else(|| bad("must start with spiffe://"))?;
        let (td, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let trust_domain = TrustDomain::new(td).map_err(|_| bad("invalid trust domain"))?;
        if path.is_empty() || path == "/" {
            return Err(bad("must have a path"));
        }
        if path.ends_with('/')
            || path.contains("//")
            || path.contains("/./")
            || path.contains("/../")
        {
            return Err(bad("path segments must not be empty, '.' or '..'"));
        }
        if !path[1..]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._/".contains(&b))
        {
            return Err(bad(
                "path may hold only letters, digits, '-', '.', '_' and '/'",
            ));
        }
        Ok(SpiffeId {
            trust_domain,
            path: path.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workload_ids_have_istios_shape() {
        let td = TrustDomain::new("cluster.local").expect("valid");
        let id = SpiffeId::workload(&td, "foo", "httpbin").expect("valid");
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/foo/sa/httpbin");
        assert_eq!(id.namespace_and_service_account(), Some(("foo", "httpbin")));
        let parsed: SpiffeId = id.to_string().parse().expect("parses");
        assert_eq!(parsed, id);
    }

    #[test]
    fn bad_names_are_refused() {
        assert!(TrustDomain::new("Cluster.Local").is_err());
        assert!(TrustDomain::new("").is_err());
        let td = TrustDomain::new("example.org").expect("valid");
        assert!(SpiffeId::workload(&td, "foo/bar", "x").is_err());
        assert!(SpiffeId::workload(&td, "foo", "").is_err());
        assert!("http://x/y".parse::<SpiffeId>().is_err());
        assert!("spiffe://x".parse::<SpiffeId>().is_err());
        assert!("spiffe://x/a//b".parse::<SpiffeId>().is_err());
        assert!("spiffe://x/a/../b".parse::<SpiffeId>().is_err());
    }
}
