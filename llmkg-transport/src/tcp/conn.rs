//! One established connection: the writer turns queued frames into encrypted chunks, the
//! reader turns chunks back into frames.
//!
//! ```text
//! chunk = length:u16be ciphertext        (a Noise transport message, at most 65535 bytes)
//! ```
//!
//! The plaintext of consecutive chunks is the frame stream of [`super::frame`]. Nonces are
//! implicit: the n-th chunk in each direction uses nonce n (TCP keeps them in order). The
//! responder's chunk 0 is empty: it tells the initiator that the responder accepted it (see
//! [`Session::send_accept`]), so both streams of frames start after the handshake's last
//! decision.
//!
//! A [`Session`] owns both nonce counters; [`Session::split`] consumes it into the only
//! [`Sealer`] and the only [`Opener`] of the connection, so no nonce is ever used twice in a
//! direction. A counter that would reach the nonce Noise reserves (2^64 - 1) ends the
//! connection instead of wrapping.

use std::sync::Arc;

use llmkg_federation_core::{Incoming, NodeId, RequestId};
use snow::StatelessTransportState;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio::time::{Instant, sleep_until};

use super::handshake::HandshakeError;
use super::transport::Inner;
use super::{Frame, FrameDecoder, FrameError, TcpError};

/// Largest Noise message, hence largest chunk ciphertext.
pub(crate) const MAX_CHUNK_LEN: usize = 65535;
/// Authentication tag appended by the AEAD.
pub(crate) const TAG_LEN: usize = 16;
/// Largest plaintext per chunk.
pub(crate) const MAX_CHUNK_PLAINTEXT: usize = MAX_CHUNK_LEN - TAG_LEN;
/// The writer hands the socket this much ciphertext at a time (or less, when the queue runs
/// dry).
const WRITE_BATCH: usize = 256 * 1024;
/// The reader's socket buffer starts this small (an idle connection costs little)...
const READ_BUFFER_INITIAL: usize = 16 * 1024;
/// ...and grows, when a chunk does not fit, up to this (several whole chunks per read).
const READ_BUFFER_MAX: usize = 256 * 1024;

/// Takes the next nonce from `counter`. Noise reserves 2^64 - 1, so the counter never gets
/// there: the connection fails with [`TcpError::Noise`] first (and is closed) rather than
/// wrapping around to a nonce already used.
fn next_nonce(counter: &mut u64) -> Result<u64, TcpError> {
    let nonce = *counter;
    if nonce == u64::MAX {
        return Err(TcpError::Noise("nonce space exhausted".into()));
    }
    *counter = nonce + 1;
    Ok(nonce)
}

/// The transport keys of one authenticated connection and the next nonce in each direction.
pub(crate) struct Session {
    cipher: StatelessTransportState,
    send_nonce: u64,
    recv_nonce: u64,
}

impl Session {
    pub(crate) fn new(cipher: StatelessTransportState) -> Self {
        Self { cipher, send_nonce: 0, recv_nonce: 0 }
    }

    /// The responder's acceptance: one empty chunk, sent once the responder has checked the
    /// initiator's identity, its trust and the peer table. Until it arrives the initiator
    /// does not consider the link up, so a refused dialer never reports a connection.
    pub(crate) async fn send_accept<W: AsyncWrite + Unpin>(
        &mut self,
        w: &mut W,
    ) -> Result<(), TcpError> {
        let mut wire = Vec::with_capacity(2 + TAG_LEN);
        seal_into(&self.cipher, &mut self.send_nonce, &[], &mut wire)?;
        w.write_all(&wire).await?;
        Ok(())
    }

    /// Waits for the responder's acceptance (see [`send_accept`](Self::send_accept)).
    pub(crate) async fn recv_accept<R: AsyncRead + Unpin>(
        &mut self,
        r: &mut R,
    ) -> Result<(), TcpError> {
        let malformed = |reason| HandshakeError::Malformed { what: "acceptance", reason };
        let mut chunk = [0u8; 2 + TAG_LEN];
        r.read_exact(&mut chunk).await.map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                TcpError::from(HandshakeError::ConnectionClosed)
            } else {
                TcpError::io(e)
            }
        })?;
        let (len, tag) = chunk.split_at(2);
        if len != (TAG_LEN as u16).to_be_bytes() {
            return Err(malformed("not an empty chunk").into());
        }
        let nonce = next_nonce(&mut self.recv_nonce)?;
        match self.cipher.read_message(nonce, tag, &mut []) {
            Ok(0) => Ok(()),
            _ => Err(malformed("did not decrypt").into()),
        }
    }

    /// The connection's one writer half and one reader half.
    pub(crate) fn split(self) -> (Sealer, Opener) {
        let cipher = Arc::new(self.cipher);
        let sealer = Sealer {
            cipher: cipher.clone(),
            nonce: self.send_nonce,
            // Both grow with use (to at most one chunk, and one batch plus two chunks).
            chunk: Vec::new(),
            wire: Vec::new(),
            written: 0,
        };
        (sealer, Opener { cipher, nonce: self.recv_nonce })
    }
}

