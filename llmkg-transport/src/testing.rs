//! The transport conformance suite: checks any [`Transport`] implementation against the
//! trait's contract. Enabled by the `testing` feature.
//!
//! Give the suite a function that makes a fresh pair of endpoints of your transport that can
//! reach each other, and a [`Timer`] for its deadlines; run it from a test on your runtime:
//!
//! ```
//! use std::sync::Arc;
//! use llmkg_federation_core::{NodeKeypair, Timer, Transport};
//! use llmkg_transport::testing::{Pair, Suite};
//! use llmkg_transport::{InProcessNetwork, StdTimer};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
//! let timer: Arc<dyn Timer> = Arc::new(StdTimer::new());
//! let mut seed = 0u8;
//! let report = Suite::new(Arc::clone(&timer))
//!     .run(|| {
//!         seed += 2;
//!         let net = InProcessNetwork::new(Arc::clone(&timer));
//!         let a = net.join(NodeKeypair::from_secret_bytes([seed; 32]).node_id());
//!         let b = net.join(NodeKeypair::from_secret_bytes([seed + 1; 32]).node_id());
//!         async move {
//!             let a: Arc<dyn Transport> = Arc::new(a.expect("joins"));
//!             let b: Arc<dyn Transport> = Arc::new(b.expect("joins"));
//!             Pair { a, b }
//!         }
//!     })
//!     .await?;
//! assert!(report.passed.contains(&"fifo_per_peer"));
//! # Ok::<(), llmkg_transport::testing::SuiteFailure>(())
//! # }).unwrap();
//! ```
//!
//! Each case gets a fresh pair and must finish within [`Suite::case_timeout`]. The suite
//! stops at the first failing case and names it. The cases:
//!
//! | case | checks |
//! |---|---|
//! | `delivers_messages` | a message arrives intact, both ways, with the sender's id as `from` |
//! | `fifo_per_peer` | thousands of messages of varying sizes arrive complete, in order, once |
//! | `large_message_intact` | a message of `min(max_message_len, 4 MiB)` arrives byte for byte |
//! | `oversized_refused` | a payload over `max_message_len` fails with `MessageTooLarge` and sends nothing |
//! | `unknown_peer` | sending to a node the transport cannot reach fails with `UnknownPeer` |
//! | `request_response` | a request is answered, and the answer goes to the right request |
//! | `concurrent_requests` | 32 concurrent requests answered in reverse order are each matched |
//! | `request_timeout` | an unanswered request fails with `Timeout` after (not before) its timeout; a late answer is discarded |
//! | `disconnect_fails_pending_requests` | a request waiting on a peer that closes fails with `Disconnected` naming that peer, well before its timeout |
//! | `backpressure` | a sender whose peer does not read is eventually made to wait, and nothing is lost once the peer reads |
//! | `channels_independent` | a channel whose receiver reads nothing stops its sender, not a message on another channel; then everything on it arrives in order |
//! | `send_to_self` | a message and a request to one's own id arrive on the channel they were sent on, from oneself, and the request is answered |
//! | `close` | after `close`, operations fail with `Closed` and the peer sees `PeerDisconnected` |

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::{Either, join, join_all, select};
use llmkg_federation_core::{
    ChannelId, Incoming, NodeKeypair, RequestId, Timer, Transport, TransportError,
};
use thiserror::Error;

/// Two endpoints of the transport under test that can reach each other.
pub struct Pair {
    /// One endpoint.
    pub a: Arc<dyn Transport>,
    /// The other.
    pub b: Arc<dyn Transport>,
}

/// The cases that passed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SuiteReport {
    /// Case names, in the order they ran.
    pub passed: Vec<&'static str>,
}

/// The first case that failed, and why.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("transport conformance case `{case}` failed: {reason}")]
pub struct SuiteFailure {
    /// The case's name (see the [module documentation](self)).
    pub case: &'static str,
    /// What went wrong.
    pub reason: String,
}

