//! Wire protocol between cluster members: the cluster PKI, mutual TLS, size-limited
//! postcard frames, the versioned Hello handshake, and a multiplexed request/response
//! layer on top of them.

pub mod error;
pub mod frame;
pub mod handshake;
pub mod pki;
pub mod rpc;
pub mod tls;

pub use error::{HandshakeFailure, ProtoError, RpcError};
pub use frame::{FrameCodec, MAX_FRAME_BYTES};
pub use handshake::{AllowedPeers, Hello, HelloReply, Negotiated, MAGIC, PROTOCOL_VERSION};
pub use pki::{init_ca, issue_member_cert};
pub use rpc::{serve, Endpoint, EndpointOptions, Frame, RpcClient, RpcHandler};
pub use tls::TlsIdentity;
