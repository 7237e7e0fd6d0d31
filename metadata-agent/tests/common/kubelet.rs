//! A fixture kubelet: `GET /pods` over HTTPS with certificates generated for the test,
//! enforcing bearer-token or client-certificate authentication like a kubelet with anonymous
//! access off (401 without valid credentials, 403 when the account lacks `nodes/proxy`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;

/// A certificate authority, and a server and a client certificate it issued.
pub struct Pki {
    /// The CA certificate (PEM).
    pub ca: String,
    /// The kubelet's serving certificate (for `localhost` and `127.0.0.1`) and key (PEM).
    pub server: (String, String),
    /// A client certificate (`CN=system:node:agent`) and key (PEM).
    pub client: (String, String),
}

impl Pki {
    /// A fresh authority named `name`.
    pub fn new(name: &str) -> Self {
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.distinguished_name
            .push(DnType::CommonName, format!("{name} CA"));
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();

        let mut server =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        server
            .distinguished_name
            .push(DnType::CommonName, format!("{name} kubelet"));
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server_key = KeyPair::generate().unwrap();
        let server_cert = server.signed_by(&server_key, &ca).unwrap();

        let mut client = CertificateParams::new(Vec::<String>::new()).unwrap();
        client
            .distinguished_name
            .push(DnType::CommonName, "system:node:agent");
        client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let client_key = KeyPair::generate().unwrap();
        let client_cert = client.signed_by(&client_key, &ca).unwrap();

        Self {
            ca: ca.pem(),
            server: (server_cert.pem(), server_key.serialize_pem()),
            client: (client_cert.pem(), client_key.serialize_pem()),
        }
    }
}

/// A self-signed serving certificate with `CA:TRUE`, as `openssl req -x509` and kubelets
/// without a signed serving certificate make them, for `names`, valid from `not_before` to
/// `not_after`; with its key (PEM).
pub fn self_signed_ca_certificate(
    names: &[&str],
    not_before: time::OffsetDateTime,
    not_after: time::OffsetDateTime,
) -> (String, String) {
    let mut params =
        CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>()).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "node-1@1764547200");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
        KeyUsagePurpose::KeyCertSign,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.not_before = not_before;
    params.not_after = not_after;
    let key = KeyPair::generate().unwrap();
    let certificate = params.self_signed(&key).unwrap();
    (certificate.pem(), key.serialize_pem())
}

/// What the fixture kubelet does, changeable while it runs.
#[derive(Clone)]
pub struct Behaviour {
    /// The body of `GET /pods`.
    pub pods: String,
    /// Bearer tokens accepted.
    pub tokens: Vec<String>,
    /// Wait this long before answering.
    pub delay: Duration,
    /// Answer 403 to authenticated requests (an account without `nodes/proxy`).
    pub forbid: bool,
}

/// A running fixture kubelet.
pub struct Kubelet {
    /// Where it listens.
    pub address: SocketAddr,
    /// Its certificates.
    pub pki: Pki,
    behaviour: Arc<Mutex<Behaviour>>,
    requests: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Kubelet {
    /// Starts a kubelet serving `behaviour`, on a port of 127.0.0.1.
    pub async fn start(behaviour: Behaviour) -> Self {
        let pki = Pki::new("fixture");
        let server = pki.server.clone();
        Self::start_serving(behaviour, pki, server).await
    }

    /// Starts a kubelet serving `behaviour` with the certificate and key `server` (PEM),
    /// trusting client certificates of `pki`.
    pub async fn start_serving(behaviour: Behaviour, pki: Pki, server: (String, String)) -> Self {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(pki.ca.as_bytes()).unwrap())
            .unwrap();
        // Like a kubelet with a client CA: certificates are optional at the TLS level, and a
        // request with neither a certificate nor a token gets 401.
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
                .allow_unauthenticated()
                .build()
                .unwrap();
        let chain = vec![CertificateDer::from_pem_slice(server.0.as_bytes()).unwrap()];
        let key = PrivateKeyDer::from_pem_slice(server.1.as_bytes()).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let behaviour = Arc::new(Mutex::new(behaviour));
        let requests = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(serve(
            listener,
            acceptor,
            Arc::clone(&behaviour),
            Arc::clone(&requests),
        ));
        Self {
            address,
            pki,
            behaviour,
            requests,
            task,
        }
    }

    /// Changes what it does.
    pub fn set(&self, change: impl FnOnce(&mut Behaviour)) {
        change(&mut self.behaviour.lock().unwrap());
    }

    /// How many `GET /pods` it answered with the list.
    pub fn pod_lists_served(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// Stops listening (a kubelet that went down).
    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    behaviour: Arc<Mutex<Behaviour>>,
    requests: Arc<AtomicUsize>,
) {
    let mut connections = tokio::task::JoinSet::new();
    while let Ok((stream, _)) = listener.accept().await {
        let acceptor = acceptor.clone();
        let behaviour = Arc::clone(&behaviour);
        let requests = Arc::clone(&requests);
        connections.spawn(async move {
            // A client that rejects our certificate ends the handshake: nothing to serve.
            let Ok(tls) = acceptor.accept(stream).await else {
                return;
            };
            let certified = tls.get_ref().1.peer_certificates().is_some();
            let service = hyper::service::service_fn(move |request| {
                let behaviour = behaviour.lock().unwrap().clone();
                let requests = Arc::clone(&requests);
                async move {
                    Ok::<_, Infallible>(answer(request, certified, behaviour, &requests).await)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), service)
                .await;
        });
    }
}

async fn answer(
    request: Request<Incoming>,
    certified: bool,
    behaviour: Behaviour,
    requests: &AtomicUsize,
) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, body: String| {
        Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap()
    };
    let token = request
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let authenticated = certified || token.is_some_and(|t| behaviour.tokens.iter().any(|k| k == t));
    if !authenticated {
        return reply(StatusCode::UNAUTHORIZED, "Unauthorized".to_owned());
    }
    if behaviour.forbid {
        return reply(
            StatusCode::FORBIDDEN,
            "Forbidden (user=system:serviceaccount:agent:agent, verb=get, resource=nodes, \
             subresource=proxy)"
                .to_owned(),
        );
    }
    if request.uri().path() != "/pods" {
        return reply(StatusCode::NOT_FOUND, "404 page not found".to_owned());
    }
    tokio::time::sleep(behaviour.delay).await;
    requests.fetch_add(1, Ordering::SeqCst);
    reply(StatusCode::OK, behaviour.pods)
}
