//! TokenReview against a scripted fake API server on loopback, over plain HTTP and over TLS
//! with a CA made here: what is sent, what is accepted, and every refusal with its message.

#![allow(clippy::unwrap_used)] // test helpers panic on setup failures by design

mod fake_api;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use meshca_ca::tokenreview::{ReviewedIdentity, TokenReviewError, TokenReviewer};
use meshca_pki::{
    CaProfile, CaSigner, Certificate, KeyType, PrivateKey, Subject, TrustDomain, WorkloadProfile,
};
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::json;
use tokio::net::TcpListener;

use fake_api::{Answer, FakeApi, fake_api, review, review_of};

const WORKLOAD_TOKEN: &str = "workload-token-d41d8cd9";
const REVIEWER_TOKEN: &str = "reviewer-token-8f00b204";
const TIMEOUT: Duration = Duration::from_millis(300);

fn ok_review() -> String {
    review_of("foo", "bar")
}

fn reviewer(url: &str, ca_pem: Option<&[u8]>) -> TokenReviewer {
    TokenReviewer::new(
        url,
        ca_pem,
        REVIEWER_TOKEN.to_owned(),
        vec!["istio-ca".to_owned()],
        TIMEOUT,
    )
    .unwrap()
}

/// Reviews `WORKLOAD_TOKEN` at a fake API server answering `answer` over plain HTTP.
async fn review_against(answer: Answer) -> (Result<ReviewedIdentity, TokenReviewError>, FakeApi) {
    let api = fake_api(answer, None).await;
    let result = reviewer(&api.url, None).review(WORKLOAD_TOKEN).await;
    (result, api)
}

/// The refusal, checked to name the API server and to leave both tokens out.
fn refusal(result: Result<ReviewedIdentity, TokenReviewError>, url: &str) -> TokenReviewError {
    let err = result.unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!("token review at {url}: ")),
        "{msg}"
    );
    assert!(
        !msg.contains(WORKLOAD_TOKEN) && !msg.contains(REVIEWER_TOKEN),
        "{msg}"
    );
    assert!(!msg.contains('\n'), "{msg}");
    err
}

/// A CA and a serving certificate for `localhost` and 127.0.0.1 that it issued.
struct TestPki {
    ca_pem: String,
    server: rustls::ServerConfig,
}

fn test_pki(name: &str) -> TestPki {
    let now = time::OffsetDateTime::now_utc();
    let ca_key = PrivateKey::generate(KeyType::EcdsaP256).unwrap();
    let ca_cert = CaProfile {
        subject: Subject {
            organization: Some("meshca test".into()),
            common_name: Some(name.into()),
            locality: None,
        },
        not_before: now - time::Duration::hours(1),
        not_after: now + time::Duration::days(1),
        path_len: None,
        dns_names: Vec::new(),
    }
    .self_signed(&ca_key, name)
    .unwrap();
    let ca_pem = ca_cert.pem();
    let signer = CaSigner::new(ca_cert, ca_key, name).unwrap();
    let key = PrivateKey::generate(KeyType::EcdsaP256).unwrap();
    let cert: Certificate = signer
        .issue_workload(
            &WorkloadProfile {
                subject: Subject::default(),
                not_before: now - time::Duration::hours(1),
                not_after: now + time::Duration::hours(1),
                uris: Vec::new(),
                dns_names: vec!["localhost".into()],
                ips: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
                key_usage_critical: true,
            },
            &key,
            "API server certificate",
        )
        .unwrap();
    let server = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![cert.der().clone()],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.to_pkcs8_der())),
    )
    .unwrap();
    TestPki { ca_pem, server }
}

#[tokio::test]
async fn authenticated_review_names_the_service_account_and_sends_a_token_review() {
    let (result, mut api) = review_against(Answer::Respond("201 Created", ok_review())).await;
    let id = result.unwrap();
    assert_eq!(
        id,
        ReviewedIdentity {
            namespace: "foo".into(),
            service_account: "bar".into(),
        }
    );
    let td = TrustDomain::new("cluster.local").unwrap();
    assert_eq!(
        id.spiffe_id(&td).unwrap().to_string(),
        "spiffe://cluster.local/ns/foo/sa/bar"
    );

    let req = api.next_request().await;
    assert_eq!(
        req.request_line,
        "POST /apis/authentication.k8s.io/v1/tokenreviews HTTP/1.1"
    );
    assert_eq!(
        req.header("authorization"),
        Some(format!("Bearer {REVIEWER_TOKEN}").as_str())
    );
    assert_eq!(req.header("content-type"), Some("application/json"));
    assert_eq!(req.header("accept"), Some("application/json"));
    assert_eq!(req.header("host"), Some(&api.url["http://".len()..]));
    assert_eq!(
        req.json(),
        json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": { "token": WORKLOAD_TOKEN, "audiences": ["istio-ca"] },
        })
    );
}

