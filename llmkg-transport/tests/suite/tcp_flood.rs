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
    FederationId, HELLO_LEN, HandshakeError, Hello, NOISE_PARAMS, PROTOCOL_VERSION, TcpConfig,
    TcpError, TcpTransport, Trust,
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
const FRESH_BASELINE: u8 = 3;
/// Fresh peers under attack: seeds `FRESH..FRESH + ROUNDS`.
const FRESH: u8 = 10;
const ROUNDS: u8 = 5;

/// Waits for a message from `from` on `t`, skipping other events.
async fn message_within(t: &TcpTransport, from: NodeId, within: Duration) -> bool {
    timeout(within, async {
        loop {
            match t.recv().await {
                Ok(Incoming::Message { from: f, .. }) if f == from => return,
                Ok(_) => {}
                Err(e) => panic!("recv failed: {e}"),
            }
        }
    })
    .await
    .is_ok()
}

fn fmt_times(times: &[Option<Duration>]) -> String {
    let shown: Vec<String> = times
        .iter()
        .map(|t| t.map_or_else(|| "NOT CONNECTED".to_string(), |t| format!("{t:.1?}")))
        .collect();
    shown.join(", ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trusted_peers_connect_through_a_flood_of_strangers() {
    let mut c = TcpConfig::new(keypair(VICTIM), fed());
    let mut trusted = HashSet::from([id(RECONNECTING), id(FRESH_BASELINE)]);
    trusted.extend((FRESH..FRESH + ROUNDS).map(id));
    c.trust = Trust::AllowList(trusted);
    let victim = TcpTransport::bind(c).await.unwrap();

    // Baseline, measured in the same run: a first connection, and a reconnection after the
    // peer lost its link (it crashed: dropped without closing).
    let (fresh_base, t_fresh_base) = dial_and_time(FRESH_BASELINE, &victim, BOUND).await;
    assert!(t_fresh_base.is_some(), "no flood: a fresh peer connects");
    let (old, t) = dial_and_time(RECONNECTING, &victim, BOUND).await;
    t.expect("no flood: the peer connects");
    drop(old);
    assert!(disconnected_within(&victim, id(RECONNECTING), BOUND).await);
    let (mut reconnected, t_reconnect_base) = dial_and_time(RECONNECTING, &victim, BOUND).await;
    assert!(t_reconnect_base.is_some(), "no flood: the peer reconnects");

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
    let flood_start = Instant::now();

    // Round after round, the peer that had a live link loses it and reconnects, and a trusted
    // peer that never connected before connects, all while the flood is on.
    let mut t_reconnect = Vec::new();
    let mut t_fresh = Vec::new();
    let mut fresh_peers = Vec::new();
    for round in 0..ROUNDS {
        drop(reconnected);
        assert!(disconnected_within(&victim, id(RECONNECTING), BOUND).await);
        let (again, t) = dial_and_time(RECONNECTING, &victim, BOUND).await;
        reconnected = again;
        t_reconnect.push(t);
        let (fresh, t) = dial_and_time(FRESH + round, &victim, BOUND).await;
        fresh_peers.push(fresh);
        t_fresh.push(t);
        sleep(Duration::from_millis(200)).await;
    }
    // The link that was up before the flood carried on throughout.
    fresh_base.send(victim.local_id(), b"still here".to_vec()).await.unwrap();
    let old_link_ok = message_within(&victim, id(FRESH_BASELINE), BOUND).await;

    let flood_time = flood_start.elapsed();
    let connects = stats.connects.load(Ordering::Relaxed);
    let closed = stats.closed_by_node.load(Ordering::Relaxed);
    for task in &tasks {
        task.abort();
    }
    println!(
        "flood: {attackers} attackers (idle, slow, hello-then-stall, noise-msg-1-then-stall; \
         64 from 127.0.0.1, 16 from each of 127.0.0.2..9, each reconnecting \
         {RECONNECT_PAUSE:?} after the node drops it): {connects_before} connections in the \
         first 1.5 s, {connects} in all, {closed} closed by the node; measured for \
         {flood_time:.1?} under attack"
    );
    println!(
        "fresh trusted peer connect time: {:.1?} without attack; under attack: {}",
        t_fresh_base.unwrap_or_default(),
        fmt_times(&t_fresh)
    );
    println!(
        "reconnecting trusted peer connect time: {:.1?} without attack; under attack: {}",
        t_reconnect_base.unwrap_or_default(),
        fmt_times(&t_reconnect)
    );
    println!("victim stats: {:?}", victim.stats());
    assert!(
        t_reconnect.iter().all(Option::is_some),
        "the reconnecting trusted peer did not get through the flood within {BOUND:?}"
    );
    assert!(
        t_fresh.iter().all(Option::is_some),
        "a fresh trusted peer did not get through the flood within {BOUND:?}"
    );
    assert!(old_link_ok, "the link set up before the flood stopped carrying messages");
    let shed = victim.stats();
    assert!(shed.handshakes_shed > 0 && shed.handshakes_shed_per_address > 0, "{shed:?}");
    drop((reconnected, fresh_peers, fresh_base));
    victim.close().await;
}

// ---------------------------------------------------------------------------------------
// The policy, piece by piece
// ---------------------------------------------------------------------------------------

async fn victim_with(seed: u8, tweak: impl FnOnce(&mut TcpConfig)) -> TcpTransport {
    let mut c = TcpConfig::new(keypair(seed), fed());
    tweak(&mut c);
    TcpTransport::bind(c).await.unwrap()
}

/// Reads what the node sends until it closes the connection (or `within` passes).
async fn read_until_closed(s: &mut TcpStream, within: Duration) -> (Vec<u8>, bool) {
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    let closed = timeout(within, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .is_ok();
    (got, closed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_learns_nothing_before_naming_the_federation() {
    let node = victim_with(40, |_| {}).await;
    let addr = node.local_addr();

    // A port scanner that connects and waits hears nothing.
    let mut s = TcpStream::connect(addr).await.unwrap();
    let (got, closed) = read_until_closed(&mut s, Duration::from_millis(500)).await;
    assert!(got.is_empty() && !closed, "the node spoke first: {got:?}");

    // One that sends something else is closed without a word.
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n________________").await.unwrap();
    let (got, closed) = read_until_closed(&mut s, BOUND).await;
    assert!(got.is_empty() && closed, "got {got:?}, closed: {closed}");

    // One naming another federation learns that it is another federation, not which.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&Hello::new(FederationId::from_name("guess")).encode()).await.unwrap();
    let (got, closed) = read_until_closed(&mut s, BOUND).await;
    assert!(closed);
    let reply = Hello::decode(&got).expect("a hello");
    assert_eq!(reply.version, PROTOCOL_VERSION);
    assert_ne!(reply.federation, fed());
    assert_ne!(reply.federation, FederationId::from_name("guess"));

    // One that names this federation gets the node's hello (and then the handshake).
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&Hello::new(fed()).encode()).await.unwrap();
    let mut theirs = [0u8; HELLO_LEN];
    timeout(BOUND, s.read_exact(&mut theirs)).await.unwrap().unwrap();
    assert_eq!(Hello::decode(&theirs), Ok(Hello::new(fed())));
    node.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hello_must_arrive_well_before_the_handshake_timeout() {
    let node = victim_with(42, |c| {
        c.hello_timeout = Duration::from_millis(300);
        c.handshake_timeout = Duration::from_secs(60);
    })
    .await;
    let mut failures = node.connection_failures();
    let start = Instant::now();
    let mut silent = TcpStream::connect(node.local_addr()).await.unwrap();
    let mut slow = TcpStream::connect(node.local_addr()).await.unwrap();
    for byte in Hello::new(fed()).encode().into_iter().take(10) {
        if slow.write_all(&[byte]).await.is_err() {
            break;
        }
        sleep(Duration::from_millis(100)).await;
    }
    let (_, silent_closed) = read_until_closed(&mut silent, BOUND).await;
    let (_, slow_closed) = read_until_closed(&mut slow, BOUND).await;
    println!("silent and slow clients closed after {:.1?}", start.elapsed());
    assert!(silent_closed && slow_closed);
    for _ in 0..2 {
        let f = timeout(BOUND, failures.recv()).await.unwrap().unwrap();
        assert!(
            matches!(
                f.error,
                TcpError::Handshake(HandshakeError::Timeout { after })
                    if after == Duration::from_millis(300)
            ),
            "{:?}",
            f.error
        );
    }
    node.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_address_sheds_its_own_least_advanced_handshake() {
    let node = victim_with(44, |c| {
        c.max_pending_per_address = 3;
        c.hello_timeout = Duration::from_secs(30);
        c.handshake_timeout = Duration::from_secs(60);
    })
    .await;
    let addr = node.local_addr();
    let busy = Ipv4Addr::new(127, 0, 0, 44);
    // The oldest has sent its hello (it knows the federation); two younger ones are idle.
    let mut advanced = connect_from(busy, addr).await.unwrap();
    advanced.write_all(&Hello::new(fed()).encode()).await.unwrap();
    let mut theirs = [0u8; HELLO_LEN];
    timeout(BOUND, advanced.read_exact(&mut theirs)).await.unwrap().unwrap();
    let mut idle_old = connect_from(busy, addr).await.unwrap();
    sleep(Duration::from_millis(100)).await;
    let mut idle_young = connect_from(busy, addr).await.unwrap();
    // An idle connection from elsewhere.
    let mut elsewhere = connect_from(Ipv4Addr::new(127, 0, 0, 45), addr).await.unwrap();
    sleep(Duration::from_millis(200)).await;
    assert_eq!(node.stats().handshakes_shed, 0);

    // A fourth connection from the busy address sheds its oldest idle one.
    let _newcomer = connect_from(busy, addr).await.unwrap();
    let (_, closed) = read_until_closed(&mut idle_old, BOUND).await;
    assert!(closed, "the oldest idle handshake of the busy address was not shed");
    let short = Duration::from_millis(300);
    assert!(!read_until_closed(&mut advanced, short).await.1, "the advanced one was shed");
    assert!(!read_until_closed(&mut idle_young, short).await.1, "the younger one was shed");
    assert!(!read_until_closed(&mut elsewhere, short).await.1, "another address was shed");
    let stats = node.stats();
    assert_eq!((stats.handshakes_shed, stats.handshakes_shed_per_address), (1, 1), "{stats:?}");
    node.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_overall_limit_the_fullest_address_is_shed_and_accepting_goes_on() {
    let node = victim_with(46, |c| {
        c.max_pending_handshakes = 4;
        c.max_pending_per_address = 3;
        c.hello_timeout = Duration::from_secs(30);
        c.handshake_timeout = Duration::from_secs(60);
    })
    .await;
    let addr = node.local_addr();
    let heavy = Ipv4Addr::new(127, 0, 0, 46);
    let mut lone = connect_from(Ipv4Addr::new(127, 0, 0, 47), addr).await.unwrap();
    sleep(Duration::from_millis(100)).await;
    let mut heavy_conns = Vec::new();
    for _ in 0..3 {
        heavy_conns.push(connect_from(heavy, addr).await.unwrap());
        sleep(Duration::from_millis(50)).await;
    }
    sleep(Duration::from_millis(200)).await;
    // Every slot is taken; a newcomer from a third address is accepted, and the oldest
    // handshake of the fullest address makes room (not the older lone connection).
    let mut newcomer = connect_from(Ipv4Addr::new(127, 0, 0, 48), addr).await.unwrap();
    newcomer.write_all(&Hello::new(fed()).encode()).await.unwrap();
    let mut theirs = [0u8; HELLO_LEN];
    timeout(BOUND, newcomer.read_exact(&mut theirs)).await.unwrap().unwrap();
    let (_, closed) = read_until_closed(&mut heavy_conns[0], BOUND).await;
    assert!(closed, "the oldest handshake of the fullest address was not shed");
    assert!(!read_until_closed(&mut lone, Duration::from_millis(300)).await.1);
    let stats = node.stats();
    assert_eq!((stats.handshakes_shed, stats.handshakes_shed_per_address), (1, 0), "{stats:?}");
    node.close().await;
}
