//! Private keys stay private: `Debug` of every type that holds key material shows none of it,
//! in any encoding; a whole quickstart run at the most verbose logging prints none of the keys it
//! wrote, and writes every one of them mode 0600; `meshca serve` and `meshca agent` logging at
//! `trace` print none of theirs either, and their TLS endpoints refuse TLS 1.0 and 1.1 (the real
//! `openssl s_client`); and `scripts/scan-logs`, which checks the test suite's
//! log, finds keys where they are and nothing where they are not.

#![allow(clippy::unwrap_used)] // test helpers panic on setup failures by design

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use meshca_pki::{CacertsBundle, KeyType, PrivateKey};
use meshca_testkit::{mode, openssl, run_in};
use time::OffsetDateTime;

const MESHCA: &str = env!("CARGO_BIN_EXE_meshca");

/// Every way a private key could show in text, each with what it is: the lines of its PEM body,
/// its DER in base64 (standard and URL-safe), in hex (both cases, with and without colons) and
/// as `Debug` prints bytes, and its private scalar or exponent, as `openssl pkey -text` reads
/// it, in hex and base64.
fn encodings(dir: &Path, pem: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let sections = meshca_pki::pem::parse_sections(pem.as_bytes(), "key").unwrap();
    let der = &sections[0].der;
    for line in pem
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() >= 16)
    {
        out.push(("a PEM line".to_owned(), line.to_owned()));
    }
    // A PEM file's bytes as Debug prints a byte vector (a map of files, say).
    let first_line = pem.lines().nth(1).unwrap();
    out.push((
        "a PEM line as Debug bytes".to_owned(),
        format!("{:?}", first_line.as_bytes())
            .trim_matches(|c| c == '[' || c == ']')
            .to_owned(),
    ));
    let b64 = base64::engine::general_purpose::STANDARD;
    let url = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    out.push(("the DER in base64".to_owned(), b64.encode(der)));
    out.push(("the DER in base64url".to_owned(), url.encode(der)));
    let hex: String = der.iter().map(|b| format!("{b:02x}")).collect();
    out.push(("the DER in hex".to_owned(), hex.clone()));
    out.push(("the DER in HEX".to_owned(), hex.to_uppercase()));
    let colons: Vec<String> = der.iter().map(|b| format!("{b:02x}")).collect();
    out.push(("the DER in hex with colons".to_owned(), colons.join(":")));
    let debug = format!("{:?}", &der[..]);
    out.push((
        "the DER as Debug bytes".to_owned(),
        debug.trim_start_matches('[').to_owned(),
    ));
    out.push((
        "the DER as hex Debug bytes".to_owned(),
        format!("{:x?}", &der[..])
            .trim_start_matches('[')
            .to_owned(),
    ));
    let secret = private_part(dir, pem);
    assert!(secret.len() >= 32, "a private part of at least 32 bytes");
    let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    out.push(("the private part in hex".to_owned(), hex.clone()));
    out.push(("the private part in HEX".to_owned(), hex.to_uppercase()));
    out.push(("the private part in base64".to_owned(), b64.encode(&secret)));
    out.push((
        "the private part in base64url".to_owned(),
        url.encode(&secret),
    ));
    let colons: Vec<String> = secret.iter().map(|b| format!("{b:02x}")).collect();
    out.push((
        "the private part as openssl prints it".to_owned(),
        colons[..16].join(":"),
    ));
    out
}

/// The private scalar (EC) or exponent (RSA) of a PEM key, read by `openssl pkey -text`.
fn private_part(dir: &Path, pem: &str) -> Vec<u8> {
    let file = dir.join("key-to-read.pem");
    std::fs::write(&file, pem).unwrap();
    let text = openssl(dir, ["pkey", "-noout", "-text", "-in", "key-to-read.pem"])
        .ok()
        .stdout;
    std::fs::remove_file(&file).unwrap();
    let mut hex = String::new();
    let mut inside = false;
    for line in text.lines() {
        if line.starts_with("priv:") || line.starts_with("privateExponent:") {
            inside = true;
            continue;
        }
        if inside {
            if !line.starts_with(' ') {
                break;
            }
            hex.extend(line.trim().split(':').filter(|s| !s.is_empty()));
        }
    }
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    // openssl prints a leading zero byte when the top bit is set.
    match bytes.split_first() {
        Some((0, rest)) => rest.to_vec(),
        _ => bytes,
    }
}