/// Encrypts a byte stream into length-prefixed chunks appended to `wire`.
pub(crate) struct Sealer {
    cipher: Arc<StatelessTransportState>,
    nonce: u64,
    chunk: Vec<u8>,
    wire: Vec<u8>,
    /// Ciphertext bytes handed to the socket so far.
    written: u64,
}

fn seal_into(
    cipher: &StatelessTransportState,
    counter: &mut u64,
    plaintext: &[u8],
    wire: &mut Vec<u8>,
) -> Result<(), TcpError> {
    let nonce = next_nonce(counter)?;
    let start = wire.len();
    wire.resize(start + 2 + plaintext.len() + TAG_LEN, 0);
    let out = wire.get_mut(start..).unwrap_or_default();
    let (len_bytes, body) = out.split_at_mut(2.min(out.len()));
    let n =
        cipher.write_message(nonce, plaintext, body).map_err(|e| TcpError::Noise(e.to_string()))?;
    let len = u16::try_from(n).map_err(|_| TcpError::Noise("chunk too long".into()))?;
    len_bytes.copy_from_slice(&len.to_be_bytes());
    wire.truncate(start + 2 + n);
    Ok(())
}

impl Sealer {
    /// Appends plaintext; full chunks are sealed into `wire` at once.
    fn push(&mut self, mut bytes: &[u8]) -> Result<(), TcpError> {
        while !bytes.is_empty() {
            if self.chunk.is_empty() && bytes.len() >= MAX_CHUNK_PLAINTEXT {
                // Seal straight from the caller's bytes: no copy into the chunk buffer.
                let (now, rest) = bytes.split_at(MAX_CHUNK_PLAINTEXT);
                seal_into(&self.cipher, &mut self.nonce, now, &mut self.wire)?;
                bytes = rest;
                continue;
            }
            let room = MAX_CHUNK_PLAINTEXT - self.chunk.len();
            let (now, rest) = bytes.split_at(room.min(bytes.len()));
            self.chunk.extend_from_slice(now);
            bytes = rest;
            if self.chunk.len() >= MAX_CHUNK_PLAINTEXT {
                self.seal()?;
            }
        }
        Ok(())
    }

    /// Seals the pending partial chunk, if any.
    fn seal(&mut self) -> Result<(), TcpError> {
        if !self.chunk.is_empty() {
            seal_into(&self.cipher, &mut self.nonce, &self.chunk, &mut self.wire)?;
            self.chunk.clear();
        }
        Ok(())
    }

    /// Writes the sealed ciphertext to the socket.
    async fn write_out<W: AsyncWrite + Unpin>(&mut self, w: &mut W) -> Result<(), TcpError> {
        w.write_all(&self.wire).await?;
        self.written += self.wire.len() as u64;
        self.wire.clear();
        Ok(())
    }

    /// Pushes a whole frame, writing ciphertext out whenever a batch is full so that a large
    /// frame never needs a frame-sized buffer.
    async fn push_frame<W: AsyncWrite + Unpin>(
        &mut self,
        w: &mut W,
        frame: &Frame,
    ) -> Result<(), TcpError> {
        let (header, n) = frame.header()?;
        self.push(header.get(..n).unwrap_or_default())?;
        for piece in frame.payload().chunks(WRITE_BATCH) {
            self.push(piece)?;
            if self.wire.len() >= WRITE_BATCH {
                self.write_out(w).await?;
            }
        }
        Ok(())
    }

    /// Sends a goodbye and shuts the write side down.
    pub(crate) async fn goodbye<W: AsyncWrite + Unpin>(
        &mut self,
        w: &mut W,
    ) -> Result<(), TcpError> {
        self.push_frame(w, &Frame::Goodbye).await?;
        self.seal()?;
        self.write_out(w).await?;
        w.shutdown().await?;
        Ok(())
    }
}

