#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
//! Checkpoints, signed notes, cosignatures and equivocation; interoperability with the
//! independent `signed_note` crate, and our proofs checked by the verification algorithms of
//! RFC 9162 written here from the RFC's text (not from our implementation).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::SigningKey;
use llmkg_federation_core::kv::MemoryKv;
use llmkg_governance::audit::AuditLog;
use llmkg_governance::audit::checkpoint::{
    Checkpoint, CheckpointError, LogSigner, LogVerifier, NoteSignature, SignedNote,
};
use llmkg_governance::audit::merkle::{leaf_hash, tree_root};
use llmkg_governance::audit::witness::{CosignatureVerifier, Witness, WitnessKey};
use proptest::prelude::*;

const ORIGIN: &str = "llmkg.example/audit";

fn log_signer() -> LogSigner {
    LogSigner::new(ORIGIN, SigningKey::from_bytes(&[0x11; 32])).unwrap()
}

fn witness_key(n: u8) -> WitnessKey {
    WitnessKey::new(&format!("witness{n}.example/w"), SigningKey::from_bytes(&[0x20 + n; 32]))
        .unwrap()
}

#[test]
fn checkpoint_note_has_the_c2sp_byte_format() {
    let signer = log_signer();
    let cp = Checkpoint::new(ORIGIN, 42, [0xAB; 32]).unwrap();
    assert_eq!(cp.to_body(), format!("{ORIGIN}\n42\n{}\n", B64.encode([0xAB; 32])));
    let text = signer.sign(&cp).to_text();
    let (body, sig) = text.split_once("\n\n").unwrap();
    assert_eq!(format!("{body}\n"), cp.to_body());
    let line = sig.strip_suffix('\n').unwrap();
    let rest = line.strip_prefix("\u{2014} ").unwrap();
    let (name, b64) = rest.split_once(' ').unwrap();
    assert_eq!(name, ORIGIN);
    let raw = B64.decode(b64).unwrap();
    assert_eq!(raw.len(), 68);
    assert_eq!(&raw[..4], &signer.key_id().to_be_bytes());
    // Key id: SHA-256(name ‖ 0x0A ‖ 0x01 ‖ public key)[..4].
    use sha2::Digest as _;
    let key = signer.verifier().key().to_bytes();
    let d = sha2::Sha256::digest([ORIGIN.as_bytes(), b"\n", &[1], &key].concat());
    assert_eq!(&raw[..4], &d[..4]);
    // Verifier key string.
    let vkey = signer.verifier().to_vkey();
    let mut b = vec![1u8];
    b.extend_from_slice(&key);
    assert_eq!(vkey, format!("{ORIGIN}+{}+{}", hex4(&d[..4]), B64.encode(&b)));
    assert_eq!(LogVerifier::from_vkey(&vkey).unwrap(), signer.verifier());

    // With extension lines.
    let cp = cp.with_extension("ext line one").unwrap();
    let note = signer.sign(&cp);
    assert_eq!(signer.verifier().verify(&note).unwrap(), cp);
}