/// Whether `text` shows any of `key`'s encodings.
fn shows(text: &str, encodings: &[(String, String)]) -> bool {
    encodings
        .iter()
        .any(|(_, needle)| text.contains(needle.as_str()))
}

/// Panics naming `what` and the encoding when `text` shows any of `key`'s encodings.
fn assert_hidden(what: &str, text: &str, key_name: &str, encodings: &[(String, String)]) {
    for (how, needle) in encodings {
        assert!(
            !text.contains(needle.as_str()),
            "{what} shows {how} of {key_name}"
        );
    }
}

/// A root, cluster c1's CA, and namespace foo's CA and workload certificate, as `meshca certs`
/// makes them.
fn make_pki(dir: &Path) {
    meshca_certs::run(
        dir,
        &meshca_certs::Settings::ecdsa_p256(),
        &[
            meshca_certs::Target::Cacerts("c1".to_owned()),
            meshca_certs::Target::Certs("foo".to_owned()),
        ],
        false,
        OffsetDateTime::now_utc(),
        &|_| {},
    )
    .unwrap();
}

#[test]
fn debug_of_every_key_holding_type_shows_no_key() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    make_pki(d);
    let now = OffsetDateTime::now_utc();
    let ca_key_pem = std::fs::read_to_string(d.join("c1/ca-key.pem")).unwrap();
    let ca_key = encodings(d, &ca_key_pem);

    // The check finds the key in each form a careless Debug would print it.
    let der = &meshca_pki::pem::parse_sections(ca_key_pem.as_bytes(), "k").unwrap()[0].der;
    for careless in [
        format!("{:?}", ca_key_pem),
        format!("{:?}", ca_key_pem.as_bytes()),
        format!("{der:?}"),
        format!(
            "{:?}",
            std::collections::BTreeMap::from([("ca-key.pem", ca_key_pem.as_bytes())])
        ),
        format!("{:x?}", der),
    ] {
        assert!(shows(&careless, &ca_key), "not found in {careless:.60}...");
    }

    let rsa = PrivateKey::generate(KeyType::Rsa2048).unwrap();
    let rsa_pem = rsa.to_pkcs8_pem();
    let ec = PrivateKey::generate(KeyType::EcdsaP256).unwrap();
    let ec_pem = ec.to_pkcs8_pem();
    let mut shown: Vec<(&str, String)> = vec![
        ("PrivateKey (RSA)", format!("{rsa:?}")),
        ("PrivateKey (ECDSA)", format!("{ec:?}")),
    ];
    for (name, key_pem) in [("the RSA key", &rsa_pem), ("the ECDSA key", &ec_pem)] {
        let e = encodings(d, key_pem);
        for (what, text) in &shown {
            assert_hidden(what, text, name, &e);
        }
    }
    let sections = meshca_pki::pem::parse_sections(ec_pem.as_bytes(), "k").unwrap();
    assert_hidden(
        "pem::Section",
        &format!("{sections:?}"),
        "the ECDSA key",
        &encodings(d, &ec_pem),
    );
    let token_key = meshca_token::SigningKey::from_pem(ec_pem.as_bytes(), "k").unwrap();
    assert_hidden(
        "meshca_token::SigningKey",
        &format!("{token_key:?}"),
        "the ECDSA key",
        &encodings(d, &ec_pem),
    );

    // The CA's key, in every type that carries it.
    let loaded = meshca_ca::source::load_folder(&d.join("c1"), now).unwrap();
    let bundle: &CacertsBundle = loaded.bundle();
    shown = vec![
        ("CaSigner", format!("{:?}", bundle.signer())),
        ("CacertsBundle", format!("{bundle:?}")),
        ("LoadedCa", format!("{loaded:?}")),
    ];
    let tls = meshca_ca::tls::DynamicTls::new(&loaded, vec!["ca.example".into()], now).unwrap();
    shown.push(("DynamicTls", format!("{tls:?}")));
    let manifest = meshca_store::secret::SecretManifest::for_bundle(
        bundle,
        meshca_pki::Layout::Istio,
        "cacerts",
        "istio-system",
    );
    shown.push(("SecretManifest", format!("{manifest:?}")));
    let data = meshca_store::SecretData::from(bundle.files().clone());
    shown.push(("SecretData", format!("{data:?}")));
    let key = meshca_store::SecretKey::new("c1", "istio-system", "cacerts");
    let store = meshca_store::MemoryStore::with_clusters(&["c1"]);
    store.put(&key, data.clone());
    let secret = meshca_store::SecretStore::get(&store, &key)
        .unwrap()
        .unwrap();
    shown.push(("store::Secret", format!("{secret:?}")));
    shown.push(("MemoryStore", format!("{store:?}")));
    let expect = meshca_store::Expect::Absent;
    let write = meshca_store::SecretWrite {
        key: &key,
        data: &data,
        expect: &expect,
    };
    shown.push(("SecretWrite", format!("{write:?}")));
    for (what, text) in &shown {
        assert_hidden(what, text, "the CA key", &ca_key);
    }

    // A workload's key, in the agent's types.
    let wl = d.join("foo");
    let key_pem = std::fs::read_to_string(wl.join("key.pem")).unwrap();
    let wl_key = encodings(d, &key_pem);
    let chain_pem = std::fs::read_to_string(wl.join("workload-cert-chain.pem")).unwrap();
    std::fs::write(wl.join("cert-chain.pem"), &chain_pem).unwrap();
    let credential = meshca_agent::client::Credential::ClientCert {
        chain_pem: chain_pem.clone(),
        key_pem: key_pem.clone(),
    };
    let pair = meshca_agent::client::read_pair(&wl).unwrap();
    let issued = meshca_agent::client::Issued {
        key: PrivateKey::from_pem(key_pem.as_bytes(), "key.pem").unwrap(),
        chain: meshca_pki::Certificate::all_from_pem(chain_pem.as_bytes(), "chain").unwrap(),
        roots_pem: String::new(),
        chain_pem,
    };
    for (what, text) in [
        ("agent Credential", format!("{credential:?}")),
        ("agent Pair", format!("{pair:?}")),
        ("agent Issued", format!("{issued:?}")),
    ] {
        assert_hidden(what, &text, "the workload key", &wl_key);
    }
}

