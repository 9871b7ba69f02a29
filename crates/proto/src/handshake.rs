//! The Hello exchange that follows TLS on every connection: both sides send a `Hello`,
//! check the other's (magic, protocol version overlap, cluster name, member name equal to
//! the certificate's, member allowed), then send a `HelloReply` accepting or refusing with
//! the reason, so the refused side logs the same clear reason as the refusing side.
//!
//! `Hello` and `HelloReply` must stay decodable by every future version: they are how two
//! versions find out whether they can talk at all.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use uphold_core::NodeName;

use crate::error::{HandshakeFailure, ProtoError};
use crate::frame::{self, FramedIo};
use crate::tls::is_tls_failure;

pub const MAGIC: [u8; 4] = *b"UPHD";
/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u16 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub magic: [u8; 4],
    pub protocol_min: u16,
    pub protocol_max: u16,
    pub cluster: String,
    pub member: NodeName,
}

impl Hello {
    /// A Hello for this build's protocol version.
    pub fn new(cluster: impl Into<String>, member: NodeName) -> Self {
        Hello {
            magic: MAGIC,
            protocol_min: PROTOCOL_VERSION,
            protocol_max: PROTOCOL_VERSION,
            cluster: cluster.into(),
            member,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HelloReply {
    /// The version both sides will use: the highest one both speak.
    Accept {
        version: u16,
    },
    Refuse {
        reason: String,
    },
}

/// Which members may connect. A closure so that membership changes (Raft configuration
/// changes, config reloads) apply without rebuilding the endpoint: the server consults it
/// at every handshake and every request. Keep it cheap and non-blocking.
#[derive(Clone)]
pub struct AllowedPeers(Arc<dyn Fn(&NodeName) -> bool + Send + Sync>);

impl AllowedPeers {
    /// A fixed set of members.
    pub fn set(members: impl IntoIterator<Item = NodeName>) -> Self {
        let members: HashSet<NodeName> = members.into_iter().collect();
        AllowedPeers(Arc::new(move |name| members.contains(name)))
    }

    pub fn from_fn(f: impl Fn(&NodeName) -> bool + Send + Sync + 'static) -> Self {
        AllowedPeers(Arc::new(f))
    }

    pub fn contains(&self, member: &NodeName) -> bool {
        (self.0)(member)
    }
}

impl std::fmt::Debug for AllowedPeers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AllowedPeers(..)")
    }
}

/// What the caller knows about the connection before the Hello exchange.
#[derive(Debug, Clone, Copy)]
pub struct HandshakeParams<'a> {
    pub ours: &'a Hello,
    /// Member named by the peer's verified TLS certificate.
    pub cert_name: &'a NodeName,
    /// Client side: the member we meant to reach. `None` on the accepting side.
    pub expected: Option<&'a NodeName>,
    pub allowed: &'a AllowedPeers,
    pub peer_addr: SocketAddr,
}

/// Result of a successful handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    pub peer: NodeName,
    pub version: u16,
}

/// Judges the peer's Hello; returns the protocol version to use.
pub fn check_hello(
    ours: &Hello,
    theirs: &Hello,
    cert_name: &NodeName,
    expected: Option<&NodeName>,
    allowed: &AllowedPeers,
) -> Result<u16, HandshakeFailure> {
    if theirs.magic != MAGIC {
        return Err(HandshakeFailure::BadMagic { got: theirs.magic });
    }
    let low = ours.protocol_min.max(theirs.protocol_min);
    let high = ours.protocol_max.min(theirs.protocol_max);
    if low > high {
        return Err(HandshakeFailure::NoCommonVersion {
            ours_min: ours.protocol_min,
            ours_max: ours.protocol_max,
            theirs_min: theirs.protocol_min,
            theirs_max: theirs.protocol_max,
        });
    }
    if theirs.cluster != ours.cluster {
        return Err(HandshakeFailure::ClusterMismatch {
            ours: ours.cluster.clone(),
            theirs: theirs.cluster.clone(),
        });
    }
    if &theirs.member != cert_name {
        return Err(HandshakeFailure::MemberMismatch {
            certificate: cert_name.clone(),
            hello: theirs.member.clone(),
        });
    }
    if let Some(expected) = expected {
        if expected != cert_name {
            return Err(HandshakeFailure::UnexpectedPeer {
                expected: expected.clone(),
                actual: cert_name.clone(),
            });
        }
    }
    if !allowed.contains(cert_name) {
        return Err(HandshakeFailure::NotAllowed(cert_name.clone()));
    }
    Ok(high)
}

