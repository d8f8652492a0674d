//! Benchmark of the security plane: access decisions over 1,000 rules (against the same
//! decision by a linear scan), certificate verification (against one bare ed25519
//! verification), durable audit appends on redb in batches (against the same bytes written to
//! redb without the Merkle log), audit proof sizes and verification at 1M entries, and sealing
//! and opening change sets (against encoding and decoding them in the clear).
//!
//! ```text
//! cargo run --release -p llmkg-examples --bin bench-governance -- [--json] [--case NAME]
//!     [--entries N] [--seconds S]
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use ed25519_dalek::Signer as _;
use llmkg_examples::bench::{Case, Cli, Report, quantile, round};
use llmkg_federation_core::security::Operation;
use llmkg_federation_core::{
    BranchName, ChangeSet, FederationId, KvBatch, KvStore, NodeCertificate, NodeKeypair, OrgId,
    OrgKeypair, RedbKv, Role, Term, Timestamp, Triple, TrustAnchors,
};
use llmkg_governance::access::{AccessPolicy, Effect, PrincipalPattern, Resource, Rule};
use llmkg_governance::audit::{self, AuditLog};
use llmkg_governance::keys::{FederationKeyring, OrgEncryptionKeypair};
use llmkg_governance::trust::Principal;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha20Rng;

#[derive(Clone)]
struct Args {
    json: bool,
    only: Option<String>,
    entries: u64,
    seconds: f64,
}

fn args() -> Args {
    let names: Vec<&str> = CASES.iter().map(|(n, _)| *n).collect();
    let cli =
        Cli::parse("bench-governance", &names, &[("--entries", 1_000_000.0), ("--seconds", 1.0)]);
    Args {
        json: cli.json,
        only: cli.only.clone(),
        entries: cli.get("--entries") as u64,
        seconds: cli.get("--seconds"),
    }
}

type CaseFn = fn(&Args, &mut Report);

const CASES: &[(&str, CaseFn)] = &[
    ("access-check", access_check),
    ("cert-verify", cert_verify),
    ("audit-append", audit_append),
    ("audit-proof", audit_proof),
    ("seal-open", seal_open),
];

fn t(s: i64) -> Timestamp {
    Timestamp::from_micros(s * 1_000_000)
}

/// 1,000 rules of 10 organizations over 20 branches: permits for anyone, organizations,
/// roles, organization roles and single nodes, half scoped to a branch and one in three
/// to a namespace, and one in twenty a forbid of one namespace of one branch.
fn policy_and_requests(
    rng: &mut ChaCha20Rng,
) -> (AccessPolicy, Vec<(Principal, Operation, BranchName, String)>) {
    let orgs: Vec<OrgId> = (0..10).map(|i| OrgId::new(format!("org{i}")).unwrap()).collect();
    let branches: Vec<BranchName> =
        (0..20).map(|i| BranchName::new(format!("branch{i}")).unwrap()).collect();
    let nodes: Vec<_> =
        (0..50u8).map(|i| NodeKeypair::from_secret_bytes([i + 1; 32]).node_id()).collect();
    let roles = [Role::Reader, Role::Writer, Role::Admin];
    let namespaces: Vec<String> = (0..30).map(|i| format!("https://data.example/ns{i}/")).collect();
    let mut rules = Vec::new();
    for i in 0..1_000 {
        // Rules for anyone are rare (one in fifty) and always name a branch; the others name an organization, a role,
        // an organization's role or a node evenly.
        let principal = match rng.random_range(0..50) {
            0 => PrincipalPattern::Any,
            1..13 => PrincipalPattern::Org(orgs[rng.random_range(0..orgs.len())].clone()),
            13..25 => PrincipalPattern::Role(roles[rng.random_range(0..3)]),
            25..37 => PrincipalPattern::OrgRole(
                orgs[rng.random_range(0..orgs.len())].clone(),
                roles[rng.random_range(0..3)],
            ),
            _ => PrincipalPattern::Node(nodes[rng.random_range(0..nodes.len())]),
        };
        let ops: Vec<Operation> =
            Operation::ALL.iter().copied().filter(|_| rng.random_range(0..3) == 0).collect();
        let ops = if ops.is_empty() { vec![Operation::Read] } else { ops };
        let id = format!("rule-{i:04}");
        // One rule in twenty forbids, always narrowly: one namespace of one branch.
        let mut rule = if rng.random_range(0..20) == 0 {
            Rule::forbid(&id, principal, ops)
                .unwrap()
                .on_branch(branches[rng.random_range(0..branches.len())].clone())
                .in_namespace(namespaces[rng.random_range(0..namespaces.len())].clone())
        } else {
            Rule::permit(&id, principal, ops).unwrap()
        };
        let for_anyone = matches!(rule.principal(), PrincipalPattern::Any);
        if rule.effect() == Effect::Permit && (for_anyone || rng.random_range(0..2) == 0) {
            rule = rule.on_branch(branches[rng.random_range(0..branches.len())].clone());
        }
        if rule.effect() == Effect::Permit && rng.random_range(0..3) == 0 {
            rule = rule.in_namespace(namespaces[rng.random_range(0..namespaces.len())].clone());
        }
        rules.push(rule);
    }
    let policy = AccessPolicy::new(orgs[0].clone(), 1, rules).unwrap();
    let requests = (0..4_096)
        .map(|_| {
            let node = nodes[rng.random_range(0..nodes.len())];
            // Half the requests come from organizations the rules do not name, half from
            // nodes without a role: a mix of permitted and denied requests.
            let org = OrgId::new(format!("org{}", rng.random_range(0..20))).unwrap();
            let role: Vec<Role> = if rng.random_range(0..2) == 0 {
                vec![]
            } else {
                vec![roles[rng.random_range(0..3)]]
            };
            let op = Operation::ALL[rng.random_range(0..Operation::ALL.len())];
            let branch = branches[rng.random_range(0..branches.len())].clone();
            let iri = format!(
                "{}p{}",
                namespaces[rng.random_range(0..namespaces.len())],
                rng.random_range(0..100)
            );
            (Principal::new(node, org, role), op, branch, iri)
        })
        .collect();
    (policy, requests)
}

