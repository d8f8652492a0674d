//! Application frames: what travels inside the encrypted stream.
//!
//! ```text
//! frame    = length:u32be kind:u8 channel:u8 [id:u64be] payload   (id: Request and Response)
//! length   = number of payload bytes (at most MAX_FRAME_LEN, 256 KiB; longer payloads
//!            travel in parts)
//! kind     = base | MORE
//! base     = 0 Message | 1 Request | 2 Response | 3 Goodbye | 4 KeepAlive | 5 Credit
//! MORE     = 0x80: the payload continues in the next part (Message, Request, Response only)
//! channel  = the ChannelId (below ChannelId::COUNT); zero for Response, Goodbye, KeepAlive
//! Credit   = payload is bytes:u32be, how many more bytes (payload plus 64 per message) the
//!            receiver of the frame may send on the channel
//!            (Goodbye and KeepAlive have an empty payload)
//! ```
//!
//! A payload longer than one frame travels as *parts*: frames of the same kind, channel and
//! id, every one but the last flagged `MORE`, their payloads concatenated. A connection
//! carries at most one such multi-part payload at a time in each direction; single-frame
//! messages of other channels interleave with its parts.
//!
//! Frames form a plain byte stream: the connection encrypts it in Noise messages of at most
//! 65535 bytes, and frame boundaries need not line up with message boundaries. The receiving
//! side feeds decrypted bytes to a [`FrameDecoder`], a pure incremental state machine.

use llmkg_federation_core::ChannelId;
use thiserror::Error;

const KIND_MESSAGE: u8 = 0;
const KIND_REQUEST: u8 = 1;
const KIND_RESPONSE: u8 = 2;
const KIND_GOODBYE: u8 = 3;
const KIND_KEEPALIVE: u8 = 4;
const KIND_CREDIT: u8 = 5;
const MORE: u8 = 0x80;

/// The shortest frame header: length, kind and channel.
pub const MIN_FRAME_HEADER_LEN: usize = 6;
/// The longest frame header: length, kind, channel and request id.
pub const MAX_FRAME_HEADER_LEN: usize = 14;

/// How much payload buffer the decoder reserves when a frame header arrives; it grows the
/// buffer (never beyond the declared length) only as payload bytes actually arrive, so a
/// peer cannot make it reserve a large buffer with a few header bytes.
pub const INITIAL_PAYLOAD_CAPACITY: usize = 64 * 1024;

/// One unit of the application protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Frame {
    /// A one-way message, or a part of one.
    Message {
        /// The channel it travels on.
        channel: ChannelId,
        /// Whether more parts of the same payload follow.
        more: bool,
        /// The bytes (of this part).
        payload: Vec<u8>,
    },
    /// A request the peer should answer with a [`Frame::Response`] carrying the same id, or
    /// a part of one.
    Request {
        /// The channel it travels on.
        channel: ChannelId,
        /// Chosen by the requester.
        id: u64,
        /// Whether more parts of the same payload follow.
        more: bool,
        /// The request bytes (of this part).
        payload: Vec<u8>,
    },
    /// The answer to the request `id`, or a part of it.
    Response {
        /// The id of the request being answered.
        id: u64,
        /// Whether more parts of the same payload follow.
        more: bool,
        /// The response bytes (of this part).
        payload: Vec<u8>,
    },
    /// The receiver of this frame may send `bytes` more on `channel` (each message counts
    /// its payload length plus 64): flow control per channel, so that a channel whose reader
    /// is slow holds up only itself.
    Credit {
        /// The channel the credit is for.
        channel: ChannelId,
        /// How many more bytes.
        bytes: u32,
    },
    /// The sender is closing the connection gracefully; nothing follows.
    Goodbye,
    /// Liveness only: sent when the writer has been idle for the keepalive interval, so the
    /// peer's idle timeout sees traffic on a quiet link. Never delivered to the host, never
    /// taken from the outgoing queue.
    KeepAlive,
}

/// The encoded header of a frame of `base` kind with a `len`-byte payload.
pub(crate) fn encode_header(
    base: u8,
    more: bool,
    channel: ChannelId,
    id: Option<u64>,
    len: usize,
) -> Result<([u8; MAX_FRAME_HEADER_LEN], usize), FrameError> {
    let len32 = u32::try_from(len)
        .map_err(|_| FrameError::TooLarge { len: len as u64, max: u32::MAX as usize })?;
    let mut header = [0u8; MAX_FRAME_HEADER_LEN];
    let [l0, l1, l2, l3, k, c, rest @ ..] = &mut header;
    [*l0, *l1, *l2, *l3] = len32.to_be_bytes();
    *k = if more { base | MORE } else { base };
    *c = u8::from(channel);
    match id {
        Some(id) => {
            *rest = id.to_be_bytes();
            Ok((header, MAX_FRAME_HEADER_LEN))
        }
        None => Ok((header, MIN_FRAME_HEADER_LEN)),
    }
}

