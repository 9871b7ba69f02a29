//! The members' wire: frames, the Hello exchange, RPC envelopes and the cluster's
//! bodies inside them (Raft and lease messages), each decoded as the receiving
//! member decodes it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use crate::named;
use bytes::{Bytes, BytesMut};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{CommittedLeaderId, EntryPayload, LogId, Membership, StoredMembership, Vote};
use tokio_util::codec::{Decoder, Encoder};
use uphold_cluster::engine::{
    ApplyResult, Claim, Command, GateAnswer, GateQuery, Heard, ReleaseReason, Renewal, RenewalAck,
    RenewalId,
};
use uphold_cluster::raft::rpc::{
    self as raft_rpc, ProposeReply, ProposeRequest, SnapshotRequest, PROPOSE, RAFT_APPEND,
    RAFT_SNAPSHOT, RAFT_VOTE,
};
use uphold_cluster::raft::{MemberNode, TypeConfig};
use uphold_cluster::runtime::lease_service::{LEASE_GATE, LEASE_RENEW};
use uphold_core::{GroupName, NodeName};
use uphold_proto::frame::{self, FrameCodec, MAX_FRAME_BYTES};
use uphold_proto::handshake::{handshake as hello_exchange, HandshakeParams};
use uphold_proto::{
    AllowedPeers, Frame, Hello, HelloReply, Negotiated, ProtoError, PROTOCOL_VERSION,
};

/// Smaller than the members' 4 MiB so that inputs of a few KiB reach the limit;
/// the check does not depend on the number.
const FRAME_LIMIT: usize = 4096;

/// The frame decoder over a byte stream, fed in pieces of `1 + data[0]` bytes and
/// again in one piece: both must give the same frames and the same error, since a
/// socket may cut the stream anywhere.
pub fn frame(data: &[u8]) {
    let Some((&cut, stream)) = data.split_first() else {
        return;
    };
    let whole = read_frames(stream, stream.len().max(1));
    let pieces = read_frames(stream, usize::from(cut) + 1);
    assert_eq!(
        whole, pieces,
        "the frames depend on where the stream was cut"
    );
}

/// The payloads read from `stream` arriving `piece` bytes at a time, then the end
/// of the stream as `Framed` reports it, and the error that stopped reading.
fn read_frames(stream: &[u8], piece: usize) -> (Vec<BytesMut>, Option<String>) {
    let mut codec = FrameCodec::new(FRAME_LIMIT);
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut take = |frame: BytesMut| {
        assert!(
            frame.len() <= FRAME_LIMIT,
            "a frame of {} bytes passed the {FRAME_LIMIT}-byte limit",
            frame.len()
        );
        frames.push(frame);
    };
    for chunk in stream.chunks(piece) {
        buf.extend_from_slice(chunk);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(frame)) => take(frame),
                Ok(None) => break,
                Err(e) => return (frames, Some(e.to_string())),
            }
        }
    }
    loop {
        match codec.decode_eof(&mut buf) {
            Ok(Some(frame)) => take(frame),
            Ok(None) => return (frames, None),
            Err(e) => return (frames, Some(e.to_string())),
        }
    }
}

thread_local! {
    /// The handshake is async and has a deadline, so it needs a runtime with a
    /// timer; one per thread, not one per input.
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a current-thread runtime");
}

fn name(s: &str) -> NodeName {
    NodeName::new(s).expect("a valid member name")
}

/// The accepting side's Hello exchange, member "a" of cluster "prod", against a
/// peer whose certificate names "b" and who sends `data`; what we send goes nowhere.
pub fn handshake(data: &[u8]) {
    if let Ok(negotiated) = accept(data) {
        assert_eq!(
            negotiated,
            Negotiated {
                peer: name("b"),
                version: PROTOCOL_VERSION
            },
            "accepted a peer or a version the Hello did not allow"
        );
    }
}

