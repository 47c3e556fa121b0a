//! The Makefile's target names.

use std::fmt;

use crate::error::CertsError;

/// One target of `meshca certs`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// `root-ca`: `root-cert.pem` and `root-key.pem`.
    RootCa,
    /// `<name>-cacerts`: an intermediate for a cluster in `<name>/`.
    Cacerts(String),
    /// `<ns>-certs`: an intermediate and a workload certificate for namespace `<ns>` in `<ns>/`.
    Certs(String),
    /// `clean`: removes the root's files (not the cluster folders).
    Clean,
}

impl Target {
    /// Reads a target name as `make` would match it.
    pub fn parse(s: &str) -> Result<Self, CertsError> {
        let bad = |reason: &str| CertsError::BadTarget {
            target: s.to_owned(),
            reason: reason.to_owned(),
        };
        match s {
            "root-ca" => return Ok(Target::RootCa),
            "clean" => return Ok(Target::Clean),
            _ => {}
        }
        let (name, make): (&str, fn(String) -> Target) = if let Some(n) = s.strip_suffix("-cacerts")
        {
            (n, Target::Cacerts)
        } else if let Some(n) = s.strip_suffix("-certs") {
            (n, Target::Certs)
        } else {
            return Err(bad(
                "expected root-ca, <name>-cacerts, <namespace>-certs or clean",
            ));
        };
        if name.is_empty() {
            return Err(bad("the name before the suffix is empty"));
        }
        if name.starts_with('.') || name.contains('/') || name.contains('\0') {
            return Err(bad(
                "the name must be a plain folder name (no '/', not starting with '.')",
            ));
        }
        if matches!(make(String::new()), Target::Certs(_)) {
            meshca_pki::spiffe::check_k8s_name("namespace", name)
                .map_err(|e| bad(&e.to_string()))?;
        }
        Ok(make(name.to_owned()))
    }

    /// The folder a cluster or namespace target writes into.
    pub fn folder(&self) -> Option<&str> {
        match self {
            Target::Cacerts(n) | Target::Certs(n) => Some(n),
            Target::RootCa | Target::Clean => None,
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::RootCa => f.write_str("root-ca"),
            Target::Clean => f.write_str("clean"),
            Target::Cacerts(n) => write!(f, "{n}-cacerts"),
            Target::Certs(n) => write!(f, "{n}-certs"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_like_make_patterns() {
        assert_eq!(Target::parse("root-ca").ok(), Some(Target::RootCa));
        assert_eq!(
            Target::parse("cluster1-cacerts").ok(),
            Some(Target::Cacerts("cluster1".into()))
        );
        assert_eq!(
            Target::parse("foo-certs").ok(),
            Some(Target::Certs("foo".into()))
        );
        assert_eq!(
            Target::parse("my-ns-certs").ok(),
            Some(Target::Certs("my-ns".into()))
        );
        assert_eq!(Target::parse("clean").ok(), Some(Target::Clean));
        for bad in [
            "",
            "root",
            "-cacerts",
            "../x-cacerts",
            "a/b-cacerts",
            ".x-cacerts",
            "Foo-certs",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
