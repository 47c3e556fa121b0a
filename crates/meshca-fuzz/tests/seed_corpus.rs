//! The seed corpus of `fuzz/corpus/<target>/seed-*`: made here from meshca's own outputs (a
//! PKI issued with meshca-pki, tokens minted with meshca-token, the testkit's policies, the dumps
//! and answers peers send with those in them), never edited by hand.
//!
//! `MESHCA_BLESS=1 cargo test -p meshca-fuzz --test seed_corpus` writes them anew (keys are
//! fresh each time). Without it, the test checks that the committed seeds are the ones this
//! makes, by name, and that every fresh seed gets through its parser, so that the fuzzer starts
//! past the checks a random input fails.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine;
use meshca_fuzz::{AUDIENCE, CALLER, ISSUER, input, now};
use meshca_pki::bundle::{CA_CERT, CA_CRL, CA_KEY, CERT_CHAIN, ROOT_CERT};
use meshca_pki::profile::{CaProfile, CaSigner, Subject, WorkloadProfile};
use meshca_pki::{BundleFiles, CacertsBundle, Certificate, KeyType, Layout, PrivateKey};
use meshca_token::{Jwks, ServiceAccountClaims, SigningKey};
use serde_json::{Value, json};
use time::Duration;

/// One CA hierarchy made by meshca: root, intermediate, a workload's leaf, key and CSR.
struct Pki {
    root: Certificate,
    root_key_pem: String,
    inter: Certificate,
    inter_key_pem: String,
    leaf: Certificate,
    leaf_key_pem: String,
    csr_pem: String,
}

fn pki(key_type: KeyType) -> Pki {
    let t = now();
    let subject = |cn: &str| Subject {
        organization: Some("Istio".to_owned()),
        common_name: Some(cn.to_owned()),
        locality: None,
    };
    let root_key = PrivateKey::generate(key_type).unwrap();
    let root_key_pem = root_key.to_pkcs8_pem();
    let root = CaProfile {
        subject: subject("Root CA"),
        not_before: t - Duration::days(365),
        not_after: t + Duration::days(3650),
        path_len: None,
        dns_names: Vec::new(),
    }
    .self_signed(&root_key, "root-cert.pem")
    .unwrap();
    let root_signer = CaSigner::new(root.clone(), root_key, "root-key.pem").unwrap();
    let inter_key = PrivateKey::generate(key_type).unwrap();
    let inter_key_pem = inter_key.to_pkcs8_pem();
    let inter = root_signer
        .issue_ca(
            &CaProfile {
                subject: Subject {
                    locality: Some("cluster1".to_owned()),
                    ..subject("Intermediate CA")
                },
                not_before: t - Duration::days(30),
                not_after: t + Duration::days(365),
                path_len: None,
                dns_names: vec!["istiod.istio-system.svc".to_owned()],
            },
            &inter_key,
            "ca-cert.pem",
        )
        .unwrap();
    let inter_signer = CaSigner::new(inter.clone(), inter_key, "ca-key.pem").unwrap();
    let leaf_key = PrivateKey::generate(key_type).unwrap();
    let leaf = inter_signer
        .issue_workload(
            &WorkloadProfile {
                subject: Subject::default(),
                not_before: t - Duration::hours(1),
                not_after: t + Duration::days(1),
                uris: vec![CALLER.to_owned()],
                dns_names: Vec::new(),
                ips: Vec::new(),
                key_usage_critical: true,
            },
            &leaf_key,
            "cert-chain.pem",
        )
        .unwrap();
    let csr_pem = meshca_pki::make_csr_pem(&leaf_key, &[CALLER.to_owned()]).unwrap();
    Pki {
        root,
        root_key_pem,
        inter,
        inter_key_pem,
        leaf,
        leaf_key_pem: leaf_key.to_pkcs8_pem(),
        csr_pem,
    }
}