type CaseResult = Result<(), String>;

/// The conformance suite. See the [module documentation](self).
#[derive(Clone)]
pub struct Suite {
    timer: Arc<dyn Timer>,
    case_timeout: Duration,
    backpressure_bytes: usize,
}

impl Suite {
    /// The suite with default settings; deadlines sleep on `timer`.
    pub fn new(timer: Arc<dyn Timer>) -> Self {
        Self { timer, case_timeout: Duration::from_secs(30), backpressure_bytes: 64 << 20 }
    }

    /// How long one case may take before it counts as failed. Default 30 s.
    pub fn case_timeout(mut self, timeout: Duration) -> Self {
        self.case_timeout = timeout;
        self
    }

    /// How many bytes the `backpressure` case offers to a peer that does not read before
    /// concluding the transport queues without bound. Default 64 MiB; set it above what your
    /// transport can buffer in queues and socket buffers together.
    pub fn backpressure_bytes(mut self, bytes: usize) -> Self {
        self.backpressure_bytes = bytes;
        self
    }

    /// Runs every case, each on a fresh pair from `make_pair`.
    pub async fn run<F, Fut>(&self, mut make_pair: F) -> Result<SuiteReport, SuiteFailure>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Pair>,
    {
        let mut passed = Vec::new();
        macro_rules! case {
            ($name:literal, $body:expr) => {{
                let pair = make_pair().await;
                let outcome = self.bounded($body(self, &pair)).await;
                pair.a.close().await;
                pair.b.close().await;
                match outcome {
                    Some(Ok(())) => passed.push($name),
                    Some(Err(reason)) => return Err(SuiteFailure { case: $name, reason }),
                    None => {
                        return Err(SuiteFailure {
                            case: $name,
                            reason: format!("did not finish within {:?}", self.case_timeout),
                        });
                    }
                }
            }};
        }
        case!("delivers_messages", Suite::delivers_messages);
        case!("fifo_per_peer", Suite::fifo_per_peer);
        case!("large_message_intact", Suite::large_message_intact);
        case!("oversized_refused", Suite::oversized_refused);
        case!("unknown_peer", Suite::unknown_peer);
        case!("request_response", Suite::request_response);
        case!("concurrent_requests", Suite::concurrent_requests);
        case!("request_timeout", Suite::request_timeout);
        case!("disconnect_fails_pending_requests", Suite::disconnect_fails_pending_requests);
        case!("backpressure", Suite::backpressure);
        case!("channels_independent", Suite::channels_independent);
        case!("send_to_self", Suite::send_to_self);
        case!("close", Suite::close);
        Ok(SuiteReport { passed })
    }

    /// `None` if `fut` did not finish within the case timeout.
    async fn bounded<T>(&self, fut: impl Future<Output = T>) -> Option<T> {
        self.within(self.case_timeout, fut).await
    }

    async fn within<T>(&self, limit: Duration, fut: impl Future<Output = T>) -> Option<T> {
        let deadline = self.timer.now() + limit;
        match select(Box::pin(fut), self.timer.sleep_until(deadline)).await {
            Either::Left((value, _)) => Some(value),
            Either::Right(_) => None,
        }
    }

    async fn delivers_messages(&self, pair: &Pair) -> CaseResult {
        let (a, b) = (&pair.a, &pair.b);
        a.send(b.local_id(), b"from a".to_vec()).await.map_err(|e| format!("a→b send: {e}"))?;
        expect_message(b, a.local_id(), b"from a").await?;
        b.send(a.local_id(), b"from b".to_vec()).await.map_err(|e| format!("b→a send: {e}"))?;
        expect_message(a, b.local_id(), b"from b").await?;
        // An empty payload is a valid message too.
        a.send(b.local_id(), Vec::new()).await.map_err(|e| format!("empty send: {e}"))?;
        expect_message(b, a.local_id(), b"").await
    }

