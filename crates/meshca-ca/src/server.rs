//! Starting and running the server: load the CA and the JWT keys, connect to the clusters' API
//! servers, bind the listeners, serve gRPC over TLS (or plaintext) and the health service,
//! keep the CA and the keys current, stop on request.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration as StdDuration;

use arc_swap::ArcSwap;
use meshca_pki::TrustDomain;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::body::Body;
use tonic::codegen::{BoxFuture, Context, Poll, Service};
use tonic::server::NamedService;

use crate::auth::Authenticator;
use crate::clock::Clock;
use crate::coalesce::Coalesce;
use crate::issuer::{CaHandle, IssuancePolicy};
use crate::jwks::JwksFiles;
use crate::kube_auth::{KubeAuth, KubeAuthError};
use crate::metrics::{Metrics, Refusal};
use crate::proto::istio_certificate_service_server::IstioCertificateServiceServer;
use crate::service::CaService;
use crate::source::{self, CaError, CaSource};
use crate::tls::DynamicTls;
use crate::watch::ChangeWatch;

/// Largest request accepted; a CSR is a few KiB.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// Everything `meshca serve` is told.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// gRPC address.
    pub listen: SocketAddr,
    /// Where the CA comes from.
    pub source: CaSource,
    /// Trust domain of identities.
    pub trust_domain: TrustDomain,
    /// Serve without TLS (local use only).
    pub plaintext: bool,
    /// DNS names of the serving certificate.
    pub serving_dns: Vec<String>,
    /// JWT issuers and their JWKS files, reloaded when they change. An issuer given more than
    /// once trusts the keys of all its files.
    pub jwt_issuers: Vec<(String, PathBuf)>,
    /// The audience tokens must carry.
    pub audience: String,
    /// This CA's cluster; requests naming a cluster that is neither this one nor a remote
    /// cluster of `token_review` are refused. `None`: every request is taken to be from this
    /// cluster (and no remote cluster can be configured).
    pub cluster_id: Option<String>,
    /// Lifetimes.
    pub policy: IssuancePolicy,
    /// Prometheus address.
    pub metrics_addr: Option<SocketAddr>,
    /// Accept a new bundle whose roots do not include the root in use.
    pub allow_root_change: bool,
    /// How often the CA source and the JWKS files are looked at.
    pub reload_interval: StdDuration,
    /// How long a change must stay unchanged before it is loaded.
    pub debounce: StdDuration,
    /// Kubernetes authentication of the bearer tokens no JWKS file accepts: the own cluster's
    /// API server (its JWKS and/or TokenReview) and the remote clusters' (TokenReview). `None`:
    /// no Kubernetes at all.
    pub token_review: Option<KubeAuth>,
}

/// Why the server could not start or stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The CA could not be loaded.
    #[error(transparent)]
    Ca(#[from] CaError),
    /// A JWKS file could not be read or holds no valid JWKS.
    #[error("{path}: {reason}")]
    Jwks {
        /// the file
        path: String,
        /// why
        reason: String,
    },
    /// Kubernetes authentication could not be set up.
    #[error("Kubernetes authentication: {0}")]
    Kube(#[from] KubeAuthError),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// the address
        addr: SocketAddr,
        /// the system's error
        source: std::io::Error,
    },
    /// TLS material could not be made.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Transport(String),
}

/// A running server.
pub struct Running {
    /// The bound gRPC address.
    pub local_addr: SocketAddr,
    /// The bound metrics address.
    pub metrics_addr: Option<SocketAddr>,
    /// Shared metrics.
    pub metrics: Arc<Metrics>,
    /// The CA in use.
    pub ca: CaHandle,
    health: tonic_health::server::HealthReporter,
    health_service: HealthService,
    stop: Option<oneshot::Sender<()>>,
    join: JoinHandle<Result<(), ServeError>>,
    background: Vec<JoinHandle<()>>,
}

type HealthService =
    tonic_health::pb::health_server::HealthServer<tonic_health::server::HealthService>;

