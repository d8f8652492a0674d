#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
//! Witnessing: cosignature format, consistency checks before cosigning, equivocation
//! detection and its third-party re-check.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::SigningKey;
use llmkg_federation_core::kv::MemoryKv;
use llmkg_governance::audit::AuditLog;
use llmkg_governance::audit::checkpoint::{Checkpoint, LogSigner, SignedNote};
use llmkg_governance::audit::witness::{
    EquivocationError, EquivocationKind, PairCheck, Witness, WitnessError, WitnessKey, check_pair,
    cosigned_message,
};
use proptest::prelude::*;

const ORIGIN: &str = "llmkg.example/audit";

fn signer() -> LogSigner {
    LogSigner::new(ORIGIN, SigningKey::from_bytes(&[0x11; 32])).unwrap()
}

fn witness() -> Witness {
    let mut w = Witness::new(
        WitnessKey::new("witness.example/w1", SigningKey::from_bytes(&[0x21; 32])).unwrap(),
    );
    w.add_log(ORIGIN, signer().verifier());
    w
}

fn log_of(n: u64, tag: &str) -> AuditLog<MemoryKv> {
    let mut log = AuditLog::open(MemoryKv::new()).unwrap();
    log.append_batch(&(0..n).map(|i| format!("{tag}{i}")).collect::<Vec<_>>()).unwrap();
    log
}

fn checkpoint(log: &AuditLog<MemoryKv>, size: u64) -> SignedNote {
    signer().sign(&Checkpoint::new(ORIGIN, size, log.root_at(size).unwrap()).unwrap())
}

#[test]
fn cosignature_line_has_the_c2sp_format() {
    let log = log_of(5, "e");
    let note = checkpoint(&log, 5);
    let mut w = witness();
    let sig = w.cosign(&note, &[], 1_712_345_678).unwrap();
    let line = sig.to_line();
    let b64 = line.strip_prefix("\u{2014} witness.example/w1 ").unwrap().trim_end();
    let raw = B64.decode(b64).unwrap();
    assert_eq!(raw.len(), 4 + 8 + 64);
    assert_eq!(&raw[4..12], &1_712_345_678u64.to_be_bytes());
    // Key id: SHA-256(name ‖ 0x0A ‖ 0x04 ‖ key)[..4].
    use sha2::Digest as _;
    let key = SigningKey::from_bytes(&[0x21; 32]).verifying_key();
    let d = sha2::Sha256::digest([&b"witness.example/w1\n\x04"[..], key.as_bytes()].concat());
    assert_eq!(&raw[..4], &d[..4]);
    // The signature is over "cosignature/v1\ntime <t>\n" ‖ body.
    let msg = cosigned_message(note.body(), 1_712_345_678);
    assert!(msg.starts_with(b"cosignature/v1\ntime 1712345678\nllmkg.example/audit\n5\n"));
    let s = ed25519_dalek::Signature::from_bytes(&raw[12..].try_into().unwrap());
    key.verify_strict(&msg, &s).unwrap();
    assert_eq!(w.verifier().verify_line(note.body(), &sig), Some(1_712_345_678));
    // Not valid over another body or under a log key's name.
    let other = checkpoint(&log, 4);
    assert_eq!(w.verifier().verify_line(other.body(), &sig), None);
}

#[test]
fn witness_cosigns_only_consistent_growth_and_remembers() {
    let log = log_of(40, "e");
    let mut w = witness();
    let mut last = 0;
    for size in [3u64, 3, 8, 9, 17, 40] {
        let proof = if w.latest(ORIGIN).is_some() {
            log.consistency_proof(last, size).unwrap()
        } else {
            vec![]
        };
        w.cosign(&checkpoint(&log, size), &proof, 1000 + size).unwrap();
        last = size;
        assert_eq!(w.latest(ORIGIN), Some(&checkpoint(&log, size)));
    }
    // A rollback is refused and changes nothing.
    assert!(matches!(
        w.cosign(&checkpoint(&log, 20), &[], 2000),
        Err(WitnessError::Stale { seen: 40, offered: 20 })
    ));
    // Unknown origin, bad signature, malformed proof.
    let other = LogSigner::new("other.example/log", SigningKey::from_bytes(&[9; 32])).unwrap();
    let foreign = other.sign(&Checkpoint::new("other.example/log", 1, [0; 32]).unwrap());
    assert!(matches!(w.cosign(&foreign, &[], 1), Err(WitnessError::UnknownOrigin(_))));
    let forged = LogSigner::new(ORIGIN, SigningKey::from_bytes(&[9; 32])).unwrap();
    let forged = forged.sign(&Checkpoint::new(ORIGIN, 41, [0; 32]).unwrap());
    assert!(matches!(w.cosign(&forged, &[], 1), Err(WitnessError::Checkpoint(_))));
    assert_eq!(w.latest(ORIGIN), Some(&checkpoint(&log, 40)));
}

