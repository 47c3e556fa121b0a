//! The Makefile's variables, with its defaults, plus meshca's own (key types, trust domain).

use meshca_pki::{KeyType, PkiError, TrustDomain};

/// Every setting of a `meshca certs` run. Field names follow the Makefile variables.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// `ROOTCA_DAYS`: root lifetime in days.
    pub rootca_days: i64,
    /// `ROOTCA_KEY_TYPE`: `rsa`, `ecdsa-p256` or `ecdsa-p384`.
    pub rootca_key_type: String,
    /// `ROOTCA_KEYSZ`: RSA root key size.
    pub rootca_keysz: u32,
    /// `ROOTCA_ORG`: root `O=`.
    pub rootca_org: String,
    /// `ROOTCA_CN`: root `CN=`.
    pub rootca_cn: String,
    /// `INTERMEDIATE_DAYS`: intermediate lifetime; `None` means the default of 3650 days,
    /// shortened to the root's end when the root expires sooner. A value given explicitly that
    /// would outlive the root is refused instead.
    pub intermediate_days: Option<i64>,
    /// `INTERMEDIATE_KEY_TYPE`
    pub intermediate_key_type: String,
    /// `INTERMEDIATE_KEYSZ`
    pub intermediate_keysz: u32,
    /// `INTERMEDIATE_ORG`: intermediate and workload `O=`.
    pub intermediate_org: String,
    /// `INTERMEDIATE_CN`
    pub intermediate_cn: String,
    /// `INTERMEDIATE_SAN_DNS`: the intermediate's DNS SAN; empty for none.
    pub intermediate_san_dns: String,
    /// `WORKLOAD_DAYS`: workload lifetime; `None` means the default of 1 day, shortened to the
    /// intermediate's end if needed.
    pub workload_days: Option<i64>,
    /// `WORKLOAD_KEY_TYPE`; `None` uses the intermediate's key type.
    pub workload_key_type: Option<String>,
    /// `WORKLOAD_KEYSZ`; `None` uses the intermediate's size.
    pub workload_keysz: Option<u32>,
    /// `SERVICE_ACCOUNT` in the workload SPIFFE ID.
    pub service_account: String,
    /// `WORKLOAD_CN`
    pub workload_cn: String,
    /// `TRUST_DOMAIN` of the workload SPIFFE ID (Istio's Makefile hard-codes `cluster.local`).
    pub trust_domain: String,
}

/// The Makefile's default lifetime of an intermediate, in days.
pub const DEFAULT_INTERMEDIATE_DAYS: i64 = 3650;
/// The Makefile's default lifetime of a workload certificate, in days.
pub const DEFAULT_WORKLOAD_DAYS: i64 = 1;

impl Default for Settings {
    fn default() -> Self {
        Settings {
            rootca_days: 3650,
            rootca_key_type: "rsa".to_owned(),
            rootca_keysz: 4096,
            rootca_org: "Istio".to_owned(),
            rootca_cn: "Root CA".to_owned(),
            intermediate_days: None,
            intermediate_key_type: "rsa".to_owned(),
            intermediate_keysz: 4096,
            intermediate_org: "Istio".to_owned(),
            intermediate_cn: "Intermediate CA".to_owned(),
            intermediate_san_dns: "istiod.istio-system.svc".to_owned(),
            workload_days: None,
            workload_key_type: None,
            workload_keysz: None,
            service_account: "default".to_owned(),
            workload_cn: "Workload".to_owned(),
            trust_domain: "cluster.local".to_owned(),
        }
    }
}

impl Settings {
    /// The defaults with ECDSA P-256 root and intermediate keys instead of RSA-4096: made in
    /// microseconds rather than seconds.
    pub fn ecdsa_p256() -> Self {
        Settings {
            rootca_key_type: "ecdsa-p256".to_owned(),
            intermediate_key_type: "ecdsa-p256".to_owned(),
            ..Settings::default()
        }
    }
}

/// Settings after their checks: key types parsed, lifetimes positive, names well formed.
#[derive(Clone, Debug)]
pub(crate) struct Checked {
    pub root_key: KeyType,
    pub intermediate_key: KeyType,
    pub workload_key: KeyType,
    pub trust_domain: TrustDomain,
}

impl Settings {
    pub(crate) fn check(&self) -> Result<Checked, PkiError> {
        let positive = |field: &str, days: i64| {
            if days <= 0 {
                Err(PkiError::BadLifetime {
                    field: field.to_owned(),
                    days,
                })
            } else {
                Ok(())
            }
        };
        positive("ROOTCA_DAYS", self.rootca_days)?;
        positive(
            "INTERMEDIATE_DAYS",
            self.intermediate_days.unwrap_or(DEFAULT_INTERMEDIATE_DAYS),
        )?;
        positive(
            "WORKLOAD_DAYS",
            self.workload_days.unwrap_or(DEFAULT_WORKLOAD_DAYS),
        )?;
        let root_key = KeyType::from_spec(
            "ROOTCA_KEY_TYPE/ROOTCA_KEYSZ",
            &self.rootca_key_type,
            self.rootca_keysz,
        )?;
        let intermediate_key = KeyType::from_spec(
            "INTERMEDIATE_KEY_TYPE/INTERMEDIATE_KEYSZ",
            &self.intermediate_key_type,
            self.intermediate_keysz,
        )?;
        let workload_key = KeyType::from_spec(
            "WORKLOAD_KEY_TYPE/WORKLOAD_KEYSZ",
            self.workload_key_type
                .as_deref()
                .unwrap_or(&self.intermediate_key_type),
            self.workload_keysz.unwrap_or(self.intermediate_keysz),
        )?;
        let trust_domain =
            TrustDomain::new(&self.trust_domain).map_err(|_| PkiError::InvalidName {
                field: "TRUST_DOMAIN".to_owned(),
                value: self.trust_domain.clone(),
                reason: "only lowercase letters, digits, '.', '-' and '_' are allowed".to_owned(),
            })?;
        meshca_pki::spiffe::check_k8s_name("SERVICE_ACCOUNT", &self.service_account)?;
        Ok(Checked {
            root_key,
            intermediate_key,
            workload_key,
            trust_domain,
        })
    }
}
