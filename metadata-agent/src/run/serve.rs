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

/// Listens on `listen` and serves `router` until `shutdown` turns true. `authenticated` is only
/// logged. On TCP, requests must name the listen address, loopback or one of `allowed_hosts`
/// (see [`crate::api::middleware::guard_host`]).
pub async fn serve(
    listen: &ListenAddress,
    router: Router,
    mut shutdown: watch::Receiver<bool>,
    authenticated: bool,
    allowed_hosts: &[String],
) -> anyhow::Result<Server> {
    let stopped = async move {
        let _ = shutdown.changed().await;
    };
    Ok(match listen {
        ListenAddress::Tcp(address) => {
            let listener = tokio::net::TcpListener::bind(address)
                .await
                .with_context(|| format!("cannot listen on {address}"))?;
            let bound = listener.local_addr()?;
            let guard = std::sync::Arc::new(crate::api::middleware::HostGuard::new(
                bound.ip(),
                allowed_hosts,
            ));
            let router = router.layer(axum::middleware::from_fn_with_state(
                guard,
                crate::api::middleware::guard_host,
            ));
            tracing::info!(address = %bound, authenticated, "listening on http://{bound}");
            tokio::spawn(async move {
                axum::serve(listener, router)
                    .with_graceful_shutdown(stopped)
                    .await
            })
        }
        ListenAddress::Unix(path) => {
            let listener = bind_unix(path)?;
            tracing::info!(socket = %path.display(), authenticated, "listening on unix:{}", path.display());
            tokio::spawn(async move {
                axum::serve(listener, router)
                    .with_graceful_shutdown(stopped)
                    .await
            })
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