    async fn fifo_per_peer(&self, pair: &Pair) -> CaseResult {
        const COUNT: u64 = 5_000;
        let (a, b) = (&pair.a, &pair.b);
        let sender = async {
            for seq in 0..COUNT {
                a.send(b.local_id(), numbered(seq, (seq % 300) as usize))
                    .await
                    .map_err(|e| format!("send #{seq}: {e}"))?;
            }
            Ok::<(), String>(())
        };
        let receiver = async {
            for expected in 0..COUNT {
                let (from, payload) = next_message(b).await?;
                if from != a.local_id() {
                    return Err(format!("message #{expected} claims to be from {from}"));
                }
                let seq = parse_numbered(&payload)?;
                if seq != expected {
                    return Err(format!("expected message #{expected}, got #{seq}"));
                }
                if payload.len() != 8 + (seq % 300) as usize {
                    return Err(format!("message #{seq} arrived with the wrong length"));
                }
            }
            Ok::<(), String>(())
        };
        let (sent, received) = join(sender, receiver).await;
        sent.and(received)
    }

    async fn large_message_intact(&self, pair: &Pair) -> CaseResult {
        let (a, b) = (&pair.a, &pair.b);
        let len = a.max_message_len().min(4 << 20);
        let payload: Vec<u8> =
            (0..len).map(|i| (i as u32).wrapping_mul(2_654_435_761) as u8).collect();
        let (sent, received) = join(a.send(b.local_id(), payload.clone()), next_message(b)).await;
        sent.map_err(|e| format!("sending {len} bytes: {e}"))?;
        let (_, got) = received?;
        if got != payload {
            return Err(format!("a {len}-byte message arrived altered ({} bytes)", got.len()));
        }
        Ok(())
    }

    async fn oversized_refused(&self, pair: &Pair) -> CaseResult {
        let (a, b) = (&pair.a, &pair.b);
        let max = a.max_message_len();
        if max >= 256 << 20 {
            // Allocating more than this only to see it refused is not worth it; the size check
            // is then the implementation's own test.
            return Ok(());
        }
        match a.send(b.local_id(), vec![0; max + 1]).await {
            Err(TransportError::MessageTooLarge { len, max: reported })
                if len == max + 1 && reported == max => {}
            other => return Err(format!("sending max+1 bytes gave {other:?}")),
        }
        // Nothing of it was sent: the next message b sees is the one after.
        a.send(b.local_id(), b"after".to_vec()).await.map_err(|e| format!("send: {e}"))?;
        expect_message(b, a.local_id(), b"after").await
    }

    async fn unknown_peer(&self, pair: &Pair) -> CaseResult {
        let stranger = NodeKeypair::from_secret_bytes([0xA5; 32]).node_id();
        match pair.a.send(stranger, b"hello?".to_vec()).await {
            Err(TransportError::UnknownPeer(id)) if id == stranger => Ok(()),
            other => Err(format!("sending to an unknown node gave {other:?}")),
        }
    }

    async fn request_response(&self, pair: &Pair) -> CaseResult {
        let (a, b) = (&pair.a, &pair.b);
        let server = async {
            let (from, id, payload) = next_request(b).await?;
            if from != a.local_id() {
                return Err(format!("request claims to be from {from}"));
            }
            b.respond(from, id, answer(&payload)).await.map_err(|e| format!("respond: {e}"))
        };
        let client = a.request(b.local_id(), b"question".to_vec(), Duration::from_secs(10));
        let (served, response) = join(server, client).await;
        served?;
        let response = response.map_err(|e| format!("request: {e}"))?;
        if response != answer(b"question") {
            return Err(format!("wrong response {response:?}"));
        }
        Ok(())
    }