/// Frame kinds as the writer builds them (parts of a queued payload).
pub(crate) const MESSAGE: u8 = KIND_MESSAGE;
pub(crate) const REQUEST: u8 = KIND_REQUEST;
pub(crate) const RESPONSE: u8 = KIND_RESPONSE;

impl Frame {
    /// A whole (single-part) message on `channel`.
    pub fn message(channel: ChannelId, payload: Vec<u8>) -> Self {
        Frame::Message { channel, more: false, payload }
    }

    /// The payload bytes (empty for [`Frame::Goodbye`] and [`Frame::KeepAlive`]; the four
    /// count bytes for [`Frame::Credit`] are not a payload and are not returned here).
    pub fn payload(&self) -> &[u8] {
        match self {
            Frame::Message { payload, .. }
            | Frame::Request { payload, .. }
            | Frame::Response { payload, .. } => payload,
            Frame::Credit { .. } | Frame::Goodbye | Frame::KeepAlive => &[],
        }
    }

    /// The encoded header and its length (6 or 14 bytes).
    ///
    /// Errors with [`FrameError::TooLarge`] if the payload does not fit a `u32` length.
    pub fn header(&self) -> Result<([u8; MAX_FRAME_HEADER_LEN], usize), FrameError> {
        let zero = ChannelId::DEFAULT;
        let len = self.payload().len();
        match self {
            Frame::Message { channel, more, .. } => {
                encode_header(KIND_MESSAGE, *more, *channel, None, len)
            }
            Frame::Request { channel, id, more, .. } => {
                encode_header(KIND_REQUEST, *more, *channel, Some(*id), len)
            }
            Frame::Response { id, more, .. } => {
                encode_header(KIND_RESPONSE, *more, zero, Some(*id), len)
            }
            Frame::Credit { channel, .. } => encode_header(KIND_CREDIT, false, *channel, None, 4),
            Frame::Goodbye => encode_header(KIND_GOODBYE, false, zero, None, 0),
            Frame::KeepAlive => encode_header(KIND_KEEPALIVE, false, zero, None, 0),
        }
    }

    /// Appends the encoded frame (header, then payload) to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), FrameError> {
        let (header, n) = self.header()?;
        out.extend_from_slice(header.get(..n).unwrap_or(&header));
        if let Frame::Credit { bytes, .. } = self {
            out.extend_from_slice(&bytes.to_be_bytes());
        } else {
            out.extend_from_slice(self.payload());
        }
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
    /// The bytes are not a frame: unknown kind or channel, a Goodbye or KeepAlive with a
    /// payload, a Credit that is not four bytes, a continuation flag where none may be.
    #[error("malformed frame: {reason}")]
    Malformed {
        /// What was wrong.
        reason: &'static str,
    },
}

#[derive(Debug)]
struct Body {
    kind: u8,
    more: bool,
    channel: ChannelId,
    id: u64,
    len: usize,
    payload: Vec<u8>,
}

/// Incremental frame decoder: feed it bytes in pieces of any size, get whole frames out.
///
/// It never panics, checks a declared length against the maximum before buffering any
/// payload, and holds at most `max_frame_len` bytes of payload buffer (plus a 14-byte
/// header): the buffer grows with the bytes that arrive, never ahead of them by more than
/// [`INITIAL_PAYLOAD_CAPACITY`]. After an error it keeps returning that error.
///
/// ```
/// use llmkg_federation_core::ChannelId;
/// use llmkg_transport::tcp::{Frame, FrameDecoder};
/// let mut bytes = Vec::new();
/// let hello = Frame::message(ChannelId::DEFAULT, b"hello".to_vec());
/// hello.encode(&mut bytes).unwrap();
/// let mut decoder = FrameDecoder::new(1024);
/// let (first, second) = bytes.split_at(3);
/// assert_eq!(decoder.feed(&mut &first[..]), Ok(None));
/// assert_eq!(decoder.feed(&mut &second[..]), Ok(Some(hello)));
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
            return Ok(MIN_FRAME_HEADER_LEN);
        }
        let [_, _, _, _, kind, ..] = self.header;
        match kind & !MORE {
            KIND_MESSAGE | KIND_GOODBYE | KIND_KEEPALIVE | KIND_CREDIT => Ok(MIN_FRAME_HEADER_LEN),
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
                return self.body.take().map(Body::into_frame).transpose();
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
            let body = self.parse_header(target)?;
            self.have = 0;
            if body.len == 0 {
                return body.into_frame().map(Some);
            }
            self.body = Some(body);
        }
    }

    /// Checks a complete header of `target` bytes.
    fn parse_header(&self, target: usize) -> Result<Body, FrameError> {
        let malformed = |reason| Err(FrameError::Malformed { reason });
        let len = self.declared_len() as usize;
        let [_, _, _, _, kind, channel, i0, i1, i2, i3, i4, i5, i6, i7] = self.header;
        let id = if target == MAX_FRAME_HEADER_LEN {
            u64::from_be_bytes([i0, i1, i2, i3, i4, i5, i6, i7])
        } else {
            0
        };
        let (base, more) = (kind & !MORE, kind & MORE != 0);
        let Some(channel) = ChannelId::new(channel) else {
            return malformed("unknown channel");
        };
        let channelled = matches!(base, KIND_MESSAGE | KIND_REQUEST | KIND_CREDIT);
        if !channelled && channel != ChannelId::DEFAULT {
            return malformed("a channel on a frame that has none");
        }
        if more && !matches!(base, KIND_MESSAGE | KIND_REQUEST | KIND_RESPONSE) {
            return malformed("a continuation flag on a frame that has no parts");
        }
        match base {
            KIND_GOODBYE if len != 0 => return malformed("goodbye frame with a payload"),
            KIND_KEEPALIVE if len != 0 => return malformed("keepalive frame with a payload"),
            KIND_CREDIT if len != 4 => return malformed("credit frame not of four bytes"),
            _ => {}
        }
        Ok(Body {
            kind: base,
            more,
            channel,
            id,
            len,
            payload: Vec::with_capacity(len.min(INITIAL_PAYLOAD_CAPACITY)),
        })
    }
}

