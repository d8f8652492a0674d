//! Application frames: what travels inside the encrypted stream.
//!
//! ```text
//! frame    = length:u32be kind:u8 [id:u64be] payload      (id only for Request and Response)
//! length   = number of payload bytes (at most the transport's max_frame_len)
//! kind     = 0 Message | 1 Request | 2 Response | 3 Goodbye | 4 KeepAlive
//!            (Goodbye and KeepAlive have an empty payload)
//! ```
//!
//! Frames form a plain byte stream: the connection encrypts it in Noise messages of at most
//! 65535 bytes, and frame boundaries need not line up with message boundaries. The receiving
//! side feeds decrypted bytes to a [`FrameDecoder`], a pure incremental state machine.

use thiserror::Error;

const KIND_MESSAGE: u8 = 0;
const KIND_REQUEST: u8 = 1;
const KIND_RESPONSE: u8 = 2;
const KIND_GOODBYE: u8 = 3;
const KIND_KEEPALIVE: u8 = 4;

/// The longest frame header: length, kind and request id.
pub const MAX_FRAME_HEADER_LEN: usize = 13;

/// How much payload buffer the decoder reserves when a frame header arrives; it grows the
/// buffer (never beyond the declared length) only as payload bytes actually arrive, so a
/// peer cannot make it reserve a large buffer with a few header bytes.
pub const INITIAL_PAYLOAD_CAPACITY: usize = 64 * 1024;

/// One unit of the application protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Frame {
    /// A one-way message.
    Message(Vec<u8>),
    /// A request the peer should answer with a [`Frame::Response`] carrying the same id.
    Request {
        /// Chosen by the requester.
        id: u64,
        /// The request bytes.
        payload: Vec<u8>,
    },
    /// The answer to the request `id`.
    Response {
        /// The id of the request being answered.
        id: u64,
        /// The response bytes.
        payload: Vec<u8>,
    },
    /// The sender is closing the connection gracefully; nothing follows.
    Goodbye,
    /// Liveness only: sent when the writer has been idle for the keepalive interval, so the
    /// peer's idle timeout sees traffic on a quiet link. Never delivered to the host, never
    /// taken from the outgoing queue.
    KeepAlive,
}

impl Frame {
    /// The payload bytes (empty for [`Frame::Goodbye`] and [`Frame::KeepAlive`]).
    pub fn payload(&self) -> &[u8] {
        match self {
            Frame::Message(p) | Frame::Request { payload: p, .. } => p,
            Frame::Response { payload: p, .. } => p,
            Frame::Goodbye | Frame::KeepAlive => &[],
        }
    }

    /// The encoded header and its length (5 or 13 bytes).
    ///
    /// Errors with [`FrameError::TooLarge`] if the payload does not fit a `u32` length.
    pub fn header(&self) -> Result<([u8; MAX_FRAME_HEADER_LEN], usize), FrameError> {
        let len = self.payload().len();
        let len32 = u32::try_from(len)
            .map_err(|_| FrameError::TooLarge { len: len as u64, max: u32::MAX as usize })?;
        let (kind, id) = match self {
            Frame::Message(_) => (KIND_MESSAGE, None),
            Frame::Request { id, .. } => (KIND_REQUEST, Some(*id)),
            Frame::Response { id, .. } => (KIND_RESPONSE, Some(*id)),
            Frame::Goodbye => (KIND_GOODBYE, None),
            Frame::KeepAlive => (KIND_KEEPALIVE, None),
        };
        let mut header = [0u8; MAX_FRAME_HEADER_LEN];
        let [l0, l1, l2, l3, k, rest @ ..] = &mut header;
        [*l0, *l1, *l2, *l3] = len32.to_be_bytes();
        *k = kind;
        match id {
            Some(id) => {
                *rest = id.to_be_bytes();
                Ok((header, MAX_FRAME_HEADER_LEN))
            }
            None => Ok((header, 5)),
        }
    }

    /// Appends the encoded frame (header, then payload) to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), FrameError> {
        let (header, n) = self.header()?;
        out.extend_from_slice(header.get(..n).unwrap_or(&header));
        out.extend_from_slice(self.payload());
        Ok(())
    }
}

/// The decrypted byte stream did not contain well-formed frames. The connection is closed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum FrameError {
    /// A frame header declared more payload than the maximum; rejected before any of it was
    /// buffered.
    #[error("frame of {len} bytes exceeds the maximum of {max} bytes")]
    TooLarge {
        /// The declared payload length.
        len: u64,
        /// The maximum in force.
        max: usize,
    },
    /// The stream ended in the middle of a frame (or of an encrypted chunk).
    #[error("connection ended in the middle of a frame")]
    Truncated,
    /// The bytes are not a frame: unknown kind, or a Goodbye or KeepAlive with a payload.
    #[error("malformed frame: {reason}")]
    Malformed {
        /// What was wrong.
        reason: &'static str,
    },
}

#[derive(Debug)]
struct Body {
    kind: u8,
    id: u64,
    len: usize,
    payload: Vec<u8>,
}