    async fn concurrent_requests(&self, pair: &Pair) -> CaseResult {
        const COUNT: u64 = 32;
        let (a, b) = (&pair.a, &pair.b);
        let server = async {
            let mut requests = Vec::new();
            while requests.len() < COUNT as usize {
                requests.push(next_request(b).await?);
            }
            for (from, id, payload) in requests.into_iter().rev() {
                b.respond(from, id, answer(&payload)).await.map_err(|e| format!("respond: {e}"))?;
            }
            Ok::<(), String>(())
        };
        let clients = join_all((0..COUNT).map(|seq| async move {
            let response = a
                .request(b.local_id(), numbered(seq, 3), Duration::from_secs(10))
                .await
                .map_err(|e| format!("request #{seq}: {e}"))?;
            if response != answer(&numbered(seq, 3)) {
                return Err(format!("request #{seq} got another request's answer"));
            }
            Ok(())
        }));
        let (served, answered) = join(server, clients).await;
        served?;
        answered.into_iter().collect()
    }

    async fn request_timeout(&self, pair: &Pair) -> CaseResult {
        let (a, b) = (&pair.a, &pair.b);
        let timeout = Duration::from_millis(200);
        let started = self.timer.now();
        let (outcome, request) =
            join(a.request(b.local_id(), b"late".to_vec(), timeout), next_request(b)).await;
        let elapsed = self.timer.now() - started;
        match outcome {
            Err(TransportError::Timeout { peer, .. }) if peer == b.local_id() => {}
            other => return Err(format!("an unanswered request gave {other:?}")),
        }
        if elapsed < timeout {
            return Err(format!("timed out after {elapsed:?}, before the {timeout:?} timeout"));
        }
        // The late answer is discarded; a new request gets its own answer.
        let (from, id, _) = request?;
        b.respond(from, id, b"stale".to_vec()).await.map_err(|e| format!("late respond: {e}"))?;
        let server = async {
            let (from, id, payload) = next_request(b).await?;
            b.respond(from, id, answer(&payload)).await.map_err(|e| format!("respond: {e}"))
        };
        let client = a.request(b.local_id(), b"fresh".to_vec(), Duration::from_secs(10));
        let (served, response) = join(server, client).await;
        served?;
        match response {
            Ok(bytes) if bytes == answer(b"fresh") => Ok(()),
            other => Err(format!("after a late answer, a new request gave {other:?}")),
        }
    }

    async fn disconnect_fails_pending_requests(&self, pair: &Pair) -> CaseResult {
        let (a, b) = (&pair.a, &pair.b);
        let b_id = b.local_id();
        // Far longer than the case may take: only the disconnect can end the request in time.
        let patience = self.case_timeout.saturating_mul(4);
        let leave = async {
            // Take the request, then leave without answering.
            next_request(b).await?;
            b.close().await;
            Ok::<(), String>(())
        };
        let (outcome, left) = join(a.request(b_id, b"unanswered".to_vec(), patience), leave).await;
        left?;
        match outcome {
            Err(TransportError::Disconnected(peer)) if peer == b_id => Ok(()),
            other => Err(format!("a request waiting on a peer that closed gave {other:?}")),
        }
    }

    async fn backpressure(&self, pair: &Pair) -> CaseResult {
        const SIZE: usize = 4096;
        let (a, b) = (&pair.a, &pair.b);
        let limit = (self.backpressure_bytes / SIZE) as u64;
        let mut accepted = 0u64;
        let mut blocked = false;
        while accepted < limit {
            let send = a.send(b.local_id(), numbered(accepted, SIZE - 8));
            match self.within(Duration::from_millis(500), send).await {
                Some(Ok(())) => accepted += 1,
                Some(Err(e)) => return Err(format!("send #{accepted}: {e}")),
                None => {
                    blocked = true;
                    break;
                }
            }
        }
        if !blocked {
            return Err(format!(
                "{} bytes were accepted for a peer that reads nothing: queues are not bounded",
                accepted * SIZE as u64
            ));
        }
        // The dropped send may or may not have been queued (see the cancellation contract).
        let marker = u64::MAX;
        let (sent, received) = join(a.send(b.local_id(), numbered(marker, 0)), async {
            let mut next = 0u64;
            loop {
                let (_, payload) = next_message(b).await?;
                let seq = parse_numbered(&payload)?;
                if seq == marker {
                    return Ok(next);
                }
                if seq != next {
                    return Err(format!("after backpressure expected #{next}, got #{seq}"));
                }
                next += 1;
            }
        })
        .await;
        sent.map_err(|e| format!("marker send: {e}"))?;
        let delivered = received?;
        if delivered < accepted {
            return Err(format!("{accepted} messages accepted but only {delivered} delivered"));
        }
        Ok(())
    }