/// Decrypts the chunks of one connection, in order.
pub(crate) struct Opener {
    cipher: Arc<StatelessTransportState>,
    nonce: u64,
}

impl Opener {
    /// Decrypts the next chunk into `plain` (which must hold its plaintext); returns the
    /// plaintext length.
    fn open(&mut self, chunk: &[u8], plain: &mut [u8]) -> Result<usize, TcpError> {
        let nonce = next_nonce(&mut self.nonce)?;
        self.cipher.read_message(nonce, chunk, plain).map_err(|_| TcpError::Decrypt)
    }
}

/// Writes frames from the peer's queue until the queue is closed and drained (the transport
/// is closing), `stop` fires (the connection is being replaced) or the socket fails. The
/// first two end with a goodbye. Frames it took but could not write are lost (at most once).
///
/// When it has written nothing for the keepalive interval, it sends a [`Frame::KeepAlive`]
/// (in its own chunk, outside the queue: the order of queued frames is untouched).
pub(crate) async fn write_loop<W: AsyncWrite + Unpin>(
    mut w: W,
    mut sealer: Sealer,
    queue: async_channel::Receiver<Frame>,
    mut stop: oneshot::Receiver<()>,
    inner: &Inner,
) -> Result<(), TcpError> {
    let interval = inner.keepalive_interval;
    let mut last_sent = Instant::now();
    // One timer per connection, re-armed only when it fires: a busy writer pays a clock
    // read per batch, not a timer registration.
    let keepalive = sleep_until(last_sent + interval);
    tokio::pin!(keepalive);
    // Once stop is seen, not one more frame is taken from the queue: the next connection's
    // writer owns it from then on.
    let mut stopping = false;
    loop {
        let next = if stopping {
            None
        } else {
            tokio::select! {
                biased;
                _ = &mut stop => None,
                frame = queue.recv() => frame.ok(),
                _ = &mut keepalive => {
                    if Instant::now() >= last_sent + interval {
                        sealer.push_frame(&mut w, &Frame::KeepAlive).await?;
                        sealer.seal()?;
                        sealer.write_out(&mut w).await?;
                        inner.stats.bytes_out.add(std::mem::take(&mut sealer.written));
                        last_sent = Instant::now();
                    }
                    keepalive.as_mut().reset(last_sent + interval);
                    continue;
                }
            }
        };
        let Some(first) = next else {
            return sealer.goodbye(&mut w).await;
        };
        let mut frames = 1u64;
        sealer.push_frame(&mut w, &first).await?;
        drop(first);
        while sealer.wire.len() < WRITE_BATCH {
            if !matches!(stop.try_recv(), Err(oneshot::error::TryRecvError::Empty)) {
                stopping = true;
                break;
            }
            let Ok(next) = queue.try_recv() else { break };
            sealer.push_frame(&mut w, &next).await?;
            frames += 1;
        }
        sealer.seal()?;
        sealer.write_out(&mut w).await?;
        last_sent = Instant::now();
        inner.stats.frames_out.add(frames);
        inner.stats.bytes_out.add(std::mem::take(&mut sealer.written));
    }
}

/// A socket buffer that hands out whole chunks as contiguous slices.
struct ChunkReader {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl ChunkReader {
    fn new() -> Self {
        Self { buf: vec![0; READ_BUFFER_INITIAL], start: 0, end: 0 }
    }

    fn available(&self) -> usize {
        self.end - self.start
    }

    /// Reads until `need` bytes are buffered. `Ok(false)` on end of stream first.
    async fn fill<R: AsyncRead + Unpin>(
        &mut self,
        r: &mut R,
        need: usize,
    ) -> Result<bool, TcpError> {
        if self.start + need > self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            if need > self.buf.len() {
                // Large chunks: this connection carries bulk data, so take the full size at
                // once (`need` is at most 2 + 65535 bytes, well below it).
                self.buf.resize(READ_BUFFER_MAX.max(need), 0);
            }
        }
        while self.available() < need {
            let Some(space) = self.buf.get_mut(self.end..) else {
                return Err(TcpError::Noise("read buffer overrun".into()));
            };
            let n = r.read(space).await?;
            if n == 0 {
                return Ok(false);
            }
            self.end += n;
        }
        Ok(true)
    }

    fn bytes(&self, from: usize, len: usize) -> &[u8] {
        self.buf.get(self.start + from..self.start + from + len).unwrap_or_default()
    }