#[test]
fn split_view_is_detected_and_rechecked_by_a_third_party() {
    let honest = log_of(20, "e");
    let fork = log_of(20, "f"); // same sizes, other entries
    let mut w = witness();
    w.cosign(&checkpoint(&honest, 10), &[], 1).unwrap();

    // Same size, another root.
    let err = w.cosign(&checkpoint(&fork, 10), &[], 2).unwrap_err();
    let WitnessError::Equivocation(ev) = err else { panic!("{err:?}") };
    assert_eq!(ev.kind(), EquivocationKind::SameSizeDifferentRoots);
    assert_eq!(ev.verify(&signer().verifier()), Ok(EquivocationKind::SameSizeDifferentRoots));
    // Another log key cannot be framed with it.
    let other = LogSigner::new(ORIGIN, SigningKey::from_bytes(&[0x12; 32])).unwrap();
    assert!(matches!(ev.verify(&other.verifier()), Err(EquivocationError::Checkpoint(_))));

    // A larger tree of the fork: the fork's proof does not lead from the seen root.
    let proof = fork.consistency_proof(10, 20).unwrap();
    let err = w.cosign(&checkpoint(&fork, 20), &proof, 3).unwrap_err();
    let WitnessError::Equivocation(ev) = err else { panic!("{err:?}") };
    assert_eq!(ev.kind(), EquivocationKind::InconsistentProof);
    assert_eq!(ev.verify(&signer().verifier()), Ok(EquivocationKind::InconsistentProof));
    // Still remembers the honest checkpoint, and cosigns honest growth.
    assert_eq!(w.latest(ORIGIN), Some(&checkpoint(&honest, 10)));
    w.cosign(&checkpoint(&honest, 20), &honest.consistency_proof(10, 20).unwrap(), 4).unwrap();

    // The stand-alone pair check.
    let v = signer().verifier();
    let (a, b) = (checkpoint(&honest, 7), checkpoint(&honest, 15));
    assert_eq!(
        check_pair(&v, &a, &b, Some(&honest.consistency_proof(7, 15).unwrap())),
        Ok(PairCheck::Consistent)
    );
    assert_eq!(check_pair(&v, &a, &b, None), Ok(PairCheck::Unproven));
    assert_eq!(check_pair(&v, &a, &a, None), Ok(PairCheck::Consistent));
    let c = checkpoint(&fork, 15);
    let PairCheck::Equivocation(ev) =
        check_pair(&v, &a, &c, Some(&fork.consistency_proof(7, 15).unwrap())).unwrap()
    else {
        panic!()
    };
    assert_eq!(ev.verify(&v), Ok(EquivocationKind::InconsistentProof));
    let PairCheck::Equivocation(ev) = check_pair(&v, &checkpoint(&fork, 7), &a, None).unwrap()
    else {
        panic!()
    };
    assert_eq!(ev.verify(&v), Ok(EquivocationKind::SameSizeDifferentRoots));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// Any two checkpoints of two logs that diverge at some entry are detected as an
    /// equivocation by the pair check (with the proof the second log offers), and the
    /// evidence re-checks; checkpoints of one log are consistent.
    #[test]
    fn equivocating_checkpoints_are_detected(common in 0u64..20, extra_a in 1u64..20, extra_b in 0u64..20) {
        let mut a = AuditLog::open(MemoryKv::new()).unwrap();
        let mut b = AuditLog::open(MemoryKv::new()).unwrap();
        let shared: Vec<String> = (0..common).map(|i| format!("s{i}")).collect();
        a.append_batch(&shared).unwrap();
        b.append_batch(&shared).unwrap();
        a.append_batch(&(0..extra_a).map(|i| format!("a{i}")).collect::<Vec<_>>()).unwrap();
        b.append_batch(&(0..extra_b).map(|i| format!("b{i}")).collect::<Vec<_>>()).unwrap();
        let v = signer().verifier();
        let (na, nb) = (checkpoint(&a, a.size()), checkpoint(&b, b.size()));
        // The proof from the smaller to the larger, as the larger log would produce it.
        let proof = if a.size() <= b.size() { b.consistency_proof(a.size(), b.size()).unwrap() } else { a.consistency_proof(b.size(), a.size()).unwrap() };
        let diverged = a.size() > common && b.size() > common || a.size() == b.size();
        match check_pair(&v, &na, &nb, Some(&proof)).unwrap() {
            PairCheck::Equivocation(ev) => {
                prop_assert!(diverged);
                prop_assert!(ev.verify(&v).is_ok());
            }
            PairCheck::Consistent => prop_assert!(!diverged || a.root() == b.root()),
            other => prop_assert!(false, "{:?}", other),
        }
        // A prefix of the same log is always consistent.
        let prefix = checkpoint(&a, common);
        prop_assert_eq!(check_pair(&v, &prefix, &na, Some(&a.consistency_proof(common, a.size()).unwrap())).unwrap(), PairCheck::Consistent);
    }
}
