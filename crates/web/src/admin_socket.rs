//! The admin socket: the one place operator commands are accepted. A Unix socket
//! in the state directory, mode 0660 and group `uphold` when that group exists
//! (0600 otherwise), so the kernel refuses everyone else at `connect`; then each
//! connection's peer credentials are checked again (root, the daemon's own user,
//! or a member of the `uphold` group), in case the file's mode was loosened.

use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::net::{UnixListener, UnixStream};

/// The group whose members may send commands besides root.
pub const ADMIN_GROUP: &str = "uphold";

/// Pause after a failed accept (out of descriptors) so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

pub struct AdminListener {
    inner: UnixListener,
    path: PathBuf,
    group: Option<nix::unistd::Gid>,
}

impl AdminListener {
    /// Binds `path`, replacing a socket left by an earlier run, never a socket a
    /// running daemon still answers on or a file that is not a socket.
    pub fn bind(path: &Path) -> anyhow::Result<AdminListener> {
        let shown = path.display();
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| anyhow::anyhow!("cannot create the directory of {shown}: {e}"))?;
        }
        match std::fs::symlink_metadata(path) {
            Ok(md) if md.file_type().is_socket() => {
                if std::os::unix::net::UnixStream::connect(path).is_ok() {
                    anyhow::bail!(
                        "admin socket {shown} is in use: is another uphold daemon running?"
                    );
                }
                std::fs::remove_file(path).map_err(|e| {
                    anyhow::anyhow!("cannot remove the stale admin socket {shown}: {e}")
                })?;
            }
            Ok(_) => anyhow::bail!("{shown} exists and is not a socket; refusing to replace it"),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => anyhow::bail!("cannot inspect {shown}: {e}"),
        }
        let inner = UnixListener::bind(path)
            .map_err(|e| anyhow::anyhow!("cannot listen on the admin socket {shown}: {e}"))?;
        let group = nix::unistd::Group::from_name(ADMIN_GROUP)
            .ok()
            .flatten()
            .map(|g| g.gid);
        let mode = match group {
            Some(gid) => {
                nix::unistd::chown(path, None, Some(gid)).map_err(|e| {
                    anyhow::anyhow!("cannot give {shown} to group {ADMIN_GROUP}: {e}")
                })?;
                0o660
            }
            None => 0o600,
        };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .map_err(|e| anyhow::anyhow!("cannot restrict {shown}: {e}"))?;
        Ok(AdminListener {
            inner,
            path: path.to_path_buf(),
            group,
        })
    }

    /// Who may send commands, for [`admit`].
    pub fn rule(&self) -> AdminRule {
        AdminRule { group: self.group }
    }
}

/// Root, the daemon's own user, and members of the `uphold` group.
#[derive(Clone, Copy, Debug)]
pub struct AdminRule {
    group: Option<nix::unistd::Gid>,
}

impl AdminRule {
    fn admits(&self, peer: &Peer) -> bool {
        let Some(cred) = peer.0 else {
            return false;
        };
        let uid = cred.uid();
        uid == 0
            || uid == nix::unistd::geteuid().as_raw()
            || self.group.is_some_and(|gid| {
                cred.gid() == gid.as_raw()
                    || cred.pid().is_some_and(|pid| has_group(pid, gid.as_raw()))
            })
    }
}

/// The credentials the kernel gives for the process at the other end.
#[derive(Clone, Copy, Debug)]
pub struct Peer(Option<tokio::net::unix::UCred>);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, AdminListener>>
    for Peer
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, AdminListener>) -> Self {
        Peer(stream.io().peer_cred().ok())
    }
}

/// Refuses, with 403, every request from a peer the rule does not admit.
pub async fn admit(
    axum::extract::State(rule): axum::extract::State<AdminRule>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<Peer>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    if rule.admits(&peer) {
        return next.run(request).await;
    }
    let uid = peer.0.map(|c| c.uid());
    tracing::warn!(?uid, pid = ?peer.0.and_then(|c| c.pid()), "refused a command from a user outside root and the {ADMIN_GROUP} group");
    (
        axum::http::StatusCode::FORBIDDEN,
        format!("uid {uid:?} may not send commands: root and the {ADMIN_GROUP} group only\n"),
    )
        .into_response()
}

/// Whether process `pid` has `gid` among its supplementary groups.
fn has_group(pid: i32, gid: u32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .is_some_and(|groups| groups.split_whitespace().any(|g| g.parse() == Ok(gid)))
}

impl axum::serve::Listener for AdminListener {
    type Io = UnixStream;
    type Addr = tokio::net::unix::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.inner.accept().await {
                Ok(accepted) => return accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting on the admin socket failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

impl Drop for AdminListener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
