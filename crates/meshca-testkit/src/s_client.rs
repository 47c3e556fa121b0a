//! The real `openssl s_client` against a TLS endpoint: which protocol versions it serves.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};

/// `openssl s_client -brief` against `addr` with `args`, in `dir`, its input closed: whether
/// the handshake succeeded, and both streams.
pub fn s_client(dir: &Path, addr: SocketAddr, args: &[&str]) -> (bool, String) {
    let connect = addr.to_string();
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(["s_client", "-connect", connect.as_str(), "-brief"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("openssl runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Panics unless the endpoint at `addr` refuses TLS 1.0 and 1.1 with a fatal alert and
/// completes TLS 1.2 and 1.3 handshakes (with `extra` arguments, a client certificate for one).
///
/// OpenSSL 3 offers versions below 1.2 only at security level 0. rustls answers such a hello
/// with a `handshake_failure` alert: it lacks the `signature_algorithms` extension of TLS 1.2,
/// which rustls checks before the version (Go answers `protocol_version`).
pub fn assert_only_tls_1_2_and_up(dir: &Path, addr: SocketAddr, extra: &[&str]) {
    for old in ["-tls1", "-tls1_1"] {
        let (ok, text) = s_client(dir, addr, &[old, "-cipher", "DEFAULT:@SECLEVEL=0"]);
        assert!(!ok, "{addr}: {old} accepted:\n{text}");
        assert!(
            text.contains("alert handshake failure") && text.contains("SSL alert number 40"),
            "{addr}: {old}: no alert from the server:\n{text}"
        );
    }
    for (new, version) in [("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")] {
        let mut args = vec![new];
        args.extend_from_slice(extra);
        let (ok, text) = s_client(dir, addr, &args);
        assert!(ok, "{addr}: {new} refused:\n{text}");
        assert!(
            text.contains(&format!("Protocol version: {version}")),
            "{addr}: {new}:\n{text}"
        );
    }
}