impl Running {
    /// Also serves `grpc.health.v1.Health` in plaintext on `addr`, for Kubernetes gRPC probes
    /// (which cannot speak TLS); answers the bound address. The status is SERVING from the
    /// start, since a server only runs once its CA is loaded, and NOT_SERVING once it stops.
    pub async fn serve_health(&mut self, addr: SocketAddr) -> Result<SocketAddr, ServeError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Bind { addr, source })?;
        let bound = listener
            .local_addr()
            .map_err(|source| ServeError::Bind { addr, source })?;
        let router = tonic::transport::Server::builder().add_service(self.health_service.clone());
        self.background.push(tokio::spawn(async move {
            if let Err(e) = router
                .serve_with_incoming(TcpListenerStream::new(listener))
                .await
            {
                tracing::error!(error = %e, "health listener stopped");
            }
        }));
        tracing::info!(addr = %bound, "serving grpc.health.v1.Health in plaintext");
        Ok(bound)
    }

    /// Stops serving and waits for the server to finish.
    pub async fn shutdown(mut self) -> Result<(), ServeError> {
        self.health
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
        self.health
            .set_not_serving::<IstioCertificateServiceServer<CaService>>()
            .await;
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        for b in &self.background {
            b.abort();
        }
        self.join
            .await
            .map_err(|e| ServeError::Transport(e.to_string()))?
    }

    /// Waits until the server stops by itself (it does not, unless it fails).
    pub async fn wait(self) -> Result<(), ServeError> {
        self.join
            .await
            .map_err(|e| ServeError::Transport(e.to_string()))?
    }
}

/// Loads the CA, binds, and starts serving in the background.
pub async fn start(config: ServeConfig, clock: Arc<dyn Clock>) -> Result<Running, ServeError> {
    let now = clock.now();
    let loaded = match &config.source {
        CaSource::Folder(dir) => source::load_folder(dir, now)?,
        CaSource::SelfSigned { dir, trust_domain } => {
            source::load_or_make_self_signed(dir, trust_domain, now)?
        }
    };
    let metrics = Arc::new(Metrics::default());
    metrics.record_ca(&loaded);
    metrics.last_known_good.set(1);
    let ca: CaHandle = Arc::new(ArcSwap::from_pointee(loaded));

    let jwks = if config.jwt_issuers.is_empty() {
        None
    } else {
        Some(
            JwksFiles::load(&config.audience, &config.jwt_issuers).map_err(|e| {
                ServeError::Jwks {
                    path: e.path,
                    reason: e.reason,
                }
            })?,
        )
    };
    let clusters = crate::kube_auth::connect(
        config.token_review.as_ref(),
        config.cluster_id.as_deref(),
        &config.audience,
    )
    .await?;
    let api_server_jwks: Vec<_> = clusters.all().filter_map(|k| k.jwks().cloned()).collect();
    let auth = Arc::new(Authenticator::new(
        config.trust_domain.clone(),
        jwks.as_ref().map(JwksFiles::verifier),
        clusters,
    ));
    let service = CaService {
        ca: ca.clone(),
        auth: auth.clone(),
        policy: config.policy,
        metrics: metrics.clone(),
        clock: clock.clone(),
    };

    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServeError::Bind {
            addr: config.listen,
            source,
        })?;
    let local_addr = listener.local_addr().map_err(|source| ServeError::Bind {
        addr: config.listen,
        source,
    })?;
    let mut background = Vec::new();
    let metrics_addr = match config.metrics_addr {
        Some(addr) => {
            let l = TcpListener::bind(addr)
                .await
                .map_err(|source| ServeError::Bind { addr, source })?;
            let bound = l
                .local_addr()
                .map_err(|source| ServeError::Bind { addr, source })?;
            background.push(tokio::spawn(crate::metrics::serve(l, metrics.clone())));
            Some(bound)
        }
        None => None,
    };

    let tls = if config.plaintext {
        None
    } else {
        Some(DynamicTls::new(
            &ca.load(),
            config.serving_dns.clone(),
            now,
        )?)
    };
    record_serving(&metrics, tls.as_deref());
    background.push(tokio::spawn(keep_current(
        config.clone(),
        ca.clone(),
        tls.clone(),
        metrics.clone(),
        clock.clone(),
    )));
    for keys in api_server_jwks {
        background.push(tokio::spawn(
            keys.keep_current(clock.clone(), crate::apiserver_jwks::REFRESH_INTERVAL),
        ));
    }
    if let Some(jwks) = jwks {
        background.push(tokio::spawn(keep_jwks_current(
            jwks,
            auth,
            config.reload_interval,
            config.debounce,
            metrics.clone(),
        )));
    }

    let health = tonic_health::server::HealthReporter::new();
    let health_service = HealthService::new(
        tonic_health::server::HealthService::from_health_reporter(health.clone()),
    );
    health
        .set_serving::<IstioCertificateServiceServer<CaService>>()
        .await;
    let grpc = SizeLimited {
        inner: IstioCertificateServiceServer::new(service)
            .max_decoding_message_size(MAX_REQUEST_BYTES),
        metrics: metrics.clone(),
    };
    let router = tonic::transport::Server::builder()
        .add_service(health_service.clone())
        .add_service(grpc);
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let signal = async move {
        let _ = stop_rx.await;
    };
    let join = match tls {
        None => {
            let incoming = TcpListenerStream::new(listener);
            tokio::spawn(async move {
                router
                    .serve_with_incoming_shutdown(incoming, signal)
                    .await
                    .map_err(|e| ServeError::Transport(e.to_string()))
            })
        }
        Some(tls) => {
            let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls.server_config()?));
            let (tx, rx) = mpsc::channel(256);
            background.push(tokio::spawn(accept_tls(
                listener,
                acceptor,
                tx,
                metrics.clone(),
            )));
            let incoming = ReceiverStream::new(rx);
            tokio::spawn(async move {
                router
                    .serve_with_incoming_shutdown(incoming, signal)
                    .await
                    .map_err(|e| ServeError::Transport(e.to_string()))
            })
        }
    };
    tracing::info!(addr = %local_addr, tls = !config.plaintext, "serving IstioCertificateService");
    Ok(Running {
        local_addr,
        metrics_addr,
        metrics,
        ca,
        health,
        health_service,
        stop: Some(stop_tx),
        join,
        background,
    })
}