fn accept(data: &[u8]) -> Result<Negotiated, ProtoError> {
    let ours = Hello::new("prod", name("a"));
    let cert = name("b");
    let allowed = AllowedPeers::set([name("a"), name("b")]);
    let io = tokio::io::join(data, tokio::io::sink());
    let mut io = frame::framed(io, MAX_FRAME_BYTES);
    let params = HandshakeParams {
        ours: &ours,
        cert_name: &cert,
        expected: None,
        allowed: &allowed,
        peer_addr: SocketAddr::from(([192, 0, 2, 2], 7400)),
    };
    RUNTIME.with(|rt| {
        rt.block_on(async {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            hello_exchange(&mut io, params, deadline).await
        })
    })
}

/// An RPC envelope as either side decodes a frame's payload, and the cluster's
/// request and response bodies (the services of `uphold-cluster`) both inside a
/// decoded request and on their own.
pub fn rpc(data: &[u8]) {
    if let Ok(envelope) = frame::decode::<Frame>(data, "RPC frame") {
        let again = frame::encode(&envelope, "RPC frame", usize::MAX)
            .expect("a decoded frame encodes again");
        let back: Frame = frame::decode(&again, "RPC frame").expect("an encoded frame decodes");
        assert_eq!(back, envelope, "a frame changed through encode and decode");
        if let Frame::Request { service, body, .. } = &envelope {
            let _ = cluster_request(*service, body);
        }
    }
    for service in CLUSTER_SERVICES {
        let _ = cluster_request(service, data);
        let _ = cluster_response(service, data);
    }
}

const CLUSTER_SERVICES: [u16; 6] = [
    RAFT_APPEND,
    RAFT_VOTE,
    RAFT_SNAPSHOT,
    PROPOSE,
    LEASE_RENEW,
    LEASE_GATE,
];

/// Whether `body` decodes as what the serving member decodes a request of `service` as
/// (`raft::rpc::RaftRpcHandler` and `runtime::lease_service::LeaseHandler`).
fn cluster_request(service: u16, body: &[u8]) -> bool {
    match service {
        RAFT_APPEND => raft_rpc::decode::<AppendEntriesRequest<TypeConfig>>("", body).is_ok(),
        RAFT_VOTE => raft_rpc::decode::<VoteRequest<u64>>("", body).is_ok(),
        RAFT_SNAPSHOT => raft_rpc::decode::<SnapshotRequest>("", body).is_ok(),
        PROPOSE => raft_rpc::decode::<ProposeRequest>("", body).is_ok(),
        LEASE_RENEW => raft_rpc::decode::<Renewal>("", body).is_ok(),
        LEASE_GATE => raft_rpc::decode::<GateQuery>("", body).is_ok(),
        _ => false,
    }
}

/// Whether `body` decodes as what the calling member decodes the answer to
/// `service` as (`raft::network`, `raft::node`, the lease broadcasts of
/// `runtime::executor`).
fn cluster_response(service: u16, body: &[u8]) -> bool {
    match service {
        RAFT_APPEND => raft_rpc::decode::<AppendEntriesResponse<u64>>("", body).is_ok(),
        RAFT_VOTE => raft_rpc::decode::<VoteResponse<u64>>("", body).is_ok(),
        RAFT_SNAPSHOT => raft_rpc::decode::<SnapshotResponse<u64>>("", body).is_ok(),
        PROPOSE => raft_rpc::decode::<ProposeReply>("", body).is_ok(),
        LEASE_RENEW => raft_rpc::decode::<Option<RenewalAck>>("", body).is_ok(),
        LEASE_GATE => raft_rpc::decode::<GateAnswer>("", body).is_ok(),
        _ => false,
    }
}

/// `payloads` as frames on the wire.
fn on_the_wire(payloads: &[Bytes]) -> Vec<u8> {
    let mut codec = FrameCodec::default();
    let mut wire = BytesMut::new();
    for payload in payloads {
        codec
            .encode(payload.clone(), &mut wire)
            .expect("a seed frame within the limit");
    }
    wire.to_vec()
}

