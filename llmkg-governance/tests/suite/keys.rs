#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
//! Federation keys: encryption-key certificates, key epochs, sealing and opening.

use llmkg_federation_core::{
    BranchName, ChangeSet, FederationId, NodeKeypair, OrgId, OrgKeypair, SignatureError, Signed,
    Term, Timestamp, Triple, TrustAnchors,
};
use llmkg_governance::keys::{
    Accepted, EncryptionKeyCertificate, FederationKeyring, KeyEpoch, KeyError, OrgEncryptionKey,
    OrgEncryptionKeypair, SealedChangeSet, SealedCommit,
};
use proptest::prelude::*;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

fn rng(seed: u64) -> ChaCha20Rng {
    ChaCha20Rng::seed_from_u64(seed)
}

fn fed() -> FederationId {
    FederationId::from_name("keys-test")
}

fn org(name: &str) -> OrgId {
    OrgId::new(name).unwrap()
}

fn main_branch() -> BranchName {
    BranchName::new("main").unwrap()
}

fn admin() -> NodeKeypair {
    NodeKeypair::from_secret_bytes([42; 32])
}

fn triple(i: usize) -> Triple {
    Triple::new(
        Term::iri(format!("https://example.org/s{i}")).unwrap(),
        Term::iri("https://example.org/p").unwrap(),
        Term::string(format!("value {i}")).unwrap(),
    )
    .unwrap()
}

fn changes(n: usize) -> ChangeSet {
    ChangeSet::adding((0..n).map(triple))
}

fn keyring(name: &str, seed: u8) -> FederationKeyring {
    FederationKeyring::new(fed(), org(name), OrgEncryptionKeypair::from_secret_bytes([seed; 32]))
}

/// Three organizations a, b, c, each with a keyring that accepted epoch 1 (issued by a).
struct Three {
    a: FederationKeyring,
    b: FederationKeyring,
    c: FederationKeyring,
    epoch1: Signed<KeyEpoch>,
}

fn three(rng: &mut ChaCha20Rng) -> Three {
    let mut a = keyring("a", 1);
    let mut b = keyring("b", 2);
    let mut c = keyring("c", 3);
    let members =
        [(org("a"), a.public_key()), (org("b"), b.public_key()), (org("c"), c.public_key())];
    let epoch1 = a.rotate(rng, &admin(), &members).unwrap();
    assert_eq!(b.accept(&epoch1).unwrap(), Accepted::Member { epoch: 1 });
    assert_eq!(c.accept(&epoch1).unwrap(), Accepted::Member { epoch: 1 });
    Three { a, b, c, epoch1 }
}

#[test]
fn round_trip_between_members() {
    let mut r = rng(1);
    let t = three(&mut r);
    assert_eq!(t.a.current_epoch(), Some(1));
    assert!(t.a.is_member(1) && t.b.is_member(1) && t.c.is_member(1));
    let cs = changes(10);
    let sealed = t.a.seal(&mut r, &main_branch(), &cs).unwrap();
    assert_eq!(sealed.epoch(), 1);
    for k in [&t.a, &t.b, &t.c] {
        assert_eq!(k.open(&main_branch(), &sealed).unwrap(), cs);
    }
    // The encoding round-trips and decodes canonically.
    let bytes = sealed.encode().unwrap();
    assert_eq!(SealedChangeSet::decode(&bytes).unwrap(), sealed);
    // Epoch envelopes round-trip through bytes.
    let bytes = t.epoch1.encode().unwrap();
    let decoded = KeyEpoch::decode_signed(&bytes, &fed()).unwrap();
    assert_eq!(decoded, t.epoch1);
    assert_eq!(decoded.signer(), admin().node_id());
    let e = decoded.open(&fed()).unwrap();
    assert_eq!(e.members().cloned().collect::<Vec<_>>(), vec![org("a"), org("b"), org("c")]);
    assert_eq!(e.previous(), None);
}

