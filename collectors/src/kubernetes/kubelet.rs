//! The kubelet client: `GET https://<host>:<port>/pods` over TLS, authenticated with a bearer
//! token or a client certificate, with errors that name their cause.
//!
//! Credentials given as files are read again on every request, so rotated service-account
//! tokens and renewed certificates are picked up without a restart.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use reqwest::StatusCode;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_platform_verifier::BuilderVerifierExt;
use serde::Deserialize;

use crate::error::error_chain;

/// The kubelet's port unless configured.
pub const DEFAULT_PORT: u16 = 10250;

/// The largest pod list accepted (a node with hundreds of pods stays far below).
pub const MAX_BODY: usize = 64 << 20;

/// Why the pod list could not be fetched.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KubeletError {
    /// Nothing listens there (connection refused, unknown host): no kubelet on this machine.
    #[error("{0}")]
    Unreachable(String),
    /// The request did not finish in time.
    #[error("{0}")]
    TimedOut(String),
    /// Anything else: TLS, authentication, authorization, a bad answer.
    #[error("{0}")]
    Failed(String),
}

/// How the agent proves who it is to the kubelet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    /// None: only for kubelets that allow anonymous access.
    None,
    /// A bearer token given inline.
    Token(String),
    /// A certificate and its key, as PEM content given inline.
    Pem(String),
    /// Files: one token file, or PEM files holding the certificate and the key.
    Files(Vec<PathBuf>),
}

impl Credentials {
    /// Reads the `credentials` setting: PEM content, comma-separated paths, one path (starting
    /// with `/` or `.`), or else a token (opaque or a base64url JWT).
    pub fn parse(text: &str) -> Self {
        let text = text.trim();
        if text.is_empty() {
            Self::None
        } else if text.contains("-----BEGIN") {
            Self::Pem(text.to_owned())
        } else if text.contains(',') || text.starts_with('/') || text.starts_with('.') {
            Self::Files(text.split(',').map(|p| PathBuf::from(p.trim())).collect())
        } else {
            Self::Token(text.to_owned())
        }
    }

    /// What is presented, read now (files are read on every call).
    fn load(&self) -> Result<Presented, String> {
        match self {
            Self::None => Ok(Presented::Nothing),
            Self::Token(token) => Ok(Presented::Token {
                token: token.clone(),
                origin: "the token given inline".to_owned(),
            }),
            Self::Pem(pem) => Ok(Presented::Certificate {
                pem: pem.as_bytes().to_vec(),
                origin: "the client certificate given inline".to_owned(),
            }),
            Self::Files(paths) => {
                let mut content = Vec::new();
                for path in paths {
                    let bytes = std::fs::read(path).map_err(|e| {
                        format!("reading kubelet credentials {}: {e}", path.display())
                    })?;
                    content.extend_from_slice(&bytes);
                    content.push(b'\n');
                }
                let names = paths
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ");
                if content.windows(10).any(|w| w == b"-----BEGIN") {
                    Ok(Presented::Certificate {
                        pem: content,
                        origin: format!("the client certificate from {names}"),
                    })
                } else if paths.len() == 1 {
                    let token = String::from_utf8(content)
                        .map_err(|_| format!("kubelet token file {names} is not UTF-8"))?;
                    let token = token.trim().to_owned();
                    if token.is_empty() {
                        return Err(format!("kubelet token file {names} is empty"));
                    }
                    Ok(Presented::Token {
                        token,
                        origin: format!("the token from file {names}"),
                    })
                } else {
                    Err(format!(
                        "kubelet credentials {names}: several files but no PEM certificate in them"
                    ))
                }
            }
        }
    }
}

/// Credentials as read for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Presented {
    Nothing,
    Token { token: String, origin: String },
    Certificate { pem: Vec<u8>, origin: String },
}

impl Presented {
    fn origin(&self) -> &str {
        match self {
            Self::Nothing => "no credentials",
            Self::Token { origin, .. } | Self::Certificate { origin, .. } => origin,
        }
    }

    fn certificate(&self) -> Option<&[u8]> {
        match self {
            Self::Certificate { pem, .. } => Some(pem),
            _ => None,
        }
    }
}