#[tokio::test]
async fn status_200_is_accepted_too() {
    let (result, _) = review_against(Answer::Respond("200 OK", ok_review())).await;
    assert_eq!(result.unwrap().namespace, "foo");
}

#[tokio::test]
async fn review_over_tls_trusts_the_given_ca() {
    let pki = test_pki("api CA");
    let mut api = fake_api(
        Answer::Respond("201 Created", ok_review()),
        Some(pki.server),
    )
    .await;
    assert!(api.url.starts_with("https://127.0.0.1:"));
    let id = reviewer(&api.url, Some(pki.ca_pem.as_bytes()))
        .review(WORKLOAD_TOKEN)
        .await
        .unwrap();
    assert_eq!(
        (id.namespace.as_str(), id.service_account.as_str()),
        ("foo", "bar")
    );
    let req = api.next_request().await;
    assert_eq!(req.json()["spec"]["token"], WORKLOAD_TOKEN);
    assert_eq!(
        req.header("authorization"),
        Some(format!("Bearer {REVIEWER_TOKEN}").as_str())
    );
}

#[tokio::test]
async fn tls_server_from_another_ca_is_refused() {
    let trusted = test_pki("trusted CA");
    let other = test_pki("other CA");
    let api = fake_api(
        Answer::Respond("201 Created", ok_review()),
        Some(other.server),
    )
    .await;
    let result = reviewer(&api.url, Some(trusted.ca_pem.as_bytes()))
        .review(WORKLOAD_TOKEN)
        .await;
    let err = refusal(result, &api.url);
    assert!(matches!(err, TokenReviewError::Tls { .. }), "{err}");
    assert!(err.to_string().contains("TLS handshake failed"), "{err}");
    assert!(
        api.requests().is_empty(),
        "nothing was sent to the untrusted server"
    );
}

#[tokio::test]
async fn unauthenticated_token_is_refused_with_the_api_servers_reason() {
    let body = review(false, "", None, "[invalid bearer token, token has expired]");
    let (result, api) = review_against(Answer::Respond("201 Created", body)).await;
    let err = refusal(result, &api.url);
    assert!(
        matches!(err, TokenReviewError::NotAuthenticated { .. }),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        format!(
            "token review at {}: not authenticated: [invalid bearer token, token has expired]",
            api.url
        )
    );
}

#[tokio::test]
async fn user_that_is_not_a_service_account_is_refused() {
    let body = review(true, "alice", Some(&["istio-ca"]), "");
    let (result, api) = review_against(Answer::Respond("201 Created", body)).await;
    let err = refusal(result, &api.url);
    assert!(
        matches!(err, TokenReviewError::NotServiceAccount { .. }),
        "{err}"
    );
    assert!(
        err.to_string()
            .ends_with("username \"alice\" is not a service account"),
        "{err}"
    );
}

