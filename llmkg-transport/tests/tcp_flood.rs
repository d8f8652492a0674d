#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
//! The TCP listener under a flood of unauthenticated connections: idle, slow,
//! half-handshaking strangers, from one loopback address and from several (every
//! `127.0.0.x` is loopback on Linux, so binding the attacking sockets to `127.0.0.2..` stands
//! in for several hosts). Trusted peers (one reconnecting after losing its link, one
//! connecting for the first time) must still get through promptly.
//!
//! Also: what a stranger learns before it has said anything (nothing), and the deadline for
//! the first bytes.

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use llmkg_federation_core::{Incoming, NodeId, NodeKeypair, Transport};
use llmkg_transport::tcp::{
    FederationId, HELLO_LEN, Hello, NOISE_PARAMS, TcpConfig, TcpTransport, Trust,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, timeout};

/// How long a trusted peer may take to connect while the flood is on. Generous for a loaded
/// 2-core machine (unflooded, a loopback connect takes milliseconds); without shedding, the
/// flood locks newcomers out for as long as it lasts, which is longer than this.
const BOUND: Duration = Duration::from_secs(5);

/// An attacker whose connection was closed waits this long before reconnecting, so that the
/// flood is sustained without turning the test into a CPU benchmark of connection churn.
const RECONNECT_PAUSE: Duration = Duration::from_millis(100);

/// Delay between the bytes of a slow attacker's hello.
const SLOW_BYTE: Duration = Duration::from_millis(250);

fn fed() -> FederationId {
    FederationId::from_name("flood-tests")
}

fn keypair(seed: u8) -> NodeKeypair {
    NodeKeypair::from_secret_bytes([seed; 32])
}

fn id(seed: u8) -> NodeId {
    keypair(seed).node_id()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Connects and sends nothing.
    Idle,
    /// Sends a valid hello one byte at a time, slowly.
    Slow,
    /// Sends a valid hello (it knows the federation id), then stalls.
    HelloStall,
    /// Sends a valid hello and the first Noise message (costing the node its Diffie-Hellman
    /// work), then stalls.
    NoiseStall,
}

const KINDS: [Kind; 4] = [Kind::Idle, Kind::Slow, Kind::HelloStall, Kind::NoiseStall];

#[derive(Default)]
struct AttackStats {
    connects: AtomicU64,
    closed_by_node: AtomicU64,
}

async fn connect_from(source: Ipv4Addr, target: SocketAddr) -> Option<TcpStream> {
    let socket = TcpSocket::new_v4().ok()?;
    socket.bind(SocketAddr::from((source, 0))).ok()?;
    timeout(Duration::from_secs(2), socket.connect(target)).await.ok()?.ok()
}

/// Whether the node closed the connection within `within` (bytes it sends are ignored).
async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 512];
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

/// Holds the connection until the node closes it.
async fn hold(s: &mut TcpStream) {
    while !closed_within(s, Duration::from_secs(3600)).await {}
}

/// One attacker: opens a connection of its kind, holds it until the node drops it, pauses,
/// and does it again, for as long as the task runs.
async fn attacker(kind: Kind, source: Ipv4Addr, target: SocketAddr, stats: Arc<AttackStats>) {
    let hello = Hello::new(fed()).encode();
    loop {
        if let Some(mut s) = connect_from(source, target).await {
            stats.connects.fetch_add(1, Ordering::Relaxed);
            match kind {
                Kind::Idle => hold(&mut s).await,
                Kind::Slow => {
                    let mut closed = false;
                    for byte in hello {
                        if s.write_all(&[byte]).await.is_err()
                            || closed_within(&mut s, SLOW_BYTE).await
                        {
                            closed = true;
                            break;
                        }
                    }
                    if !closed {
                        hold(&mut s).await;
                    }
                }
                Kind::HelloStall => {
                    if s.write_all(&hello).await.is_ok() {
                        hold(&mut s).await;
                    }
                }
                Kind::NoiseStall => noise_stall(&mut s, &hello).await,
            }
            stats.closed_by_node.fetch_add(1, Ordering::Relaxed);
        }
        sleep(RECONNECT_PAUSE).await;
    }
}

async fn noise_stall(s: &mut TcpStream, hello: &[u8; HELLO_LEN]) {
    if s.write_all(hello).await.is_err() {
        return;
    }
    let mut theirs = [0u8; HELLO_LEN];
    if !matches!(timeout(Duration::from_secs(10), s.read_exact(&mut theirs)).await, Ok(Ok(_))) {
        return;
    }
    let mut prologue = hello.to_vec();
    prologue.extend_from_slice(&theirs);
    let static_key = snow::Builder::new(NOISE_PARAMS.parse().unwrap()).generate_keypair().unwrap();
    let mut hs = snow::Builder::new(NOISE_PARAMS.parse().unwrap())
        .local_private_key(&static_key.private)
        .unwrap()
        .prologue(&prologue)
        .unwrap()
        .build_initiator()
        .unwrap();
    let mut buf = [0u8; 128];
    let n = hs.write_message(&[], &mut buf).unwrap();
    let mut msg = (n as u16).to_be_bytes().to_vec();
    msg.extend_from_slice(&buf[..n]);
    if s.write_all(&msg).await.is_ok() {
        hold(s).await;
    }
}