/// How the kubelet's certificate is checked.
#[derive(Debug, Clone)]
pub enum Trust {
    /// Against the machine's trust store (`kubeletCA` empty).
    SystemRoots,
    /// Against these anchors only (`kubeletCA`), described by `source` in errors.
    Anchors {
        /// The anchors.
        certificates: Vec<CertificateDer<'static>>,
        /// Where they came from (a path, or "inline PEM").
        source: String,
    },
    /// Not checked (`skipKubeletVerification: true`).
    Skip,
}

/// Why `kubeletCA` cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// The file could not be read.
    #[error("reading kubeletCA file {path}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The PEM text is malformed.
    #[error("{origin}: invalid PEM")]
    Pem {
        /// The file, or the inline PEM.
        origin: String,
        /// What the parser found.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// Valid PEM without a certificate.
    #[error("{origin}: no CERTIFICATE block in it")]
    NoCertificate {
        /// The file, or the inline PEM.
        origin: String,
    },
}

impl Trust {
    /// Reads `kubeletCA` (PEM content, a path, or empty for the system roots) and
    /// `skipKubeletVerification`.
    pub fn from_config(ca: &str, skip: bool) -> Result<Self, TrustError> {
        if skip {
            return Ok(Self::Skip);
        }
        let ca = ca.trim();
        if ca.is_empty() {
            return Ok(Self::SystemRoots);
        }
        let (pem, origin) = if ca.contains("-----BEGIN") {
            (
                ca.as_bytes().to_vec(),
                "the inline PEM of kubeletCA".to_owned(),
            )
        } else {
            let bytes = std::fs::read(ca).map_err(|source| TrustError::Read {
                path: ca.to_owned(),
                source,
            })?;
            (bytes, format!("kubeletCA file {ca}"))
        };
        let certificates = match CertificateDer::pem_slice_iter(&pem).collect::<Result<Vec<_>, _>>()
        {
            Ok(certificates) => certificates,
            Err(source) => return Err(TrustError::Pem { origin, source }),
        };
        if certificates.is_empty() {
            return Err(TrustError::NoCertificate { origin });
        }
        Ok(Self::Anchors {
            certificates,
            source: origin,
        })
    }

    fn describe(&self) -> &str {
        match self {
            Self::SystemRoots => "the system's trust store",
            Self::Anchors { source, .. } => source,
            Self::Skip => "nothing (verification skipped)",
        }
    }
}

/// The pod list as the kubelet serves it.
#[derive(Deserialize)]
struct PodList {
    #[serde(default)]
    items: Vec<Pod>,
}

/// A client of one kubelet.
pub struct KubeletClient {
    base: String,
    trust: Trust,
    credentials: Credentials,
    timeout: Duration,
    provider: Arc<CryptoProvider>,
    /// The HTTP client and the client certificate it was built with.
    client: tokio::sync::Mutex<Option<(reqwest::Client, Option<Vec<u8>>)>>,
}

