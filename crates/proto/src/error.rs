//! Error types of the protocol crate: `ProtoError` for certificates, TLS setup, framing and
//! the Hello handshake; `RpcError` for what a caller of `RpcClient::call` can observe.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use uphold_core::NodeName;

/// Failures while creating or loading key material, framing messages or shaking hands.
#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    /// A file-system operation on key material failed.
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// `init_ca` found an existing CA and was not asked to replace it.
    #[error(
        "{path} already exists; refusing to overwrite the cluster CA (forcing it invalidates \
         every member certificate issued so far)"
    )]
    CaExists { path: PathBuf },
    /// A key or certificate file exists but its content is unusable.
    #[error("{path}: {reason}")]
    BadFile { path: PathBuf, reason: String },
    /// rcgen refused to build a key or certificate.
    #[error("cannot generate {what}: {reason}")]
    CertGen { what: String, reason: String },
    /// The loaded key material could not be turned into a rustls configuration.
    #[error("cannot build the TLS configuration from {dir}: {reason}")]
    TlsConfig { dir: PathBuf, reason: String },
    /// The TLS handshake or a later TLS record failed (bad certificate, unknown CA, alert).
    #[error("TLS with {peer} failed: {reason}")]
    Tls { peer: SocketAddr, reason: String },
    /// The peer's verified certificate does not name exactly one valid member.
    #[error("certificate of {peer} is unusable: {reason}")]
    PeerCertificate { peer: SocketAddr, reason: String },
    /// A frame announced more bytes than the configured maximum.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge { len: usize, max: usize },
    /// A frame's payload is not a valid encoding of the expected message.
    #[error("cannot decode {what}: {reason}")]
    Decode { what: &'static str, reason: String },
    /// A message could not be encoded.
    #[error("cannot encode {what}: {reason}")]
    Encode { what: &'static str, reason: String },
    /// Reading or writing the connection failed.
    #[error("connection I/O error: {0}")]
    Transport(std::io::Error),
    /// The peer closed the connection while we expected more.
    #[error("connection closed by the peer while {during}")]
    Closed { during: &'static str },
    /// We refused the peer's Hello.
    #[error("refused handshake with {peer}: {reason}")]
    Handshake {
        peer: SocketAddr,
        reason: HandshakeFailure,
    },
    /// The peer refused our Hello and said why.
    #[error("{peer} refused our handshake: {reason}")]
    RefusedByPeer { peer: SocketAddr, reason: String },
    /// TLS plus Hello exchange did not finish within the deadline.
    #[error("handshake with {peer} did not finish in time (stuck in {during})")]
    HandshakeTimeout {
        peer: SocketAddr,
        during: &'static str,
    },
}

/// Why a Hello was refused. Sent (as text) to the peer too, so both logs say the same.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeFailure {
    #[error("bad magic {got:?}: the peer does not speak the uphold protocol")]
    BadMagic { got: [u8; 4] },
    #[error(
        "no common protocol version: we speak {ours_min}..={ours_max}, \
         the peer speaks {theirs_min}..={theirs_max}"
    )]
    NoCommonVersion {
        ours_min: u16,
        ours_max: u16,
        theirs_min: u16,
        theirs_max: u16,
    },
    #[error("cluster name mismatch: we are in cluster {ours:?}, the peer says {theirs:?}")]
    ClusterMismatch { ours: String, theirs: String },
    #[error("the peer's certificate names member {certificate} but its Hello says {hello}")]
    MemberMismatch {
        certificate: NodeName,
        hello: NodeName,
    },
    #[error("expected to reach member {expected} but the peer is {actual}")]
    UnexpectedPeer {
        expected: NodeName,
        actual: NodeName,
    },
    #[error("member {0} is not in the set of allowed members")]
    NotAllowed(NodeName),
}

/// Needed by tokio-util's codec traits; a bare `io::Error` there is a connection failure.
impl From<std::io::Error> for ProtoError {
    fn from(e: std::io::Error) -> Self {
        ProtoError::Transport(e)
    }
}

impl ProtoError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        ProtoError::Io {
            action,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn bad_file(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        ProtoError::BadFile {
            path: path.into(),
            reason: reason.into(),
        }
    }
}

/// What `RpcClient::call` can fail with. Variants separate "never reached the peer"
/// (`Connect`, `Tls`, `Handshake`) from "the request may or may not have been processed"
/// (`Timeout` while waiting, `Closed`) and from the handler's own answer (`Remote`).
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    #[error("cannot connect to {peer} at {addr}: {reason}")]
    Connect {
        peer: NodeName,
        addr: SocketAddr,
        reason: String,
    },
    #[error("TLS with {peer} at {addr} failed: {reason}")]
    Tls {
        peer: NodeName,
        addr: SocketAddr,
        reason: String,
    },
    #[error("handshake with {peer} at {addr} failed: {reason}")]
    Handshake {
        peer: NodeName,
        addr: SocketAddr,
        reason: String,
    },
    #[error("call to {peer} timed out after {after:?} while {phase}")]
    Timeout {
        peer: NodeName,
        phase: &'static str,
        after: Duration,
    },
    /// The peer's handler returned an error.
    #[error("{peer} answered with an error: {message}")]
    Remote { peer: NodeName, message: String },
    /// The connection broke before the response arrived; the request may have been processed.
    #[error("connection to {peer} closed before the response arrived: {reason}")]
    Closed { peer: NodeName, reason: String },
    /// The peer (or we) violated the framing or message rules.
    #[error("protocol error with {peer}: {reason}")]
    Protocol { peer: NodeName, reason: String },
}

impl RpcError {
    /// True when the request certainly never reached the peer's handler, so retrying
    /// cannot execute it twice.
    pub fn is_not_sent(&self) -> bool {
        matches!(
            self,
            RpcError::Connect { .. } | RpcError::Tls { .. } | RpcError::Handshake { .. }
        ) || matches!(self, RpcError::Timeout { phase, .. } if *phase != PHASE_RESPONSE)
    }
}

/// Timeout phase while waiting for the response (after the request was handed to the
/// connection); kept as a constant so `is_not_sent` cannot drift from the client.
pub(crate) const PHASE_RESPONSE: &str = "waiting for the response";
