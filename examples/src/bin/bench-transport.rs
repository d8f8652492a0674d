//! Benchmark of the transports: round-trip latency and one-way throughput of the TCP + Noise
//! transport between two nodes in one process, over loopback, the latency of a quiet channel
//! while another channel of the same link floods (`tcp-channels`, against the same pings on
//! the flood's channel), and the event rate of the deterministic simulator with 1,000 nodes
//! (`sim-events`).
//!
//! ```text
//! cargo run --release -p llmkg-examples --bin bench-transport -- [--json] [--case NAME]
//!     [--round-trips N] [--throughput-mib N]
//! ```
//!
//! Every byte is encrypted (Noise, ChaCha20-Poly1305) and goes through the kernel's TCP
//! stack; both nodes share this process's runtime, so the two ends compete for the same
//! cores, as they would on a 2-core host running two nodes. Each case also measures a bare
//! loopback TCP socket doing the same work on the same runtime (`plain_tcp_*`), and reports
//! the ratio, which holds better than absolute numbers on a noisy machine.
//!
//! All measuring code runs in tasks on the runtime (2 worker threads), as a host's protocol
//! logic would. Driving the client from outside the runtime (`block_on` on the main thread)
//! adds a cross-thread wake-up to every round trip, which on a small VM costs far more than
//! the transport itself (on a 2-core VM: p50 about 62 µs that way, against 11 µs in tasks).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use llmkg_examples::bench::{Case, Cli, Report, quantile, round};
use llmkg_federation_core::{ChannelId, Incoming, NodeKeypair, Transport};
use llmkg_transport::sim::workloads::{Flood, FloodConfig};
use llmkg_transport::sim::{Latency, LinkConfig, RunOutcome, SimBuilder};
use llmkg_transport::tcp::{FederationId, TcpConfig, TcpTransport, Trust};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

struct Args {
    json: bool,
    only: Option<String>,
    round_trips: usize,
    throughput_mib: usize,
}

fn args() -> Args {
    let names: Vec<&str> = CASES.iter().map(|(n, _)| *n).collect();
    let cli = Cli::parse(
        "bench-transport",
        &names,
        &[("--round-trips", 5_000.0), ("--throughput-mib", 512.0)],
    );
    Args {
        json: cli.json,
        only: cli.only.clone(),
        round_trips: (cli.get("--round-trips") as usize).max(1),
        throughput_mib: (cli.get("--throughput-mib") as usize).max(1),
    }
}

fn progress(json: bool, msg: &str) {
    if !json {
        eprintln!("  .. {msg}");
    }
}

/// A benchmark case: its name and the function that runs it and records its result.
type CaseFn = fn(&Args, &tokio::runtime::Runtime, &mut Report);

/// The cases, in the order they run. Add new cases here.
const CASES: &[(&str, CaseFn)] = &[
    ("tcp-rtt", tcp_rtt),
    ("tcp-throughput", tcp_throughput),
    ("tcp-channels", tcp_channels),
    ("sim-events", sim_events),
];

/// Two connected TCP transports on loopback: `a` dials `b`, `b` trusts `a`.
async fn tcp_pair(seed: u8) -> (TcpTransport, TcpTransport) {
    let federation = FederationId::from_name("bench");
    let a_key = NodeKeypair::from_secret_bytes([seed; 32]);
    let b_key = NodeKeypair::from_secret_bytes([seed + 1; 32]);
    let (a_id, b_id) = (a_key.node_id(), b_key.node_id());
    let a = TcpTransport::bind(TcpConfig::new(a_key, federation)).await.unwrap();
    let mut b_config = TcpConfig::new(b_key, federation);
    b_config.trust = Trust::AllowList(HashSet::from([a_id]));
    let b = TcpTransport::bind(b_config).await.unwrap();
    a.add_peer(b_id, b.local_addr()).unwrap();
    for (t, peer) in [(&a, b_id), (&b, a_id)] {
        loop {
            if let Incoming::PeerConnected { peer: p } = t.recv().await.unwrap()
                && p == peer
            {
                break;
            }
        }
    }
    (a, b)
}