/// The CA service behind the request size limit. tonic refuses a message above
/// [`MAX_REQUEST_BYTES`] with `OUT_OF_RANGE` before the service sees it; this answers it as
/// grpc-go, and so istiod, does, `RESOURCE_EXHAUSTED`, and counts it. The service itself never
/// answers `OUT_OF_RANGE`.
#[derive(Clone)]
struct SizeLimited<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S: NamedService> NamedService for SizeLimited<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Service<http::Request<Body>> for SizeLimited<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let answer = self.inner.call(request);
        let metrics = self.metrics.clone();
        Box::pin(async move {
            let response = answer.await?;
            match tonic::Status::from_header_map(response.headers()) {
                Some(s) if s.code() == tonic::Code::OutOfRange => {
                    metrics.refused(Refusal::RequestTooLarge);
                    let size = s
                        .message()
                        .split_once("found ")
                        .and_then(|(_, rest)| rest.split_once(' '))
                        .map(|(n, _)| format!("{n} bytes"))
                        .unwrap_or_else(|| "request".to_owned());
                    tracing::info!(reason = %Refusal::RequestTooLarge, %size, "request refused");
                    Ok(tonic::Status::resource_exhausted(format!(
                        "request too large: {size}, more than the limit of {MAX_REQUEST_BYTES} bytes"
                    ))
                    .into_http())
                }
                _ => Ok(response),
            }
        })
    }
}

type TlsConn = Coalesce<tokio_rustls::server::TlsStream<TcpStream>>;