/// Starts `per_kind` attackers of every kind from each source address.
fn flood(
    sources: &[Ipv4Addr],
    per_kind: usize,
    target: SocketAddr,
    stats: &Arc<AttackStats>,
) -> Vec<JoinHandle<()>> {
    let mut tasks = Vec::new();
    for &source in sources {
        for kind in KINDS {
            for _ in 0..per_kind {
                tasks.push(tokio::spawn(attacker(kind, source, target, stats.clone())));
            }
        }
    }
    tasks
}

/// Waits for `t` to report `peer` connected, at most `within`.
async fn connected_within(t: &TcpTransport, peer: NodeId, within: Duration) -> bool {
    timeout(within, async {
        loop {
            match t.recv().await {
                Ok(Incoming::PeerConnected { peer: p }) if p == peer => return,
                Ok(_) => {}
                Err(e) => panic!("recv failed: {e}"),
            }
        }
    })
    .await
    .is_ok()
}

async fn disconnected_within(t: &TcpTransport, peer: NodeId, within: Duration) -> bool {
    timeout(within, async {
        loop {
            match t.recv().await {
                Ok(Incoming::PeerDisconnected { peer: p }) if p == peer => return,
                Ok(_) => {}
                Err(e) => panic!("recv failed: {e}"),
            }
        }
    })
    .await
    .is_ok()
}

/// Starts the node `seed`, lets it dial `target`, and measures how long until its link to
/// `target` is up (the dialer reports it only after the target accepted it). `None` if not
/// within `within`.
async fn dial_and_time(
    seed: u8,
    target: &TcpTransport,
    within: Duration,
) -> (TcpTransport, Option<Duration>) {
    let dialer = TcpTransport::bind(TcpConfig::new(keypair(seed), fed())).await.unwrap();
    let start = Instant::now();
    dialer.add_peer(target.local_id(), target.local_addr()).unwrap();
    let ok = connected_within(&dialer, target.local_id(), within).await;
    (dialer, ok.then(|| start.elapsed()))
}

const VICTIM: u8 = 1;
const RECONNECTING: u8 = 2;
const FRESH: u8 = 3;
const FRESH_BASELINE: u8 = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trusted_peers_connect_through_a_flood_of_strangers() {
    let mut c = TcpConfig::new(keypair(VICTIM), fed());
    c.trust = Trust::AllowList(HashSet::from([id(RECONNECTING), id(FRESH), id(FRESH_BASELINE)]));
    let victim = TcpTransport::bind(c).await.unwrap();

    // Baseline, measured in the same run: a first connection, and a reconnection after the
    // peer lost its link (it crashed: dropped without closing).
    let (fresh_base, t_fresh_base) = dial_and_time(FRESH_BASELINE, &victim, BOUND).await;
    let t_fresh_base = t_fresh_base.expect("no flood: a fresh peer connects");
    let (old, t) = dial_and_time(RECONNECTING, &victim, BOUND).await;
    t.expect("no flood: the peer connects");
    drop(old);
    assert!(disconnected_within(&victim, id(RECONNECTING), BOUND).await);
    let (reconnected, t_reconnect_base) = dial_and_time(RECONNECTING, &victim, BOUND).await;
    let t_reconnect_base = t_reconnect_base.expect("no flood: the peer reconnects");

    // The flood: every kind of attacker, from the trusted peers' own address (127.0.0.1) and
    // from eight others.
    let stats = Arc::new(AttackStats::default());
    let target = victim.local_addr();
    let mut tasks = flood(&[Ipv4Addr::LOCALHOST], 16, target, &stats);
    let others: Vec<Ipv4Addr> = (2..=9).map(|i| Ipv4Addr::new(127, 0, 0, i)).collect();
    tasks.extend(flood(&others, 4, target, &stats));
    let attackers = tasks.len();
    sleep(Duration::from_millis(1500)).await;
    let connects_before = stats.connects.load(Ordering::Relaxed);

    // The peer that had a live link loses it and reconnects while the flood is on.
    drop(reconnected);
    assert!(disconnected_within(&victim, id(RECONNECTING), BOUND).await);
    let (reconnected, t_reconnect) = dial_and_time(RECONNECTING, &victim, BOUND).await;
    // A trusted peer that never connected before.
    let (fresh, t_fresh) = dial_and_time(FRESH, &victim, BOUND).await;
    // The existing link carried on throughout.
    fresh_base.send(victim.local_id(), b"still here".to_vec()).await.unwrap();

    let connects = stats.connects.load(Ordering::Relaxed);
    let closed = stats.closed_by_node.load(Ordering::Relaxed);
    for task in &tasks {
        task.abort();
    }
    println!(
        "flood: {attackers} attackers (idle, slow, hello-then-stall, noise-msg-1-then-stall; \
         64 from 127.0.0.1, 16 from each of 127.0.0.2..9), {connects_before} connections \
         open after 1.5 s, {connects} made in all, {closed} closed by the node"
    );
    println!("fresh peer connect time: {t_fresh_base:?} without attack, {t_fresh:?} under attack");
    println!(
        "reconnecting peer connect time: {t_reconnect_base:?} without attack, \
         {t_reconnect:?} under attack"
    );
    println!("victim stats: {:?}", victim.stats());
    assert!(
        t_reconnect.is_some(),
        "the reconnecting trusted peer did not get through the flood within {BOUND:?}"
    );
    assert!(
        t_fresh.is_some(),
        "the fresh trusted peer did not get through the flood within {BOUND:?}"
    );
    drop((reconnected, fresh, fresh_base));
    victim.close().await;
}