/// Baseline: the same round trips over a bare loopback TCP socket (no framing, no
/// encryption, no queues), on the same runtime.
async fn plain_rtt(size: usize, warmup: usize, n: usize) -> Vec<f64> {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let echo = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        s.set_nodelay(true).unwrap();
        let mut buf = vec![0u8; size];
        while s.read_exact(&mut buf).await.is_ok() {
            if s.write_all(&buf).await.is_err() {
                break;
            }
        }
    });
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.set_nodelay(true).unwrap();
    let out = vec![0x5A; size];
    let mut back = vec![0u8; size];
    let mut samples = Vec::with_capacity(n);
    for i in 0..warmup + n {
        let start = Instant::now();
        c.write_all(&out).await.unwrap();
        c.read_exact(&mut back).await.unwrap();
        if i >= warmup {
            samples.push(start.elapsed().as_secs_f64() * 1e6);
        }
    }
    drop(c);
    echo.await.unwrap();
    samples
}

/// Baseline: the same bytes written in the same message-sized pieces to a bare loopback TCP
/// socket; returns the seconds taken.
async fn plain_throughput(size: usize, messages: usize) -> f64 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let total = size * messages;
    let sink = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = vec![0u8; 256 * 1024];
        let mut got = 0;
        while got < total {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "baseline stream ended early");
            got += n;
        }
    });
    let mut c = TcpStream::connect(addr).await.unwrap();
    let template = vec![0xA5; size];
    let start = Instant::now();
    for _ in 0..messages {
        c.write_all(&template).await.unwrap();
    }
    sink.await.unwrap();
    start.elapsed().as_secs_f64()
}

/// Request/response round trips of 256-byte payloads: `b` echoes every request.
fn tcp_rtt(a: &Args, rt: &tokio::runtime::Runtime, report: &mut Report) {
    const SIZE: usize = 256;
    let warmup = (a.round_trips / 5).max(100);
    let n = a.round_trips;
    let mut samples = rt.block_on(async {
        let (client, server) = tcp_pair(1).await;
        let server = Arc::new(server);
        let echo = {
            let server = server.clone();
            tokio::spawn(async move {
                while let Ok(event) = server.recv().await {
                    if let Incoming::Request { from, id, payload } = event
                        && server.respond(from, id, payload).await.is_err()
                    {
                        break;
                    }
                }
            })
        };
        let to = server.local_id();
        let client = Arc::new(client);
        let samples = {
            let client = client.clone();
            tokio::spawn(async move {
                let payload = vec![0x5A; SIZE];
                let timeout = Duration::from_secs(5);
                for _ in 0..warmup {
                    client.request(to, payload.clone(), timeout).await.unwrap();
                }
                let mut samples = Vec::with_capacity(n);
                for _ in 0..n {
                    let start = Instant::now();
                    let response = client.request(to, payload.clone(), timeout).await.unwrap();
                    samples.push(start.elapsed().as_secs_f64() * 1e6);
                    assert_eq!(response.len(), SIZE);
                }
                samples
            })
            .await
            .unwrap()
        };
        client.close().await;
        server.close().await;
        echo.await.unwrap();
        samples
    });
    let mut baseline =
        rt.block_on(async move { tokio::spawn(plain_rtt(SIZE, warmup, n)).await.unwrap() });
    let mean = samples.iter().sum::<f64>() / samples.len() as f64;
    let p50 = quantile(&mut samples, 0.5);
    let baseline_p50 = quantile(&mut baseline, 0.5);
    report.push(
        Case::new("tcp-rtt")
            .param("payload_bytes", SIZE)
            .param("round_trips", n)
            .param("warmup", warmup)
            .param("pattern", "request/response, encrypted, loopback")
            .metric("p50_us", round(p50, 1))
            .metric("p99_us", round(quantile(&mut samples, 0.99), 1))
            .metric("mean_us", round(mean, 1))
            .metric("plain_tcp_p50_us", round(baseline_p50, 1))
            .metric("vs_plain_tcp_ratio", round(p50 / baseline_p50, 2)),
    );
}