/// Runs the Hello exchange on an established TLS stream; fails with
/// `ProtoError::HandshakeTimeout` if it has not finished by `deadline`.
pub async fn handshake<S>(
    io: &mut FramedIo<S>,
    params: HandshakeParams<'_>,
    deadline: Instant,
) -> Result<Negotiated, ProtoError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let peer = params.peer_addr;
    match tokio::time::timeout_at(deadline, exchange(io, params)).await {
        Ok(result) => result.map_err(|e| match e {
            ProtoError::Transport(io_err) if is_tls_failure(&io_err) => {
                crate::tls::tls_error(peer, io_err)
            }
            other => other,
        }),
        Err(_) => Err(ProtoError::HandshakeTimeout {
            peer,
            during: "the Hello exchange",
        }),
    }
}

async fn exchange<S>(
    io: &mut FramedIo<S>,
    params: HandshakeParams<'_>,
) -> Result<Negotiated, ProtoError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let peer = params.peer_addr;
    // Both sides write before reading; a Hello is far smaller than any socket buffer, so
    // this cannot deadlock.
    frame::send(io, params.ours, "Hello").await?;
    let verdict = match recv_hello(io).await {
        Ok(theirs) => check_hello(
            params.ours,
            &theirs,
            params.cert_name,
            params.expected,
            params.allowed,
        ),
        Err(HelloError::BadMagic(failure)) => Err(failure),
        Err(HelloError::Other(e)) => {
            if matches!(e, ProtoError::Decode { .. }) {
                let reply = HelloReply::Refuse {
                    reason: e.to_string(),
                };
                let _ = frame::send(io, &reply, "HelloReply").await;
            }
            return Err(e);
        }
    };
    let version = match verdict {
        Ok(version) => version,
        Err(reason) => {
            tracing::warn!(peer = %peer, certificate = %params.cert_name, %reason, "refused handshake");
            let reply = HelloReply::Refuse {
                reason: reason.to_string(),
            };
            // Best effort: the peer may already be gone, and our error is what matters.
            let _ = frame::send(io, &reply, "HelloReply").await;
            return Err(ProtoError::Handshake { peer, reason });
        }
    };
    frame::send(io, &HelloReply::Accept { version }, "HelloReply").await?;
    match frame::recv::<_, HelloReply>(io, "HelloReply").await? {
        HelloReply::Accept { version: theirs } if theirs == version => Ok(Negotiated {
            peer: params.cert_name.clone(),
            version,
        }),
        HelloReply::Accept { version: theirs } => Err(ProtoError::Decode {
            what: "HelloReply",
            reason: format!("the peer chose protocol version {theirs}, we chose {version}"),
        }),
        HelloReply::Refuse { reason } => {
            tracing::warn!(peer = %peer, %reason, "peer refused our handshake");
            Err(ProtoError::RefusedByPeer { peer, reason })
        }
    }
}

enum HelloError {
    BadMagic(HandshakeFailure),
    Other(ProtoError),
}