impl Pki {
    /// The Istio layout, as `meshca certs <cluster>-cacerts` writes it.
    fn istio_files(&self) -> BundleFiles {
        BTreeMap::from([
            (CA_CERT.to_owned(), self.inter.pem().into_bytes()),
            (CA_KEY.to_owned(), self.inter_key_pem.clone().into_bytes()),
            (
                CERT_CHAIN.to_owned(),
                (self.inter.pem() + &self.root.pem()).into_bytes(),
            ),
            (ROOT_CERT.to_owned(), self.root.pem().into_bytes()),
        ])
    }

    /// A CRL from each CA of the chain, the intermediate's revoking the leaf.
    fn crls(&self) -> String {
        let crl = |cert: &Certificate, key_pem: &str, revoked: Option<&Certificate>| {
            let key = PrivateKey::from_pem(key_pem.as_bytes(), "key").unwrap();
            // meshca's CA profile leaves out cRLSign, which rcgen wants of a CRL's issuer;
            // the CRL's signature is the CA key's all the same, which is what is checked.
            let mut params = rcgen::CertificateParams::default();
            params.key_usages = vec![rcgen::KeyUsagePurpose::CrlSign];
            params.distinguished_name = rcgen::DistinguishedName::new();
            for attribute in cert.x509().subject().iter_attributes() {
                let value = attribute.as_str().unwrap();
                let oid = attribute.attr_type();
                let kind = if *oid == x509_parser::oid_registry::OID_X509_ORGANIZATION_NAME {
                    rcgen::DnType::OrganizationName
                } else if *oid == x509_parser::oid_registry::OID_X509_COMMON_NAME {
                    rcgen::DnType::CommonName
                } else {
                    rcgen::DnType::LocalityName
                };
                params.distinguished_name.push(kind, value);
            }
            let issuer = rcgen::Issuer::new(params, key);
            rcgen::CertificateRevocationListParams {
                this_update: now() - Duration::days(1),
                next_update: now() + Duration::days(30),
                crl_number: rcgen::SerialNumber::from(1u64),
                issuing_distribution_point: None,
                revoked_certs: revoked
                    .map(|c| rcgen::RevokedCertParams {
                        serial_number: rcgen::SerialNumber::from_slice(c.x509().raw_serial()),
                        revocation_time: now() - Duration::hours(1),
                        reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                        invalidity_date: None,
                    })
                    .into_iter()
                    .collect(),
                key_identifier_method: rcgen::KeyIdMethod::Sha256,
            }
            .signed_by(&issuer)
            .unwrap()
            .pem()
            .unwrap()
        };
        crl(&self.inter, &self.inter_key_pem, Some(&self.leaf))
            + &crl(&self.root, &self.root_key_pem, None)
    }

    /// The chain a workload is handed: leaf, intermediate, root.
    fn chain_pem(&self) -> String {
        self.leaf.pem() + &self.inter.pem() + &self.root.pem()
    }
}