/// One-way stream of 64 KiB messages from `a` to `b`, timed from the first send to the last
/// message received.
fn tcp_throughput(a: &Args, rt: &tokio::runtime::Runtime, report: &mut Report) {
    const SIZE: usize = 64 * 1024;
    let messages = (a.throughput_mib << 20) / SIZE;
    let (elapsed, received_bytes) = rt.block_on(async {
        let (sender, receiver) = tcp_pair(3).await;
        let to = receiver.local_id();
        // Warm up the connection (buffers, TCP window) before timing.
        for _ in 0..64 {
            sender.send(to, vec![0; SIZE]).await.unwrap();
        }
        let mut warm = 0;
        while warm < 64 {
            if let Incoming::Message { .. } = receiver.recv().await.unwrap() {
                warm += 1;
            }
        }
        let sender = Arc::new(sender);
        let start = Instant::now();
        let producer = {
            let sender = sender.clone();
            tokio::spawn(async move {
                let template = vec![0xA5; SIZE];
                for _ in 0..messages {
                    sender.send(to, template.clone()).await.unwrap();
                }
            })
        };
        let receiver = Arc::new(receiver);
        let consumer = {
            let receiver = receiver.clone();
            tokio::spawn(async move {
                let mut bytes = 0usize;
                let mut count = 0usize;
                while count < messages {
                    if let Incoming::Message { payload, .. } = receiver.recv().await.unwrap() {
                        bytes += payload.len();
                        count += 1;
                    }
                }
                bytes
            })
        };
        let bytes = consumer.await.unwrap();
        let elapsed = start.elapsed();
        producer.await.unwrap();
        sender.close().await;
        receiver.close().await;
        (elapsed, bytes)
    });
    let secs = elapsed.as_secs_f64();
    let baseline_secs =
        rt.block_on(async move { tokio::spawn(plain_throughput(SIZE, messages)).await.unwrap() });
    let mb_per_s = received_bytes as f64 / secs / 1e6;
    let baseline_mb_per_s = (SIZE * messages) as f64 / baseline_secs / 1e6;
    report.push(
        Case::new("tcp-throughput")
            .param("payload_bytes", SIZE)
            .param("messages", messages)
            .param("total_bytes", received_bytes)
            .param("unit", "MB = 10^6 bytes of payload")
            .metric("mb_per_s", round(mb_per_s, 1))
            .metric("messages_per_s", round(messages as f64 / secs, 0))
            .metric("seconds", round(secs, 3))
            .metric("plain_tcp_mb_per_s", round(baseline_mb_per_s, 1))
            .metric("vs_plain_tcp_ratio", round(mb_per_s / baseline_mb_per_s, 3)),
    );
}

/// One-way latency of small pings on a quiet channel while another channel of the same link
/// floods a receiver that takes `CONSUME_US` per flood message, against the same pings sent
/// on the flood's channel (behind the flood), in the same run. Both ends share the process,
/// so a ping's send time is read from the same clock it is received by.
fn tcp_channels(_args: &Args, rt: &tokio::runtime::Runtime, report: &mut Report) {
    const PINGS: usize = 200;
    const FLOOD_BYTES: usize = 4096;
    const CONSUME_US: u64 = 200;
    let flood = ChannelId::new(1).unwrap();
    let quiet = ChannelId::new(2).unwrap();
    let measure = |ping: ChannelId, seed: u8| {
        rt.block_on(async move {
            let (sender, receiver) = tcp_pair(seed).await;
            let (sender, receiver) = (Arc::new(sender), Arc::new(receiver));
            let to = receiver.local_id();
            let origin = Instant::now();
            let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let flooder = {
                let (sender, stop) = (sender.clone(), stop.clone());
                tokio::spawn(async move {
                    let mut sent = 0u64;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let send = sender.send_on(flood, to, vec![0xF1; FLOOD_BYTES]);
                        if tokio::time::timeout(Duration::from_millis(5), send).await.is_ok() {
                            sent += 1;
                        }
                    }
                    sent
                })
            };
            // Pings carry their send time (µs since `origin`); flood messages start 0xF1.
            let latencies = |first: Option<u8>| {
                move |payload: &[u8]| -> Option<f64> {
                    if payload.first().copied() == first {
                        return None;
                    }
                    let sent = u64::from_be_bytes(payload.get(..8)?.try_into().ok()?);
                    Some(origin.elapsed().as_secs_f64() * 1e6 - sent as f64)
                }
            };
            let flood_consumer = {
                let receiver = receiver.clone();
                let on_ping = latencies(Some(0xF1));
                tokio::spawn(async move {
                    let mut samples = Vec::new();
                    while let Ok(event) = receiver.recv_on(flood).await {
                        if let Incoming::Message { payload, .. } = event {
                            match on_ping(&payload) {
                                Some(latency) => samples.push(latency),
                                None => tokio::time::sleep(Duration::from_micros(CONSUME_US)).await,
                            }
                            if samples.len() == PINGS {
                                break;
                            }
                        }
                    }
                    samples
                })
            };
            let quiet_consumer = (ping != flood).then(|| {
                let receiver = receiver.clone();
                let on_ping = latencies(None);
                tokio::spawn(async move {
                    let mut samples = Vec::new();
                    while samples.len() < PINGS {
                        if let Incoming::Message { payload, .. } =
                            receiver.recv_on(ping).await.unwrap()
                            && let Some(latency) = on_ping(&payload)
                        {
                            samples.push(latency);
                        }
                    }
                    samples
                })
            });
            // Let the flood fill the receiver's channel first.
            tokio::time::sleep(Duration::from_millis(200)).await;
            for _ in 0..PINGS {
                let at = origin.elapsed().as_micros() as u64;
                sender.send_on(ping, to, at.to_be_bytes().to_vec()).await.unwrap();
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            let samples = match quiet_consumer {
                Some(task) => {
                    let samples = task.await.unwrap();
                    flood_consumer.abort();
                    samples
                }
                None => flood_consumer.await.unwrap(),
            };
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            let flooded = flooder.await.unwrap();
            sender.close().await;
            receiver.close().await;
            (samples, flooded)
        })
    };
    let (mut own, flooded_own) = measure(quiet, 5);
    let (mut shared, flooded_shared) = measure(flood, 7);
    let (own_p50, own_p99) = (quantile(&mut own, 0.5), quantile(&mut own, 0.99));
    let (shared_p50, shared_p99) = (quantile(&mut shared, 0.5), quantile(&mut shared, 0.99));
    report.push(
        Case::new("tcp-channels")
            .param("pings", PINGS)
            .param("flood_message_bytes", FLOOD_BYTES)
            .param("flood_consumer_us_per_message", CONSUME_US)
            .param("pattern", "ping every 2 ms on its own channel vs on the flood's channel")
            .metric("own_channel_p50_us", round(own_p50, 1))
            .metric("own_channel_p99_us", round(own_p99, 1))
            .metric("flood_channel_p50_us", round(shared_p50, 1))
            .metric("flood_channel_p99_us", round(shared_p99, 1))
            .metric("p50_ratio", round(shared_p50 / own_p50, 1))
            .metric("flood_messages_sent", flooded_own + flooded_shared),
    );
}