#[test]
fn removed_org_reads_old_epochs_only() {
    let mut r = rng(2);
    let mut t = three(&mut r);
    let before = t.a.seal(&mut r, &main_branch(), &changes(3)).unwrap();

    // c leaves: a rotates to epoch 2 for a and b only.
    let members = [(org("a"), t.a.public_key()), (org("b"), t.b.public_key())];
    let epoch2 = t.a.rotate(&mut r, &admin(), &members).unwrap();
    assert_eq!(t.b.accept(&epoch2).unwrap(), Accepted::Member { epoch: 2 });
    assert_eq!(t.c.accept(&epoch2).unwrap(), Accepted::NotMember { epoch: 2 });
    assert_eq!(t.c.current_epoch(), Some(2));
    assert!(!t.c.is_member(2) && t.c.is_member(1));
    assert_eq!(
        epoch2.open(&fed()).unwrap().previous(),
        Some(t.epoch1.open(&fed()).unwrap().digest())
    );

    let after = t.b.seal(&mut r, &main_branch(), &changes(4)).unwrap();
    assert_eq!(after.epoch(), 2);
    // c still reads what was sealed while it was a member ...
    assert_eq!(t.c.open(&main_branch(), &before).unwrap(), changes(3));
    // ... but not what was sealed after it left.
    assert_eq!(t.c.open(&main_branch(), &after), Err(KeyError::NoKeyForEpoch { epoch: 2 }));
    // and it cannot seal any more.
    assert_eq!(
        t.c.seal(&mut r, &main_branch(), &changes(1)).unwrap_err(),
        KeyError::NoKeyForEpoch { epoch: 2 }
    );
    // The remaining members read both.
    assert_eq!(t.a.open(&main_branch(), &after).unwrap(), changes(4));
    assert_eq!(t.b.open(&main_branch(), &before).unwrap(), changes(3));
}

#[test]
fn joining_org_cannot_read_earlier_epochs() {
    let mut r = rng(3);
    let mut t = three(&mut r);
    let old = t.a.seal(&mut r, &main_branch(), &changes(2)).unwrap();

    let mut d = keyring("d", 4);
    // Before catching up, the epoch is unknown to d.
    assert_eq!(d.open(&main_branch(), &old), Err(KeyError::UnknownEpoch { epoch: 1 }));
    assert_eq!(d.seal(&mut r, &main_branch(), &changes(1)), Err(KeyError::NoCurrentEpoch));

    let members = [
        (org("a"), t.a.public_key()),
        (org("b"), t.b.public_key()),
        (org("c"), t.c.public_key()),
        (org("d"), d.public_key()),
    ];
    let epoch2 = t.a.rotate(&mut r, &admin(), &members).unwrap();
    // d cannot start in the middle of the chain.
    assert_eq!(d.accept(&epoch2), Err(KeyError::UnexpectedEpoch { expected: 1, got: 2 }));
    assert_eq!(
        d.accept_all(&[t.epoch1.clone(), epoch2.clone()]).unwrap(),
        vec![Accepted::NotMember { epoch: 1 }, Accepted::Member { epoch: 2 }]
    );
    assert_eq!(d.open(&main_branch(), &old), Err(KeyError::NoKeyForEpoch { epoch: 1 }));
    t.b.accept(&epoch2).unwrap();
    let new = t.b.seal(&mut r, &main_branch(), &changes(5)).unwrap();
    assert_eq!(d.open(&main_branch(), &new).unwrap(), changes(5));
}

#[test]
fn accept_all_is_all_or_nothing() {
    let mut r = rng(4);
    let t = three(&mut r);
    let mut d = keyring("d", 4);
    let mut bad = keyring("x", 9);
    let forked = bad.rotate(&mut r, &admin(), &[(org("x"), bad.public_key())]).unwrap();
    // epoch1, then another "epoch 1": refused, and the first one is rolled back.
    let err = d.accept_all(&[t.epoch1.clone(), forked]).unwrap_err();
    assert_eq!(err, KeyError::UnexpectedEpoch { expected: 2, got: 1 });
    assert_eq!(d.current_epoch(), None);
}