/// Every seed by target and name.
fn seeds() -> BTreeMap<(&'static str, String), Vec<u8>> {
    let ec = pki(KeyType::EcdsaP256);
    let rsa = pki(KeyType::Rsa2048);
    let p384 = PrivateKey::generate(KeyType::EcdsaP384).unwrap();
    let mut out = BTreeMap::new();
    let mut put = |target: &'static str, name: &str, bytes: Vec<u8>| {
        assert!(
            out.insert((target, name.to_owned()), bytes).is_none(),
            "{target}/{name} twice"
        );
    };

    for (kind, p) in [("ecdsa", &ec), ("rsa", &rsa)] {
        put("pem", &format!("{kind}-chain"), p.chain_pem().into_bytes());
        put("pem", &format!("{kind}-crl"), p.crls().into_bytes());
        put(
            "key",
            &format!("{kind}-pkcs8"),
            p.inter_key_pem.clone().into_bytes(),
        );
        put("cert", &format!("{kind}-root"), p.root.pem().into_bytes());
        put(
            "cert",
            &format!("{kind}-intermediate.der"),
            p.inter.der().to_vec(),
        );
        put("cert", &format!("{kind}-chain"), p.chain_pem().into_bytes());
        put(
            "csr",
            &format!("{kind}-leaf"),
            p.csr_pem.clone().into_bytes(),
        );

        let istio = p.istio_files();
        let bundle = CacertsBundle::from_files(&istio, "seed", now()).unwrap();
        let tls = bundle.to_layout(Layout::Tls);
        CacertsBundle::from_files(&tls, "seed", now()).unwrap();
        let mut with_crl = istio.clone();
        with_crl.insert(CA_CRL.to_owned(), p.crls().into_bytes());
        // Like the Makefile's, meshca's CA profile has no cRLSign: its CRLs parse and are then
        // refused as istiod refuses them.
        let refused = CacertsBundle::from_files(&with_crl, "seed", now()).unwrap_err();
        assert!(refused.to_string().contains("ca-crl.pem"), "{refused}");
        put(
            "cacerts",
            &format!("{kind}-istio"),
            input::join_files(&istio),
        );
        put("cacerts", &format!("{kind}-tls"), input::join_files(&tls));
        put(
            "cacerts",
            &format!("{kind}-istio-crl"),
            input::join_files(&with_crl),
        );
    }
    put("pem", "mixed", {
        let text = ec.leaf.pem() + &ec.leaf_key_pem + &ec.csr_pem;
        text.into_bytes()
    });
    put("key", "ecdsa-p384-pkcs8", p384.to_pkcs8_pem().into_bytes());
    put("key", "leaf-pkcs8", ec.leaf_key_pem.clone().into_bytes());
    put("cert", "leaf.der", ec.leaf.der().to_vec());
    put("csr", "ecdsa-leaf.der", csr_der(&ec.csr_pem));

    // The hand-written DER reader: an RSA key as PKCS#8, and an RSA public key (PKCS#1).
    let rsa_key = PrivateKey::from_pem(rsa.inter_key_pem.as_bytes(), "key").unwrap();
    put("der", "rsa-pkcs8", rsa_key.to_pkcs8_der());
    put("der", "rsa-public", rsa_key.public_key_raw().to_vec());
    put("der", "ecdsa-pkcs8", p384.to_pkcs8_der());

    for (name, yaml) in [
        ("seed-001", meshca_testkit::SEED_001_POLICY),
        ("rotating-root", meshca_testkit::ROTATING_ROOT_POLICY),
        ("generated-root", meshca_testkit::GENERATED_ROOT_POLICY),
    ] {
        meshca_trust::TrustPolicy::from_yaml(yaml, name).unwrap();
        put("policy", &format!("{name}.yaml"), yaml.as_bytes().to_vec());
        // As an API server returns the resource.
        let doc: Value = serde_saphyr::from_str(yaml).unwrap();
        put(
            "policy",
            &format!("{name}.json"),
            serde_json::to_vec(&doc).unwrap(),
        );
    }

    let ec_key = SigningKey::from_pem(ec.leaf_key_pem.as_bytes(), "sa.key").unwrap();
    let rsa_key = SigningKey::from_pem(rsa.inter_key_pem.as_bytes(), "sa.key").unwrap();
    let claims = |issued: Duration, lifetime: Duration| ServiceAccountClaims {
        issuer: ISSUER.to_owned(),
        audiences: vec![AUDIENCE.to_owned()],
        namespace: "default".to_owned(),
        service_account: "sleep".to_owned(),
        issued_at: now() + issued,
        expires_at: now() + issued + lifetime,
    };
    let both = Jwks::from_keys([ec_key.public_jwk(), rsa_key.public_jwk()]).to_json();
    let verifier = meshca_token::Verifier::new(AUDIENCE)
        .trust(ISSUER, Jwks::from_json(both.as_bytes(), "jwks").unwrap());
    for (name, key) in [("es256", &ec_key), ("rs256", &rsa_key)] {
        let token =
            meshca_token::mint(&claims(-Duration::minutes(1), Duration::hours(1)), key).unwrap();
        verifier.verify(&token, now()).unwrap();
        let one = Jwks::from_keys([key.public_jwk()]).to_json();
        put(
            "jwt",
            name,
            input::join(&[one.as_bytes(), token.as_bytes()]),
        );
    }
    let expired =
        meshca_token::mint(&claims(-Duration::hours(2), Duration::hours(1)), &ec_key).unwrap();
    put(
        "jwt",
        "expired",
        input::join(&[both.as_bytes(), expired.as_bytes()]),
    );

    for (name, p) in [("ecdsa", &ec), ("rsa", &rsa)] {
        let request = meshca_ca::proto::IstioCertificateRequest {
            csr: p.csr_pem.clone(),
            validity_duration: 3600,
            metadata: Some(prost_types::Struct {
                fields: BTreeMap::from([(
                    "ImpersonatedIdentity".to_owned(),
                    prost_types::Value {
                        kind: Some(prost_types::value::Kind::StringValue(CALLER.to_owned())),
                    },
                )])
                .into_iter()
                .collect(),
            }),
        };
        put("grpc", name, prost::Message::encode_to_vec(&request));
    }
    let plain = meshca_ca::proto::IstioCertificateRequest {
        csr: ec.csr_pem.clone(),
        validity_duration: 0,
        metadata: None,
    };
    put("grpc", "no-metadata", prost::Message::encode_to_vec(&plain));

    let b64 = |text: String| base64::engine::general_purpose::STANDARD.encode(text);
    let (roots, chain) = (b64(ec.root.pem()), b64(ec.leaf.pem() + &ec.inter.pem()));
    let secret_type = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";
    let istioctl = json!({
        "dynamicActiveSecrets": [
            {"name": "default", "versionInfo": "2030-01-01T00:00:00Z",
             "secret": {"@type": secret_type, "name": "default", "tlsCertificate": {
                "certificateChain": {"inlineBytes": chain},
                "privateKey": {"inlineBytes": "W3JlZGFjdGVkXQ=="}}}},
            {"name": "ROOTCA", "versionInfo": "2030-01-01T00:00:00Z",
             "secret": {"@type": secret_type, "name": "ROOTCA", "validationContext": {
                "trustedCa": {"inlineBytes": roots}}}}
        ]
    });
    let snake = json!({
        "configs": [{
            "@type": "type.googleapis.com/envoy.admin.v3.SecretsConfigDump",
            "dynamic_active_secrets": [
                {"name": "default", "secret": {"name": "default", "tls_certificate": {
                    "certificate_chain": {"inline_bytes": chain}}}},
                {"name": "ROOTCA", "secret": {"name": "ROOTCA", "validation_context": {
                    "trusted_ca": {"inline_bytes": roots}}}}
            ],
            "dynamic_warming_secrets": [{"name": "ROOTCA"}]
        }]
    });
    let resource = json!({
        "configs": [
            {"@type": "type.googleapis.com/envoy.admin.v3.SecretsConfigDump.DynamicSecret",
             "name": "default", "secret": {"name": "default", "tls_certificate": {
                "certificate_chain": {"inline_bytes": chain}}}},
            {"@type": "type.googleapis.com/envoy.admin.v3.SecretsConfigDump.DynamicSecret",
             "name": "ROOTCA", "secret": {"name": "ROOTCA", "validation_context": {
                "trusted_ca": {"inline_bytes": roots}}}}
        ]
    });
    for (name, dump) in [
        (
            "istioctl.json",
            serde_json::to_vec_pretty(&istioctl).unwrap(),
        ),
        (
            "istioctl.yaml",
            serde_saphyr::to_string(&istioctl).unwrap().into_bytes(),
        ),
        (
            "config_dump.json",
            serde_json::to_vec_pretty(&snake).unwrap(),
        ),
        (
            "dynamic_active_secrets.json",
            serde_json::to_vec(&resource).unwrap(),
        ),
    ] {
        meshca_verify::ProxySecrets::from_dump(&dump, name).unwrap();
        put("envoy", name, dump);
    }

    let status = |code: u16| {
        let i = meshca_fuzz::STATUSES
            .iter()
            .position(|s| *s == code)
            .unwrap();
        u8::try_from(i).unwrap()
    };
    let with_status = |code: u16, body: &Value| {
        let mut out = vec![status(code)];
        out.extend(serde_json::to_vec(body).unwrap());
        out
    };
    let signed = json!({"success": true, "result": {"certificate": rsa.inter.pem()},
        "errors": [], "messages": []});
    let refused = json!({"success": false, "result": null,
        "errors": [{"code": 400, "message": "invalid token"}], "messages": []});
    put("cfssl", "signed", with_status(200, &signed));
    put("cfssl", "refused", with_status(400, &refused));

    let review = |status: Value| {
        json!({"kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"creationTimestamp": null},
            "spec": {"token": "eyJhbGciOiJFUzI1NiJ9.e30.c2ln", "audiences": [AUDIENCE]},
            "status": status})
    };
    let authenticated = review(json!({"authenticated": true, "audiences": [AUDIENCE],
        "user": {"username": "system:serviceaccount:default:sleep",
            "uid": "b5a4c1d2-0000-4000-8000-000000000001",
            "groups": ["system:serviceaccounts", "system:serviceaccounts:default",
                "system:authenticated"],
            "extra": {"authentication.kubernetes.io/pod-name": ["sleep-7d4b8c6f5-abcde"]}}}));
    let unauthenticated = review(json!({"user": {}, "error": "[invalid bearer token, token \
        lookup failed]"}));
    let forbidden = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
        "message": "tokenreviews.authentication.k8s.io is forbidden: User \
            \"system:serviceaccount:istio-system:meshca\" cannot create resource \"tokenreviews\"",
        "reason": "Forbidden", "code": 403});
    put(
        "tokenreview",
        "authenticated",
        with_status(201, &authenticated),
    );
    put(
        "tokenreview",
        "unauthenticated",
        with_status(201, &unauthenticated),
    );
    put("tokenreview", "forbidden", with_status(403, &forbidden));
    out
}