    async fn channels_independent(&self, pair: &Pair) -> CaseResult {
        const SIZE: usize = 1024;
        let (a, b) = (&pair.a, &pair.b);
        let (busy, quiet) = (channel(1)?, channel(2)?);
        // Fill the busy channel until its sender has to wait: b reads nothing there.
        let limit = (self.backpressure_bytes / SIZE) as u64;
        let mut accepted = 0u64;
        loop {
            if accepted >= limit {
                return Err(format!("{accepted} messages accepted on a channel nobody reads"));
            }
            let send = a.send_on(busy, b.local_id(), numbered(accepted, SIZE - 8));
            match self.within(Duration::from_millis(500), send).await {
                Some(Ok(())) => accepted += 1,
                Some(Err(e)) => return Err(format!("busy send #{accepted}: {e}")),
                None => break,
            }
        }
        // The quiet channel is not held up by it, in either direction.
        let sent = self.within(Duration::from_secs(5), a.send_on(quiet, b.local_id(), b"q".into()));
        match sent.await {
            Some(Ok(())) => {}
            Some(Err(e)) => return Err(format!("quiet send: {e}")),
            None => return Err("a full channel made a send on another channel wait".into()),
        }
        let (from, payload) = self
            .within(Duration::from_secs(5), next_message_on(b, quiet))
            .await
            .ok_or("a full channel held up a message on another channel")??;
        if from != a.local_id() || payload != b"q" {
            return Err(format!("the quiet channel delivered {payload:?} from {from}"));
        }
        b.send_on(quiet, a.local_id(), b"back".to_vec()).await.map_err(|e| format!("{e}"))?;
        expect_message_on(a, quiet, b.local_id(), b"back").await?;
        // And nothing sent on the busy channel was lost or reordered.
        let mut next = 0u64;
        while next < accepted {
            let (_, payload) = next_message_on(b, busy).await?;
            let seq = parse_numbered(&payload)?;
            if seq != next {
                return Err(format!("busy channel: expected #{next}, got #{seq}"));
            }
            next += 1;
        }
        Ok(())
    }

    async fn send_to_self(&self, pair: &Pair) -> CaseResult {
        let a = &pair.a;
        let me = a.local_id();
        let lane = channel(3)?;
        a.send_on(lane, me, b"note to self".to_vec()).await.map_err(|e| format!("send: {e}"))?;
        expect_message_on(a, lane, me, b"note to self").await?;
        let ask = a.request_on(lane, me, b"q".to_vec(), Duration::from_secs(10));
        let answer_it = async {
            loop {
                match a.recv_on(lane).await.map_err(|e| format!("recv: {e}"))? {
                    Incoming::Request { from, id, payload } if from == me => {
                        a.respond(me, id, answer(&payload)).await.map_err(|e| format!("{e}"))?;
                        return Ok::<(), String>(());
                    }
                    Incoming::PeerConnected { peer } | Incoming::PeerDisconnected { peer }
                        if peer == me =>
                    {
                        return Err("connectivity reported for oneself".into());
                    }
                    Incoming::PeerConnected { .. } | Incoming::PeerDisconnected { .. } => {}
                    other => return Err(format!("expected the request, got {other:?}")),
                }
            }
        };
        let (answered, responded) = join(ask, answer_it).await;
        responded?;
        match answered {
            Ok(reply) if reply == answer(b"q") => Ok(()),
            other => Err(format!("request to oneself gave {other:?}")),
        }
    }

