//! `meshca quickstart`: the seeds' whole story on one machine. A root and two cluster
//! intermediates; a CA server per cluster on loopback; a workload agent per cluster (`foo/httpbin`
//! in cluster1, `foo/sleep` in cluster2); an mTLS call from cluster2's workload to cluster1's;
//! then the seeds' verification steps. Everything lives in one reusable folder; the servers run in
//! this process and stop with it.

#![forbid(unsafe_code)]

pub mod managed;

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use meshca_agent::mtls::{Endpoint, call};
use meshca_agent::run::Agent;
use meshca_agent::{Credential, Request};
use meshca_ca::issuer::IssuancePolicy;
use meshca_ca::{CaSource, ServeConfig, SystemClock};
use meshca_pki::{Certificate, KeyType, PrivateKey, SpiffeId, TrustDomain};
use meshca_token::{Jwks, ServiceAccountClaims, SigningKey};
use meshca_verify::BundleCerts;

/// What the run proved.
#[derive(Debug)]
pub struct Summary {
    /// The identity cluster1's workload saw on the other side.
    pub httpbin_saw: String,
    /// The identity cluster2's workload saw on the other side.
    pub sleep_saw: String,
    /// Number of verification checks that passed.
    pub checks_passed: usize,
    /// The managed story: the manager's rotations under traffic.
    pub managed: managed::Managed,
}

const ISSUER: &str = "meshca-quickstart";

/// A service-account token for `foo/<sa>`, for audience `istio-ca`, valid for an hour from `now`.
fn token(key: &SigningKey, sa: &str, now: time::OffsetDateTime) -> anyhow::Result<String> {
    Ok(meshca_token::mint(
        &ServiceAccountClaims {
            issuer: ISSUER.into(),
            audiences: vec!["istio-ca".into()],
            namespace: "foo".into(),
            service_account: sa.into(),
            issued_at: now,
            expires_at: now + time::Duration::hours(1),
        },
        key,
    )?)
}