fn csr_der(pem: &str) -> Vec<u8> {
    meshca_pki::pem::parse_sections(pem.as_bytes(), "csr")
        .unwrap()
        .remove(0)
        .der
}

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus")
}

#[test]
fn the_committed_seeds_are_the_generated_ones() {
    let seeds = seeds();
    for ((target, _), bytes) in &seeds {
        assert!(
            meshca_fuzz::TARGETS.iter().any(|(t, _)| t == target),
            "{target} is not a target"
        );
        // Every seed gets through its target.
        let run = meshca_fuzz::TARGETS
            .iter()
            .find(|(t, _)| t == target)
            .unwrap()
            .1;
        run(bytes);
    }
    if std::env::var_os("MESHCA_BLESS").is_some() {
        for ((target, name), bytes) in &seeds {
            let dir = corpus_dir().join(target);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(format!("seed-{name}")), bytes).unwrap();
        }
        return;
    }
    let mut committed = Vec::new();
    for (target, _) in meshca_fuzz::TARGETS {
        let Ok(entries) = std::fs::read_dir(corpus_dir().join(target)) else {
            continue;
        };
        for entry in entries {
            let name = entry.unwrap().file_name().to_string_lossy().into_owned();
            if let Some(seed) = name.strip_prefix("seed-") {
                committed.push((*target, seed.to_owned()));
            }
        }
    }
    committed.sort();
    let made: Vec<(&str, String)> = seeds.into_keys().collect();
    assert_eq!(
        committed, made,
        "the committed seeds differ from the generated ones; write them with MESHCA_BLESS=1"
    );
}
