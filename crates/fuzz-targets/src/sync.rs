//! File sync's messages and the delta a receiver rebuilds a file from.

use std::io::{self, Cursor, Write};
use std::sync::OnceLock;

use serde::de::DeserializeOwned;
use serde::Serialize;
use uphold_delta::wire::{read_record, WireWriter};
use uphold_delta::{
    block_size_for, Applier, ApplyError, ApplySummary, DeltaEncoder, DeltaEnd, Record, Signature,
    SignatureBuilder, DEFAULT_MAX_BLOCKS,
};
use uphold_sync::entry::{Entry, Kind, Meta};
use uphold_sync::path::RelPath;
use uphold_sync::protocol::{
    self, CompareItem, CompareResult, DeltaBasis, FileOp, OpResult, Request, Response,
};

use crate::named;

/// A sync request as the receiver decodes it, a response as the sender does, and
/// a signature (in a `Signature` response or on its own, as the receiver's cache
/// reads one back) as the sender parses it before encoding a delta.
pub fn sync_protocol(data: &[u8]) {
    if let Ok(request) = protocol::decode::<Request>(data) {
        encodes_stably(&request);
    }
    if let Ok(response) = protocol::decode::<Response>(data) {
        encodes_stably(&response);
        if let Response::Signature(Some(bytes)) = &response {
            signature(bytes);
        }
    }
    signature(data);
}

/// Decoding what we encoded gives the same bytes again: otherwise the two sides
/// would disagree about a message one of them wrote.
fn encodes_stably<T: Serialize + DeserializeOwned>(msg: &T) {
    let once = protocol::encode(msg).expect("a decoded message encodes");
    let back: T = protocol::decode(&once).expect("an encoded message decodes");
    let twice = protocol::encode(&back).expect("a decoded message encodes");
    assert_eq!(once, twice, "a message changed through encode and decode");
}

fn signature(bytes: &[u8]) {
    if let Ok(sig) = Signature::from_bytes(bytes, DEFAULT_MAX_BLOCKS) {
        assert_eq!(
            sig.to_bytes(),
            bytes,
            "a signature encodes differently from the bytes it was read from"
        );
    }
}

/// Bytes before the wire records in a `delta_apply` input.
const DELTA_HEADER: usize = 20;

/// The basis every delta is applied against: what the receiver's current copy of
/// the file holds. Its true length need not be what an input's header says.
fn basis() -> &'static [u8] {
    static BASIS: OnceLock<Vec<u8>> = OnceLock::new();
    BASIS.get_or_init(|| {
        (0u32..8192)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
            .collect()
    })
}

/// A delta stream as the receiver applies it: `data` is the geometry a `Begin`
/// request announces (block size, basis length, file size: 4 + 8 + 8 bytes, little
/// endian) then the wire records of its chunks. An `End` record stands for the
/// `Commit` request, whose hash it carries. The output is hashed and counted, not
/// kept, so no input can make the target hold more than the basis.
pub fn delta_apply(data: &[u8]) {
    let Some((header, wire)) = data.split_first_chunk::<DELTA_HEADER>() else {
        return;
    };
    let (block_size, basis_len, size) = geometry(header);
    let mut out = Rebuilt {
        len: 0,
        hash: blake3::Hasher::new(),
        // As a receiver with a signature cache builds the new file's signature.
        sig: SignatureBuilder::new(block_size_for(size), 0).ok(),
    };
    let Some(result) = apply(wire, block_size, basis_len, size, &mut out) else {
        return;
    };
    assert!(
        out.len <= size,
        "the applier wrote {} bytes past the announced {size}",
        out.len
    );
    if let Some(sig) = out.sig.take() {
        assert_eq!(
            sig.finish().basis_len(),
            out.len,
            "the signature missed bytes"
        );
    }
    if let Ok(summary) = result {
        assert_eq!(
            summary.len, out.len,
            "the summary's length is not the output's"
        );
        assert_eq!(
            summary.hash,
            *out.hash.finalize().as_bytes(),
            "the summary's hash is not the output's"
        );
    }
}

/// Block size, basis length and announced file size from an input's header.
fn geometry(header: &[u8; DELTA_HEADER]) -> (u32, u64, u64) {
    let le = |b: &[u8]| {
        let mut n = [0u8; 8];
        n[..b.len()].copy_from_slice(b);
        u64::from_le_bytes(n)
    };
    (
        le(&header[..4]) as u32,
        le(&header[4..12]),
        le(&header[12..]),
    )
}