fn hex4(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn malformed_inputs_are_typed_errors() {
    let signer = log_signer();
    let v = signer.verifier();
    let good = signer.sign(&Checkpoint::new(ORIGIN, 1, [0; 32]).unwrap()).to_text();
    let parse = |s: &str| SignedNote::parse(s.as_bytes());
    assert!(matches!(parse(""), Err(CheckpointError::MalformedNote)));
    assert!(matches!(parse(&good.replace("\n\n", "\n")), Err(CheckpointError::MalformedNote)));
    assert!(matches!(parse(good.trim_end()), Err(CheckpointError::MalformedNote)));
    assert!(matches!(
        parse(&good.replace('\u{2014}', "-")),
        Err(CheckpointError::MalformedSignatureLine(_))
    ));
    assert!(matches!(
        parse(&good.replace("audit\n1", "audit\r\n1")),
        Err(CheckpointError::NotText)
    ));
    assert!(matches!(SignedNote::parse(&[0xff, 0xfe]), Err(CheckpointError::NotText)));
    let big = vec![b'a'; 70_000];
    assert!(matches!(SignedNote::parse(&big), Err(CheckpointError::NoteTooLarge { .. })));
    // Too many signature lines.
    let line = good.split_once("\n\n").unwrap().1;
    let many = format!("{}\n\n{}", good.split_once("\n\n").unwrap().0, line.repeat(101));
    assert!(matches!(parse(&many), Err(CheckpointError::SignatureCount { .. })));
    // Bodies that are not checkpoints.
    for body in [
        "\n",
        "origin\n01\nAAAA\n",
        "o\n1\nAAAA\n",
        "o\n-1\n",
        "o\nx\nAAAA\n",
        "o\n1\n",
        "o\n1\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n\n",
    ] {
        assert!(Checkpoint::parse_body(body).is_err(), "{body:?}");
    }
    assert!(
        Checkpoint::parse_body(
            "o\n18446744073709551616\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n"
        )
        .is_err()
    );
    // Wrong key or tampered body.
    let other = LogSigner::new(ORIGIN, SigningKey::from_bytes(&[0x12; 32])).unwrap().verifier();
    assert!(matches!(
        other.verify(&parse(&good).unwrap()),
        Err(CheckpointError::MissingSignature { .. })
    ));
    let tampered = good.replacen("\n1\n", "\n2\n", 1);
    assert!(matches!(
        v.verify(&parse(&tampered).unwrap()),
        Err(CheckpointError::BadSignature { .. })
    ));
    // Bad verifier keys.
    let shifted = v.to_vkey().replacen('+', "+0", 1);
    for k in ["", "name", "name+0000+AQ==", "na me+12345678+AQ==", &shifted] {
        assert!(LogVerifier::from_vkey(k).is_err(), "{k}");
    }
    let w = witness_key(1).verifier().to_vkey();
    assert!(LogVerifier::from_vkey(&w).is_err(), "a cosignature key is not a log key");
    assert!(CosignatureVerifier::from_vkey(&v.to_vkey()).is_err());
    assert!(LogSigner::new("has space", SigningKey::from_bytes(&[1; 32])).is_err());
    assert!(LogSigner::new("has+plus", SigningKey::from_bytes(&[1; 32])).is_err());
    assert!(Checkpoint::new("", 0, [0; 32]).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Arbitrary bytes never panic the parsers, and whatever parses re-encodes to itself.
    #[test]
    fn parsing_arbitrary_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        if let Ok(note) = SignedNote::parse(&bytes) {
            let text = note.to_text();
            prop_assert_eq!(text.as_bytes(), &bytes[..]);
            let _ = log_signer().verifier().verify(&note);
            let _ = witness_key(1).verifier().verify(&note);
        }
        if let Ok(s) = std::str::from_utf8(&bytes) {
            let _ = Checkpoint::parse_body(s);
            let _ = LogVerifier::from_vkey(s);
            let _ = CosignatureVerifier::from_vkey(s);
            let _ = NoteSignature::parse_line(s);
        }
    }

    /// Note-shaped text with random damage.
    #[test]
    fn parsing_mutated_notes_never_panics(pos: usize, byte: u8, cut: usize) {
        let note = log_signer().sign(&Checkpoint::new(ORIGIN, 7, [3; 32]).unwrap());
        let mut bytes = note.to_text().into_bytes();
        let i = pos % bytes.len();
        bytes[i] = byte;
        bytes.truncate(bytes.len() - cut % 3);
        if let Ok(n) = SignedNote::parse(&bytes) {
            let _ = log_signer().verifier().verify(&n);
        }
    }
}

/// RFC 9162's proof verification (§2.1.3.2 inclusion, §2.1.4.2 consistency), transcribed
/// from the RFC's steps, with SHA-256 from the `sha2` crate: an independent check of our
/// proofs (the audit log's own verification shares nothing with it).
mod rfc9162 {
    use sha2::{Digest, Sha256};

    pub(super) type Hash = [u8; 32];

    pub(super) fn leaf(data: &[u8]) -> Hash {
        Sha256::new().chain_update([0u8]).chain_update(data).finalize().into()
    }

    fn node(l: &Hash, r: &Hash) -> Hash {
        Sha256::new().chain_update([1u8]).chain_update(l).chain_update(r).finalize().into()
    }

    pub(super) fn verify_inclusion(
        index: u64,
        size: u64,
        hash: Hash,
        path: &[Hash],
        root: Hash,
    ) -> bool {
        if index >= size {
            return false;
        }
        let (mut f, mut s, mut r) = (index, size - 1, hash);
        for p in path {
            if s == 0 {
                return false;
            }
            if f & 1 == 1 || f == s {
                r = node(p, &r);
                while f & 1 == 0 && f != 0 {
                    f >>= 1;
                    s >>= 1;
                }
            } else {
                r = node(&r, p);
            }
            f >>= 1;
            s >>= 1;
        }
        s == 0 && r == root
    }

    pub(super) fn verify_consistency(
        first: u64,
        second: u64,
        first_hash: Hash,
        second_hash: Hash,
        path: &[Hash],
    ) -> bool {
        if first > second || first == 0 {
            return false;
        }
        if first == second {
            return path.is_empty() && first_hash == second_hash;
        }
        if path.is_empty() {
            return false;
        }
        let mut path = path.to_vec();
        if first.is_power_of_two() {
            path.insert(0, first_hash);
        }
        let (mut f, mut s) = (first - 1, second - 1);
        while f & 1 == 1 {
            f >>= 1;
            s >>= 1;
        }
        let (mut fr, mut sr) = (path[0], path[0]);
        for c in &path[1..] {
            if s == 0 {
                return false;
            }
            if f & 1 == 1 || f == s {
                fr = node(c, &fr);
                sr = node(c, &sr);
                while f & 1 == 0 && f != 0 {
                    f >>= 1;
                    s >>= 1;
                }
            } else {
                sr = node(&sr, c);
            }
            f >>= 1;
            s >>= 1;
        }
        fr == first_hash && sr == second_hash && s == 0
    }
}

/// The C2SP checkpoint body, parsed from the specification's three lines: origin, decimal
/// size, base64 root hash.
fn parse_c2sp_checkpoint(body: &[u8]) -> (String, u64, [u8; 32]) {
    let text = std::str::from_utf8(body).unwrap();
    let mut lines = text.split('\n');
    let origin = lines.next().unwrap().to_string();
    let size = lines.next().unwrap();
    assert!(size == "0" || !size.starts_with('0'), "a size with a leading zero: {size}");
    let size: u64 = size.parse().unwrap();
    let hash: [u8; 32] = B64.decode(lines.next().unwrap()).unwrap().try_into().unwrap();
    (origin, size, hash)
}

#[test]
fn our_checkpoints_verify_with_signed_note_and_our_proofs_with_rfc_9162() {
    let signer = log_signer();
    let mut log = AuditLog::open(MemoryKv::new()).unwrap();
    let entries: Vec<[u8; 4]> = (0..37u32).map(|i| i.to_be_bytes()).collect();
    log.append_batch(&entries).unwrap();
    let cp = Checkpoint::new(ORIGIN, log.size(), log.root()).unwrap();
    let mut note = signer.sign(&cp);
    // A cosignature line too: their parser must accept it as an unknown-key signature.
    let mut w = Witness::new(witness_key(1));
    w.add_log(ORIGIN, signer.verifier());
    note.add_signature(w.cosign(&note, &[], 1_700_000_000).unwrap());
    let text = note.to_text();

    let theirs = signed_note::Note::from_bytes(text.as_bytes()).unwrap();
    let verifier = signed_note::StandardVerifier::new(&signer.verifier().to_vkey()).unwrap();
    let list = signed_note::VerifierList::new(vec![Box::new(verifier)]);
    let (verified, unverified) = theirs.verify(&list).unwrap();
    assert_eq!(verified.len(), 1);
    assert_eq!(verified[0].name(), ORIGIN);
    assert_eq!(verified[0].id(), signer.key_id());
    assert_eq!(unverified.len(), 1);
    assert_eq!(theirs.to_bytes(), text.as_bytes());

    let (origin, size, root) = parse_c2sp_checkpoint(theirs.text());
    assert_eq!((origin.as_str(), size, root), (ORIGIN, 37, log.root()));

    // Every inclusion and consistency proof of the log checks out, and a proof with one
    // hash changed, or checked for another leaf or position, does not.
    for n in 0..37u64 {
        let path = log.inclusion_proof(n, 37).unwrap();
        let leaf = rfc9162::leaf(&entries[n as usize]);
        assert_eq!(leaf, leaf_hash(&entries[n as usize]));
        assert!(rfc9162::verify_inclusion(n, 37, leaf, &path, root), "inclusion of {n}");
        let other = rfc9162::leaf(&entries[(n as usize + 1) % 37]);
        assert!(!rfc9162::verify_inclusion(n, 37, other, &path, root));
        assert!(!rfc9162::verify_inclusion(n ^ 1, 37, leaf, &path, root));
        for i in 0..path.len() {
            let mut bad = path.clone();
            bad[i][0] ^= 1;
            assert!(!rfc9162::verify_inclusion(n, 37, leaf, &bad, root));
        }
    }
    for old in 1..37u64 {
        let path = log.consistency_proof(old, 37).unwrap();
        let old_root = log.root_at(old).unwrap();
        assert!(
            rfc9162::verify_consistency(old, 37, old_root, root, &path),
            "consistency from {old}"
        );
        assert!(!rfc9162::verify_consistency(old, 37, root, root, &path));
        for i in 0..path.len() {
            let mut bad = path.clone();
            bad[i][31] ^= 0x80;
            assert!(!rfc9162::verify_consistency(old, 37, old_root, root, &bad));
        }
    }
}

#[test]
fn their_signatures_verify_with_ours() {
    let seed = [0x33u8; 32];
    let ours = LogSigner::new(ORIGIN, SigningKey::from_bytes(&seed)).unwrap();
    let mut skey_bytes = vec![1u8];
    skey_bytes.extend_from_slice(&seed);
    let skey = format!("PRIVATE+KEY+{ORIGIN}+{:08x}+{}", ours.key_id(), B64.encode(&skey_bytes));
    let their_signer = signed_note::StandardSigner::new(&skey).unwrap();

    let body = Checkpoint::new(ORIGIN, 9, tree_root(&[leaf_hash(b"x")])).unwrap().to_body();
    let mut note = signed_note::Note::new(body.as_bytes(), &[]).unwrap();
    note.add_sigs(&[&their_signer]).unwrap();
    let text = note.to_bytes();

    let parsed = SignedNote::parse(&text).unwrap();
    let cp = ours.verifier().verify(&parsed).unwrap();
    assert_eq!(cp.size(), 9);
    // Both sign deterministically (ed25519): the same bytes.
    assert_eq!(ours.sign(&cp).to_text().as_bytes(), &text[..]);
    // Their signer accepted our key id in its key string (it checks the id against the key),
    // and their verifier parses our verifier key string.
    assert!(signed_note::StandardVerifier::new(&ours.verifier().to_vkey()).is_ok());
}