/// Every file below `dir` that holds PEM private-key armour.
fn key_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            if meta.is_dir() {
                todo.push(p);
            } else if meta.is_file()
                && std::fs::read(&p)
                    .unwrap()
                    .windows(16)
                    .any(|w| w == b"PRIVATE KEY-----")
            {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// `scripts/scan-logs` on `log`: whether it passed, and what it said.
fn scan_logs(log: &Path) -> (bool, String) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/scan-logs");
    let out = Command::new(script).arg(log).output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn a_quickstart_logging_at_trace_prints_no_key_and_writes_each_key_0600() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let out = Command::new(MESHCA)
        .current_dir(d)
        .args(["quickstart", "--dir", "qs"])
        .env("MESHCA_LOG", "trace")
        .env("RUST_LOG", "trace")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "quickstart failed:\n{log}");
    assert!(log.contains("== OK"), "{log}");
    // The in-process CA servers, agents and trust manager logged at trace too.
    for line in ["TRACE", "serving IstioCertificateService"] {
        assert!(
            log.contains(line),
            "{line:?} not in the quickstart's output"
        );
    }

    let keys = key_files(&d.join("qs"));
    // Root, intermediates, workloads, the token issuer: more than a handful.
    assert!(keys.len() >= 6, "{keys:?}");
    for k in &keys {
        assert_eq!(mode(k), 0o600, "{}", k.display());
        let pem = std::fs::read_to_string(k).unwrap();
        for block in meshca_testkit::pem_blocks(&pem)
            .iter()
            .filter(|b| b.contains("PRIVATE KEY-----"))
        {
            assert_hidden(
                "the quickstart's output",
                &log,
                &k.display().to_string(),
                &encodings(d, block),
            );
        }
    }
    let file = d.join("quickstart.log");
    std::fs::write(&file, &log).unwrap();
    let (clean, said) = scan_logs(&file);
    assert!(
        clean,
        "scripts/scan-logs on the quickstart's output:\n{said}"
    );
}