    async fn close(&self, pair: &Pair) -> CaseResult {
        let (a, b) = (&pair.a, &pair.b);
        let a_id = a.local_id();
        a.close().await;
        match a.send(b.local_id(), b"x".to_vec()).await {
            Err(TransportError::Closed) => {}
            other => return Err(format!("send after close gave {other:?}")),
        }
        match a.recv().await {
            Err(TransportError::Closed) => {}
            other => return Err(format!("recv after close gave {other:?}")),
        }
        loop {
            match b.recv().await {
                Ok(Incoming::PeerDisconnected { peer }) if peer == a_id => break,
                Ok(_) => {}
                Err(e) => return Err(format!("peer's recv failed before the disconnect: {e}")),
            }
        }
        match b.request(a_id, b"anyone?".to_vec(), Duration::from_millis(300)).await {
            Ok(_) => Err("a closed transport answered a request".into()),
            Err(_) => Ok(()),
        }
    }
}

fn numbered(seq: u64, padding: usize) -> Vec<u8> {
    let mut bytes = seq.to_be_bytes().to_vec();
    bytes.extend(std::iter::repeat_n((seq % 251) as u8, padding));
    bytes
}

fn parse_numbered(payload: &[u8]) -> Result<u64, String> {
    payload
        .get(..8)
        .and_then(|head| <[u8; 8]>::try_from(head).ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| format!("a {}-byte payload is not one the suite sent", payload.len()))
}

fn answer(request: &[u8]) -> Vec<u8> {
    let mut bytes = b"re:".to_vec();
    bytes.extend(request.iter().rev());
    bytes
}

fn channel(n: u8) -> Result<ChannelId, String> {
    ChannelId::new(n).ok_or_else(|| format!("channel {n} does not exist"))
}

/// The next message, skipping connectivity notifications.
async fn next_message(
    t: &Arc<dyn Transport>,
) -> Result<(llmkg_federation_core::NodeId, Vec<u8>), String> {
    next_message_on(t, ChannelId::DEFAULT).await
}

/// The next message on `channel`, skipping connectivity notifications.
async fn next_message_on(
    t: &Arc<dyn Transport>,
    channel: ChannelId,
) -> Result<(llmkg_federation_core::NodeId, Vec<u8>), String> {
    loop {
        match t.recv_on(channel).await.map_err(|e| format!("recv: {e}"))? {
            Incoming::Message { from, payload } => return Ok((from, payload)),
            Incoming::PeerConnected { .. } | Incoming::PeerDisconnected { .. } => {}
            other => return Err(format!("expected a message, got {other:?}")),
        }
    }
}

async fn next_request(
    t: &Arc<dyn Transport>,
) -> Result<(llmkg_federation_core::NodeId, RequestId, Vec<u8>), String> {
    loop {
        match t.recv().await.map_err(|e| format!("recv: {e}"))? {
            Incoming::Request { from, id, payload } => return Ok((from, id, payload)),
            Incoming::PeerConnected { .. } | Incoming::PeerDisconnected { .. } => {}
            other => return Err(format!("expected a request, got {other:?}")),
        }
    }
}

async fn expect_message(
    t: &Arc<dyn Transport>,
    from: llmkg_federation_core::NodeId,
    payload: &[u8],
) -> CaseResult {
    expect_message_on(t, ChannelId::DEFAULT, from, payload).await
}

async fn expect_message_on(
    t: &Arc<dyn Transport>,
    channel: ChannelId,
    from: llmkg_federation_core::NodeId,
    payload: &[u8],
) -> CaseResult {
    let (got_from, got) = next_message_on(t, channel).await?;
    if got_from != from {
        return Err(format!("message from {from} arrived as from {got_from}"));
    }
    if got != payload {
        return Err(format!("expected payload {payload:?}, got {got:?}"));
    }
    Ok(())
}