/// Accepts TCP connections and completes TLS handshakes off the accept loop, so that a client
/// that stalls in its handshake holds up nobody else.
async fn accept_tls(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    tx: mpsc::Sender<Result<TlsConn, std::io::Error>>,
    metrics: Arc<Metrics>,
) {
    loop {
        let (sock, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(StdDuration::from_millis(50)).await;
                continue;
            }
        };
        let _ = sock.set_nodelay(true);
        let acceptor = acceptor.clone();
        let tx = tx.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(StdDuration::from_secs(10), acceptor.accept(sock)).await {
                Ok(Ok(conn)) => {
                    let _ = tx.send(Ok(Coalesce::new(conn))).await;
                }
                Ok(Err(e)) => match crate::tls::handshake_refusal(&e) {
                    Some(reason) => {
                        metrics.refused(reason);
                        tracing::info!(%peer, %reason, error = %e, "TLS handshake refused");
                    }
                    None => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                },
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        });
    }
}

fn record_serving(metrics: &Metrics, tls: Option<&DynamicTls>) {
    if let Some(tls) = tls {
        metrics
            .serving_cert_expiry_timestamp
            .set(tls.serving_not_after().unix_timestamp());
    }
}

/// Watches the CA source and the serving certificate, swapping in what is new and valid.
async fn keep_current(
    config: ServeConfig,
    ca: CaHandle,
    tls: Option<Arc<DynamicTls>>,
    metrics: Arc<Metrics>,
    clock: Arc<dyn Clock>,
) {
    let mut watch = ChangeWatch::default();
    loop {
        tokio::time::sleep(config.reload_interval).await;
        let now = clock.now();
        let current = ca.load_full();
        let next = match &config.source {
            CaSource::Folder(dir) => {
                // A folder that cannot be read is mid-swap, or gone for now: looked at again.
                let read = {
                    let dir = dir.clone();
                    move || source::read_folder(&dir).ok()
                };
                let Some((files, fp)) = watch
                    .settled_change(current.fingerprint(), config.debounce, read)
                    .await
                else {
                    continue;
                };
                let shown = dir.display().to_string();
                let attempt = source::load_files(&files, &shown, fp.clone(), now).and_then(|new| {
                    source::check_root_change(&current, &new, &shown, config.allow_root_change)
                        .map(|()| new)
                });
                match attempt {
                    Ok(new) => Some(new),
                    Err(e) => {
                        tracing::warn!(error = %e, "new CA bundle refused; the last good CA keeps signing");
                        metrics.reload_failure_count.inc();
                        metrics.last_known_good.set(0);
                        watch.refused(fp);
                        None
                    }
                }
            }
            CaSource::SelfSigned { dir, trust_domain } => {
                match source::rotate_self_signed_if_due(dir, &current, trust_domain, now) {
                    Ok(next) => next,
                    Err(e) => {
                        tracing::warn!(error = %e, "self-signed root rotation failed");
                        None
                    }
                }
            }
        };
        if let Some(new) = next {
            if let Some(tls) = &tls
                && let Err(e) = tls.update(&new, now)
            {
                tracing::warn!(error = %e, "serving certificate not renewed; keeping the old CA");
                metrics.reload_failure_count.inc();
                continue;
            }
            metrics.record_ca(&new);
            ca.store(Arc::new(new));
            watch.accepted();
            metrics.reload_success_count.inc();
            metrics.last_known_good.set(1);
            tracing::info!("CA bundle reloaded");
        } else if let Some(tls) = &tls
            && tls.serving_due(now)
            && let Err(e) = tls.update(&current, now)
        {
            tracing::warn!(error = %e, "serving certificate renewal failed");
        }
        record_serving(&metrics, tls.as_deref());
    }
}

/// Watches the JWKS files, handing the authenticator new keys when a file changed to a valid
/// JWKS; a refused file leaves the keys in use as they are.
async fn keep_jwks_current(
    mut jwks: JwksFiles,
    auth: Arc<Authenticator>,
    interval: StdDuration,
    debounce: StdDuration,
    metrics: Arc<Metrics>,
) {
    loop {
        tokio::time::sleep(interval).await;
        if let Some(verifier) = jwks.refresh(debounce, &metrics).await {
            auth.replace_verifier(verifier);
        }
    }
}
