#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
//! The independent Python verifier (`scripts/verify-audit.py`, standard library only) accepts
//! our exports and rejects tampered ones.

use std::path::PathBuf;
use std::process::Command;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::SigningKey;
use llmkg_federation_core::kv::MemoryKv;
use llmkg_governance::audit::AuditLog;
use llmkg_governance::audit::checkpoint::{Checkpoint, LogSigner, SignedNote};
use llmkg_governance::audit::export::{AuditExport, build_export, verify_export};
use llmkg_governance::audit::witness::{Witness, WitnessKey};

const ORIGIN: &str = "llmkg.example/audit";

fn export() -> AuditExport {
    let signer = LogSigner::new(ORIGIN, SigningKey::from_bytes(&[0x41; 32])).unwrap();
    let mut witnesses: Vec<Witness> = (0..2u8)
        .map(|i| {
            let key = WitnessKey::new(
                &format!("witness{i}.example/w"),
                SigningKey::from_bytes(&[0x50 + i; 32]),
            )
            .unwrap();
            let mut w = Witness::new(key);
            w.add_log(ORIGIN, signer.verifier());
            w
        })
        .collect();
    let mut log = AuditLog::open(MemoryKv::new()).unwrap();
    let mut earlier: Vec<SignedNote> = Vec::new();
    let mut last = 0;
    let mut time = 1_700_000_000;
    for (i, batch) in [100u64, 150, 50].into_iter().enumerate() {
        let entries: Vec<String> = (last..last + batch)
            .map(|n| format!("{{\"event\":\"permission\",\"n\":{n},\"batch\":{i}}}"))
            .collect();
        log.append_batch(&entries).unwrap();
        let mut note = signer.sign(&Checkpoint::new(ORIGIN, log.size(), log.root()).unwrap());
        let proof = if i == 0 { vec![] } else { log.consistency_proof(last, log.size()).unwrap() };
        for w in &mut witnesses {
            time += 7;
            note.add_signature(w.cosign(&note, &proof, time).unwrap());
        }
        earlier.push(note);
        last = log.size();
    }
    let latest = earlier.pop().unwrap();
    let keys: Vec<_> = witnesses.iter().map(Witness::verifier).collect();
    build_export(&log, &signer.verifier(), &latest, &keys, &earlier, &[0, 1, 150, 255, 299])
        .unwrap()
}

fn run_python(doc: &AuditExport, name: &str) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(format!("{name}.json"));
    std::fs::write(&path, doc.to_json()).unwrap();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("scripts")
        .join("verify-audit.py");
    Command::new("python3").arg(script).arg(&path).output().expect("python3 runs")
}

fn flip_b64(s: &str, at: usize) -> String {
    let mut raw = B64.decode(s).unwrap();
    let i = at % raw.len();
    raw[i] ^= 0x01;
    B64.encode(raw)
}

#[test]
fn python_verifier_accepts_exports_and_rejects_tampering() {
    let doc = export();
    assert_eq!(doc.entries.len(), 300);
    verify_export(&doc).unwrap();
    let out = run_python(&doc, "good");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("300 entries"), "{stdout}");

    // One byte of an entry.
    let mut entry = doc.clone();
    entry.entries[123] = flip_b64(&entry.entries[123], 5);
    // One byte of a proof hash.
    let mut proof = doc.clone();
    proof.inclusion_proofs[2].proof[1] = flip_b64(&proof.inclusion_proofs[2].proof[1], 9);
    // One byte of the log's signature on the latest checkpoint.
    let mut sig = doc.clone();
    let (body, lines) = sig.checkpoint.split_once("\n\n").unwrap();
    let (first, rest) = lines.split_once('\n').unwrap();
    let (prefix, b64) = first.rsplit_once(' ').unwrap();
    sig.checkpoint = format!("{body}\n\n{prefix} {}\n{rest}", flip_b64(b64, 40));
    // One byte of a witness's cosignature on an earlier checkpoint.
    let mut cosig = doc.clone();
    let text = &cosig.earlier_checkpoints[0].checkpoint;
    let (body, lines) = text.split_once("\n\n").unwrap();
    let mut lines: Vec<String> = lines.lines().map(str::to_owned).collect();
    let (prefix, b64) = lines[2].rsplit_once(' ').unwrap();
    lines[2] = format!("{prefix} {}", flip_b64(b64, 50));
    cosig.earlier_checkpoints[0].checkpoint = format!("{body}\n\n{}\n", lines.join("\n"));

    for (name, bad) in
        [("entry", entry), ("proof", proof), ("signature", sig), ("cosignature", cosig)]
    {
        assert!(verify_export(&bad).is_err(), "Rust accepted a tampered {name}");
        let out = run_python(&bad, name);
        assert!(!out.status.success(), "Python accepted a tampered {name}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.starts_with("FAIL: "), "{name}: {stderr}");
    }
}