    /// Reads until a whole chunk is buffered at the front; returns its ciphertext length
    /// (the chunk spans `2 + len` bytes). `at_frame_boundary` tells whether the end of the
    /// stream before the next chunk is a clean (if unannounced) close. Cancel-safe: bytes
    /// read are kept for the next call.
    async fn next_chunk<R: AsyncRead + Unpin>(
        &mut self,
        r: &mut R,
        at_frame_boundary: bool,
    ) -> Result<usize, TcpError> {
        if !self.fill(r, 2).await? {
            return if self.available() == 0 && at_frame_boundary {
                Err(TcpError::ConnectionLost)
            } else {
                Err(FrameError::Truncated.into())
            };
        }
        let len_bytes = self.bytes(0, 2);
        let len = usize::from(u16::from_be_bytes([
            len_bytes.first().copied().unwrap_or(0),
            len_bytes.get(1).copied().unwrap_or(0),
        ]));
        if len < TAG_LEN {
            return Err(TcpError::Decrypt);
        }
        if !self.fill(r, 2 + len).await? {
            return Err(FrameError::Truncated.into());
        }
        Ok(len)
    }
}

/// Reads, decrypts and dispatches frames until the peer says goodbye (`Ok`) or the
/// connection fails. Returns `Ok` too when the transport is closing.
///
/// Fails with [`TcpError::IdleTimeout`] when no chunk arrives for the idle timeout while it
/// waits on the socket (time spent waiting for room in the inbound queue does not count).
pub(crate) async fn read_loop<R: AsyncRead + Unpin>(
    r: &mut R,
    mut opener: Opener,
    peer: NodeId,
    inner: &Inner,
) -> Result<(), TcpError> {
    let mut reader = ChunkReader::new();
    let mut plain = Vec::new();
    let mut decoder = FrameDecoder::new(inner.max_frame_len);
    let idle_timeout = inner.idle_timeout;
    let mut last_chunk = Instant::now();
    // Re-armed only when it fires (like the writer's keepalive timer).
    let idle = sleep_until(last_chunk + idle_timeout);
    tokio::pin!(idle);
    loop {
        let at_frame_boundary = decoder.is_idle();
        let len = tokio::select! {
            biased;
            len = reader.next_chunk(r, at_frame_boundary) => len?,
            _ = &mut idle => {
                if last_chunk.elapsed() >= idle_timeout {
                    return Err(TcpError::IdleTimeout { after: idle_timeout });
                }
                idle.as_mut().reset(last_chunk + idle_timeout);
                continue;
            }
        };
        if plain.len() < len - TAG_LEN {
            plain.resize(len - TAG_LEN, 0);
        }
        let n = opener.open(reader.bytes(2, len), &mut plain)?;
        reader.start += 2 + len;
        inner.stats.bytes_in.add(2 + len as u64);
        let mut input = plain.get(..n).unwrap_or_default();
        let mut frames = 0u64;
        while let Some(frame) = decoder.feed(&mut input)? {
            let delivered = match frame {
                // Liveness only: the chunk that carried it has done its job.
                Frame::KeepAlive => continue,
                Frame::Message(payload) => {
                    inner.deliver(Incoming::Message { from: peer, payload }).await
                }
                Frame::Request { id, payload } => {
                    inner
                        .deliver(Incoming::Request { from: peer, id: RequestId(id), payload })
                        .await
                }
                Frame::Response { id, payload } => {
                    inner.complete_request(peer, id, payload);
                    true
                }
                Frame::Goodbye => {
                    inner.stats.frames_in.add(frames + 1);
                    return Ok(());
                }
            };
            frames += 1;
            if !delivered {
                return Ok(());
            }
        }
        inner.stats.frames_in.add(frames);
        // After the deliveries: a reader held up by a full inbound queue is not idle.
        last_chunk = Instant::now();
    }
}