/// The simulator's speed: 1,000 nodes flooding 200 rumors (fan-out 3 plus a ring successor,
/// acknowledgements and retransmission) over lossy links with 1–20 ms latency, one rumor
/// started every 20 ms of virtual time, run to quiescence. An event is a message arrival or a
/// timer firing; all counts but the rate are deterministic for the seed.
fn sim_events(_args: &Args, _rt: &tokio::runtime::Runtime, report: &mut Report) {
    const NODES: usize = 1_000;
    const RUMORS: u64 = 200;
    const SEED: u64 = 7;
    let link = LinkConfig::with_latency(Latency::Uniform {
        min: Duration::from_millis(1),
        max: Duration::from_millis(20),
    })
    .loss(0.01);
    let build = Instant::now();
    let mut sim = SimBuilder::new(SEED)
        .nodes(NODES)
        .default_link(link)
        .record_events(false)
        .build(|ctx| Flood::new(&ctx, FloodConfig::default()))
        .unwrap();
    let build_ms = build.elapsed().as_secs_f64() * 1e3;
    let ids = sim.node_ids().to_vec();
    let start = Instant::now();
    for rumor in 0..RUMORS {
        let origin = ids[(rumor as usize * 7) % ids.len()];
        sim.with_node(origin, |core, now| core.originate(now, rumor)).unwrap();
        sim.run_for(Duration::from_millis(20));
    }
    let outcome = sim.run();
    let secs = start.elapsed().as_secs_f64();
    assert!(matches!(outcome, RunOutcome::Quiescent { .. }), "did not settle: {outcome:?}");
    let events = sim.events_processed();
    let totals = sim.message_totals();
    let everyone_knows = ids
        .iter()
        .all(|id| sim.node(*id).is_some_and(|node| node.known_count() == RUMORS as usize));
    assert!(everyone_knows, "a node missed a rumor");
    report.push(
        Case::new("sim-events")
            .param("nodes", NODES)
            .param("rumors", RUMORS)
            .param("seed", SEED)
            .param("loss", 0.01)
            .metric("events_per_s", round(events as f64 / secs, 0))
            .metric("events", events)
            .metric("messages_sent", totals.sent)
            .metric("bytes_sent", totals.sent_bytes)
            .metric("virtual_seconds", round(sim.now().as_micros() as f64 / 1e6, 3))
            .metric("wall_seconds", round(secs, 3))
            .metric("build_ms", round(build_ms, 1)),
    );
}

fn main() {
    let a = args();
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mut report = Report::new("transport", a.json);
    for (name, run) in CASES {
        if a.only.as_deref().is_some_and(|only| only != *name) {
            continue;
        }
        progress(a.json, name);
        run(&a, &rt, &mut report);
    }
    report.finish();
}