/// Incremental frame decoder: feed it bytes in pieces of any size, get whole frames out.
///
/// It never panics, checks a declared length against the maximum before buffering any
/// payload, and holds at most `max_frame_len` bytes of payload buffer (plus a 13-byte
/// header): the buffer grows with the bytes that arrive, never ahead of them by more than
/// [`INITIAL_PAYLOAD_CAPACITY`]. After an error it keeps returning that error.
///
/// ```
/// use llmkg_transport::tcp::{Frame, FrameDecoder};
/// let mut bytes = Vec::new();
/// Frame::Message(b"hello".to_vec()).encode(&mut bytes).unwrap();
/// let mut decoder = FrameDecoder::new(1024);
/// let (first, second) = bytes.split_at(3);
/// assert_eq!(decoder.feed(&mut &first[..]), Ok(None));
/// assert_eq!(decoder.feed(&mut &second[..]), Ok(Some(Frame::Message(b"hello".to_vec()))));
/// assert!(decoder.is_idle());
/// ```
#[derive(Debug)]
pub struct FrameDecoder {
    max: usize,
    header: [u8; MAX_FRAME_HEADER_LEN],
    have: usize,
    body: Option<Body>,
    failed: Option<FrameError>,
}

impl FrameDecoder {
    /// A decoder accepting payloads of at most `max_frame_len` bytes.
    pub fn new(max_frame_len: usize) -> Self {
        Self {
            max: max_frame_len,
            header: [0; MAX_FRAME_HEADER_LEN],
            have: 0,
            body: None,
            failed: None,
        }
    }

    /// Consumes bytes from the front of `input` until one frame is complete (returned, with
    /// `input` advanced past it) or `input` is exhausted (`Ok(None)`; the partial frame is
    /// kept for the next call).
    pub fn feed(&mut self, input: &mut &[u8]) -> Result<Option<Frame>, FrameError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let result = self.feed_inner(input);
        if let Err(e) = &result {
            self.failed = Some(e.clone());
            self.body = None;
        }
        result
    }

    /// Whether the decoder sits at a frame boundary (no partial frame buffered).
    pub fn is_idle(&self) -> bool {
        self.have == 0 && self.body.is_none() && self.failed.is_none()
    }

    /// Checks that the stream may end here: [`FrameError::Truncated`] if a frame is partial.
    pub fn finish(&self) -> Result<(), FrameError> {
        match &self.failed {
            Some(e) => Err(e.clone()),
            None if self.is_idle() => Ok(()),
            None => Err(FrameError::Truncated),
        }
    }

    /// Bytes of buffer currently reserved for a partial frame's payload.
    pub fn buffered_capacity(&self) -> usize {
        self.body.as_ref().map_or(0, |b| b.payload.capacity())
    }

    fn header_target(&self) -> Result<usize, FrameError> {
        if self.have < 5 {
            return Ok(5);
        }
        let [_, _, _, _, kind, ..] = self.header;
        match kind {
            KIND_MESSAGE | KIND_GOODBYE | KIND_KEEPALIVE => Ok(5),
            KIND_REQUEST | KIND_RESPONSE => Ok(MAX_FRAME_HEADER_LEN),
            _ => Err(FrameError::Malformed { reason: "unknown frame kind" }),
        }
    }

    fn declared_len(&self) -> u32 {
        let [l0, l1, l2, l3, ..] = self.header;
        u32::from_be_bytes([l0, l1, l2, l3])
    }

    fn feed_inner(&mut self, input: &mut &[u8]) -> Result<Option<Frame>, FrameError> {
        loop {
            if let Some(body) = &mut self.body {
                let want = body.len.saturating_sub(body.payload.len());
                let (take, rest) = input.split_at(want.min(input.len()));
                reserve_bounded(&mut body.payload, take.len(), body.len);
                body.payload.extend_from_slice(take);
                *input = rest;
                if body.payload.len() < body.len {
                    return Ok(None);
                }
                return Ok(self.body.take().map(Body::into_frame));
            }
            let target = self.header_target()?;
            if self.have < target {
                if input.is_empty() {
                    return Ok(None);
                }
                let n = (target - self.have).min(input.len());
                let (take, rest) = input.split_at(n);
                if let Some(dst) = self.header.get_mut(self.have..self.have + n) {
                    dst.copy_from_slice(take);
                }
                self.have += n;
                *input = rest;
                if self.have >= 4 {
                    let len = self.declared_len();
                    if len as usize > self.max {
                        return Err(FrameError::TooLarge { len: u64::from(len), max: self.max });
                    }
                }
                continue;
            }
            // The header is complete.
            let len = self.declared_len() as usize;
            let [_, _, _, _, kind, i0, i1, i2, i3, i4, i5, i6, i7] = self.header;
            let id = if target == MAX_FRAME_HEADER_LEN {
                u64::from_be_bytes([i0, i1, i2, i3, i4, i5, i6, i7])
            } else {
                0
            };
            self.have = 0;
            if kind == KIND_GOODBYE && len != 0 {
                return Err(FrameError::Malformed { reason: "goodbye frame with a payload" });
            }
            if kind == KIND_KEEPALIVE && len != 0 {
                return Err(FrameError::Malformed { reason: "keepalive frame with a payload" });
            }
            let body = Body {
                kind,
                id,
                len,
                payload: Vec::with_capacity(len.min(INITIAL_PAYLOAD_CAPACITY)),
            };
            if len == 0 {
                return Ok(Some(body.into_frame()));
            }
            self.body = Some(body);
        }
    }
}

