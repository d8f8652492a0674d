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
//! The loops take a narrow [`ConnCtx`] (the inbox, the request table, counters, limits), not
//! the whole transport, so they can be run and tested on their own over any byte stream.
//!
//! A [`Session`] owns both nonce counters; [`Session::split`] consumes it into the only
//! [`Sealer`] and the only [`Opener`] of the connection, so no nonce is ever used twice in a
//! direction. A counter that would reach the nonce Noise reserves (2^64 - 1) ends the
//! connection instead of wrapping.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use event_listener::listener;
use llmkg_federation_core::{ChannelId, NodeId, RequestId};
use snow::StatelessTransportState;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::runtime::Handle;
use tokio::sync::{Semaphore, oneshot};
use tokio::time::{Instant, sleep_until};

use super::handshake::HandshakeError;
use super::outbox::{MAX_FRAME_LEN, Outbox, Piece, Scheduler};
use super::transport::{Counters, Requests};
use super::{Frame, FrameDecoder, FrameError, TcpError};
use crate::inbox::{Inbox, Item, charge};

/// What a connection's read and write loops need of the transport, and nothing more.
pub(crate) struct ConnCtx {
    pub(crate) stats: Arc<Counters>,
    pub(crate) inbox: Arc<Inbox>,
    pub(crate) requests: Arc<Requests>,
    pub(crate) keepalive_interval: Duration,
    pub(crate) idle_timeout: Duration,
    pub(crate) max_message_len: usize,
    /// Bytes (as charged) a peer may have waiting per channel.
    pub(crate) window: u32,
    pub(crate) linger: Linger,
}

/// Wakes the writer of a peer's current connection when the host has taken enough of the
/// peer's messages that new credit is due. One per peer, kept across its connections (and
/// its removal and return), because entries of an old connection may be taken after a new one
/// is up: their room is the new connection's to give.
pub(crate) struct PeerSignal {
    /// Bytes taken since the writer was last woken for it.
    taken: AtomicU64,
    /// Wake the writer every this many bytes taken (a quarter window, at least one).
    batch: u64,
    /// Set when the writer should work out the peer's credit again (room was freed).
    due: AtomicBool,
    /// The outbox of the peer's current connection.
    outbox: Mutex<Weak<Outbox>>,
}

impl PeerSignal {
    pub(crate) fn new(window: u32) -> Self {
        Self {
            taken: AtomicU64::new(0),
            batch: u64::from(window / 4).max(1),
            due: AtomicBool::new(false),
            outbox: Mutex::new(Weak::new()),
        }
    }

    /// The peer's outbox from now on.
    pub(crate) fn attach(&self, outbox: &Arc<Outbox>) {
        *self.outbox.lock().unwrap_or_else(PoisonError::into_inner) = Arc::downgrade(outbox);
    }

    /// The host took `bytes` (as charged) of the peer's from some channel.
    fn taken(&self, bytes: u64) {
        let before = self.taken.fetch_add(bytes, Ordering::AcqRel);
        if before.saturating_add(bytes) >= self.batch {
            self.taken.store(0, Ordering::Release);
            self.due.store(true, Ordering::Release);
            let outbox = self.outbox.lock().unwrap_or_else(PoisonError::into_inner).upgrade();
            if let Some(outbox) = outbox {
                outbox.wake_writer();
            }
        }
    }
}

/// Flow control of one connection, shared by its reader and writer.
///
/// Credit is never remembered, it is computed: the room a peer has on a channel is the
/// window less what it has waiting there (entries of its earlier connections included) less
/// the credit it still holds on this connection (given minus received). So no credit can be
/// lost or granted twice, whatever connections come and go, and a peer cannot pile up
/// messages by reconnecting.
pub(crate) struct LinkFlow {
    outbox: Arc<Outbox>,
    signal: Arc<PeerSignal>,
    /// Credit the peer granted on this connection (Credit frames read), not yet handed to
    /// the writer.
    granted: [AtomicU64; ChannelId::COUNT],
    /// Bytes (as charged) received on this connection, per channel.
    received: [AtomicU64; ChannelId::COUNT],
}