fn payload<T: serde::Serialize>(msg: &T) -> Bytes {
    frame::encode(msg, "seed", MAX_FRAME_BYTES).expect("a seed message encodes")
}

pub(crate) fn frame_seeds() -> Vec<(String, Vec<u8>)> {
    let hello = payload(&Hello::new("prod", name("b")));
    let accept = payload(&HelloReply::Accept { version: 1 });
    let request = payload(&Frame::Request {
        id: 1,
        service: RAFT_VOTE,
        body: vec![1, 2, 3],
    });
    let cut = |n: u8, wire: Vec<u8>| [vec![n], wire].concat();
    let mut too_large = vec![0];
    too_large.extend_from_slice(&(FRAME_LIMIT as u32 + 1).to_be_bytes());
    named(vec![
        ("hello-and-reply", cut(0, on_the_wire(&[hello, accept]))),
        (
            "request-cut-in-sevens",
            cut(6, on_the_wire(&[request.clone(), request])),
        ),
        ("empty-frame", cut(255, on_the_wire(&[Bytes::new()]))),
        ("header-over-the-limit", too_large),
        ("truncated-payload", cut(2, vec![0, 0, 0, 9, 1, 2, 3])),
    ])
}

pub(crate) fn handshake_seeds() -> Vec<(String, Vec<u8>)> {
    let hello = Hello::new("prod", name("b"));
    let accept = payload(&HelloReply::Accept { version: 1 });
    let refuse = payload(&HelloReply::Refuse {
        reason: "no".into(),
    });
    let newer = Hello {
        protocol_min: 2,
        protocol_max: 3,
        ..hello.clone()
    };
    let other_cluster = Hello {
        cluster: "staging".into(),
        ..hello.clone()
    };
    named(vec![
        ("accepted", on_the_wire(&[payload(&hello), accept.clone()])),
        ("refused-by-peer", on_the_wire(&[payload(&hello), refuse])),
        ("no-common-version", on_the_wire(&[payload(&newer), accept])),
        ("other-cluster", on_the_wire(&[payload(&other_cluster)])),
        (
            "not-uphold",
            on_the_wire(&[Bytes::from_static(b"GET / HTTP/1.1")]),
        ),
    ])
}

fn log_id(index: u64) -> LogId<u64> {
    LogId::new(CommittedLeaderId::new(3, 1), index)
}

fn membership() -> Membership<u64, MemberNode> {
    let node = |n: &str| MemberNode {
        name: n.into(),
        address: "192.0.2.1:7400".into(),
    };
    Membership::new(
        vec![BTreeSet::from([1, 2])],
        BTreeMap::from([(1, node("a")), (2, node("b"))]),
    )
}

