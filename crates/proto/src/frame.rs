//! Framing: every message between members is one frame, a 4-byte big-endian length followed
//! by that many bytes of postcard-encoded payload. The length is checked against a maximum
//! before anything is buffered, so a peer cannot make us allocate more than that; a frame
//! that is too large or does not decode is an error that ends the connection.

use bytes::{Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::codec::{Decoder, Encoder, Framed, LengthDelimitedCodec};

use crate::error::ProtoError;

/// Default largest frame payload accepted or sent.
pub const MAX_FRAME_BYTES: usize = 4 * 1024 * 1024;

const LENGTH_BYTES: usize = 4;

/// Length-delimited frame codec with a size limit; yields raw payloads.
#[derive(Debug)]
pub struct FrameCodec {
    inner: LengthDelimitedCodec,
    max: usize,
    /// Length of the frame whose header was consumed and whose payload is still
    /// arriving. A frame larger than one socket read arrives over several `decode`
    /// calls; only the first of them starts with a header.
    pending: Option<usize>,
}

impl FrameCodec {
    pub fn new(max_frame_bytes: usize) -> Self {
        let inner = LengthDelimitedCodec::builder()
            .length_field_length(LENGTH_BYTES)
            .big_endian()
            .max_frame_length(max_frame_bytes)
            .new_codec();
        FrameCodec {
            inner,
            max: max_frame_bytes,
            pending: None,
        }
    }

    pub fn max_frame_bytes(&self) -> usize {
        self.max
    }
}

impl Default for FrameCodec {
    fn default() -> Self {
        FrameCodec::new(MAX_FRAME_BYTES)
    }
}

impl Decoder for FrameCodec {
    type Item = BytesMut;
    type Error = ProtoError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<BytesMut>, ProtoError> {
        let len = match self.pending {
            Some(len) => len,
            None => {
                let Some(prefix) = src.get(..LENGTH_BYTES) else {
                    return Ok(None);
                };
                let mut len = [0u8; LENGTH_BYTES];
                len.copy_from_slice(prefix);
                let len = u32::from_be_bytes(len) as usize;
                // Refused from the header alone, before any of the payload is buffered.
                if len > self.max {
                    return Err(ProtoError::FrameTooLarge { len, max: self.max });
                }
                let _ = src.split_to(LENGTH_BYTES);
                self.pending = Some(len);
                len
            }
        };
        if src.len() < len {
            src.reserve(len - src.len());
            return Ok(None);
        }
        self.pending = None;
        Ok(Some(src.split_to(len)))
    }
}

impl Encoder<Bytes> for FrameCodec {
    type Error = ProtoError;

    fn encode(&mut self, item: Bytes, dst: &mut BytesMut) -> Result<(), ProtoError> {
        if item.len() > self.max {
            return Err(ProtoError::FrameTooLarge {
                len: item.len(),
                max: self.max,
            });
        }
        Ok(self.inner.encode(item, dst)?)
    }
}

/// A byte stream carrying frames.
pub type FramedIo<S> = Framed<S, FrameCodec>;

pub fn framed<S: AsyncRead + AsyncWrite>(io: S, max_frame_bytes: usize) -> FramedIo<S> {
    Framed::new(io, FrameCodec::new(max_frame_bytes))
}

/// Encodes `msg` as a frame payload, refusing payloads over `max_frame_bytes` so the
/// sender finds out instead of the receiver dropping the connection.
pub fn encode<T: Serialize>(
    msg: &T,
    what: &'static str,
    max_frame_bytes: usize,
) -> Result<Bytes, ProtoError> {
    let bytes = postcard::to_stdvec(msg).map_err(|e| ProtoError::Encode {
        what,
        reason: e.to_string(),
    })?;
    if bytes.len() > max_frame_bytes {
        return Err(ProtoError::FrameTooLarge {
            len: bytes.len(),
            max: max_frame_bytes,
        });
    }
    Ok(Bytes::from(bytes))
}

/// Decodes a frame payload; trailing bytes are an error because they mean the peer and we
/// disagree about the message layout.
pub fn decode<T: DeserializeOwned>(payload: &[u8], what: &'static str) -> Result<T, ProtoError> {
    let (msg, rest) = postcard::take_from_bytes(payload).map_err(|e| ProtoError::Decode {
        what,
        reason: e.to_string(),
    })?;
    if !rest.is_empty() {
        return Err(ProtoError::Decode {
            what,
            reason: format!("{} unexpected bytes after the message", rest.len()),
        });
    }
    Ok(msg)
}

/// Encodes and sends one message.
pub async fn send<S, T>(io: &mut FramedIo<S>, msg: &T, what: &'static str) -> Result<(), ProtoError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    T: Serialize,
{
    let bytes = encode(msg, what, io.codec().max_frame_bytes())?;
    io.send(bytes).await
}

/// Receives and decodes one message; end of stream is `ProtoError::Closed`.
pub async fn recv<S, T>(io: &mut FramedIo<S>, what: &'static str) -> Result<T, ProtoError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    T: DeserializeOwned,
{
    match io.next().await {
        Some(payload) => decode(&payload?, what),
        None => Err(ProtoError::Closed {
            during: "waiting for a frame",
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Msg {
        id: u64,
        text: String,
        body: Vec<u8>,
    }

    #[test]
    fn frame_round_trip() {
        let msg = Msg {
            id: 7,
            text: "hi".into(),
            body: vec![1, 2, 3],
        };
        let mut codec = FrameCodec::new(1024);
        let mut buf = BytesMut::new();
        codec
            .encode(encode(&msg, "msg", 1024).unwrap(), &mut buf)
            .unwrap();
        assert_eq!(&buf[..4], &(buf.len() as u32 - 4).to_be_bytes());
        let payload = codec.decode(&mut buf).unwrap().unwrap();
        assert_eq!(decode::<Msg>(&payload, "msg").unwrap(), msg);
        assert!(buf.is_empty());
    }

    #[test]
    fn a_frame_arriving_in_pieces_is_not_mistaken_for_a_new_header() {
        // Regression: the payload's first bytes were once read as a length on the second
        // read of a large frame, closing the connection with "frame too large".
        let mut codec = FrameCodec::new(1024);
        let payload: Vec<u8> = [0xFFu8, 0xFF, 0xFF, 0xFF]
            .iter()
            .copied()
            .chain(0..100u8)
            .collect();
        let mut wire = BytesMut::new();
        codec
            .encode(Bytes::from(payload.clone()), &mut wire)
            .unwrap();
        let mut src = wire.split_to(10);
        assert!(codec.decode(&mut src).unwrap().is_none());
        src.extend_from_slice(&wire.split_to(50));
        assert!(codec.decode(&mut src).unwrap().is_none());
        src.extend_from_slice(&wire);
        assert_eq!(codec.decode(&mut src).unwrap().unwrap().to_vec(), payload);
        assert!(codec.decode(&mut src).unwrap().is_none());
    }

    #[test]
    fn oversized_frame_is_refused_from_its_header_alone() {
        let mut codec = FrameCodec::new(16);
        let mut buf = BytesMut::from(&17u32.to_be_bytes()[..]);
        let err = codec.decode(&mut buf).unwrap_err();
        assert!(
            matches!(err, ProtoError::FrameTooLarge { len: 17, max: 16 }),
            "{err}"
        );
        let err = encode(&vec![0u8; 32], "msg", 16).unwrap_err();
        assert!(matches!(err, ProtoError::FrameTooLarge { .. }), "{err}");
    }

    #[test]
    fn trailing_bytes_are_a_decode_error() {
        let mut bytes = postcard::to_stdvec(&5u64).unwrap();
        bytes.push(0);
        let err = decode::<u64>(&bytes, "number").unwrap_err();
        assert!(err.to_string().contains("unexpected bytes"), "{err}");
    }

    proptest! {
        /// Arbitrary input, fed in arbitrary chunks, never panics and never yields a frame
        /// longer than the limit.
        #[test]
        fn random_bytes_never_panic_the_decoder(
            data in proptest::collection::vec(any::<u8>(), 0..2048),
            chunk in 1usize..64,
        ) {
            let mut codec = FrameCodec::new(256);
            let mut buf = BytesMut::new();
            'feed: for piece in data.chunks(chunk) {
                buf.extend_from_slice(piece);
                loop {
                    match codec.decode(&mut buf) {
                        Ok(Some(payload)) => {
                            prop_assert!(payload.len() <= 256);
                            let _ = decode::<crate::rpc::Frame>(&payload, "frame");
                            let _ = decode::<crate::handshake::Hello>(&payload, "hello");
                        }
                        Ok(None) => break,
                        Err(_) => break 'feed,
                    }
                }
            }
        }

        #[test]
        fn random_payloads_never_panic_message_decoding(
            data in proptest::collection::vec(any::<u8>(), 0..512),
        ) {
            let _ = decode::<crate::rpc::Frame>(&data, "frame");
            let _ = decode::<crate::handshake::Hello>(&data, "hello");
            let _ = decode::<crate::handshake::HelloReply>(&data, "hello reply");
        }
    }
}