/// Per-decision latency in batches of 64 decisions (a single decision is below the clock's
/// resolution), p50 and p99 over the batches.
fn decision_ns(
    requests: &[(Principal, Operation, BranchName, String)],
    seconds: f64,
    mut decide: impl FnMut(&Principal, Operation, &Resource<'_>) -> bool,
) -> (f64, f64, u64) {
    let mut samples = Vec::new();
    let mut permits = 0u64;
    let start = Instant::now();
    let mut i = 0;
    while start.elapsed().as_secs_f64() < seconds || samples.len() < 100 {
        let t0 = Instant::now();
        for _ in 0..64 {
            let (p, op, b, iri) = &requests[i % requests.len()];
            i += 1;
            permits += u64::from(decide(p, *op, &Resource::namespace(b, iri)));
        }
        samples.push(t0.elapsed().as_nanos() as f64 / 64.0);
    }
    (quantile(&mut samples, 0.5), quantile(&mut samples, 0.99), permits)
}

fn access_check(a: &Args, report: &mut Report) {
    let mut rng = ChaCha20Rng::seed_from_u64(7);
    let (policy, requests) = policy_and_requests(&mut rng);
    // Same answers both ways, on every request.
    let mut permitted = 0;
    for (p, op, b, iri) in &requests {
        let r = Resource::namespace(b, iri);
        let d = policy.decide(p, *op, &r);
        assert_eq!(d, policy.decide_unindexed(p, *op, &r));
        permitted += usize::from(d.is_permit());
    }
    let (p50, p99, _) =
        decision_ns(&requests, a.seconds, |p, op, r| policy.decide(p, op, r).is_permit());
    let (scan_p50, _, _) = decision_ns(&requests, a.seconds / 2.0, |p, op, r| {
        policy.decide_unindexed(p, op, r).is_permit()
    });
    report.push(
        Case::new("access-check")
            .param("rules", 1_000)
            .param("requests", requests.len())
            .param("permitted_share", round(permitted as f64 / requests.len() as f64, 3))
            .metric("p50_ns", round(p50, 1))
            .metric("p99_ns", round(p99, 1))
            .metric("linear_scan_p50_ns", round(scan_p50, 1))
            .metric("speedup_ratio", round(scan_p50 / p50, 2)),
    );
}

fn cert_verify(a: &Args, report: &mut Report) {
    let org = OrgId::new("acme").unwrap();
    let root = OrgKeypair::from_secret_bytes([9; 32]);
    let mut anchors = TrustAnchors::new();
    anchors.pin(org.clone(), root.root_key());
    let certs: Vec<Vec<u8>> = (0..256u32)
        .map(|i| {
            let mut secret = [0u8; 32];
            secret[..4].copy_from_slice(&i.to_le_bytes());
            secret[31] = 1;
            let node = NodeKeypair::from_secret_bytes(secret).node_id();
            root.certify(org.clone(), node, [Role::Writer], t(0), t(1_000), u64::from(i))
                .unwrap()
                .encode()
        })
        .collect();
    // Full check from bytes: decode (signature under the named root) and verify against
    // the pins at a time.
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed().as_secs_f64() < a.seconds {
        for bytes in &certs {
            let c = NodeCertificate::decode(bytes).unwrap();
            c.verify(&anchors, t(10)).unwrap();
            n += 1;
        }
    }
    let per_s = n as f64 / start.elapsed().as_secs_f64();
    // Baseline: the bare ed25519 verification of a message of the same size.
    let key = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
    let msg = vec![7u8; certs[0].len() - 64];
    let sig = key.sign(&msg);
    let vk = key.verifying_key();
    let start = Instant::now();
    let mut m = 0u64;
    while start.elapsed().as_secs_f64() < a.seconds / 2.0 {
        for _ in 0..256 {
            vk.verify_strict(&msg, &sig).unwrap();
            m += 1;
        }
    }
    let raw_per_s = m as f64 / start.elapsed().as_secs_f64();
    report.push(
        Case::new("cert-verify")
            .param("certificate_bytes", certs[0].len())
            .metric("per_s", round(per_s, 0))
            .metric("raw_ed25519_per_s", round(raw_per_s, 0))
            .metric("vs_raw_ratio", round(per_s / raw_per_s, 3)),
    );
}

fn entry(i: u64) -> Vec<u8> {
    // The size of a typical access-decision event (about 300 bytes of JSON).
    format!(
        r#"{{"at":{i},"by":"acme","event":"access-decision","federation":"{:064x}","branch":"main","node":"{:064x}","operation":"commit","approved":true,"verdicts":[{{"org":"acme","verdict":"approved","rule":"writers"}}]}}"#,
        i, i
    )
    .into_bytes()
}

fn audit_append(a: &Args, report: &mut Report) {
    let batch = 1_000u64;
    let total = (a.entries / 10).clamp(batch, 200_000);
    let dir = tempfile::tempdir().unwrap();
    let mut log = AuditLog::open(RedbKv::open(dir.path().join("audit.redb")).unwrap()).unwrap();
    let start = Instant::now();
    let mut next = 0;
    while next < total {
        let entries: Vec<Vec<u8>> = (next..next + batch).map(entry).collect();
        log.append_batch(&entries).unwrap();
        next += batch;
    }
    let secs = start.elapsed().as_secs_f64();
    let per_s = total as f64 / secs;
    // Baseline: the same entries written to redb in the same batches, no Merkle log.
    let kv = RedbKv::open(dir.path().join("plain.redb")).unwrap();
    let start = Instant::now();
    let mut next = 0;
    while next < total {
        let mut b = KvBatch::new();
        for i in next..next + batch {
            b = b.put(i.to_be_bytes().to_vec(), entry(i));
        }
        kv.write(b).unwrap();
        next += batch;
    }
    let plain_per_s = total as f64 / start.elapsed().as_secs_f64();
    report.push(
        Case::new("audit-append")
            .param("entries", total)
            .param("batch", batch)
            .param("entry_bytes", entry(0).len())
            .metric("entries_per_s", round(per_s, 0))
            .metric("plain_redb_entries_per_s", round(plain_per_s, 0))
            .metric("vs_plain_ratio", round(per_s / plain_per_s, 3)),
    );
}

fn audit_proof(a: &Args, report: &mut Report) {
    let n = a.entries;
    let dir = tempfile::tempdir().unwrap();
    let mut log = AuditLog::open(RedbKv::open(dir.path().join("audit.redb")).unwrap()).unwrap();
    let batch = 10_000u64;
    let mut next = 0;
    while next < n {
        let end = (next + batch).min(n);
        let entries: Vec<Vec<u8>> = (next..end).map(entry).collect();
        log.append_batch(&entries).unwrap();
        next = end;
    }
    let root = log.root();
    let mut rng = ChaCha20Rng::seed_from_u64(11);
    let samples = 200;
    let (mut incl_bytes, mut cons_bytes) = (0usize, 0usize);
    let mut verify_us = Vec::new();
    let mut cons_verify_us = Vec::new();
    let mut proof_us = Vec::new();
    for _ in 0..samples {
        let i = rng.random_range(0..n);
        let t0 = Instant::now();
        let proof = log.inclusion_proof(i, n).unwrap();
        proof_us.push(t0.elapsed().as_secs_f64() * 1e6);
        incl_bytes = incl_bytes.max(proof.len() * 32);
        let leaf = audit::merkle::leaf_hash(&log.entry(i).unwrap());
        let t0 = Instant::now();
        audit::verify_inclusion(&leaf, i, n, &proof, &root).unwrap();
        verify_us.push(t0.elapsed().as_secs_f64() * 1e6);
        let old = rng.random_range(1..n);
        let proof = log.consistency_proof(old, n).unwrap();
        cons_bytes = cons_bytes.max(proof.len() * 32);
        let old_root = log.root_at(old).unwrap();
        let t0 = Instant::now();
        audit::verify_consistency(old, n, &old_root, &root, &proof).unwrap();
        cons_verify_us.push(t0.elapsed().as_secs_f64() * 1e6);
    }
    report.push(
        Case::new("audit-proof")
            .param("entries", n)
            .param("samples", samples)
            .metric("inclusion_bytes", incl_bytes)
            .metric("consistency_bytes", cons_bytes)
            .metric("verify_us", round(quantile(&mut verify_us, 0.5), 2))
            .metric("consistency_verify_us", round(quantile(&mut cons_verify_us, 0.5), 2))
            .metric("inclusion_proof_us", round(quantile(&mut proof_us, 0.5), 2)),
    );
}

fn seal_open(a: &Args, report: &mut Report) {
    let federation = FederationId::from_name("bench-governance");
    let org = OrgId::new("acme").unwrap();
    let mut rng = ChaCha20Rng::seed_from_u64(13);
    let enc = OrgEncryptionKeypair::generate(&mut rng);
    let public = enc.public_key();
    let mut keyring = FederationKeyring::new(federation, org.clone(), enc);
    let admin = NodeKeypair::from_secret_bytes([5; 32]);
    keyring.rotate(&mut rng, &admin, &[(org, public)]).unwrap();
    let branch = BranchName::new("confidential").unwrap();
    // About 1 MiB of encoded change set: 8,000 triples of realistic shape.
    let triples: Vec<Triple> = (0..8_000)
        .map(|i| {
            Triple::new(
                Term::iri(format!("https://data.example/person/{i}")).unwrap(),
                Term::iri("http://xmlns.com/foaf/0.1/name").unwrap(),
                Term::string(format!("Person number {i} with a long enough name to be realistic"))
                    .unwrap(),
            )
            .unwrap()
        })
        .collect();
    let changes = ChangeSet::adding(triples);
    let plain = llmkg_federation_core::encoding::encode(&changes);
    let mb = plain.len() as f64 / 1e6;
    let start = Instant::now();
    let mut rounds = 0u64;
    while start.elapsed().as_secs_f64() < a.seconds {
        let sealed = keyring.seal(&mut rng, &branch, &changes).unwrap();
        let opened = keyring.open(&branch, &sealed).unwrap();
        assert_eq!(opened.len(), changes.len());
        rounds += 1;
    }
    let per_s = rounds as f64 * mb / start.elapsed().as_secs_f64();
    // Baseline: encode and decode the same change set in the clear.
    let start = Instant::now();
    let mut plain_rounds = 0u64;
    while start.elapsed().as_secs_f64() < a.seconds {
        let bytes = llmkg_federation_core::encoding::encode(&changes);
        let back: ChangeSet = llmkg_federation_core::encoding::decode(&bytes).unwrap();
        assert_eq!(back.len(), changes.len());
        plain_rounds += 1;
    }
    let plain_per_s = plain_rounds as f64 * mb / start.elapsed().as_secs_f64();
    report.push(
        Case::new("seal-open")
            .param("change_set_bytes", plain.len())
            .param("triples", changes.len())
            .metric("mb_per_s", round(per_s, 1))
            .metric("plain_encode_decode_mb_per_s", round(plain_per_s, 1))
            .metric("vs_plain_ratio", round(per_s / plain_per_s, 3)),
    );
}

fn main() {
    let a = args();
    let mut report = Report::new("governance", a.json);
    for (name, run) in CASES {
        if a.only.as_deref().is_some_and(|only| only != *name) {
            continue;
        }
        if !a.json {
            eprintln!("  .. {name}");
        }
        run(&a, &mut report);
    }
    report.finish();
}