#[test]
fn tampering_is_refused() {
    let mut r = rng(5);
    let t = three(&mut r);
    let branch = main_branch();
    let sealed = t.a.seal(&mut r, &branch, &changes(5)).unwrap();
    let bytes = sealed.encode().unwrap();

    // The encoding is: epoch (varint, 1 byte here), nonce (24 bytes), length varint,
    // ciphertext. Flip one byte in the nonce, in the ciphertext and in the tag.
    for pos in [1, 12, 24, 30, bytes.len() / 2, bytes.len() - 1] {
        let mut b = bytes.clone();
        b[pos] ^= 0x01;
        let s = SealedChangeSet::decode(&b).unwrap();
        assert_eq!(t.b.open(&branch, &s), Err(KeyError::Tampered), "byte {pos}");
    }
    // Another branch: refused.
    let other = BranchName::new("other").unwrap();
    assert_eq!(t.b.open(&other, &sealed), Err(KeyError::Tampered));
    // Another epoch number: unknown here ...
    let mut b = bytes.clone();
    b[0] = 2;
    let s = SealedChangeSet::decode(&b).unwrap();
    assert_eq!(t.b.open(&branch, &s), Err(KeyError::UnknownEpoch { epoch: 2 }));
    // ... and once epoch 2 exists, its key does not open what epoch 1 sealed.
    let mut a = t.a;
    let members = [(org("a"), a.public_key()), (org("b"), t.b.public_key())];
    a.rotate(&mut r, &admin(), &members).unwrap();
    assert_eq!(a.open(&branch, &s), Err(KeyError::Tampered));
    // Another federation with the same keys: refused.
    let mut elsewhere = FederationKeyring::new(
        FederationId::from_name("elsewhere"),
        org("b"),
        OrgEncryptionKeypair::from_secret_bytes([2; 32]),
    );
    assert!(matches!(
        elsewhere.accept(&t.epoch1),
        Err(KeyError::Envelope(SignatureError::FederationMismatch { .. }))
    ));
    // Truncated and padded encodings do not decode.
    assert!(matches!(
        SealedChangeSet::decode(&bytes[..bytes.len() - 1]),
        Err(KeyError::Malformed(_))
    ));
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(matches!(SealedChangeSet::decode(&longer), Err(KeyError::Malformed(_))));
}

/// Re-signs an epoch value (forged or altered) as the admin would.
fn resign(value: KeyEpoch, federation: &FederationId) -> Signed<KeyEpoch> {
    Signed::sign(&admin(), federation, value).unwrap()
}

#[test]
fn forged_epochs_are_refused_and_change_nothing() {
    let mut r = rng(6);
    let mut t = three(&mut r);
    let sealed = t.a.seal(&mut r, &main_branch(), &changes(2)).unwrap();

    // A second chain issued elsewhere, to take epochs from.
    let mut other = keyring("b", 2);
    let members = [(org("b"), t.b.public_key())];
    let other1 = other.rotate(&mut r, &admin(), &members).unwrap();
    let other2 = other.rotate(&mut r, &admin(), &members).unwrap();
    let other3 = other.rotate(&mut r, &admin(), &members).unwrap();

    // Bad signature: a flipped byte in the signature, or in the signed value, of the encoding.
    let legit2 = t.a.rotate(&mut r, &admin(), &[(org("b"), t.b.public_key())]).unwrap();
    let bytes = legit2.encode().unwrap();
    let mut forged = bytes.clone();
    let last = forged.len() - 1;
    forged[last] ^= 0x80;
    assert!(matches!(
        KeyEpoch::decode_signed(&forged, &fed()),
        Err(KeyError::Malformed(_) | KeyError::Envelope(SignatureError::BadSignature { .. }))
    ));
    let mut forged = bytes.clone();
    forged[40] ^= 0x01; // inside the federation id or the first member
    assert!(KeyEpoch::decode_signed(&forged, &fed()).is_err());

    // Wrong federation (signed for another one).
    let other_fed = FederationId::from_name("other");
    assert!(matches!(
        KeyEpoch::decode_signed(&bytes, &other_fed),
        Err(KeyError::Envelope(SignatureError::FederationMismatch { .. }))
    ));
    let mut wrong_fed = FederationKeyring::new(
        other_fed,
        org("x"),
        OrgEncryptionKeypair::from_secret_bytes([8; 32]),
    );
    let wrong1 = wrong_fed.rotate(&mut r, &admin(), &[(org("b"), t.b.public_key())]).unwrap();
    // The value names other_fed but is signed for fed(): refused as well.
    let smuggled = resign(wrong1.open(&other_fed).unwrap().clone(), &fed());
    let mut fresh = keyring("b", 2);
    assert_eq!(
        fresh.accept(&smuggled),
        Err(KeyError::WrongFederation { expected: fed(), actual: other_fed })
    );
    assert_eq!(fresh.current_epoch(), None);

    // Skipped epoch number: b is at 1, epoch 3 of the other chain is refused.
    assert_eq!(t.b.accept(&other3), Err(KeyError::UnexpectedEpoch { expected: 2, got: 3 }));
    // Replayed epoch 1.
    assert_eq!(t.b.accept(&other1), Err(KeyError::UnexpectedEpoch { expected: 2, got: 1 }));
    // Broken chain: epoch 2 of another chain does not chain to b's epoch 1.
    assert_eq!(t.b.accept(&other2), Err(KeyError::BrokenChain { epoch: 2 }));
    // Nothing changed: still at epoch 1, still reads, and the legitimate epoch 2 still fits.
    assert_eq!(t.b.current_epoch(), Some(1));
    assert_eq!(t.b.open(&main_branch(), &sealed).unwrap(), changes(2));
    assert_eq!(t.b.accept(&legit2).unwrap(), Accepted::Member { epoch: 2 });

    // A wrapped key not for this keyring's key: refused, nothing changed.
    let mut c2 =
        FederationKeyring::new(fed(), org("c"), OrgEncryptionKeypair::from_secret_bytes([77; 32]));
    assert_eq!(c2.accept(&t.epoch1), Err(KeyError::WrappedForOtherKey { epoch: 1 }));
    assert_eq!(c2.current_epoch(), None);
    // c is not a member of the legitimate epoch 2, which it still accepts.
    assert_eq!(t.c.accept(&legit2).unwrap(), Accepted::NotMember { epoch: 2 });
}