/// A long-running meshca process logging at `trace`, its stderr in `<name>.err`; killed when
/// dropped.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `meshca args` in `dir` and returns it with the first word after `marker` on the first
/// stdout line holding it (an address); every stdout line also goes to `<name>.out`.
fn daemon(dir: &Path, name: &str, args: &[&str], marker: &str) -> (Daemon, String) {
    let mut child = Command::new(MESHCA)
        .current_dir(dir)
        .args(args)
        .env("MESHCA_LOG", "trace")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.join(format!("{name}.err"))).unwrap())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let daemon = Daemon(child);
    let out = dir.join(format!("{name}.out"));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut file = std::fs::File::create(out).unwrap();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = writeln!(file, "{line}");
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx.recv_timeout(left).unwrap_or_else(|e| {
            panic!(
                "meshca {name}: no {marker:?} ({e}):\n{}",
                std::fs::read_to_string(dir.join(format!("{name}.err"))).unwrap_or_default()
            )
        });
        if let Some((_, rest)) = line.split_once(marker) {
            let word = rest
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_owned();
            return (daemon, word);
        }
    }
}

#[test]
fn serve_and_agent_logging_at_trace_print_no_key_and_serve_no_tls_below_1_2() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    make_pki(d);
    openssl(
        d,
        [
            "ecparam",
            "-genkey",
            "-name",
            "prime256v1",
            "-noout",
            "-out",
            "jwt-key.pem",
        ],
    )
    .ok();
    let jwks = run_in(MESHCA, d, ["token", "jwks", "--key", "jwt-key.pem"], &[])
        .ok()
        .stdout;
    std::fs::write(d.join("jwks.json"), jwks).unwrap();
    let (serve, ca) = daemon(
        d,
        "serve",
        &[
            "serve",
            "--cacerts",
            "c1",
            "--listen",
            "127.0.0.1:0",
            "--jwt-issuer",
            "k8s=jwks.json",
        ],
        "listening on ",
    );
    let token = run_in(
        MESHCA,
        d,
        [
            "token",
            "issue",
            "--ns",
            "foo",
            "--sa",
            "sleep",
            "--issuer",
            "k8s",
            "--key",
            "jwt-key.pem",
        ],
        &[],
    )
    .ok()
    .stdout;
    std::fs::write(d.join("sleep.token"), token).unwrap();
    let sleep = d.join("sleep").display().to_string();
    let first = run_in(
        MESHCA,
        d,
        [
            "agent",
            "--once",
            "--ca-addr",
            &ca,
            "--ca-root",
            "root-cert.pem",
            "--token-file",
            "sleep.token",
            "--output-dir",
            &sleep,
        ],
        &[("MESHCA_LOG", "trace")],
    )
    .ok();
    let first_key = std::fs::read_to_string(d.join("sleep/key.pem")).unwrap();
    assert_eq!(mode(&d.join("sleep/key.pem")), 0o600);
    // The workload renews over mTLS and serves its own endpoint.
    let (agent, endpoint) = daemon(
        d,
        "agent",
        &[
            "agent",
            "--ca-addr",
            &ca,
            "--ca-root",
            "root-cert.pem",
            "--output-dir",
            &sleep,
            "--mtls-listen",
            "127.0.0.1:0",
        ],
        "mTLS endpoint on ",
    );
    meshca_testkit::s_client::assert_only_tls_1_2_and_up(d, ca.parse().unwrap(), &[]);
    meshca_testkit::s_client::assert_only_tls_1_2_and_up(
        d,
        endpoint.parse().unwrap(),
        &[
            "-cert",
            "sleep/cert-chain.pem",
            "-cert_chain",
            "sleep/cert-chain.pem",
            "-key",
            "sleep/key.pem",
        ],
    );
    drop(agent);
    drop(serve);

    let mut logs = format!("{}{}", first.stdout, first.stderr);
    for f in ["serve.out", "serve.err", "agent.out", "agent.err"] {
        logs.push_str(&std::fs::read_to_string(d.join(f)).unwrap());
    }
    assert!(logs.contains("TRACE"), "logging at trace:\n{logs}");
    assert!(logs.contains("TLS handshake refused"), "{logs}");
    let mut keys: Vec<(String, String)> = key_files(d)
        .iter()
        .map(|k| (k.display().to_string(), std::fs::read_to_string(k).unwrap()))
        .collect();
    keys.push(("the workload's first key".to_owned(), first_key));
    for (name, pem) in &keys {
        assert_hidden("serve's and agent's logs", &logs, name, &encodings(d, pem));
    }
    let file = d.join("daemons.log");
    std::fs::write(&file, &logs).unwrap();
    let (clean, said) = scan_logs(&file);
    assert!(
        clean,
        "scripts/scan-logs on serve's and agent's logs:\n{said}"
    );
}