impl KubeletClient {
    /// A client of the kubelet at `host:port`; `timeout` bounds connecting and each request.
    pub fn new(
        host: &str,
        port: u16,
        trust: Trust,
        credentials: Credentials,
        timeout: Duration,
    ) -> Self {
        let host = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]")
        } else {
            host.to_owned()
        };
        Self {
            base: format!("https://{host}:{port}"),
            trust,
            credentials,
            timeout,
            provider: Arc::new(rustls::crypto::ring::default_provider()),
            client: tokio::sync::Mutex::new(None),
        }
    }

    /// `https://<host>:<port>`.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The pods the kubelet runs.
    pub async fn pods(&self) -> Result<Vec<Pod>, KubeletError> {
        let presented = self.credentials.load().map_err(KubeletError::Failed)?;
        let client = self.client_for(&presented).await?;
        let url = format!("{}/pods", self.base);
        let mut request = client.get(&url).header("Accept", "application/json");
        if let Presented::Token { token, .. } = &presented {
            request = request.bearer_auth(token);
        }
        let response = request
            .send()
            .await
            .map_err(|e| self.request_error(&e, &presented))?;
        let status = response.status();
        if status != StatusCode::OK {
            let body = read_limited(response, 512).await.unwrap_or_default();
            let body = String::from_utf8_lossy(&body);
            return Err(KubeletError::Failed(match status {
                StatusCode::UNAUTHORIZED => format!(
                    "kubelet at {} answered 401 Unauthorized to {}",
                    self.base,
                    presented.origin()
                ),
                StatusCode::FORBIDDEN => format!(
                    "kubelet at {} answered 403 Forbidden to {}: the account needs `get` on \
                     `nodes/pods` or `nodes/proxy` ({})",
                    self.base,
                    presented.origin(),
                    body.trim()
                ),
                _ => format!(
                    "kubelet at {} answered {status} to GET /pods: {}",
                    self.base,
                    body.trim()
                ),
            }));
        }
        let body = read_limited(response, MAX_BODY)
            .await
            .map_err(|e| match e {
                ReadError::TooLarge => KubeletError::Failed(format!(
                    "kubelet at {}: the pod list is larger than {} MiB",
                    self.base,
                    MAX_BODY >> 20
                )),
                ReadError::Http(e) => self.request_error(&e, &presented),
            })?;
        let list: PodList = serde_json::from_slice(&body).map_err(|e| {
            KubeletError::Failed(format!(
                "kubelet at {}: GET /pods is not a pod list: {e}",
                self.base
            ))
        })?;
        Ok(list.items)
    }

    /// The HTTP client, rebuilt when the client certificate changed.
    async fn client_for(&self, presented: &Presented) -> Result<reqwest::Client, KubeletError> {
        let mut current = self.client.lock().await;
        let certificate = presented.certificate().map(<[u8]>::to_vec);
        if let Some((client, used)) = current.as_ref()
            && *used == certificate
        {
            return Ok(client.clone());
        }
        let tls = self.tls_config(presented).map_err(KubeletError::Failed)?;
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .no_proxy()
            .connect_timeout(self.timeout)
            .timeout(self.timeout)
            .build()
            .map_err(|e| KubeletError::Failed(format!("kubelet client: {e}")))?;
        *current = Some((client.clone(), certificate));
        Ok(client)
    }

    fn tls_config(&self, presented: &Presented) -> Result<ClientConfig, String> {
        let builder = ClientConfig::builder_with_provider(Arc::clone(&self.provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS setup: {e}"))?;
        let builder = match &self.trust {
            Trust::SystemRoots => builder
                .with_platform_verifier()
                .map_err(|e| format!("loading the system's trust store: {e}"))?,
            Trust::Anchors {
                certificates,
                source,
            } => {
                let verifier = Pinned::new(certificates, source, Arc::clone(&self.provider))?;
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(verifier))
            }
            Trust::Skip => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Unverified(Arc::clone(&self.provider)))),
        };
        match presented {
            Presented::Certificate { pem, origin } => {
                let chain = CertificateDer::pem_slice_iter(pem)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| format!("{origin}: invalid PEM: {e}"))?;
                if chain.is_empty() {
                    return Err(format!("{origin}: no CERTIFICATE block in it"));
                }
                let key = PrivateKeyDer::from_pem_slice(pem)
                    .map_err(|e| format!("{origin}: no usable private key: {e}"))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| format!("{origin}: {e}"))
            }
            _ => Ok(builder.with_no_client_auth()),
        }
    }

    /// Names the cause of a failed request.
    fn request_error(&self, error: &reqwest::Error, presented: &Presented) -> KubeletError {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
        while let Some(cause) = source {
            if let Some(tls) = tls_error(cause) {
                return KubeletError::Failed(match tls {
                    rustls::Error::InvalidCertificate(why) => format!(
                        "TLS verification failed for kubelet at {}: {why:?} (trusting {})",
                        self.base,
                        self.trust.describe()
                    ),
                    rustls::Error::AlertReceived(alert) if presented.certificate().is_some() => {
                        format!(
                            "TLS with kubelet at {} failed: it sent {alert:?}, so it does not \
                             accept {}",
                            self.base,
                            presented.origin()
                        )
                    }
                    other => format!("TLS with kubelet at {} failed: {other}", self.base),
                });
            }
            if let Some(io) = cause.downcast_ref::<std::io::Error>() {
                use std::io::ErrorKind::*;
                if matches!(
                    io.kind(),
                    ConnectionRefused | HostUnreachable | NetworkUnreachable | AddrNotAvailable
                ) {
                    return KubeletError::Unreachable(format!("no kubelet at {}: {io}", self.base));
                }
            }
            source = cause.source();
        }
        if error.is_timeout() {
            return KubeletError::TimedOut(format!(
                "kubelet at {} did not answer within {}",
                self.base,
                humantime::format_duration(self.timeout)
            ));
        }
        if error.is_connect() {
            return KubeletError::Unreachable(format!(
                "no kubelet at {}: {}",
                self.base,
                error_chain(error)
            ));
        }
        KubeletError::Failed(format!("kubelet at {}: {}", self.base, error_chain(error)))
    }
}