#[test]
fn rotate_validates_members() {
    let mut r = rng(7);
    let mut a = keyring("a", 1);
    let k = a.public_key();
    assert!(matches!(a.rotate(&mut r, &admin(), &[]), Err(KeyError::InvalidEpoch(_))));
    assert!(matches!(
        a.rotate(&mut r, &admin(), &[(org("a"), k), (org("a"), k)]),
        Err(KeyError::InvalidEpoch(_))
    ));
    assert_eq!(a.current_epoch(), None);
    // Unsorted input is fine: members are sorted.
    let b = keyring("b", 2);
    let e = a.rotate(&mut r, &admin(), &[(org("b"), b.public_key()), (org("a"), k)]).unwrap();
    assert_eq!(e.open(&fed()).unwrap().members().count(), 2);
}

#[test]
fn encryption_key_certificates() {
    let root = OrgKeypair::from_secret_bytes([5; 32]);
    let impostor = OrgKeypair::from_secret_bytes([6; 32]);
    let key = OrgEncryptionKeypair::from_secret_bytes([7; 32]).public_key();
    let at = Timestamp::from_micros(1_700_000_000_000_000);
    let cert = EncryptionKeyCertificate::issue(&root, org("acme"), key, 3, at).unwrap();
    assert_eq!(
        (cert.org(), cert.key(), cert.serial(), cert.issued_at()),
        (&org("acme"), key, 3, at)
    );

    let mut anchors = TrustAnchors::new();
    // Unpinned organization.
    assert_eq!(cert.verify(&anchors), Err(KeyError::UnpinnedOrg { org: org("acme") }));
    // Pinned to another root.
    anchors.pin(org("acme"), impostor.root_key());
    assert_eq!(
        cert.verify(&anchors),
        Err(KeyError::WrongRoot { org: org("acme"), claimed: root.root_key() })
    );
    // An impostor's certificate for acme, checked against the right pin.
    anchors.pin(org("acme"), root.root_key());
    let fake = EncryptionKeyCertificate::issue(&impostor, org("acme"), key, 4, at).unwrap();
    assert!(matches!(fake.verify(&anchors), Err(KeyError::WrongRoot { .. })));
    // The right root.
    assert_eq!(cert.verified_key(&anchors).unwrap(), key);
    let bytes = cert.encode().unwrap();
    assert_eq!(EncryptionKeyCertificate::decode(&bytes).unwrap(), cert);
    // Any flipped byte: refused by decoding or by verification.
    for i in 0..bytes.len() {
        let mut b = bytes.clone();
        b[i] ^= 0x04;
        if let Ok(c) = EncryptionKeyCertificate::decode(&b) {
            assert!(c.verify(&anchors).is_err(), "byte {i}");
        }
    }
    // A bad signature under the right, pinned root: the serial changed after signing.
    // (A flipped last byte of the signature still decodes and keeps org and root.)
    let mut b = bytes.clone();
    let last = b.len() - 1;
    b[last] ^= 0x01;
    let c = EncryptionKeyCertificate::decode(&b).unwrap();
    assert_eq!(c.verify(&anchors), Err(KeyError::BadCertificateSignature { org: org("acme") }));
}