#[test]
fn scan_logs_finds_keys_in_every_form_and_passes_a_clean_log() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let clean = d.join("clean.log");
    let cert = {
        make_pki(d);
        std::fs::read_to_string(d.join("root-cert.pem")).unwrap()
    };
    // Certificates, public keys and CSRs are no secret.
    let csr = meshca_pki::make_csr_pem(
        &PrivateKey::generate(KeyType::EcdsaP256).unwrap(),
        &["spiffe://cluster.local/ns/foo/sa/sleep".to_owned()],
    )
    .unwrap();
    std::fs::write(&clean, format!("test ok\n{cert}{csr}running 3 tests\n")).unwrap();
    let (ok, said) = scan_logs(&clean);
    assert!(ok, "{said}");

    let b64 = base64::engine::general_purpose::STANDARD;
    for (name, key) in [
        ("ec-p256", PrivateKey::generate(KeyType::EcdsaP256).unwrap()),
        ("ec-p384", PrivateKey::generate(KeyType::EcdsaP384).unwrap()),
        ("rsa-2048", PrivateKey::generate(KeyType::Rsa2048).unwrap()),
    ] {
        let pem = key.to_pkcs8_pem();
        let der = key.to_pkcs8_der();
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        let hex: String = der.iter().map(|b| format!("{b:02x}")).collect();
        let forms = [
            ("pem", pem.clone()),
            ("base64", format!("value={}\n", b64.encode(&der))),
            ("pem-body", format!("got {body} from the store\n")),
            ("hex", format!("der {hex}\n")),
            ("debug", format!("Secret {{ data: {:?} }}\n", der)),
        ];
        for (form, text) in forms {
            let f = d.join(format!("{name}-{form}.log"));
            std::fs::write(&f, format!("test ok\n{text}test ok\n")).unwrap();
            let (ok, said) = scan_logs(&f);
            assert!(!ok, "{name} as {form} not found:\n{said}");
            assert!(
                said.contains(":2:"),
                "{name} as {form}: no line number:\n{said}"
            );
        }
    }
    // SEC1 and PKCS#1 keys, as openssl writes them.
    for (name, args) in [
        (
            "sec1",
            vec!["ecparam", "-name", "prime256v1", "-genkey", "-noout"],
        ),
        ("pkcs1", vec!["genrsa", "-traditional", "2048"]),
    ] {
        let out = openssl(d, &args).ok().stdout;
        let body: String = out.lines().filter(|l| !l.starts_with("-----")).collect();
        let f = d.join(format!("{name}.log"));
        std::fs::write(&f, format!("key={body}\n")).unwrap();
        let (ok, said) = scan_logs(&f);
        assert!(!ok, "{name} not found:\n{said}");
    }
}
