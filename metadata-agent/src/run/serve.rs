//! Serving the API: where it listens (TCP, or a Unix socket only the agent's user can use) and
//! the server task, which stops on shutdown after open requests finish.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use axum::Router;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Where the API is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddress {
    /// A TCP address.
    Tcp(SocketAddr),
    /// A Unix socket, created with mode 0600.
    Unix(PathBuf),
}

impl ListenAddress {
    /// Parses `ADDR:PORT`, `[v6]:PORT` or `unix:/path`.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        if let Some(path) = text.strip_prefix("unix:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            if path.is_empty() {
                bail!("invalid listen address {text:?}: `unix:` needs a socket path");
            }
            return Ok(Self::Unix(PathBuf::from(path)));
        }
        text.parse().map(Self::Tcp).map_err(|_| {
            anyhow::anyhow!(
                "invalid listen address {text:?}: expected ADDR:PORT (e.g. 127.0.0.1:9820) or unix:/path/to.sock"
            )
        })
    }
}

/// The running server: it stops when `shutdown` turns true, once open requests are done.
pub type Server = JoinHandle<std::io::Result<()>>;

/// The largest request head read (request line and headers).
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Bounds on connections.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Open at once; more are closed as they come.
    pub max_connections: usize,
    /// Time to send a request's head.
    pub header_read_timeout: std::time::Duration,
}

/// A listener the server accepts connections from.
trait Accept: Send + 'static {
    type Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static;
    fn accept(&self) -> impl Future<Output = std::io::Result<Self::Io>> + Send;
}

impl Accept for tokio::net::TcpListener {
    type Io = tokio::net::TcpStream;
    async fn accept(&self) -> std::io::Result<Self::Io> {
        tokio::net::TcpListener::accept(self)
            .await
            .map(|(stream, _)| stream)
    }
}

impl Accept for tokio::net::UnixListener {
    type Io = tokio::net::UnixStream;
    async fn accept(&self) -> std::io::Result<Self::Io> {
        tokio::net::UnixListener::accept(self)
            .await
            .map(|(stream, _)| stream)
    }
}

/// Serves HTTP/1 connections of `listener` with `router`: at most `limits.max_connections` at
/// once (more are closed as they come), each given `limits.header_read_timeout` to send a
/// request's head. On `shutdown`, stops accepting, asks open connections to finish their requests, and
/// returns once they did.
async fn serve_connections<A: Accept>(
    listener: A,
    router: Router,
    mut shutdown: watch::Receiver<bool>,
    limits: ConnectionLimits,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;
    use tower::ServiceExt;

    let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    let (closing, closed) = watch::channel(false);
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let io = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(io) => io,
                Err(error) => {
                    // Out of descriptors, a connection reset before it was accepted: go on.
                    tracing::debug!("accept failed: {error}");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        while connections.try_join_next().is_some() {}
        let Ok(permit) = std::sync::Arc::clone(&permits).try_acquire_owned() else {
            drop(io);
            continue;
        };
        let service = TowerToHyperService::new(router.clone().map_request(
            |request: axum::http::Request<hyper::body::Incoming>| {
                request.map(axum::body::Body::new)
            },
        ));
        let mut closed = closed.clone();
        connections.spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                // No request of this API needs a head this large: larger ones are refused
                // before they are read whole.
                .max_buf_size(MAX_HEAD_BYTES);
            let connection = builder
                .serve_connection(TokioIo::new(io), service)
                .with_upgrades();
            let mut connection = std::pin::pin!(connection);
            loop {
                tokio::select! {
                    _ = connection.as_mut() => break,
                    _ = closed.changed() => connection.as_mut().graceful_shutdown(),
                }
            }
            drop(permit);
        });
    }
    let _ = closing.send(true);
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// Listens on `listen` and serves `router` until `shutdown` turns true. `authenticated` is only
/// logged. On TCP, requests must name the listen address, loopback or one of `allowed_hosts`
/// (see [`crate::api::middleware::guard_host`]).
pub async fn serve(
    listen: &ListenAddress,
    router: Router,
    shutdown: watch::Receiver<bool>,
    authenticated: bool,
    allowed_hosts: &[String],
    limits: ConnectionLimits,
) -> anyhow::Result<Server> {
    serve_on(
        listen,
        router,
        shutdown,
        limits,
        Some(allowed_hosts),
        "",
        authenticated,
    )
    .await
}