#[test]
fn encryption_key_validation() {
    // Small-order points and non-canonical values are refused.
    let mut p_minus_1 = [0xff; 32];
    p_minus_1[0] = 0xec;
    p_minus_1[31] = 0x7f;
    let mut p = p_minus_1;
    p[0] = 0xed;
    let mut high_bit = [9; 32];
    high_bit[31] |= 0x80;
    for bad in [[0; 32], p_minus_1, p, high_bit] {
        assert_eq!(OrgEncryptionKey::from_bytes(bad), Err(KeyError::InvalidEncryptionKey));
    }
    // A generated key is valid and round-trips through serde.
    let kp = OrgEncryptionKeypair::generate(&mut rng(8));
    let k = kp.public_key();
    assert_eq!(OrgEncryptionKey::from_bytes(*k.as_bytes()).unwrap(), k);
    let again = OrgEncryptionKeypair::from_secret_bytes(kp.secret_bytes());
    assert_eq!(again.public_key(), k);
    // Debug does not print the secret.
    let debug = format!("{kp:?}");
    assert!(!debug.contains(&format!("{:?}", kp.secret_bytes())));
    // The basepoint (u = 9) is fine.
    let mut nine = [0; 32];
    nine[0] = 9;
    assert!(OrgEncryptionKey::from_bytes(nine).is_ok());
}

/// The small-order X25519 points below the field prime.
const SMALL_ORDER: [[u8; 32]; 5] = [
    [0; 32],
    [
        1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        0, 0,
    ],
    [
        0xe0, 0xeb, 0x7a, 0x7c, 0x3b, 0x41, 0xb8, 0xae, 0x16, 0x56, 0xe3, 0xfa, 0xf1, 0x9f, 0xc4,
        0x6a, 0xda, 0x09, 0x8d, 0xeb, 0x9c, 0x32, 0xb1, 0xfd, 0x86, 0x62, 0x05, 0x16, 0x5f, 0x49,
        0xb8, 0x00,
    ],
    [
        0x5f, 0x9c, 0x95, 0xbc, 0xa3, 0x50, 0x8c, 0x24, 0xb1, 0xd0, 0xb1, 0x55, 0x9c, 0x83, 0xef,
        0x5b, 0x04, 0x44, 0x5c, 0xc4, 0x58, 0x1c, 0x8e, 0x86, 0xd8, 0x22, 0x4e, 0xdd, 0xd0, 0x9f,
        0x11, 0x57,
    ],
    [
        0xec, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0x7f,
    ],
];

/// Wraps a key to `public` with the suite the keys module uses, as HPKE sees it.
fn hpke_wrap(public: &[u8; 32], r: &mut ChaCha20Rng) -> Result<(), hpke::HpkeError> {
    use hpke::Deserializable;
    let pk = <hpke::kem::X25519HkdfSha256 as hpke::Kem>::PublicKey::from_bytes(public)?;
    hpke::single_shot_seal_with_rng::<
        hpke::aead::ChaCha20Poly1305,
        hpke::kdf::HkdfSha256,
        hpke::kem::X25519HkdfSha256,
    >(&hpke::OpModeS::Base, &pk, b"info", &[7; 32], b"", r)
    .map(|_| ())
}