/// One request body per cluster service and the answer to it, in the services'
/// order.
fn cluster_bodies() -> Vec<(&'static str, u16, Vec<u8>, Vec<u8>)> {
    let group = GroupName::new("web").expect("a valid group name");
    let vote = Vote::new_committed(3, 1);
    let join = Command::Join {
        node: 1,
        incarnation: 7,
    };
    let entries = vec![
        openraft::Entry::<TypeConfig> {
            log_id: log_id(5),
            payload: EntryPayload::Normal(join.clone()),
        },
        openraft::Entry::<TypeConfig> {
            log_id: log_id(6),
            payload: EntryPayload::Membership(membership()),
        },
    ];
    let append = AppendEntriesRequest::<TypeConfig> {
        vote,
        prev_log_id: Some(log_id(4)),
        entries,
        leader_commit: Some(log_id(4)),
    };
    let snapshot = SnapshotRequest {
        vote,
        meta: openraft::SnapshotMeta {
            last_log_id: Some(log_id(6)),
            last_membership: StoredMembership::new(Some(log_id(6)), membership()),
            snapshot_id: "3-1-6".into(),
        },
        data: vec![0x55; 16],
    };
    let propose = ProposeRequest {
        command: Command::Release {
            group: group.clone(),
            node: 1,
            epoch: 4,
            incarnation: 7,
            reason: ReleaseReason::MonitorFailed("exit 1".into()),
        },
        timeout_ms: 500,
    };
    let id = RenewalId {
        incarnation: 7,
        seq: 9,
    };
    let claim = Claim {
        group: group.clone(),
        epoch: 4,
    };
    let renewal = Renewal {
        node: 1,
        id,
        claims: vec![claim.clone()],
        withdrawn: vec![claim],
    };
    let ack = Some(RenewalAck {
        id,
        refused: vec![group.clone()],
        heard: vec![Heard {
            node: 2,
            age_ms: 40,
        }],
    });
    let query = GateQuery {
        group,
        epoch: 4,
        applied_index: 6,
    };
    vec![
        (
            "append",
            RAFT_APPEND,
            encode("append", &append),
            encode(
                "append response",
                &AppendEntriesResponse::<u64>::PartialSuccess(Some(log_id(5))),
            ),
        ),
        (
            "vote",
            RAFT_VOTE,
            encode("vote", &VoteRequest::new(vote, Some(log_id(6)))),
            encode(
                "vote response",
                &VoteResponse::new(vote, Some(log_id(6)), true),
            ),
        ),
        (
            "snapshot",
            RAFT_SNAPSHOT,
            encode("snapshot", &snapshot),
            encode("snapshot response", &SnapshotResponse::new(vote)),
        ),
        (
            "propose",
            PROPOSE,
            encode("propose", &propose),
            encode(
                "propose reply",
                &ProposeReply::Applied(ApplyResult::Rejected("stale epoch".into())),
            ),
        ),
        (
            "renew",
            LEASE_RENEW,
            encode("renewal", &renewal),
            encode("renewal answer", &ack),
        ),
        (
            "gate",
            LEASE_GATE,
            encode("gate query", &query),
            encode("gate answer", &GateAnswer::Fenced { since_ms: 900 }),
        ),
    ]
}

fn encode<T: serde::Serialize>(what: &str, body: &T) -> Vec<u8> {
    raft_rpc::encode(what, body).expect("a seed body encodes")
}

pub(crate) fn rpc_seeds() -> Vec<(String, Vec<u8>)> {
    let mut seeds = Vec::new();
    for (what, service, request, response) in cluster_bodies() {
        let envelope = Frame::Request {
            id: u64::from(service),
            service,
            body: request.clone(),
        };
        seeds.push((format!("{what}-in-a-frame"), payload(&envelope).to_vec()));
        seeds.push((format!("{what}-request"), request));
        seeds.push((format!("{what}-response"), response));
    }
    let answer = |result| payload(&Frame::Response { id: 9, result }).to_vec();
    seeds.push(("response-ok".into(), answer(Ok(vec![0, 1]))));
    seeds.push((
        "response-err".into(),
        answer(Err("unknown service 77".into())),
    ));
    seeds
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The seeds reach past the decoders, or the fuzzer starts from nothing.
    #[test]
    fn the_seeds_are_what_they_say() {
        let seeds: BTreeMap<_, _> = frame_seeds().into_iter().collect();
        let (frames, error) = read_frames(&seeds["hello-and-reply"][1..], 1);
        assert_eq!((frames.len(), error), (2, None));
        assert!(read_frames(&seeds["header-over-the-limit"][1..], 1)
            .1
            .is_some());

        let seeds: BTreeMap<_, _> = handshake_seeds().into_iter().collect();
        assert!(accept(&seeds["accepted"]).is_ok());
        let refused = accept(&seeds["no-common-version"]).unwrap_err();
        assert!(
            refused.to_string().contains("no common protocol version"),
            "{refused}"
        );

        for (what, service, request, response) in cluster_bodies() {
            assert!(cluster_request(service, &request), "{what} request");
            assert!(cluster_response(service, &response), "{what} response");
        }
    }
}