/// `None` when the geometry is refused; otherwise what applying the records gave.
fn apply(
    wire: &[u8],
    block_size: u32,
    basis_len: u64,
    size: u64,
    out: &mut Rebuilt,
) -> Option<Result<ApplySummary, ApplyError>> {
    let mut applier = Applier::new(Cursor::new(basis()), block_size, basis_len, out)
        .ok()?
        .with_length_limit(size);
    let mut records = Cursor::new(wire);
    loop {
        match read_record(&mut records) {
            Ok(Some(Record::Op(op))) => {
                if let Err(e) = applier.apply_op(&op) {
                    return Some(Err(e));
                }
            }
            Ok(Some(Record::End(end))) => {
                return Some(applier.finish(&DeltaEnd {
                    len: size,
                    hash: end.hash,
                }))
            }
            Ok(None) | Err(_) => return None,
        }
    }
}

/// The rebuilt file as the target sees it: its length, its hash, and the signature
/// a receiver builds from it.
struct Rebuilt {
    len: u64,
    hash: blake3::Hasher,
    sig: Option<SignatureBuilder>,
}

impl Write for Rebuilt {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.len += buf.len() as u64;
        self.hash.update(buf);
        if let Some(sig) = &mut self.sig {
            sig.update(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn path(p: &str) -> RelPath {
    RelPath::new(p.as_bytes().to_vec()).expect("a valid relative path")
}

fn meta() -> Meta {
    Meta {
        mode: 0o644,
        uid: 1000,
        gid: 1000,
        mtime_s: 1_700_000_000,
        mtime_ns: 5,
    }
}

fn entry(name: &str, kind: Kind) -> Entry {
    Entry {
        name: name.as_bytes().to_vec(),
        kind,
        size: 3,
        mtime_s: 1_700_000_000,
        mtime_ns: 5,
        mode: 0o644,
        uid: 0,
        gid: 0,
        link: (kind == Kind::Symlink).then(|| b"target".to_vec()),
    }
}

fn message<T: Serialize>(msg: &T) -> Vec<u8> {
    protocol::encode(msg).expect("a seed message encodes")
}

pub(crate) fn sync_protocol_seeds() -> Vec<(String, Vec<u8>)> {
    let set = || "www".to_string();
    let sig = Signature::compute_with(basis(), 1024, 7)
        .expect("a signature of the basis")
        .to_bytes();
    let ops = vec![
        FileOp::Mkdir {
            path: path("img"),
            meta: meta(),
        },
        FileOp::Put {
            path: path("img/a.txt"),
            meta: meta(),
            data: b"abc".to_vec(),
        },
        FileOp::Symlink {
            path: path("current"),
            target: b"img".to_vec(),
            meta: meta(),
        },
        FileOp::SetMeta {
            path: path("img"),
            kind: Kind::Dir,
            meta: meta(),
        },
        FileOp::Rename {
            from: path("a"),
            to: path("b/c"),
            expect: entry("a", Kind::File),
        },
        FileOp::Delete { path: path("old") },
    ];
    named(vec![
        (
            "request-hello",
            message(&Request::Hello {
                set: set(),
                protocol: protocol::SYNC_PROTOCOL,
            }),
        ),
        (
            "request-compare",
            message(&Request::Compare {
                set: set(),
                with_owner: true,
                items: vec![
                    CompareItem::Dir {
                        dir: RelPath::root(),
                        digest: [7; 16],
                    },
                    CompareItem::Names {
                        dir: path("img"),
                        names: vec![serde_bytes::ByteBuf::from(b"a.txt".to_vec())],
                    },
                ],
            }),
        ),
        (
            "request-apply",
            message(&Request::Apply { set: set(), ops }),
        ),
        (
            "request-signature",
            message(&Request::Signature {
                set: set(),
                path: path("big.iso"),
            }),
        ),
        (
            "request-begin",
            message(&Request::Begin {
                set: set(),
                path: path("big.iso"),
                meta: meta(),
                size: 70_000,
                delta: Some(DeltaBasis {
                    block_size: 1024,
                    basis_len: 8192,
                }),
            }),
        ),
        (
            "request-chunk",
            message(&Request::Chunk {
                id: 3,
                data: vec![1, 1, 0, 0, 0],
            }),
        ),
        (
            "request-commit",
            message(&Request::Commit {
                id: 3,
                hash: [9; 32],
            }),
        ),
        ("request-abort", message(&Request::Abort { id: 3 })),
        (
            "response-hello",
            message(&Response::Hello {
                preserves_owner: true,
            }),
        ),
        (
            "response-compare",
            message(&Response::Compare(vec![
                CompareResult::Same,
                CompareResult::Missing,
                CompareResult::Listing(vec![entry("a", Kind::File), entry("l", Kind::Symlink)]),
                CompareResult::Entries(vec![None, Some(entry("d", Kind::Dir))]),
            ])),
        ),
        (
            "response-apply",
            message(&Response::Apply(vec![
                OpResult::Done,
                OpResult::Skipped,
                OpResult::Failed("disk full".into()),
            ])),
        ),
        (
            "response-signature",
            message(&Response::Signature(Some(sig.clone()))),
        ),
        ("response-begun", message(&Response::Begun { id: 3 })),
        ("response-done", message(&Response::Done)),
        ("signature", sig),
    ])
}

/// A `delta_apply` input: the header, then the real encoder's delta of `source`
/// against the basis cut in `block_size` blocks.
fn delta_input(block_size: u32, basis_len: u64, size: u64, source: &[u8]) -> Vec<u8> {
    let sig = Signature::compute_with(basis(), block_size, 7).expect("a signature of the basis");
    let mut wire = WireWriter::new(Vec::new());
    let summary = DeltaEncoder::new(&sig)
        .encode(source, |op| wire.write_op(&op))
        .expect("encoding into memory");
    wire.write_end(&summary.end())
        .expect("encoding into memory");
    let mut input = Vec::new();
    input.extend_from_slice(&block_size.to_le_bytes());
    input.extend_from_slice(&basis_len.to_le_bytes());
    input.extend_from_slice(&size.to_le_bytes());
    input.extend_from_slice(&wire.into_inner());
    input
}

pub(crate) fn delta_apply_seeds() -> Vec<(String, Vec<u8>)> {
    let basis = basis();
    let len = basis.len() as u64;
    let mut edited = basis.to_vec();
    edited[3000..3100].fill(0xAA);
    edited.extend_from_slice(b"appended at the end");
    let unrelated: Vec<u8> = (0..600u32).map(|i| (i * 7 % 251) as u8).collect();
    named(vec![
        ("unchanged", delta_input(1024, len, len, basis)),
        (
            "edited-and-grown",
            delta_input(1024, len, edited.len() as u64, &edited),
        ),
        (
            "small-blocks-prefix",
            delta_input(8, len, 777, &basis[..777]),
        ),
        (
            "all-literal",
            delta_input(2048, len, unrelated.len() as u64, &unrelated),
        ),
        (
            "header-claims-a-larger-basis",
            delta_input(1024, len * 4, len, basis),
        ),
        (
            "announced-size-too-small",
            delta_input(1024, len, len / 2, basis),
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// The seeds reach past the decoders, or the fuzzer starts from nothing.
    #[test]
    fn the_seeds_are_what_they_say() {
        for (name, bytes) in sync_protocol_seeds() {
            let decoded = if name.starts_with("request-") {
                protocol::decode::<Request>(&bytes).map(drop)
            } else if name.starts_with("response-") {
                protocol::decode::<Response>(&bytes).map(drop)
            } else {
                Signature::from_bytes(&bytes, DEFAULT_MAX_BLOCKS)
                    .map(drop)
                    .map_err(|e| e.to_string())
            };
            assert!(decoded.is_ok(), "{name}: {decoded:?}");
        }
        let seeds: BTreeMap<_, _> = delta_apply_seeds().into_iter().collect();
        let outcome = |name: &str| {
            let (header, wire) = seeds[name].split_first_chunk().unwrap();
            let (block_size, basis_len, size) = geometry(header);
            let mut out = Rebuilt {
                len: 0,
                hash: blake3::Hasher::new(),
                sig: None,
            };
            apply(wire, block_size, basis_len, size, &mut out)
                .expect("a geometry the applier takes")
        };
        for rebuilt in [
            "unchanged",
            "edited-and-grown",
            "small-blocks-prefix",
            "all-literal",
        ] {
            assert!(outcome(rebuilt).is_ok(), "{rebuilt}");
        }
        assert!(matches!(
            outcome("announced-size-too-small"),
            Err(ApplyError::PastLength { .. })
        ));
    }
}