/// Reads and discards, in the background, until the peer closes its side (or the flush
/// timeout passes), then drops the socket. Closing a socket with unread data makes the
/// kernel reset the connection, and the peer could then lose the goodbye sent just before;
/// lingering like this lets it end cleanly. This is the one task that may outlive a closed
/// or dropped transport, by at most the flush timeout.
///
/// Lingering sockets are bounded (a peer could otherwise keep one open per connection it
/// makes in quick succession): when the bound is reached, the socket closes at once and that
/// goodbye may be lost, which costs the peer nothing but a `ConnectionLost` report.
pub(crate) fn linger<R: AsyncRead + Unpin + Send + 'static>(mut r: R, inner: &Inner) {
    let Some(permit) = inner.linger_permit() else { return };
    let limit = inner.flush_timeout;
    inner.handle.spawn(async move {
        let mut sink = [0u8; 8192];
        let _ = tokio::time::timeout(limit, async {
            while let Ok(n) = r.read(&mut sink).await {
                if n == 0 {
                    break;
                }
            }
        })
        .await;
        drop(permit);
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tcp::NOISE_PARAMS;

    /// Both ends of a finished XX handshake, in memory.
    fn session_pair() -> (Session, Session) {
        let builder = || snow::Builder::new(NOISE_PARAMS.parse().unwrap());
        let (ki, kr) =
            (builder().generate_keypair().unwrap(), builder().generate_keypair().unwrap());
        let mut i = builder().local_private_key(&ki.private).unwrap().build_initiator().unwrap();
        let mut r = builder().local_private_key(&kr.private).unwrap().build_responder().unwrap();
        let (mut msg, mut payload) = ([0u8; 1024], [0u8; 1024]);
        for step in 0..3 {
            let (from, to) = if step == 1 { (&mut r, &mut i) } else { (&mut i, &mut r) };
            let n = from.write_message(&[], &mut msg).unwrap();
            to.read_message(&msg[..n], &mut payload).unwrap();
        }
        let session =
            |hs: snow::HandshakeState| Session::new(hs.into_stateless_transport_mode().unwrap());
        (session(i), session(r))
    }

    #[test]
    fn nonces_stop_short_of_the_reserved_value_instead_of_wrapping() {
        let mut counter = u64::MAX - 1;
        assert_eq!(next_nonce(&mut counter).unwrap(), u64::MAX - 1);
        assert!(matches!(next_nonce(&mut counter), Err(TcpError::Noise(_))));
        assert!(matches!(next_nonce(&mut counter), Err(TcpError::Noise(_))));
        assert_eq!(counter, u64::MAX);

        let (mut initiator, mut responder) = session_pair();
        initiator.send_nonce = u64::MAX - 1;
        responder.recv_nonce = u64::MAX - 1;
        let (mut sealer, _) = initiator.split();
        let (_, mut opener) = responder.split();
        sealer.push(b"last").unwrap();
        sealer.seal().unwrap();
        let wire = std::mem::take(&mut sealer.wire);
        let mut plain = [0u8; 64];
        assert_eq!(opener.open(&wire[2..], &mut plain).unwrap(), 4);
        assert_eq!(&plain[..4], b"last");
        // One more chunk would need the reserved nonce: refused on both sides.
        sealer.push(b"one too many").unwrap();
        assert!(matches!(sealer.seal(), Err(TcpError::Noise(_))));
        assert!(matches!(opener.open(&wire[2..], &mut plain), Err(TcpError::Noise(_))));
    }

    #[tokio::test]
    async fn the_acceptance_takes_nonce_zero_and_the_streams_continue_after_it() {
        let (mut initiator, mut responder) = session_pair();
        let mut wire = Vec::new();
        responder.send_accept(&mut wire).await.unwrap();
        assert_eq!(wire.len(), 2 + TAG_LEN);
        initiator.recv_accept(&mut &wire[..]).await.unwrap();
        // A replayed acceptance (nonce 0 again) does not decrypt.
        let replay = initiator.recv_accept(&mut &wire[..]).await;
        assert!(matches!(replay, Err(TcpError::Handshake(HandshakeError::Malformed { .. }))));
        // An acceptance with something in it is refused before decryption.
        let mut bad = vec![0, 17];
        bad.extend_from_slice(&[0; 17]);
        let (mut initiator, _) = session_pair();
        let r = initiator.recv_accept(&mut &bad[..]).await;
        assert!(matches!(r, Err(TcpError::Handshake(HandshakeError::Malformed { .. }))));
        // So does a connection that ends instead.
        let r = initiator.recv_accept(&mut &[][..]).await;
        assert!(matches!(r, Err(TcpError::Handshake(HandshakeError::ConnectionClosed))));

        // After the acceptance the responder's data uses nonce 1, which the initiator expects.
        let (mut initiator, mut responder) = session_pair();
        let mut accept = Vec::new();
        responder.send_accept(&mut accept).await.unwrap();
        initiator.recv_accept(&mut &accept[..]).await.unwrap();
        let (mut sealer, _) = responder.split();
        let (_, mut opener) = initiator.split();
        sealer.push(b"data").unwrap();
        sealer.seal().unwrap();
        let mut plain = [0u8; 64];
        assert_eq!(opener.open(&sealer.wire[2..], &mut plain).unwrap(), 4);
    }
}