#[test]
fn small_order_keys_are_exactly_those_hpke_refuses() {
    let mut r = rng(12);
    for p in SMALL_ORDER {
        // HPKE refuses to encapsulate to them (the shared secret would be all zeros) ...
        assert_eq!(hpke_wrap(&p, &mut r), Err(hpke::HpkeError::EncapError), "{p:02x?}");
        // ... and they are refused as encryption keys, directly and through serde.
        assert_eq!(OrgEncryptionKey::from_bytes(p), Err(KeyError::InvalidEncryptionKey));
        let encoded = postcard::to_allocvec(&p).unwrap();
        assert!(postcard::from_bytes::<OrgEncryptionKey>(&encoded).is_err());
    }
    // Random valid keys are accepted by both.
    for seed in 0..20u8 {
        let k = OrgEncryptionKeypair::from_secret_bytes([seed; 32]).public_key();
        assert!(hpke_wrap(k.as_bytes(), &mut r).is_ok());
        assert!(OrgEncryptionKey::from_bytes(*k.as_bytes()).is_ok());
    }
}

#[test]
fn relay_verifies_sealed_commit_without_a_key() {
    let mut r = rng(9);
    let t = three(&mut r);
    let author = NodeKeypair::from_secret_bytes([11; 32]);
    let signed = SealedCommit::seal(
        &t.a,
        &mut r,
        &author,
        main_branch(),
        Timestamp::from_micros(5),
        &changes(7),
    )
    .unwrap();
    let bytes = signed.encode().unwrap();

    // The relay holds no key of the federation, only its id.
    let relay = keyring("relay", 99);
    let received = SealedCommit::decode_signed(&bytes, &fed()).unwrap();
    assert_eq!(received.signer(), author.node_id());
    let commit = received.open(&fed()).unwrap();
    assert_eq!(commit.branch(), &main_branch());
    assert_eq!(commit.org(), &org("a"));
    assert_eq!(commit.open(&relay), Err(KeyError::UnknownEpoch { epoch: 1 }));
    // It re-encodes identically, so it can be relayed as is.
    assert_eq!(received.encode().unwrap(), bytes);
    // A member opens it.
    assert_eq!(commit.open(&t.c).unwrap(), changes(7));
    // Any change to the sealed bytes breaks the author's signature.
    let mut b = bytes.clone();
    let mid = b.len() / 2;
    b[mid] ^= 0x10;
    assert!(SealedCommit::decode_signed(&b, &fed()).is_err());
}

#[test]
fn sealing_needs_an_epoch_and_bounds_hold() {
    let mut r = rng(10);
    let a = keyring("a", 1);
    assert_eq!(a.seal(&mut r, &main_branch(), &changes(1)), Err(KeyError::NoCurrentEpoch));
    // Oversized inputs are refused before decoding.
    let huge = vec![0u8; llmkg_governance::keys::MAX_SEALED_ENCODED_LEN + 1];
    assert!(matches!(SealedChangeSet::decode(&huge), Err(KeyError::Malformed(_))));
    let huge = vec![0u8; llmkg_governance::keys::MAX_KEY_EPOCH_LEN + 1];
    assert!(matches!(KeyEpoch::decode_signed(&huge, &fed()), Err(KeyError::Malformed(_))));
}