/// Checks the magic on the raw bytes first, so that a peer that is not uphold at all gets
/// "bad magic" rather than whatever the rest of its bytes fail to decode as.
async fn recv_hello<S>(io: &mut FramedIo<S>) -> Result<Hello, HelloError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    use futures::StreamExt;
    let payload = match io.next().await {
        Some(Ok(payload)) => payload,
        Some(Err(e)) => return Err(HelloError::Other(e)),
        None => {
            return Err(HelloError::Other(ProtoError::Closed {
                during: "waiting for the peer's Hello",
            }))
        }
    };
    if payload.get(..MAGIC.len()) != Some(&MAGIC[..]) {
        let mut got = [0u8; 4];
        for (dst, src) in got.iter_mut().zip(payload.iter()) {
            *dst = *src;
        }
        return Err(HelloError::BadMagic(HandshakeFailure::BadMagic { got }));
    }
    frame::decode(&payload, "Hello").map_err(HelloError::Other)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{framed, MAX_FRAME_BYTES};
    use std::time::Duration;

    fn name(s: &str) -> NodeName {
        NodeName::new(s).unwrap()
    }

    fn addr() -> SocketAddr {
        "127.0.0.1:1".parse().unwrap()
    }

    fn everyone() -> AllowedPeers {
        AllowedPeers::from_fn(|_| true)
    }

    #[test]
    fn check_hello_refuses_each_kind_of_mismatch() {
        let ours = Hello::new("prod", name("a"));
        let theirs = Hello::new("prod", name("b"));
        let b = name("b");
        let all = everyone();
        assert_eq!(check_hello(&ours, &theirs, &b, None, &all), Ok(1));

        let bad_magic = Hello {
            magic: *b"HTTP",
            ..theirs.clone()
        };
        assert!(matches!(
            check_hello(&ours, &bad_magic, &b, None, &all),
            Err(HandshakeFailure::BadMagic { .. })
        ));
        let future = Hello {
            protocol_min: 2,
            protocol_max: 3,
            ..theirs.clone()
        };
        let err = check_hello(&ours, &future, &b, None, &all).unwrap_err();
        assert!(
            err.to_string()
                .contains("we speak 1..=1, the peer speaks 2..=3"),
            "{err}"
        );
        let other_cluster = Hello {
            cluster: "staging".into(),
            ..theirs.clone()
        };
        assert!(matches!(
            check_hello(&ours, &other_cluster, &b, None, &all),
            Err(HandshakeFailure::ClusterMismatch { .. })
        ));
        assert!(matches!(
            check_hello(&ours, &theirs, &name("c"), None, &all),
            Err(HandshakeFailure::MemberMismatch { .. })
        ));
        assert!(matches!(
            check_hello(&ours, &theirs, &b, Some(&name("c")), &all),
            Err(HandshakeFailure::UnexpectedPeer { .. })
        ));
        let only_c = AllowedPeers::set([name("c")]);
        assert_eq!(
            check_hello(&ours, &theirs, &b, None, &only_c),
            Err(HandshakeFailure::NotAllowed(b.clone()))
        );
    }

    #[test]
    fn highest_common_version_is_chosen() {
        let ours = Hello {
            protocol_min: 1,
            protocol_max: 4,
            ..Hello::new("prod", name("a"))
        };
        let theirs = Hello {
            protocol_min: 2,
            protocol_max: 3,
            ..Hello::new("prod", name("b"))
        };
        assert_eq!(
            check_hello(&ours, &theirs, &name("b"), None, &everyone()),
            Ok(3)
        );
    }

    /// Runs both sides over an in-memory pipe; `cert_of_b` is what A's TLS layer would
    /// have reported as B's certificate name.
    async fn run_pair(
        hello_b: Hello,
        cert_of_b: &str,
    ) -> (
        Result<Negotiated, ProtoError>,
        Result<Negotiated, ProtoError>,
    ) {
        let (sa, sb) = tokio::io::duplex(4096);
        let mut fa = framed(sa, MAX_FRAME_BYTES);
        let mut fb = framed(sb, MAX_FRAME_BYTES);
        let hello_a = Hello::new("prod", name("a"));
        let (cert_b, cert_a) = (name(cert_of_b), name("a"));
        let all = everyone();
        let deadline = Instant::now() + Duration::from_secs(5);
        let a = handshake(
            &mut fa,
            HandshakeParams {
                ours: &hello_a,
                cert_name: &cert_b,
                expected: None,
                allowed: &all,
                peer_addr: addr(),
            },
            deadline,
        );
        let b = handshake(
            &mut fb,
            HandshakeParams {
                ours: &hello_b,
                cert_name: &cert_a,
                expected: Some(&cert_a),
                allowed: &all,
                peer_addr: addr(),
            },
            deadline,
        );
        tokio::join!(a, b)
    }

    #[tokio::test]
    async fn matching_hellos_agree() {
        let (a, b) = run_pair(Hello::new("prod", name("b")), "b").await;
        assert_eq!(
            a.unwrap(),
            Negotiated {
                peer: name("b"),
                version: 1
            }
        );
        assert_eq!(b.unwrap().peer, name("a"));
    }

    #[tokio::test]
    async fn refused_side_learns_the_reason() {
        let future = Hello {
            protocol_min: 2,
            protocol_max: 2,
            ..Hello::new("prod", name("b"))
        };
        let (a, b) = run_pair(future, "b").await;
        assert!(matches!(a, Err(ProtoError::Handshake { .. })), "{a:?}");
        let b = b.unwrap_err();
        assert!(matches!(
            b,
            ProtoError::Handshake { .. } | ProtoError::RefusedByPeer { .. }
        ));
        assert!(b.to_string().contains("no common protocol version"), "{b}");
    }

    #[tokio::test]
    async fn hello_naming_another_member_than_the_certificate_is_refused() {
        // B holds a certificate for "b" but claims to be "c" in its Hello.
        let (a, _b) = run_pair(Hello::new("prod", name("c")), "b").await;
        let a = a.unwrap_err();
        assert!(
            a.to_string()
                .contains("certificate names member b but its Hello says c"),
            "{a}"
        );
    }

    #[tokio::test]
    async fn silent_peer_times_out() {
        let (sa, _sb) = tokio::io::duplex(4096);
        let mut fa = framed(sa, MAX_FRAME_BYTES);
        let hello = Hello::new("prod", name("a"));
        let b = name("b");
        let all = everyone();
        let err = handshake(
            &mut fa,
            HandshakeParams {
                ours: &hello,
                cert_name: &b,
                expected: None,
                allowed: &all,
                peer_addr: addr(),
            },
            Instant::now() + Duration::from_millis(50),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, ProtoError::HandshakeTimeout { .. }), "{err}");
    }
}