impl Body {
    fn into_frame(self) -> Frame {
        match self.kind {
            KIND_REQUEST => Frame::Request { id: self.id, payload: self.payload },
            KIND_RESPONSE => Frame::Response { id: self.id, payload: self.payload },
            KIND_GOODBYE => Frame::Goodbye,
            KIND_KEEPALIVE => Frame::KeepAlive,
            _ => Frame::Message(self.payload),
        }
    }
}

/// Makes room for `additional` more bytes, doubling like `Vec` does but never beyond `limit`
/// (the frame's declared length), so the capacity never exceeds what the frame can fill.
fn reserve_bounded(v: &mut Vec<u8>, additional: usize, limit: usize) {
    let need = v.len().saturating_add(additional);
    if need > v.capacity() {
        let target = need.max(v.capacity().saturating_mul(2)).min(limit.max(need));
        v.reserve_exact(target - v.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode_all(frames: &[Frame]) -> Vec<u8> {
        let mut out = Vec::new();
        for f in frames {
            f.encode(&mut out).unwrap();
        }
        out
    }

    #[test]
    fn round_trip_byte_by_byte() {
        let frames = vec![
            Frame::Message(vec![1, 2, 3]),
            Frame::Request { id: 7, payload: vec![9; 300] },
            Frame::Response { id: u64::MAX, payload: Vec::new() },
            Frame::Message(Vec::new()),
            Frame::KeepAlive,
            Frame::Goodbye,
        ];
        let bytes = encode_all(&frames);
        let mut d = FrameDecoder::new(1000);
        let mut out = Vec::new();
        for b in &bytes {
            let mut input = std::slice::from_ref(b);
            while let Some(f) = d.feed(&mut input).unwrap() {
                out.push(f);
            }
        }
        assert_eq!(out, frames);
        assert!(d.finish().is_ok());
    }

    #[test]
    fn too_large_is_rejected_after_four_bytes() {
        let mut d = FrameDecoder::new(10);
        let r = d.feed(&mut &[0, 0, 0, 11][..]);
        assert_eq!(r, Err(FrameError::TooLarge { len: 11, max: 10 }));
        assert_eq!(d.buffered_capacity(), 0);
        // Poisoned afterwards.
        assert!(d.feed(&mut &[0u8][..]).is_err());
    }

    #[test]
    fn unknown_kind_and_goodbye_payload_are_malformed() {
        let mut d = FrameDecoder::new(10);
        assert!(matches!(d.feed(&mut &[0, 0, 0, 1, 9][..]), Err(FrameError::Malformed { .. })));
        let mut d = FrameDecoder::new(10);
        assert!(matches!(d.feed(&mut &[0, 0, 0, 1, 3][..]), Err(FrameError::Malformed { .. })));
        let mut d = FrameDecoder::new(10);
        assert!(matches!(d.feed(&mut &[0, 0, 0, 1, 4][..]), Err(FrameError::Malformed { .. })));
        // Kind 5 is the first unknown one.
        let mut d = FrameDecoder::new(10);
        assert!(matches!(d.feed(&mut &[0, 0, 0, 0, 5][..]), Err(FrameError::Malformed { .. })));
    }

    #[test]
    fn keepalive_is_a_five_byte_frame_with_kind_four() {
        let mut bytes = Vec::new();
        Frame::KeepAlive.encode(&mut bytes).unwrap();
        assert_eq!(bytes, [0, 0, 0, 0, 4]);
        let mut d = FrameDecoder::new(0);
        let mut input = &bytes[..];
        assert_eq!(d.feed(&mut input), Ok(Some(Frame::KeepAlive)));
        assert!(input.is_empty() && d.is_idle());
    }

    #[test]
    fn partial_frame_is_truncated() {
        let mut d = FrameDecoder::new(100);
        assert_eq!(d.feed(&mut &[0, 0, 0, 5, 0, 1, 2][..]), Ok(None));
        assert_eq!(d.finish(), Err(FrameError::Truncated));
    }

    #[test]
    fn capacity_grows_with_data_not_with_the_declared_length() {
        let max = 16 << 20;
        let mut d = FrameDecoder::new(max);
        let len = (max as u32).to_be_bytes();
        assert_eq!(d.feed(&mut &[len[0], len[1], len[2], len[3], 0][..]), Ok(None));
        assert!(d.buffered_capacity() <= INITIAL_PAYLOAD_CAPACITY);
        let chunk = vec![0u8; 100_000];
        assert_eq!(d.feed(&mut &chunk[..]), Ok(None));
        assert!(d.buffered_capacity() <= 2 * 100_000);
    }
}