/// Listens on `listen` (`server.opsListen`) and serves the operations routes until `shutdown`
/// turns true. No `Host` check there: probes and scrapers name the pod's address, and nothing
/// served there is more than counts unless its token is given.
pub async fn serve_ops(
    listen: &ListenAddress,
    router: Router,
    shutdown: watch::Receiver<bool>,
    limits: ConnectionLimits,
) -> anyhow::Result<Server> {
    serve_on(listen, router, shutdown, limits, None, "operations ", false)
        .await
        .context("server.opsListen")
}

/// Binds `listen` and serves `router` on it; on TCP with the `Host` guard when `allowed_hosts`
/// is given. `what` prefixes the log line (`listening on ...`).
async fn serve_on(
    listen: &ListenAddress,
    router: Router,
    shutdown: watch::Receiver<bool>,
    limits: ConnectionLimits,
    allowed_hosts: Option<&[String]>,
    what: &str,
    authenticated: bool,
) -> anyhow::Result<Server> {
    Ok(match listen {
        ListenAddress::Tcp(address) => {
            let listener = tokio::net::TcpListener::bind(address)
                .await
                .with_context(|| format!("cannot listen on {address}"))?;
            let bound = listener.local_addr()?;
            let router = match allowed_hosts {
                Some(allowed_hosts) => {
                    let guard = std::sync::Arc::new(crate::api::middleware::HostGuard::new(
                        bound.ip(),
                        allowed_hosts,
                    ));
                    router.layer(axum::middleware::from_fn_with_state(
                        guard,
                        crate::api::middleware::guard_host,
                    ))
                }
                None => router,
            };
            tracing::info!(address = %bound, authenticated, "{what}listening on http://{bound}");
            tokio::spawn(serve_connections(listener, router, shutdown, limits))
        }
        ListenAddress::Unix(path) => {
            let listener = bind_unix(path)?;
            tracing::info!(
                socket = %path.display(),
                authenticated,
                "{what}listening on unix:{}",
                path.display()
            );
            tokio::spawn(serve_connections(listener, router, shutdown, limits))
        }
    })
}

/// Binds a Unix socket readable and writable by the agent's user only. A stale socket left by
/// a previous run is replaced; one that still answers belongs to a running agent.
fn bind_unix(path: &Path) -> anyhow::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            bail!(
                "cannot listen on unix:{}: the path exists and is not a socket",
                path.display()
            );
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!(
                "cannot listen on unix:{}: another process is serving it",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("cannot remove the stale socket {}", path.display()))?;
    }
    // The umask makes the socket 0600 from its creation, leaving no window for other users.
    // SAFETY: umask only swaps the process's file-creation mask; it cannot fail.
    let previous = unsafe { libc::umask(0o177) };
    let bound = tokio::net::UnixListener::bind(path);
    // SAFETY: as above.
    unsafe { libc::umask(previous) };
    let listener = bound.with_context(|| format!("cannot listen on unix:{}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot restrict {} to mode 0600", path.display()))?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses() {
        assert_eq!(
            ListenAddress::parse("127.0.0.1:9820").unwrap(),
            ListenAddress::Tcp("127.0.0.1:9820".parse().unwrap())
        );
        assert_eq!(
            ListenAddress::parse("[::1]:80").unwrap(),
            ListenAddress::Tcp("[::1]:80".parse().unwrap())
        );
        assert_eq!(
            ListenAddress::parse("unix:/run/a.sock").unwrap(),
            ListenAddress::Unix("/run/a.sock".into())
        );
        assert_eq!(
            ListenAddress::parse("unix:///run/a.sock").unwrap(),
            ListenAddress::Unix("/run/a.sock".into())
        );
        for bad in ["localhost", "9820", "unix:", "127.0.0.1"] {
            let error = ListenAddress::parse(bad).unwrap_err().to_string();
            assert!(error.contains(bad), "{error}");
        }
    }
}
