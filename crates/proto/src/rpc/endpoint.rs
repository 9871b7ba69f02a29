//! One member's side of the links: its identity, the peers it admits, its limits,
//! and how requests are routed to the services that answer them.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use uphold_core::NodeName;

use crate::frame::MAX_FRAME_BYTES;
use crate::handshake::{AllowedPeers, Hello};
use crate::handshake::{MAGIC, PROTOCOL_VERSION};
use crate::tls::TlsIdentity;

/// Limits and timeouts of an endpoint. The defaults suit a cluster of a handful of members.
#[derive(Debug, Clone)]
pub struct EndpointOptions {
    /// Largest frame accepted or sent.
    pub max_frame_bytes: usize,
    /// Budget for TLS plus the Hello exchange on a new connection, both directions.
    pub handshake_timeout: Duration,
    /// Requests of one connection handled at once; further requests wait unread.
    pub max_in_flight_per_connection: usize,
    /// Inbound connections from one IP address at once, handshaking or established.
    pub max_connections_per_ip: usize,
    /// Inbound connections at once, in total.
    pub max_connections: usize,
    /// Inbound connections still in TLS or the Hello at once, in total and from one
    /// address: an allowance of their own, so connections that never authenticate
    /// (a port scan, a flood) cannot take the slots members need.
    pub max_handshaking: usize,
    pub max_handshaking_per_ip: usize,
    /// The only source addresses accepted (the members'); any other connection is
    /// closed at accept, before TLS. `None` accepts every address.
    pub admitted_sources: Option<Vec<IpAddr>>,
    /// Client side: the address outbound connections are made from (this member's
    /// own), so that the peers' `admitted_sources` recognise them. When it cannot
    /// be bound here, the kernel picks.
    pub source_ip: Option<IpAddr>,
    /// Protocol versions we speak; only tests and future versions change these.
    pub protocol_min: u16,
    pub protocol_max: u16,
    /// Client side: a connection on which requests were outstanding but nothing was
    /// received for this long is closed when a call times out, so calls to a peer whose
    /// host died (and rebooted) recover quickly instead of waiting for TCP to give up.
    pub presume_dead_after: Duration,
}

impl Default for EndpointOptions {
    fn default() -> Self {
        EndpointOptions {
            max_frame_bytes: MAX_FRAME_BYTES,
            handshake_timeout: Duration::from_secs(3),
            max_in_flight_per_connection: 64,
            max_connections_per_ip: 16,
            max_connections: 512,
            max_handshaking: 32,
            max_handshaking_per_ip: 4,
            admitted_sources: None,
            source_ip: None,
            protocol_min: PROTOCOL_VERSION,
            protocol_max: PROTOCOL_VERSION,
            presume_dead_after: Duration::from_secs(2),
        }
    }
}

/// Everything a member needs to talk to the others: who it is, which cluster, whom it
/// accepts, and the limits.
#[derive(Debug)]
pub struct Endpoint {
    pub identity: TlsIdentity,
    pub cluster: String,
    pub allowed: AllowedPeers,
    pub options: EndpointOptions,
}

impl Endpoint {
    pub fn new(identity: TlsIdentity, cluster: impl Into<String>, allowed: AllowedPeers) -> Self {
        Endpoint {
            identity,
            cluster: cluster.into(),
            allowed,
            options: EndpointOptions::default(),
        }
    }

    pub fn with_options(mut self, options: EndpointOptions) -> Self {
        self.options = options;
        self
    }

    pub fn me(&self) -> &NodeName {
        self.identity.me()
    }

    pub(super) fn hello(&self) -> Hello {
        Hello {
            magic: MAGIC,
            protocol_min: self.options.protocol_min,
            protocol_max: self.options.protocol_max,
            cluster: self.cluster.clone(),
            member: self.me().clone(),
        }
    }
}

/// One message on an established connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Frame {
    Request {
        id: u64,
        service: u16,
        // As one byte string: serde's default for Vec<u8> decodes byte by byte. The
        // encoding on the wire is the same (length, then the bytes).
        #[serde(with = "serde_bytes")]
        body: Vec<u8>,
    },
    Response {
        id: u64,
        #[serde(with = "bytes_result")]
        result: Result<Vec<u8>, String>,
    },
}

/// `Result<Vec<u8>, String>` with the bytes as one byte string (same wire encoding as
/// serde's own `Result`: variant index, then the value).
mod bytes_result {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize)]
    enum Ref<'a> {
        Ok(#[serde(with = "serde_bytes")] &'a [u8]),
        Err(&'a str),
    }

    #[derive(Deserialize)]
    enum Owned {
        Ok(#[serde(with = "serde_bytes")] Vec<u8>),
        Err(String),
    }

    pub fn serialize<S: Serializer>(r: &Result<Vec<u8>, String>, s: S) -> Result<S::Ok, S::Error> {
        match r {
            Ok(bytes) => Ref::Ok(bytes),
            Err(e) => Ref::Err(e),
        }
        .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Result<Vec<u8>, String>, D::Error> {
        Ok(match Owned::deserialize(d)? {
            Owned::Ok(bytes) => Ok(bytes),
            Owned::Err(e) => Err(e),
        })
    }
}

/// Serves requests. Service numbers and body encodings belong to the caller's crate.
/// The returned future may be dropped unfinished when the connection closes or the server
/// shuts down (nobody could receive its answer), so it must not leave state half-changed.
pub trait RpcHandler: Send + Sync + 'static {
    fn handle(
        &self,
        peer: NodeName,
        service: u16,
        body: Vec<u8>,
    ) -> BoxFuture<'static, Result<Vec<u8>, String>>;
}

/// Serves several handlers on one endpoint, each owning a range of service numbers
/// (the cluster 1-4, file sync 20, ...), so members need one port between them.
pub struct ServiceRouter {
    routes: Vec<(std::ops::RangeInclusive<u16>, Arc<dyn RpcHandler>)>,
}

impl ServiceRouter {
    pub fn new() -> Self {
        ServiceRouter { routes: Vec::new() }
    }

    pub fn route(
        mut self,
        services: std::ops::RangeInclusive<u16>,
        handler: Arc<dyn RpcHandler>,
    ) -> Self {
        self.routes.push((services, handler));
        self
    }
}

impl Default for ServiceRouter {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for ServiceRouter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ranges: Vec<_> = self.routes.iter().map(|(r, _)| r.clone()).collect();
        f.debug_struct("ServiceRouter")
            .field("routes", &ranges)
            .finish()
    }
}

impl RpcHandler for ServiceRouter {
    fn handle(
        &self,
        peer: NodeName,
        service: u16,
        body: Vec<u8>,
    ) -> BoxFuture<'static, Result<Vec<u8>, String>> {
        match self
            .routes
            .iter()
            .find(|(range, _)| range.contains(&service))
        {
            Some((_, handler)) => handler.handle(peer, service, body),
            None => Box::pin(async move { Err(format!("unknown service {service}")) }),
        }
    }
}
