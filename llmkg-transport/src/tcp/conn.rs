//! One established connection: the writer turns queued frames into encrypted chunks, the
//! reader turns chunks back into frames.
//!
//! ```text
//! chunk = length:u16be ciphertext        (a Noise transport message, at most 65535 bytes)
//! ```
//!
//! The plaintext of consecutive chunks is the frame stream of [`super::frame`]. Nonces are
//! implicit: the n-th chunk in each direction uses nonce n (TCP keeps them in order).

use std::sync::Arc;
use std::time::Duration;

use llmkg_federation_core::{Incoming, NodeId, RequestId};
use snow::StatelessTransportState;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::oneshot;

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

/// Encrypts a byte stream into length-prefixed chunks appended to `wire`.
pub(crate) struct Sealer {
    cipher: Arc<StatelessTransportState>,
    nonce: u64,
    chunk: Vec<u8>,
    pub(crate) wire: Vec<u8>,
    /// Ciphertext bytes handed to the socket so far.
    written: u64,
}

fn seal_into(
    cipher: &StatelessTransportState,
    nonce: &mut u64,
    plaintext: &[u8],
    wire: &mut Vec<u8>,
) -> Result<(), TcpError> {
    let start = wire.len();
    wire.resize(start + 2 + plaintext.len() + TAG_LEN, 0);
    let out = wire.get_mut(start..).unwrap_or_default();
    let (len_bytes, body) = out.split_at_mut(2.min(out.len()));
    let n = cipher
        .write_message(*nonce, plaintext, body)
        .map_err(|e| TcpError::Noise(e.to_string()))?;
    *nonce += 1;
    let len = u16::try_from(n).map_err(|_| TcpError::Noise("chunk too long".into()))?;
    len_bytes.copy_from_slice(&len.to_be_bytes());
    wire.truncate(start + 2 + n);
    Ok(())
}

impl Sealer {
    pub(crate) fn new(cipher: Arc<StatelessTransportState>) -> Self {
        Self {
            cipher,
            nonce: 0,
            // Both grow with use (to at most one chunk, and one batch plus two chunks).
            chunk: Vec::new(),
            wire: Vec::new(),
            written: 0,
        }
    }

    /// Appends plaintext; full chunks are sealed into `wire` at once.
    pub(crate) fn push(&mut self, mut bytes: &[u8]) -> Result<(), TcpError> {
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
    pub(crate) fn seal(&mut self) -> Result<(), TcpError> {
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
    pub(crate) async fn push_frame<W: AsyncWrite + Unpin>(
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

/// Writes frames from the peer's queue until the queue is closed and drained (the transport
/// is closing), `stop` fires (the connection is being replaced) or the socket fails. The
/// first two end with a goodbye. Frames it took but could not write are lost (at most once).
pub(crate) async fn write_loop<W: AsyncWrite + Unpin>(
    mut w: W,
    cipher: Arc<StatelessTransportState>,
    queue: async_channel::Receiver<Frame>,
    mut stop: oneshot::Receiver<()>,
    inner: &Inner,
) -> Result<(), TcpError> {
    let mut sealer = Sealer::new(cipher);
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
}

/// Reads, decrypts and dispatches frames until the peer says goodbye (`Ok`) or the
/// connection fails. Returns `Ok` too when the transport is closing.
pub(crate) async fn read_loop<R: AsyncRead + Unpin>(
    r: &mut R,
    cipher: Arc<StatelessTransportState>,
    peer: NodeId,
    inner: &Inner,
) -> Result<(), TcpError> {
    let mut reader = ChunkReader::new();
    let mut plain = Vec::new();
    let mut nonce = 0u64;
    let mut decoder = FrameDecoder::new(inner.max_frame_len);
    loop {
        if !reader.fill(r, 2).await? {
            return if reader.available() == 0 && decoder.is_idle() {
                Err(TcpError::ConnectionLost)
            } else {
                Err(FrameError::Truncated.into())
            };
        }
        let len_bytes = reader.bytes(0, 2);
        let len = usize::from(u16::from_be_bytes([
            len_bytes.first().copied().unwrap_or(0),
            len_bytes.get(1).copied().unwrap_or(0),
        ]));
        if len < TAG_LEN {
            return Err(TcpError::Decrypt);
        }
        if !reader.fill(r, 2 + len).await? {
            return Err(FrameError::Truncated.into());
        }
        if plain.len() < len - TAG_LEN {
            plain.resize(len - TAG_LEN, 0);
        }
        let n = cipher
            .read_message(nonce, reader.bytes(2, len), &mut plain)
            .map_err(|_| TcpError::Decrypt)?;
        nonce += 1;
        reader.start += 2 + len;
        inner.stats.bytes_in.add(2 + len as u64);
        let mut input = plain.get(..n).unwrap_or_default();
        let mut frames = 0u64;
        while let Some(frame) = decoder.feed(&mut input)? {
            frames += 1;
            let delivered = match frame {
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
                    inner.stats.frames_in.add(frames);
                    return Ok(());
                }
            };
            if !delivered {
                return Ok(());
            }
        }
        inner.stats.frames_in.add(frames);
    }
}

/// Reads and discards until the peer closes its side (or `limit` passes). Closing a socket
/// with unread data makes the kernel reset the connection, and the peer could then lose the
/// goodbye sent just before; lingering like this lets it end cleanly.
pub(crate) async fn linger<R: AsyncRead + Unpin>(r: &mut R, limit: Duration) {
    let mut sink = [0u8; 8192];
    let _ = tokio::time::timeout(limit, async {
        while let Ok(n) = r.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}