impl Body {
    fn into_frame(self) -> Result<Frame, FrameError> {
        let Body { kind, more, channel, id, payload, .. } = self;
        Ok(match kind {
            KIND_REQUEST => Frame::Request { channel, id, more, payload },
            KIND_RESPONSE => Frame::Response { id, more, payload },
            KIND_GOODBYE => Frame::Goodbye,
            KIND_KEEPALIVE => Frame::KeepAlive,
            KIND_CREDIT => {
                let bytes =
                    <[u8; 4]>::try_from(payload.as_slice()).map(u32::from_be_bytes).map_err(
                        |_| FrameError::Malformed { reason: "credit frame not of four bytes" },
                    )?;
                Frame::Credit { channel, bytes }
            }
            _ => Frame::Message { channel, more, payload },
        })
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

    fn ch(n: u8) -> ChannelId {
        ChannelId::new(n).unwrap()
    }

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
            Frame::message(ch(0), vec![1, 2, 3]),
            Frame::Request { channel: ch(3), id: 7, more: true, payload: vec![9; 300] },
            Frame::Response { id: u64::MAX, more: false, payload: Vec::new() },
            Frame::Message { channel: ch(15), more: true, payload: Vec::new() },
            Frame::Credit { channel: ch(2), bytes: 77 },
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
    fn malformed_headers_are_refused() {
        let refused = |bytes: &[u8]| {
            let mut d = FrameDecoder::new(10);
            matches!(d.feed(&mut &bytes[..]), Err(FrameError::Malformed { .. }))
        };
        assert!(refused(&[0, 0, 0, 1, 9, 0]), "unknown kind");
        assert!(refused(&[0, 0, 0, 0, 6, 0]), "kind 6 is the first unknown one");
        assert!(refused(&[0, 0, 0, 1, 3, 0]), "goodbye with a payload");
        assert!(refused(&[0, 0, 0, 1, 4, 0]), "keepalive with a payload");
        assert!(refused(&[0, 0, 0, 3, 5, 0]), "credit of three bytes");
        assert!(refused(&[0, 0, 0, 0, 0, 16]), "channel 16 does not exist");
        assert!(refused(&[0, 0, 0, 0, 3, 1]), "goodbye on a channel");
        assert!(refused(&[0, 0, 0, 0, 0x84, 0]), "keepalive in parts");
        assert!(refused(&[0, 0, 0, 4, 0x85, 0]), "credit in parts");
        assert!(refused(&[0, 0, 0, 0, 2, 1, 0, 0, 0, 0, 0, 0, 0, 0]), "response on a channel");
    }

    #[test]
    fn keepalive_is_a_six_byte_frame_with_kind_four() {
        let mut bytes = Vec::new();
        Frame::KeepAlive.encode(&mut bytes).unwrap();
        assert_eq!(bytes, [0, 0, 0, 0, 4, 0]);
        let mut d = FrameDecoder::new(0);
        let mut input = &bytes[..];
        assert_eq!(d.feed(&mut input), Ok(Some(Frame::KeepAlive)));
        assert!(input.is_empty() && d.is_idle());
    }

    #[test]
    fn partial_frame_is_truncated() {
        let mut d = FrameDecoder::new(100);
        assert_eq!(d.feed(&mut &[0, 0, 0, 5, 0, 0, 1, 2][..]), Ok(None));
        assert_eq!(d.finish(), Err(FrameError::Truncated));
    }

    #[test]
    fn capacity_grows_with_data_not_with_the_declared_length() {
        let max = 16 << 20;
        let mut d = FrameDecoder::new(max);
        let len = (max as u32).to_be_bytes();
        assert_eq!(d.feed(&mut &[len[0], len[1], len[2], len[3], 0, 0][..]), Ok(None));
        assert!(d.buffered_capacity() <= INITIAL_PAYLOAD_CAPACITY);
        let chunk = vec![0u8; 100_000];
        assert_eq!(d.feed(&mut &chunk[..]), Ok(None));
        assert!(d.buffered_capacity() <= 2 * 100_000);
    }
}