/// The TLS error `error` is or wraps (tokio-rustls hands them over inside io::Errors, which
/// hyper wraps in io::Errors again).
fn tls_error<'e>(error: &'e (dyn std::error::Error + 'static)) -> Option<&'e rustls::Error> {
    let mut current = error;
    loop {
        if let Some(tls) = current.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        current = current.downcast_ref::<std::io::Error>()?.get_ref()?;
    }
}

enum ReadError {
    TooLarge,
    Http(reqwest::Error),
}

async fn read_limited(mut response: reqwest::Response, limit: usize) -> Result<Vec<u8>, ReadError> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(ReadError::Http)? {
        if body.len() + chunk.len() > limit {
            return Err(ReadError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// `skipKubeletVerification: true`: any certificate is accepted; handshake signatures are still
/// checked, so the session is at least bound to the certificate's key.
#[derive(Debug)]
struct Unverified(Arc<CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `kubeletCA` given: a chain that ends at one of its certificates verifies as usual (name,
/// validity, key usage); a server certificate that *is* one of them, byte for byte, verifies
/// too, with its validity and name still checked. That second case is a self-signed kubelet
/// certificate pinned as its own CA: kubelets make them with `CA:TRUE` (as `openssl req -x509`
/// does), which WebPKI refuses as an end entity (`CaUsedAsEndEntity`) where Go and OpenSSL
/// clients accept it.
#[derive(Debug)]
struct Pinned {
    chains: Arc<WebPkiServerVerifier>,
    pins: Vec<CertificateDer<'static>>,
}

impl Pinned {
    fn new(
        certificates: &[CertificateDer<'static>],
        source: &str,
        provider: Arc<CryptoProvider>,
    ) -> Result<Self, String> {
        let mut roots = RootCertStore::empty();
        for certificate in certificates {
            roots
                .add(certificate.clone())
                .map_err(|e| format!("{source}: unusable certificate: {e}"))?;
        }
        let chains = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| format!("{source}: {e}"))?;
        Ok(Self {
            chains,
            pins: certificates.to_vec(),
        })
    }
}

/// The server presented a CA certificate as its own, and it is not one of `kubeletCA`'s.
#[derive(Debug, thiserror::Error)]
#[error("the kubelet's certificate is a CA certificate that kubeletCA does not pin")]
struct SelfSignedNotPinned;

/// Checks a pinned certificate presented as the server's own: valid now, and for `name`.
fn verify_pinned(
    certificate: &CertificateDer<'_>,
    name: &ServerName<'_>,
    now: UnixTime,
) -> Result<(), rustls::Error> {
    use rustls::CertificateError;
    let (_, parsed) = x509_parser::parse_x509_certificate(certificate.as_ref())
        .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
    let validity = parsed.validity();
    let now_secs = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
    if now_secs < validity.not_before.timestamp() {
        return Err(rustls::Error::InvalidCertificate(
            CertificateError::NotValidYet,
        ));
    }
    if now_secs > validity.not_after.timestamp() {
        return Err(rustls::Error::InvalidCertificate(CertificateError::Expired));
    }
    let parsed = webpki::EndEntityCert::try_from(certificate)
        .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
    parsed
        .verify_is_valid_for_subject_name(name)
        .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::NotValidForName))
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.chains.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Ok(verified) => Ok(verified),
            Err(error) => {
                if !self
                    .pins
                    .iter()
                    .any(|pin| pin.as_ref() == end_entity.as_ref())
                {
                    // A CA certificate as the server's own that is not one of the pins: say
                    // that, rather than WebPKI's `CaUsedAsEndEntity`.
                    let ca_as_server = matches!(
                        &error,
                        rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other))
                            if format!("{other:?}").contains("CaUsedAsEndEntity")
                    );
                    if ca_as_server {
                        return Err(rustls::Error::InvalidCertificate(
                            rustls::CertificateError::Other(rustls::OtherError(Arc::new(
                                SelfSignedNotPinned,
                            ))),
                        ));
                    }
                    return Err(error);
                }
                verify_pinned(end_entity, server_name, now)?;
                Ok(ServerCertVerified::assertion())
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chains.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chains.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.chains.supported_verify_schemes()
    }
}

/// The default kubelet host: this node's hostname when it resolves, else 127.0.0.1.
pub async fn default_host(port: u16) -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .unwrap_or_default();
    if name.is_empty() {
        return "127.0.0.1".to_owned();
    }
    let lookup = tokio::net::lookup_host((name.as_str(), port));
    let resolves = match tokio::time::timeout(Duration::from_millis(200), lookup).await {
        Ok(Ok(addresses)) => addresses.count() > 0,
        _ => false,
    };
    if resolves {
        return name;
    }
    "127.0.0.1".to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_told_apart_by_their_shape() {
        assert_eq!(Credentials::parse(""), Credentials::None);
        assert_eq!(Credentials::parse("  "), Credentials::None);
        let jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2EifQ.c2lnbmF0dXJl-_x";
        assert_eq!(Credentials::parse(jwt), Credentials::Token(jwt.to_owned()));
        assert_eq!(
            Credentials::parse("/var/run/secrets/token"),
            Credentials::Files(vec![PathBuf::from("/var/run/secrets/token")])
        );
        assert_eq!(
            Credentials::parse("/etc/a.crt, /etc/a.key"),
            Credentials::Files(vec![
                PathBuf::from("/etc/a.crt"),
                PathBuf::from("/etc/a.key")
            ])
        );
        let pem = "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----";
        assert_eq!(Credentials::parse(pem), Credentials::Pem(pem.to_owned()));
    }

    #[test]
    fn credential_files_are_read_and_named_in_errors() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "abc\n").unwrap();
        let files = Credentials::Files(vec![token.clone()]);
        assert_eq!(
            files.load().unwrap(),
            Presented::Token {
                token: "abc".to_owned(),
                origin: format!("the token from file {}", token.display())
            }
        );
        std::fs::write(&token, "").unwrap();
        assert!(files.load().unwrap_err().contains("is empty"));
        let missing = Credentials::Files(vec![dir.path().join("nope")]);
        let error = missing.load().unwrap_err();
        assert!(
            error.contains("nope") && error.contains("No such file"),
            "{error}"
        );
        let two = Credentials::Files(vec![token.clone(), token]);
        assert!(two.load().unwrap_err().contains("no PEM certificate"));
    }

    #[test]
    fn a_bad_kubelet_ca_is_a_clear_error() {
        let error = Trust::from_config("/nonexistent/ca.pem", false).unwrap_err();
        let error = error_chain(&error);
        assert!(
            error.contains("kubeletCA file /nonexistent/ca.pem"),
            "{error}"
        );
        let error = Trust::from_config("-----BEGIN NOTHING-----\n", false).unwrap_err();
        let error = error_chain(&error);
        assert!(error.contains("kubeletCA"), "{error}");
        assert!(matches!(
            Trust::from_config("", false),
            Ok(Trust::SystemRoots)
        ));
        assert!(matches!(Trust::from_config("/x", true), Ok(Trust::Skip)));
    }
}