fn arb_changes() -> impl Strategy<Value = ChangeSet> {
    let term = prop_oneof![
        "[a-z]{1,12}".prop_map(|s| Term::iri(format!("https://example.org/{s}")).unwrap()),
        ".{0,40}".prop_map(|s| Term::string(s).unwrap()),
    ];
    let triple = (term.clone(), "[a-z]{1,6}", term).prop_map(|(s, p, o)| {
        let s = match s {
            Term::Iri(_) => s,
            _ => Term::iri("https://example.org/s").unwrap(),
        };
        Triple::new(s, Term::iri(format!("https://example.org/{p}")).unwrap(), o).unwrap()
    });
    (proptest::collection::vec(triple.clone(), 0..20), proptest::collection::vec(triple, 0..20))
        .prop_map(|(add, remove)| {
            let remove: Vec<Triple> = remove.into_iter().filter(|t| !add.contains(t)).collect();
            ChangeSet::new(add, remove).unwrap()
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn seal_open_round_trips_and_flips_are_refused(
        cs in arb_changes(),
        seed in any::<u64>(),
        flip in any::<prop::sample::Index>(),
        bit in 0u8..8,
    ) {
        let mut r = rng(seed);
        let t = three(&mut r);
        let branch = main_branch();
        let sealed = t.a.seal(&mut r, &branch, &cs).unwrap();
        prop_assert_eq!(t.b.open(&branch, &sealed).unwrap(), cs);
        let mut bytes = sealed.encode().unwrap();
        let i = flip.index(bytes.len());
        bytes[i] ^= 1 << bit;
        let refused = match SealedChangeSet::decode(&bytes) {
            Err(_) => true,
            Ok(s) => t.b.open(&branch, &s).is_err(),
        };
        prop_assert!(refused);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn any_flipped_byte_of_a_signed_epoch_is_refused(
        seed in any::<u64>(),
        flip in any::<prop::sample::Index>(),
        bit in 0u8..8,
    ) {
        let mut r = rng(seed);
        let t = three(&mut r);
        let mut bytes = t.epoch1.encode().unwrap();
        let i = flip.index(bytes.len());
        bytes[i] ^= 1 << bit;
        // The signature covers every byte: decoding (or verifying) refuses the change.
        prop_assert!(KeyEpoch::decode_signed(&bytes, &fed()).is_err());
    }
}

/// Measures seal + open throughput for 1 MiB change sets (run with `--release --ignored`).
#[test]
#[ignore = "measurement; run in release"]
fn measure_seal_open_throughput() {
    let mut r = rng(11);
    let t = three(&mut r);
    let branch = main_branch();
    // About 1 MiB of canonical encoding.
    let mut n = 1;
    let mut cs = changes(n);
    loop {
        let len = llmkg_federation_core::encoding::encode(&cs).len();
        if len >= 1 << 20 {
            break;
        }
        n = n * (1 << 20) / len + 1;
        cs = changes(n);
    }
    let len = llmkg_federation_core::encoding::encode(&cs).len();
    let rounds = 20;
    let start = std::time::Instant::now();
    for _ in 0..rounds {
        let sealed = t.a.seal(&mut r, &branch, &cs).unwrap();
        let opened = t.b.open(&branch, &sealed).unwrap();
        assert_eq!(opened.len(), cs.len());
    }
    let secs = start.elapsed().as_secs_f64();
    let mbs = (len * rounds) as f64 / secs / 1e6;
    // Also the AEAD part alone: seal only.
    let start = std::time::Instant::now();
    for _ in 0..rounds {
        std::hint::black_box(t.a.seal(&mut r, &branch, &cs).unwrap());
    }
    let seal_mbs = (len * rounds) as f64 / start.elapsed().as_secs_f64() / 1e6;
    // And the canonical encode + decode of the change set alone, without any cryptography.
    let start = std::time::Instant::now();
    for _ in 0..rounds {
        let bytes = llmkg_federation_core::encoding::encode(&cs);
        let back: ChangeSet = llmkg_federation_core::encoding::decode(&bytes).unwrap();
        std::hint::black_box(back);
    }
    let codec_mbs = (len * rounds) as f64 / start.elapsed().as_secs_f64() / 1e6;
    println!(
        "change set of {len} bytes ({n} triples): seal+open {mbs:.1} MB/s, seal alone \
         {seal_mbs:.1} MB/s, encode+decode without crypto {codec_mbs:.1} MB/s"
    );
}

#[test]
fn sealed_envelopes_round_trip_and_cannot_pass_for_change_sets() {
    let mut r = rng(9);
    let t = three(&mut r);
    let envelope = b"a commit envelope, whatever its bytes".to_vec();
    let sealed = t.a.seal_envelope(&mut r, &main_branch(), &envelope).unwrap();
    assert_eq!(sealed.epoch(), 1);
    for k in [&t.a, &t.b, &t.c] {
        assert_eq!(k.open_envelope(&main_branch(), &sealed).unwrap(), envelope);
    }
    // Another branch, or the other domain, does not authenticate.
    let other = BranchName::new("other").unwrap();
    assert_eq!(t.b.open_envelope(&other, &sealed), Err(KeyError::Tampered));
    assert_eq!(t.b.open(&main_branch(), &sealed), Err(KeyError::Tampered));
    let change_set = t.a.seal(&mut r, &main_branch(), &changes(3)).unwrap();
    assert_eq!(t.b.open_envelope(&main_branch(), &change_set), Err(KeyError::Tampered));
    // A keyring that never accepted the epoch holds no key for it.
    let outsider = keyring("d", 4);
    assert_eq!(
        outsider.open_envelope(&main_branch(), &sealed),
        Err(KeyError::UnknownEpoch { epoch: 1 })
    );
}