/// Runs the story in `dir`, narrating to `out`.
pub async fn run(dir: &Path, out: &mut impl Write) -> anyhow::Result<Summary> {
    let td = TrustDomain::new("cluster.local")?;
    writeln!(
        out,
        "== 1. A root CA and one intermediate per cluster (meshca certs, ECDSA P-256)"
    )?;
    let settings = meshca_certs::Settings::ecdsa_p256();
    let targets = [
        meshca_certs::Target::RootCa,
        meshca_certs::Target::Cacerts("cluster1".into()),
        meshca_certs::Target::Cacerts("cluster2".into()),
    ];
    let outcomes = meshca_certs::run(
        dir,
        &settings,
        &targets,
        false,
        time::OffsetDateTime::now_utc(),
        &|_| {},
    )?;
    for o in outcomes {
        let what = match o.status {
            meshca_certs::Status::Generated { .. } => "generated",
            meshca_certs::Status::UpToDate { .. } => "up to date",
            meshca_certs::Status::Removed { .. } => "removed",
        };
        writeln!(out, "   {}: {what}", o.target)?;
    }

    writeln!(
        out,
        "== 2. A CA server per cluster, signing with its cacerts (meshca serve)"
    )?;
    let jwt_key_path = dir.join("jwt-key.pem");
    if !jwt_key_path.exists() {
        let mut tx = meshca_store::Transaction::new();
        tx.write(
            dir,
            vec![meshca_store::FileSpec::private(
                "jwt-key.pem",
                PrivateKey::generate(KeyType::EcdsaP256)?.to_pkcs8_pem(),
            )],
        );
        tx.commit()?;
    }
    let key = SigningKey::from_pem(&std::fs::read(&jwt_key_path)?, "jwt-key.pem")?;
    let jwks_path = dir.join("jwks.json");
    std::fs::write(&jwks_path, Jwks::from_keys([key.public_jwk()]).to_json())?;
    let mut cas = Vec::new();
    for cluster in ["cluster1", "cluster2"] {
        let cfg = ServeConfig {
            listen: "127.0.0.1:0".parse()?,
            source: CaSource::Folder(dir.join(cluster)),
            trust_domain: td.clone(),
            plaintext: false,
            serving_dns: meshca_ca::tls::ISTIOD_DNS_NAMES
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            jwt_issuers: vec![(ISSUER.into(), jwks_path.clone())],
            audience: "istio-ca".into(),
            cluster_id: Some(cluster.into()),
            policy: IssuancePolicy::default(),
            metrics_addr: None,
            allow_root_change: false,
            reload_interval: Duration::from_secs(1),
            debounce: Duration::from_millis(100),
            token_review: None,
        };
        let running = meshca_ca::start(cfg, Arc::new(SystemClock))
            .await
            .with_context(|| format!("starting the CA of {cluster}"))?;
        writeln!(
            out,
            "   {cluster}: IstioCertificateService on {}",
            running.local_addr
        )?;
        cas.push(running);
    }

    writeln!(
        out,
        "== 3. A workload per cluster gets its certificate (meshca agent)"
    )?;
    let root_pem = std::fs::read_to_string(dir.join("root-cert.pem"))?;
    let now = time::OffsetDateTime::now_utc();
    let workloads = [
        ("cluster1", "httpbin", &cas[0]),
        ("cluster2", "sleep", &cas[1]),
    ];
    for (cluster, sa, ca) in workloads {
        let token = token(&key, sa, now)?;
        let out_dir = dir.join("workloads").join(cluster).join("foo").join(sa);
        std::fs::create_dir_all(out_dir.parent().context("workload folder")?)?;
        let agent = Agent {
            request: Request {
                ca_addr: ca.local_addr.to_string(),
                ca_root_pem: root_pem.clone(),
                server_name: "istiod.istio-system.svc".into(),
                identity: SpiffeId::workload(&td, "foo", sa)?,
                key_type: KeyType::EcdsaP256,
                ttl_seconds: 0,
                credential: Credential::Token(token),
                cluster_id: Some(cluster.into()),
            },
            output_dir: out_dir.clone(),
            grace_ratio: 0.5,
            token_file: None,
            ca_root_file: None,
        };
        let leaf = agent
            .once(now)
            .await
            .with_context(|| format!("{cluster}/foo/{sa}"))?;
        writeln!(
            out,
            "   {cluster}/foo/{sa}: {} valid until {}",
            leaf.uris().first().cloned().unwrap_or_default(),
            meshca_pki::error::show_time(leaf.not_after())
        )?;
    }

    writeln!(
        out,
        "== 4. mTLS from cluster2's foo/sleep to cluster1's foo/httpbin"
    )?;
    let httpbin_dir = dir.join("workloads/cluster1/foo/httpbin");
    let sleep_dir = dir.join("workloads/cluster2/foo/sleep");
    let endpoint = Endpoint::start("127.0.0.1:0".parse()?, &httpbin_dir).await?;
    let sleep_roots = Certificate::all_from_pem(
        &std::fs::read(sleep_dir.join("root-cert.pem"))?,
        "sleep root-cert.pem",
    )?;
    let res = call(
        &endpoint.local_addr.to_string(),
        Some(&sleep_dir),
        Some(sleep_roots),
    )
    .await?;
    let httpbin_saw = res.reply.trim().trim_start_matches("hello ").to_owned();
    let sleep_saw = res
        .server_chain
        .first()
        .and_then(|c| c.uris().first().cloned())
        .unwrap_or_default();
    writeln!(out, "   httpbin saw {httpbin_saw}")?;
    writeln!(out, "   sleep saw   {sleep_saw}")?;
    if httpbin_saw != "spiffe://cluster.local/ns/foo/sa/sleep"
        || sleep_saw != "spiffe://cluster.local/ns/foo/sa/httpbin"
    {
        bail!("the mTLS call did not show both identities");
    }

    writeln!(out, "== 5. The seeds' verification steps (meshca verify)")?;
    let bundle_files = meshca_store::read_bundle_dir(&dir.join("cluster1"))?;
    let bundle = BundleCerts::from_files("cluster1", &bundle_files)?;
    // The endpoint presents the root too, as Envoy does: the seeds' root step reads it there.
    let now = time::OffsetDateTime::now_utc();
    let chain_report = meshca_verify::chain_against_bundle(&bundle, &res.server_chain, now);
    let labels = [
        "root certificate: Files are identical",
        "CA certificate: Files are identical",
        "proxy-cert-1.pem: OK",
    ];
    for (c, label) in chain_report.checks.iter().zip(labels) {
        writeln!(
            out,
            "   {} {label} ({})",
            if c.ok { "✔" } else { "✘" },
            c.detail
        )?;
    }
    let mut bundles = Vec::new();
    for cluster in ["cluster1", "cluster2"] {
        bundles.push(BundleCerts::from_files(
            cluster,
            &meshca_store::read_bundle_dir(&dir.join(cluster))?,
        )?);
    }
    let roots_report = meshca_verify::same_roots(&bundles, now);
    for c in &roots_report.checks {
        writeln!(out, "   {} {}", if c.ok { "✔" } else { "✘" }, c.name)?;
    }
    drop(endpoint);
    for ca in cas {
        ca.shutdown().await?;
    }
    let all: Vec<_> = chain_report
        .checks
        .iter()
        .chain(&roots_report.checks)
        .collect();
    let failed: Vec<&str> = all
        .iter()
        .filter(|c| !c.ok)
        .map(|c| c.name.as_str())
        .collect();
    if !failed.is_empty() {
        bail!("verification failed: {}", failed.join("; "));
    }
    writeln!(
        out,
        "   two clusters, one root; workloads in cluster1 and cluster2 authenticate each other over mTLS ({} checks passed)",
        all.len()
    )?;

    let managed = managed::run(dir, 6, out).await?;
    writeln!(
        out,
        "== OK: plugged-in CAs verified ({} checks); managed intermediates re-issued and the root replaced with {} mTLS calls and none failed. Files are in {} (the policy: {})",
        all.len(),
        managed.calls,
        dir.display(),
        managed.policy.display()
    )?;
    Ok(Summary {
        httpbin_saw,
        sleep_saw,
        checks_passed: all.len(),
        managed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_whole_story_runs_twice_in_the_same_folder() {
        let t = tempfile::tempdir().unwrap();
        for round in 0..2 {
            let mut out = Vec::new();
            let s = run(t.path(), &mut out).await;
            let text = String::from_utf8(out).unwrap();
            println!("{text}");
            let s = s.unwrap();
            assert_eq!(s.httpbin_saw, "spiffe://cluster.local/ns/foo/sa/sleep");
            assert_eq!(s.sleep_saw, "spiffe://cluster.local/ns/foo/sa/httpbin");
            assert_eq!(s.checks_passed, 6, "{text}");
            assert!(!text.contains('✘'), "{text}");
            // Two first intermediates, two forced, two re-issued from the new root.
            assert_eq!(s.managed.intermediates_issued, 6, "{text}");
            assert_eq!(s.managed.failed, 0, "{text}");
            assert!(s.managed.calls > 20, "{text}");
            let page = std::fs::read_to_string(&s.managed.dashboard).unwrap();
            assert!(page.contains("cluster1") && page.contains("cluster2"));
            for needle in [
                "phase 1/3 add-root",
                "they trust 2 root(s)",
                "rotation: root rotation finished",
                "they trust 1 root(s)",
                ": 0 failed",
            ] {
                assert!(text.contains(needle), "{needle:?} in\n{text}");
            }
            if round == 1 {
                assert!(
                    text.contains("cluster1-cacerts: up to date"),
                    "reused: {text}"
                );
            }
        }
    }
}