#[tokio::test]
async fn unconfirmed_audiences_are_refused() {
    let body = review(true, "system:serviceaccount:foo:bar", None, "");
    let (result, api) = review_against(Answer::Respond("201 Created", body)).await;
    let err = refusal(result, &api.url);
    assert!(
        matches!(err, TokenReviewError::AudiencesUnconfirmed { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("istio-ca"), "{err}");
}

#[tokio::test]
async fn other_audiences_are_refused() {
    let body = review(
        true,
        "system:serviceaccount:foo:bar",
        Some(&["https://kubernetes.default.svc"]),
        "",
    );
    let (result, api) = review_against(Answer::Respond("201 Created", body)).await;
    let err = refusal(result, &api.url);
    assert!(
        matches!(err, TokenReviewError::WrongAudience { .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains("https://kubernetes.default.svc"),
        "{err}"
    );
}

#[tokio::test]
async fn error_statuses_are_named() {
    let (result, api) = review_against(Answer::Respond(
        "500 Internal Server Error",
        "oops".to_owned(),
    ))
    .await;
    let err = refusal(result, &api.url);
    assert!(matches!(err, TokenReviewError::Status { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        format!(
            "token review at {}: answered 500 Internal Server Error",
            api.url
        )
    );

    let status = json!({
        "kind": "Status", "apiVersion": "v1", "status": "Failure",
        "message": "Unauthorized", "reason": "Unauthorized", "code": 401,
    });
    let (result, api) =
        review_against(Answer::Respond("401 Unauthorized", status.to_string())).await;
    let err = refusal(result, &api.url);
    assert_eq!(
        err.to_string(),
        format!(
            "token review at {}: answered 401 Unauthorized: Unauthorized",
            api.url
        )
    );
}

#[tokio::test]
async fn malformed_answers_are_refused() {
    let (result, api) =
        review_against(Answer::Respond("201 Created", "{\"kind\":".to_owned())).await;
    let err = refusal(result, &api.url);
    assert!(matches!(err, TokenReviewError::BadResponse { .. }), "{err}");

    let not_a_review = json!({ "kind": "Status", "status": { "authenticated": true } });
    let (result, api) = review_against(Answer::Respond("200 OK", not_a_review.to_string())).await;
    let err = refusal(result, &api.url);
    assert!(matches!(err, TokenReviewError::BadResponse { .. }), "{err}");
}

#[tokio::test]
async fn oversized_answer_is_refused() {
    let huge = format!(
        "{{\"kind\":\"TokenReview\",\"pad\":\"{}\"}}",
        "x".repeat(2 << 20)
    );
    let (result, api) = review_against(Answer::Respond("201 Created", huge)).await;
    let err = refusal(result, &api.url);
    assert!(matches!(err, TokenReviewError::BadResponse { .. }), "{err}");
    assert!(err.to_string().contains("larger than"), "{err}");
}

#[tokio::test]
async fn server_closing_without_answer_is_an_error() {
    let (result, mut api) = review_against(Answer::Close).await;
    let err = refusal(result, &api.url);
    assert!(matches!(err, TokenReviewError::Closed { .. }), "{err}");
    assert!(err.to_string().ends_with("closed the connection"), "{err}");
    // The request did arrive whole before the server hung up.
    assert_eq!(api.next_request().await.reviewed_token(), WORKLOAD_TOKEN);
}

#[tokio::test]
async fn silent_server_times_out() {
    let mut api = fake_api(Answer::Silent, None).await;
    let started = Instant::now();
    // Bounded from outside too, so that a reviewer without a timeout fails instead of hanging.
    let result = tokio::time::timeout(
        Duration::from_secs(3),
        reviewer(&api.url, None).review(WORKLOAD_TOKEN),
    )
    .await
    .expect("the review has no timeout of its own");
    let elapsed = started.elapsed();
    let err = refusal(result, &api.url);
    assert!(matches!(err, TokenReviewError::Timeout { .. }), "{err}");
    assert!(
        err.to_string().ends_with("did not answer within 300ms"),
        "{err}"
    );
    assert!(elapsed >= TIMEOUT, "gave up after {elapsed:?}");
    assert!(
        elapsed < Duration::from_secs(3),
        "gave up only after {elapsed:?}"
    );
    // The reviewer left: the server saw its connection close.
    tokio::time::timeout(Duration::from_secs(3), api.next_request())
        .await
        .unwrap();
}

#[tokio::test]
async fn refused_connection_is_an_error() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let err = refusal(reviewer(&url, None).review(WORKLOAD_TOKEN).await, &url);
    assert!(matches!(err, TokenReviewError::Connect { .. }), "{err}");
}

#[test]
fn unusable_urls_and_cas_are_refused() {
    let new = |url: &str, ca: Option<&[u8]>| {
        TokenReviewer::new(
            url,
            ca,
            REVIEWER_TOKEN.to_owned(),
            vec!["istio-ca".to_owned()],
            TIMEOUT,
        )
    };
    for url in [
        "",
        "not a url",
        "127.0.0.1:6443",
        "ftp://127.0.0.1:6443",
        "http://user:pw@127.0.0.1:6443",
        "http://127.0.0.1:6443/?q=1",
    ] {
        let err = new(url, None).unwrap_err();
        assert!(
            matches!(err, TokenReviewError::BadUrl { .. }),
            "{url}: {err}"
        );
        assert!(err.to_string().contains(&format!("{url:?}")), "{err}");
    }

    let err = new("https://127.0.0.1:6443", None).unwrap_err();
    assert!(matches!(err, TokenReviewError::BadCa { .. }), "{err}");
    let err = new("https://127.0.0.1:6443", Some(b"not PEM")).unwrap_err();
    assert!(matches!(err, TokenReviewError::BadCa { .. }), "{err}");
    assert!(err.to_string().contains("API server CA"), "{err}");
    let pki = test_pki("a CA");
    let err = new("http://127.0.0.1:6443", Some(pki.ca_pem.as_bytes())).unwrap_err();
    assert!(matches!(err, TokenReviewError::BadCa { .. }), "{err}");
    assert!(new("https://127.0.0.1:6443", Some(pki.ca_pem.as_bytes())).is_ok());

    let err =
        TokenReviewer::new("http://127.0.0.1:6443", None, " ".into(), vec![], TIMEOUT).unwrap_err();
    assert!(
        matches!(err, TokenReviewError::BadReviewerToken { .. }),
        "{err}"
    );
}

#[test]
fn debug_hides_the_reviewer_token() {
    let r = reviewer("http://127.0.0.1:6443", None);
    let shown = format!("{r:?}");
    assert!(!shown.contains(REVIEWER_TOKEN), "{shown}");
    assert!(shown.contains("http://127.0.0.1:6443"), "{shown}");
}