impl LinkFlow {
    /// Flow control of a new connection to the peer whose outgoing queues are `outbox`.
    pub(crate) fn new(outbox: Arc<Outbox>, signal: Arc<PeerSignal>) -> Self {
        signal.attach(&outbox);
        Self {
            outbox,
            signal,
            granted: std::array::from_fn(|_| AtomicU64::new(0)),
            received: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    fn at(counters: &[AtomicU64; ChannelId::COUNT], channel: ChannelId) -> Option<&AtomicU64> {
        counters.get(channel.index())
    }

    /// The peer granted `bytes` more on `channel`.
    fn credit_received(&self, channel: ChannelId, bytes: u32) {
        if let Some(c) = Self::at(&self.granted, channel) {
            c.fetch_add(u64::from(bytes), Ordering::AcqRel);
        }
        self.outbox.wake_writer();
    }
}

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

    /// Pushes a control frame (credit, keepalive, goodbye) or any whole frame.
    async fn push_frame<W: AsyncWrite + Unpin>(
        &mut self,
        w: &mut W,
        frame: &Frame,
    ) -> Result<(), TcpError> {
        let (header, n) = frame.header()?;
        let header = header.get(..n).unwrap_or_default();
        match frame {
            Frame::Credit { bytes, .. } => self.push_piece(w, header, &bytes.to_be_bytes()).await,
            other => self.push_piece(w, header, other.payload()).await,
        }
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

impl Sealer {
    /// Pushes one scheduled frame, writing ciphertext out whenever a batch is full so that a
    /// long payload never needs a second buffer of its size.
    async fn push_piece<W: AsyncWrite + Unpin>(
        &mut self,
        w: &mut W,
        header: &[u8],
        payload: &[u8],
    ) -> Result<(), TcpError> {
        self.push(header)?;
        for piece in payload.chunks(WRITE_BATCH) {
            self.push(piece)?;
            if self.wire.len() >= WRITE_BATCH {
                self.write_out(w).await?;
            }
        }
        Ok(())
    }
}

/// Whether the writer was told to stop (or the one who could tell it is gone).
fn stop_requested(stop: &mut oneshot::Receiver<()>) -> bool {
    !matches!(stop.try_recv(), Err(oneshot::error::TryRecvError::Empty))
}

/// Writes frames from the peer's [`Outbox`] until the outbox is closed and drained (the
/// transport is closing or the peer was removed), `stop` fires (the connection is being
/// replaced) or the socket fails. The first two end with a goodbye. Payloads it took but
/// could not write are lost (at most once).
///
/// It sends the credit this side owes the peer first (the window at the start, then more as
/// the host takes the peer's messages; see [`LinkFlow`]), then frames chosen by the connection's [`Scheduler`]. When it
/// has written nothing for the keepalive interval, it sends a [`Frame::KeepAlive`] (in its
/// own chunk, outside the queue: the order of queued frames is untouched).
pub(crate) async fn write_loop<W: AsyncWrite + Unpin>(
    mut w: W,
    mut sealer: Sealer,
    peer: NodeId,
    flow: Arc<LinkFlow>,
    mut stop: oneshot::Receiver<()>,
    ctx: &ConnCtx,
) -> Result<(), TcpError> {
    let outbox = Arc::clone(&flow.outbox);
    let mut scheduler = Scheduler::new();
    let window = u64::from(ctx.window);
    let grant_batch = flow.signal.batch;
    // Credit given to the peer on this connection, per channel.
    let mut given = [0u64; ChannelId::COUNT];
    // What the peer is owed changes only when the host takes its messages (receiving moves
    // bytes from what it holds to what it has waiting), so credit is worked out at the start
    // and then when the signal says room was freed, not on every pass.
    let mut credit_due = true;
    let interval = ctx.keepalive_interval;
    let mut last_sent = Instant::now();
    // One timer per connection, re-armed only when it fires: a busy writer pays a clock
    // read per batch, not a timer registration.
    let keepalive = sleep_until(last_sent + interval);
    tokio::pin!(keepalive);
    loop {
        // Once stop is seen, not one more frame is taken from the outbox: the next
        // connection's writer owns it from then on.
        if stop_requested(&mut stop) {
            return sealer.goodbye(&mut w).await;
        }
        listener!(outbox.writer_event() => woken);
        for channel in ChannelId::all() {
            let granted =
                LinkFlow::at(&flow.granted, channel).map_or(0, |c| c.swap(0, Ordering::AcqRel));
            scheduler.add_credit(channel, granted);
        }
        let mut frames = 0u64;
        credit_due |= flow.signal.due.swap(false, Ordering::AcqRel);
        if std::mem::take(&mut credit_due) {
            let queued = ctx.inbox.queued_all(&peer);
            for (channel, (given, queued)) in ChannelId::all().zip(given.iter_mut().zip(queued)) {
                let received =
                    LinkFlow::at(&flow.received, channel).map_or(0, |c| c.load(Ordering::Acquire));
                let holds = given.saturating_sub(received);
                let owed = window.saturating_sub(queued.bytes).saturating_sub(holds);
                // Credit goes back in batches of a quarter window: the peer keeps most of its
                // window meanwhile, and a busy channel costs one small frame per batch.
                if owed >= grant_batch {
                    let bytes = u32::try_from(owed).unwrap_or(u32::MAX);
                    sealer.push_frame(&mut w, &Frame::Credit { channel, bytes }).await?;
                    *given += u64::from(bytes);
                }
            }
        }
        let credit_only = !sealer.wire.is_empty() || !sealer.chunk.is_empty();
        while sealer.wire.len() < WRITE_BATCH {
            if stop_requested(&mut stop) {
                sealer.seal()?;
                sealer.write_out(&mut w).await?;
                return sealer.goodbye(&mut w).await;
            }
            let Some(Piece { header, header_len, whole, range, completes }) =
                scheduler.next(&outbox)?
            else {
                break;
            };
            let header = header.get(..header_len).unwrap_or_default();
            match &whole {
                Some(item) => {
                    let payload = item.payload.get(range).unwrap_or_default();
                    sealer.push_piece(&mut w, header, payload).await?;
                }
                None => {
                    let payload = scheduler.in_progress_payload().get(range).unwrap_or_default();
                    sealer.push_piece(&mut w, header, payload).await?;
                    scheduler.part_done(completes);
                }
            }
            drop(whole);
            frames += 1;
        }
        if frames > 0 || credit_only {
            sealer.seal()?;
            sealer.write_out(&mut w).await?;
            last_sent = Instant::now();
            ctx.stats.frames_out.add(frames);
            ctx.stats.bytes_out.add(std::mem::take(&mut sealer.written));
            continue;
        }
        if outbox.is_drained() && !scheduler.is_mid_payload() {
            return sealer.goodbye(&mut w).await;
        }
        tokio::select! {
            biased;
            _ = &mut stop => return sealer.goodbye(&mut w).await,
            () = &mut woken => {}
            _ = &mut keepalive => {
                if Instant::now() >= last_sent + interval {
                    sealer.push_frame(&mut w, &Frame::KeepAlive).await?;
                    sealer.seal()?;
                    sealer.write_out(&mut w).await?;
                    ctx.stats.bytes_out.add(std::mem::take(&mut sealer.written));
                    last_sent = Instant::now();
                }
                keepalive.as_mut().reset(last_sent + interval);
            }
        }
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

/// A long payload being received in parts.
struct Assembly {
    /// Its lane: a channel, or `None` for a response.
    lane: Option<ChannelId>,
    /// The request or response id.
    id: Option<u64>,
    payload: Vec<u8>,
}

/// A payload received whole.
enum Complete {
    Message { channel: ChannelId, payload: Vec<u8> },
    Request { channel: ChannelId, id: u64, payload: Vec<u8> },
    Response { id: u64, payload: Vec<u8> },
}

/// Adds a data frame to what is being received; returns the payload it completes, if any.
fn assemble(
    assembly: &mut Option<Assembly>,
    frame: Frame,
    max_message_len: usize,
) -> Result<Option<Complete>, TcpError> {
    let (lane, id, more, payload) = match frame {
        Frame::Message { channel, more, payload } => (Some(channel), None, more, payload),
        Frame::Request { channel, id, more, payload } => (Some(channel), Some(id), more, payload),
        Frame::Response { id, more, payload } => (None, Some(id), more, payload),
        _ => return Ok(None),
    };
    let too_long = || TcpError::Protocol("a payload longer than the maximum message length");
    let payload = match assembly.take() {
        Some(mut open) if open.lane == lane => {
            if open.id != id {
                return Err(TcpError::Protocol("a part of another payload in the middle of one"));
            }
            if open.payload.len().saturating_add(payload.len()) > max_message_len {
                return Err(too_long());
            }
            open.payload.extend_from_slice(&payload);
            if more {
                *assembly = Some(open);
                return Ok(None);
            }
            open.payload
        }
        Some(open) => {
            // A frame of another lane in between the parts: only whole ones may interleave.
            *assembly = Some(open);
            if more {
                return Err(TcpError::Protocol("a second long payload before the first ended"));
            }
            payload
        }
        None => {
            if payload.len() > max_message_len {
                return Err(too_long());
            }
            if more {
                *assembly = Some(Assembly { lane, id, payload });
                return Ok(None);
            }
            payload
        }
    };
    Ok(Some(match (lane, id) {
        (Some(channel), None) => Complete::Message { channel, payload },
        (Some(channel), Some(id)) => Complete::Request { channel, id, payload },
        (None, id) => Complete::Response { id: id.unwrap_or_default(), payload },
    }))
}

/// Reads, decrypts and dispatches frames until the peer says goodbye (`Ok`) or the
/// connection fails. Returns `Ok` too when the transport is closing.
///
/// Messages and requests go to the inbox, tagged with the link's `epoch`, each within the
/// credit this side gave the peer on its channel (the peer may have at most the window
/// waiting there, counting entries of its earlier connections): a peer that sends more has
/// broken the protocol and is cut off ([`TcpError::Protocol`]). The reader itself never waits for the
/// host, so a channel the host does not read holds up no other. Responses complete their
/// requests; credit frames go to the writer.
///
/// Fails with [`TcpError::IdleTimeout`] when no chunk arrives for the idle timeout.
pub(crate) async fn read_loop<R: AsyncRead + Unpin>(
    r: &mut R,
    mut opener: Opener,
    peer: NodeId,
    epoch: u64,
    flow: Arc<LinkFlow>,
    ctx: &ConnCtx,
) -> Result<(), TcpError> {
    let mut reader = ChunkReader::new();
    let mut plain = Vec::new();
    let mut decoder = FrameDecoder::new(MAX_FRAME_LEN);
    let mut assembly = None;
    let window = u64::from(ctx.window);
    let idle_timeout = ctx.idle_timeout;
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
        last_chunk = Instant::now();
        if plain.len() < len - TAG_LEN {
            plain.resize(len - TAG_LEN, 0);
        }
        let n = opener.open(reader.bytes(2, len), &mut plain)?;
        reader.start += 2 + len;
        ctx.stats.bytes_in.add(2 + len as u64);
        let mut input = plain.get(..n).unwrap_or_default();
        let mut frames = 0u64;
        while let Some(frame) = decoder.feed(&mut input)? {
            let complete = match frame {
                // Liveness only: the chunk that carried it has done its job.
                Frame::KeepAlive => continue,
                Frame::Goodbye => {
                    ctx.stats.frames_in.add(frames);
                    return Ok(());
                }
                Frame::Credit { channel, bytes } => {
                    flow.credit_received(channel, bytes);
                    continue;
                }
                data => {
                    frames += 1;
                    match assemble(&mut assembly, data, ctx.max_message_len)? {
                        Some(complete) => complete,
                        None => continue,
                    }
                }
            };
            let (channel, item) = match complete {
                Complete::Response { id, payload } => {
                    ctx.requests.complete(peer, id, payload);
                    continue;
                }
                Complete::Message { channel, payload } => (channel, Item::Message(payload)),
                Complete::Request { channel, id, payload } => {
                    (channel, Item::Request { id: RequestId(id), payload })
                }
            };
            // An honest peer sends only while it holds credit, which it cannot while what it
            // has waiting here fills the window.
            if ctx.inbox.queued_from(channel, &peer).bytes >= window {
                return Err(TcpError::Protocol("more on a channel than it had credit for"));
            }
            let cost = charge(item.len());
            if let Some(received) = LinkFlow::at(&flow.received, channel) {
                received.fetch_add(cost, Ordering::AcqRel);
            }
            let release = {
                let signal = Arc::clone(&flow.signal);
                Box::new(move || signal.taken(cost))
            };
            if ctx.inbox.push(channel, peer, epoch, item, Some(release)).is_err() {
                // The transport is closing.
                ctx.stats.frames_in.add(frames);
                return Ok(());
            }
        }
        ctx.stats.frames_in.add(frames);
    }
}

/// Where finished sockets linger to read their peer's close.
pub(crate) struct Linger {
    pub(crate) handle: Handle,
    /// Bounds the sockets lingering at once.
    pub(crate) permits: Arc<Semaphore>,
    /// How long one lingers at most.
    pub(crate) limit: Duration,
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
pub(crate) fn linger<R: AsyncRead + Unpin + Send + 'static>(mut r: R, linger: &Linger) {
    let Ok(permit) = Arc::clone(&linger.permits).try_acquire_owned() else { return };
    let limit = linger.limit;
    linger.handle.spawn(async move {
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

    // The read and write loops on their own, over an in-memory stream, with a narrow context.

    use super::super::outbox::{Kind, Outgoing};
    use llmkg_federation_core::{Incoming, NodeKeypair};

    fn ctx(window: u32) -> ConnCtx {
        let local = NodeKeypair::from_secret_bytes([9; 32]).node_id();
        ConnCtx {
            stats: Arc::new(Counters::default()),
            inbox: Arc::new(Inbox::new(local)),
            requests: Arc::new(Requests::new()),
            keepalive_interval: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            max_message_len: 4 << 20,
            window,
            linger: Linger {
                handle: Handle::current(),
                permits: Arc::new(Semaphore::new(4)),
                limit: Duration::from_millis(100),
            },
        }
    }

    fn ch(n: u8) -> ChannelId {
        ChannelId::new(n).unwrap()
    }

    fn peer() -> NodeId {
        NodeKeypair::from_secret_bytes([8; 32]).node_id()
    }

    fn message(channel: ChannelId, payload: Vec<u8>) -> Outgoing {
        Outgoing { kind: Kind::Message, channel, payload }
    }

    fn flow(outbox: Arc<Outbox>, window: u32) -> Arc<LinkFlow> {
        Arc::new(LinkFlow::new(outbox, Arc::new(PeerSignal::new(window))))
    }

    /// The charge of a message of `len` bytes.
    fn cost(len: usize) -> u32 {
        u32::try_from(charge(len)).unwrap()
    }

    /// Runs a writer for `outbox` (with `credit` bytes per channel from the peer) into a
    /// reader with `window`, until the outbox is drained and the writer says goodbye; returns
    /// the reader's result and its context.
    async fn run_link(
        outbox: Arc<Outbox>,
        credit: u32,
        window: u32,
    ) -> (Result<(), TcpError>, ConnCtx) {
        let reader_ctx = ctx(window);
        let read = run_link_into(outbox, credit, &reader_ctx, 7).await;
        (read, reader_ctx)
    }

    /// Like [`run_link`], into the given reader context, as link `epoch`.
    async fn run_link_into(
        outbox: Arc<Outbox>,
        credit: u32,
        reader_ctx: &ConnCtx,
        epoch: u64,
    ) -> Result<(), TcpError> {
        let window = reader_ctx.window;
        let (initiator, responder) = session_pair();
        let (sealer, _) = initiator.split();
        let (_, opener) = responder.split();
        let (w, mut r) = tokio::io::duplex(1 << 16);
        let writer_ctx = ctx(window);
        let writer_flow = flow(outbox.clone(), window);
        for channel in ChannelId::all() {
            writer_flow.credit_received(channel, credit);
        }
        let reader_flow = flow(Arc::new(Outbox::new(1)), window);
        reader_ctx.inbox.link_up(peer(), epoch);
        outbox.close();
        let (_stop, stop_rx) = oneshot::channel();
        let writer = write_loop(w, sealer, peer(), writer_flow, stop_rx, &writer_ctx);
        let reader = read_loop(&mut r, opener, peer(), epoch, reader_flow, reader_ctx);
        let (written, read) = tokio::join!(writer, reader);
        if read.is_ok() {
            written.unwrap();
        }
        read
    }

    #[tokio::test]
    async fn a_peer_cannot_pile_up_messages_by_reconnecting() {
        let window = 2 * cost(1);
        let reader_ctx = ctx(window);
        // The first connection fills the window; nobody takes anything.
        let first = Arc::new(Outbox::new(10));
        for _ in 0..2 {
            first.push(message(ch(5), b"a".to_vec())).await.unwrap();
        }
        run_link_into(first, window, &reader_ctx, 1).await.unwrap();
        // A second connection that claims a fresh window is over the bound.
        let second = Arc::new(Outbox::new(10));
        second.push(message(ch(5), b"b".to_vec())).await.unwrap();
        let read = run_link_into(second, window, &reader_ctx, 2).await;
        assert!(matches!(read, Err(TcpError::Protocol(_))), "{read:?}");
        assert_eq!(reader_ctx.inbox.queued_from(ch(5), &peer()).entries, 2);
    }

    /// The credit frames a writer for `peer()` sends at its start, given what `inbox` holds.
    async fn initial_credit(inbox: Arc<Inbox>, window: u32) -> Vec<(ChannelId, u32)> {
        let (initiator, responder) = session_pair();
        let (sealer, _) = initiator.split();
        let (_, mut opener) = responder.split();
        let (w, mut r) = tokio::io::duplex(1 << 16);
        let mut writer_ctx = ctx(window);
        writer_ctx.inbox = inbox;
        let outbox = Arc::new(Outbox::new(1));
        outbox.close();
        let (_stop, stop_rx) = oneshot::channel();
        write_loop(w, sealer, peer(), flow(outbox, window), stop_rx, &writer_ctx).await.unwrap();
        let mut wire = Vec::new();
        r.read_to_end(&mut wire).await.unwrap();
        let mut decoder = FrameDecoder::new(MAX_FRAME_LEN);
        let mut credits = Vec::new();
        let mut rest = &wire[..];
        while rest.len() >= 2 {
            let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
            let mut plain = vec![0; len];
            let n = opener.open(&rest[2..2 + len], &mut plain).unwrap();
            rest = &rest[2 + len..];
            let mut input = &plain[..n];
            while let Some(frame) = decoder.feed(&mut input).unwrap() {
                if let Frame::Credit { channel, bytes } = frame {
                    credits.push((channel, bytes));
                }
            }
        }
        credits
    }

    #[tokio::test]
    async fn a_new_connection_is_given_only_the_room_left() {
        let window = 4 * cost(10);
        let inbox = Arc::new(Inbox::new(NodeKeypair::from_secret_bytes([9; 32]).node_id()));
        inbox.link_up(peer(), 1);
        for _ in 0..3 {
            inbox.push(ch(5), peer(), 1, Item::Message(vec![0; 10]), None).ok().unwrap();
        }
        let credits = initial_credit(inbox.clone(), window).await;
        // A quarter window (one message's charge) is left on channel 5: exactly a batch.
        assert!(credits.contains(&(ch(5), cost(10))), "{credits:?}");
        assert!(credits.contains(&(ch(0), window)), "{credits:?}");
        assert_eq!(credits.len(), ChannelId::COUNT);
        // With the window full, nothing is granted on that channel until the host takes.
        inbox.push(ch(5), peer(), 1, Item::Message(vec![0; 10]), None).ok().unwrap();
        let credits = initial_credit(inbox.clone(), window).await;
        assert!(!credits.iter().any(|(c, _)| *c == ch(5)), "{credits:?}");
        assert_eq!(credits.len(), ChannelId::COUNT - 1);
    }

    fn taken(ctx: &ConnCtx, channel: ChannelId) -> Vec<Vec<u8>> {
        std::iter::from_fn(|| ctx.inbox.try_recv(channel))
            .filter_map(|r| match r.unwrap() {
                Incoming::Message { payload, .. } => Some(payload),
                _ => None,
            })
            .collect()
    }

    #[tokio::test]
    async fn messages_cross_on_their_channels_and_long_ones_in_parts() {
        let outbox = Arc::new(Outbox::new(100));
        let long: Vec<u8> = (0..3 * MAX_FRAME_LEN + 17).map(|i| i as u8).collect();
        outbox.push(message(ch(1), b"one".to_vec())).await.unwrap();
        outbox.push(message(ch(2), long.clone())).await.unwrap();
        outbox.push(message(ch(1), b"two".to_vec())).await.unwrap();
        // Any credit lets a message start, however long.
        let (read, ctx) = run_link(outbox, 1 << 10, 4 << 20).await;
        read.unwrap();
        assert_eq!(taken(&ctx, ch(1)), vec![b"one".to_vec(), b"two".to_vec()]);
        assert_eq!(taken(&ctx, ch(2)), vec![long]);
        assert_eq!(ctx.stats.frames_in.get(), 2 + 4);
    }

    #[tokio::test]
    async fn without_credit_nothing_is_sent_on_a_channel() {
        // No credit: the writer holds the message; dropping the link loses it.
        let outbox = Arc::new(Outbox::new(10));
        outbox.push(message(ch(3), b"held".to_vec())).await.unwrap();
        let (initiator, responder) = session_pair();
        let (sealer, _) = initiator.split();
        let (_, opener) = responder.split();
        let (w, mut r) = tokio::io::duplex(1 << 16);
        let (writer_ctx, reader_ctx) = (ctx(1 << 20), ctx(1 << 20));
        let writer_flow = flow(outbox.clone(), 1 << 20);
        let (stop, stop_rx) = oneshot::channel();
        let reader_flow = flow(Arc::new(Outbox::new(1)), 1 << 20);
        let writer = tokio::spawn(async move {
            write_loop(w, sealer, peer(), writer_flow, stop_rx, &writer_ctx).await.unwrap();
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let _ = stop.send(());
        writer.await.unwrap();
        read_loop(&mut r, opener, peer(), 1, reader_flow, &reader_ctx).await.unwrap();
        assert!(taken(&reader_ctx, ch(3)).is_empty());
        assert_eq!(reader_ctx.stats.frames_in.get(), 0);
    }

    #[tokio::test]
    async fn a_peer_that_exceeds_its_credit_is_cut_off() {
        let outbox = Arc::new(Outbox::new(10));
        for _ in 0..3 {
            outbox.push(message(ch(0), b"x".to_vec())).await.unwrap();
        }
        // The writer was given room for 3, the reader allows 2 waiting: the third arrives
        // while the window is full.
        let (read, ctx) = run_link(outbox, 3 * cost(1), 2 * cost(1)).await;
        assert!(matches!(read, Err(TcpError::Protocol(_))), "{read:?}");
        assert_eq!(taken(&ctx, ch(0)).len(), 2);
    }

    /// Feeds hand-made frames to a reader.
    async fn read_frames(frames: &[Frame], max_message_len: usize) -> Result<(), TcpError> {
        let (initiator, responder) = session_pair();
        let (mut sealer, _) = initiator.split();
        let (_, opener) = responder.split();
        let (mut w, mut r) = tokio::io::duplex(1 << 20);
        for f in frames {
            sealer.push_frame(&mut w, f).await.unwrap();
        }
        sealer.goodbye(&mut w).await.unwrap();
        let mut c = ctx(1 << 20);
        c.max_message_len = max_message_len;
        read_loop(&mut r, opener, peer(), 1, flow(Arc::new(Outbox::new(1)), 1 << 20), &c).await
    }

    #[tokio::test]
    async fn parts_out_of_turn_and_overlong_payloads_are_protocol_violations() {
        let part = |c: u8, more: bool| Frame::Message { channel: ch(c), more, payload: vec![1; 8] };
        // A second long payload starting before the first ended.
        let r = read_frames(&[part(1, true), part(2, true)], 1 << 20).await;
        assert!(matches!(r, Err(TcpError::Protocol(_))), "{r:?}");
        // A request part in the middle of a message's parts on the same channel.
        let request = Frame::Request { channel: ch(1), id: 3, more: false, payload: vec![] };
        let r = read_frames(&[part(1, true), request], 1 << 20).await;
        assert!(matches!(r, Err(TcpError::Protocol(_))), "{r:?}");
        // Parts adding up to more than the maximum message length.
        let r = read_frames(&[part(1, true), part(1, true), part(1, false)], 20).await;
        assert!(matches!(r, Err(TcpError::Protocol(_))), "{r:?}");
        // Whole messages of other channels may come in between parts.
        let ok = read_frames(&[part(1, true), part(2, false), part(1, false)], 1 << 20).await;
        assert!(ok.is_ok(), "{ok:?}");
    }
}
