#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
//! Signed envelopes: what verifies, and every way a signature must fail to.

use llmkg_federation_core::encoding;
use llmkg_federation_core::{
    ChangeSet, Commit, CommitId, CommitVerifyError, Iri, Literal, NodeId, NodeKeypair, OrgId,
    SignatureError, SignedCommit, StateRoot, Timestamp, Triple,
};
use proptest::collection::vec;
use proptest::prelude::*;
use serde::{Serialize, Serializer};

const COMMIT_CONTEXT: &str = "llmkg/commit/v1";

/// A signature under any context (reserved ones included), made with the key directly: the
/// public API refuses reserved contexts, and these tests forge envelopes on purpose.
fn raw_sign(kp: &NodeKeypair, context: &str, message: &[u8]) -> [u8; 64] {
    use ed25519_dalek::Signer as _;
    let mut input = (context.len() as u64).to_le_bytes().to_vec();
    input.extend_from_slice(context.as_bytes());
    input.extend_from_slice(message);
    ed25519_dalek::SigningKey::from_bytes(&kp.secret_bytes()).sign(&input).to_bytes()
}

/// What a commit's signature covers after the context: its id.
fn msg(commit: &Commit) -> Vec<u8> {
    commit.id().as_bytes().to_vec()
}

fn keypair(n: u8) -> NodeKeypair {
    NodeKeypair::from_secret_bytes([n; 32])
}

fn triple(s: &str, o: &str) -> Triple {
    Triple::new(
        Iri::new(format!("https://example.org/{s}")).unwrap(),
        Iri::new("https://example.org/p").unwrap(),
        Literal::string(o).unwrap(),
    )
    .unwrap()
}

/// A small commit authored by `author`.
fn small_commit(author: NodeId) -> Commit {
    Commit::new(
        vec![CommitId::from_bytes([9; 32])],
        ChangeSet::new([triple("a", "1")], [triple("b", "2")]).unwrap(),
        author,
        OrgId::new("acme").unwrap(),
        Timestamp::from_micros(1_700_000_000_000_000),
        "small".into(),
        StateRoot::from_bytes([3; 32]),
    )
    .unwrap()
}

fn commit_strategy() -> impl Strategy<Value = ([u8; 32], Commit)> {
    (
        any::<[u8; 32]>(),
        vec(any::<[u8; 32]>(), 0..3),
        vec(("[a-z]{1,4}", ".{0,6}"), 0..4),
        any::<i64>(),
        ".{0,20}",
        any::<[u8; 32]>(),
    )
        .prop_map(|(seed, mut parents, adds, ts, message, root)| {
            parents.sort_unstable();
            parents.dedup();
            let commit = Commit::new(
                parents.into_iter().map(CommitId::from_bytes).collect(),
                ChangeSet::adding(adds.iter().map(|(s, o)| triple(s, o))),
                NodeKeypair::from_secret_bytes(seed).node_id(),
                OrgId::new("acme").unwrap(),
                Timestamp::from_micros(ts),
                message,
                StateRoot::from_bytes(root),
            )
            .unwrap();
            (seed, commit)
        })
}

/// Same serde shape as the signed envelope: value, signer key bytes, then the signature as a
/// byte string (length-prefixed).
#[derive(Serialize)]
struct Envelope<'a, T> {
    value: &'a T,
    signer: [u8; 32],
    #[serde(serialize_with = "sig_as_bytes")]
    signature: Vec<u8>,
}

fn sig_as_bytes<S: Serializer>(sig: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_bytes(sig)
}

fn envelope<T: Serialize>(value: &T, signer: [u8; 32], signature: &[u8]) -> Vec<u8> {
    encoding::try_encode(&Envelope { value, signer, signature: signature.to_vec() }).unwrap()
}

fn is_bad_commit_signature(r: &Result<SignedCommit, CommitVerifyError>, by: NodeId) -> bool {
    matches!(r, Err(CommitVerifyError::Signature(SignatureError::BadSignature { signer, kind }))
        if *signer == by && *kind == COMMIT_CONTEXT)
}

#[test]
fn hand_built_envelope_matches_sign() {
    // The look-alike envelope is byte-for-byte the real one, so the forgeries below differ
    // from genuine envelopes only where they claim to.
    let a = keypair(1);
    let commit = small_commit(a.node_id());
    let sc = SignedCommit::sign(&a, commit.clone()).unwrap();
    let sig = raw_sign(&a, COMMIT_CONTEXT, &msg(&commit));
    assert_eq!(&sig, sc.signature());
    let bytes = envelope(&commit, *a.node_id().as_bytes(), &sig);
    assert_eq!(bytes, sc.encode());
    assert_eq!(SignedCommit::decode(&bytes, None), Ok(sc));
}

/// The commit signature format is unchanged: a fixed vector (key, commit, signature
/// prefix) pins it, so moving signing behind `Signer` did not change ids or signatures.
#[test]
fn commit_signature_format_is_unchanged() {
    let a = keypair(1);
    let commit = small_commit(a.node_id());
    let sc = SignedCommit::sign(&a, commit.clone()).unwrap();
    // Signature over len(context) ‖ context ‖ id, exactly as before.
    assert_eq!(a.node_id().verify(COMMIT_CONTEXT, &msg(&commit), sc.signature()), Ok(()));
    assert_eq!(sc.id(), commit.id());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn sign_then_decode_verifies((seed, commit) in commit_strategy()) {
        let kp = NodeKeypair::from_secret_bytes(seed);
        let sc = SignedCommit::sign(&kp, commit.clone()).unwrap();
        prop_assert_eq!(sc.signer(), kp.node_id());
        prop_assert_eq!(sc.commit(), &commit);
        prop_assert_eq!(SignedCommit::decode(&sc.encode(), None), Ok(sc.clone()));
        // The signature is over the context and the commit id.
        prop_assert_eq!(kp.node_id().verify(COMMIT_CONTEXT, &msg(&commit), sc.signature()), Ok(()));
        prop_assert_eq!(sc.id(), commit.id());
        prop_assert_eq!(SignedCommit::decode(&sc.encode(), Some(commit.id())), Ok(sc));
    }

    #[test]
    fn random_signature_is_rejected(
        (seed, commit) in commit_strategy(),
        sig in vec(any::<u8>(), 64),
    ) {
        let kp = NodeKeypair::from_secret_bytes(seed);
        let bytes = envelope(&commit, *kp.node_id().as_bytes(), &sig);
        prop_assert!(is_bad_commit_signature(&SignedCommit::decode(&bytes, None), kp.node_id()));
    }

    #[test]
    fn node_id_verify_rejects_wrong_context_message_and_key(
        a in any::<[u8; 32]>(),
        b in any::<[u8; 32]>(),
        message in vec(any::<u8>(), 0..64),
        other in vec(any::<u8>(), 0..64),
    ) {
        prop_assume!(a != b && message != other);
        let (ka, kb) = (NodeKeypair::from_secret_bytes(a), NodeKeypair::from_secret_bytes(b));
        let sig = raw_sign(&ka, "test/v1", &message);
        prop_assert_eq!(ka.node_id().verify("test/v1", &message, &sig), Ok(()));
        // Wrong context.
        prop_assert!(ka.node_id().verify("test/v2", &message, &sig).is_err());
        prop_assert!(ka.node_id().verify(COMMIT_CONTEXT, &message, &sig).is_err());
        // Wrong message.
        prop_assert!(ka.node_id().verify("test/v1", &other, &sig).is_err());
        // Wrong key.
        prop_assert_eq!(
            kb.node_id().verify("test/v1", &message, &sig),
            Err(SignatureError::BadSignature { signer: kb.node_id(), kind: "test/v1" })
        );
        // B's own signature does not pass as A's.
        let sig_b = raw_sign(&kb, "test/v1", &message);
        prop_assert!(ka.node_id().verify("test/v1", &message, &sig_b).is_err());
    }
}

#[test]
fn flipping_any_byte_of_the_envelope_is_rejected() {
    let a = keypair(1);
    let sc = SignedCommit::sign(&a, small_commit(a.node_id())).unwrap();
    let bytes = sc.encode();
    assert_eq!(SignedCommit::decode(&bytes, None), Ok(sc.clone()));
    assert!(SignedCommit::decode(&bytes, None).is_ok());
    for pos in 0..bytes.len() {
        for mask in [0x01u8, 0x80, 0xff] {
            let mut bad = bytes.clone();
            bad[pos] ^= mask;
            let r = SignedCommit::decode(&bad, None);
            assert!(
                r.is_err(),
                "flipping byte {pos} of {} with {mask:#04x} still verified",
                bytes.len()
            );
            let r = SignedCommit::decode(&bad, None);
            assert!(r.is_err(), "flipping byte {pos} with {mask:#04x} still verified: {r:?}");
            assert!(SignedCommit::decode(&bad, Some(sc.id())).is_err());
        }
    }
}

#[test]
fn signature_by_another_key_is_rejected() {
    let (a, b) = (keypair(1), keypair(2));
    let commit = small_commit(a.node_id());
    let sig_b = raw_sign(&b, COMMIT_CONTEXT, &msg(&commit));
    // Claims A signed; B did.
    let bytes = envelope(&commit, *a.node_id().as_bytes(), &sig_b);
    let r = SignedCommit::decode(&bytes, None);
    assert!(is_bad_commit_signature(&r, a.node_id()), "{r:?}");
    let r = SignedCommit::decode(&bytes, None);
    assert!(is_bad_commit_signature(&r, a.node_id()), "{r:?}");
    // A's genuine signature transplanted onto another commit.
    let sig_a = raw_sign(&a, COMMIT_CONTEXT, &msg(&commit));
    let mut other = small_commit(a.node_id());
    other = Commit::new(
        other.parents().to_vec(),
        other.changes().inverse(),
        other.author(),
        other.org().clone(),
        other.timestamp(),
        other.message().to_owned(),
        other.state_root(),
    )
    .unwrap();
    let bytes = envelope(&other, *a.node_id().as_bytes(), &sig_a);
    assert!(is_bad_commit_signature(&SignedCommit::decode(&bytes, None), a.node_id()));
    let r = SignedCommit::decode(&bytes, None);
    assert!(is_bad_commit_signature(&r, a.node_id()), "{r:?}");
    // The genuine envelope is accepted (the rejections above are about the signature).
    let bytes = envelope(&commit, *a.node_id().as_bytes(), &sig_a);
    assert!(SignedCommit::decode(&bytes, None).is_ok());
}

#[test]
fn signature_under_another_context_is_rejected() {
    let a = keypair(1);
    let commit = small_commit(a.node_id());
    let message = msg(&commit);
    for context in ["llmkg/commit/v2", "llmkg/commit/v", "", "llmkg/other/v1"] {
        let sig = raw_sign(&a, context, &message);
        let bytes = envelope(&commit, *a.node_id().as_bytes(), &sig);
        let r = SignedCommit::decode(&bytes, None);
        assert!(is_bad_commit_signature(&r, a.node_id()), "context {context:?}: {r:?}");
        let r = SignedCommit::decode(&bytes, None);
        assert!(is_bad_commit_signature(&r, a.node_id()), "context {context:?}: {r:?}");
    }
}

#[test]
fn context_and_message_are_not_confusable() {
    // "ab" ‖ "c" and "a" ‖ "bc" are different signing inputs.
    let a = keypair(1);
    let sig = raw_sign(&a, "ab", b"c");
    assert_eq!(a.node_id().verify("ab", b"c", &sig), Ok(()));
    assert!(a.node_id().verify("a", b"bc", &sig).is_err());
    assert!(a.node_id().verify("abc", b"", &sig).is_err());
}

#[test]
fn malformed_signature_fields_are_rejected() {
    let a = keypair(1);
    let commit = small_commit(a.node_id());
    let sig = raw_sign(&a, COMMIT_CONTEXT, &msg(&commit));
    let signer = *a.node_id().as_bytes();
    // 63 bytes, 65 bytes, empty.
    for bad in [&sig[..63], &[&sig[..], &[0]].concat()[..], &[][..]] {
        let bytes = envelope(&commit, signer, bad);
        let r = SignedCommit::decode(&bytes, None);
        assert!(matches!(r, Err(CommitVerifyError::Signature(SignatureError::Decode(_)))), "{r:?}");
    }
    // Envelope without its signature.
    let full = envelope(&commit, signer, &sig);
    assert!(SignedCommit::decode(&full[..full.len() - 65], None).is_err());
}

/// Adds the group order L to the scalar half of a signature (little-endian 256-bit add).
fn add_group_order(sig: &[u8; 64]) -> [u8; 64] {
    const L: [u8; 32] = [
        0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde,
        0x14, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x10,
    ];
    let mut out = *sig;
    let mut carry = 0u16;
    for (o, l) in out[32..].iter_mut().zip(L) {
        let sum = u16::from(*o) + u16::from(l) + carry;
        *o = sum as u8;
        carry = sum >> 8;
    }
    assert_eq!(carry, 0);
    out
}

#[test]
fn non_canonical_signature_scalar_is_rejected() {
    // s and s + L verify the same equation; accepting both would make envelopes malleable.
    let a = keypair(1);
    let commit = small_commit(a.node_id());
    let message = msg(&commit);
    let sig = raw_sign(&a, COMMIT_CONTEXT, &message);
    let malleated = add_group_order(&sig);
    assert_ne!(malleated, sig);
    assert!(a.node_id().verify(COMMIT_CONTEXT, &message, &malleated).is_err());
    let bytes = envelope(&commit, *a.node_id().as_bytes(), &malleated);
    assert!(SignedCommit::decode(&bytes, None).is_err());
}

#[test]
fn commit_id_mismatch_is_rejected() {
    let a = keypair(1);
    let sc = SignedCommit::sign(&a, small_commit(a.node_id())).unwrap();
    let bytes = sc.encode();
    assert_eq!(SignedCommit::decode(&bytes, Some(sc.id())), Ok(sc.clone()));
    assert_eq!(SignedCommit::decode(&bytes, None), Ok(sc.clone()));
    let mut other = *sc.id().as_bytes();
    other[31] ^= 1;
    let other = CommitId::from_bytes(other);
    assert_eq!(
        SignedCommit::decode(&bytes, Some(other)),
        Err(CommitVerifyError::IdMismatch { expected: other, actual: sc.id() })
    );
}

#[test]
fn signer_who_is_not_the_author_is_rejected() {
    let (a, b) = (keypair(1), keypair(2));
    let commit = small_commit(a.node_id());
    // B validly signs a commit that names A as its author.
    let sig_b = raw_sign(&b, COMMIT_CONTEXT, &msg(&commit));
    let bytes = envelope(&commit, *b.node_id().as_bytes(), &sig_b);
    // The signature itself is fine ...
    assert_eq!(b.node_id().verify(COMMIT_CONTEXT, &msg(&commit), &sig_b), Ok(()));
    // ... but it is not a valid commit.
    let expected =
        Err(CommitVerifyError::SignerNotAuthor { author: a.node_id(), signer: b.node_id() });
    assert_eq!(SignedCommit::decode(&bytes, None), expected);
    assert_eq!(SignedCommit::decode(&bytes, Some(commit.id())), expected);
    // Signing refuses it up front too.
    assert_eq!(SignedCommit::sign(&b, commit), expected);
}

#[test]
fn invalid_public_keys_are_rejected() {
    let mut candidates = vec![[0xff; 32], [0xfe; 32], [0x7f; 32]];
    for i in 0..=255u8 {
        let mut c = [0u8; 32];
        c[0] = i;
        candidates.push(c);
        let mut c = [i; 32];
        c[31] &= 0x7f;
        candidates.push(c);
    }
    let rejected: Vec<[u8; 32]> =
        candidates.iter().copied().filter(|c| NodeId::from_bytes(*c).is_err()).collect();
    assert!(!rejected.is_empty(), "every candidate was accepted as a key");
    let commit = small_commit(keypair(1).node_id());
    for bad in &rejected {
        assert_eq!(NodeId::from_bytes(*bad), Err(SignatureError::InvalidPublicKey));
        // Not via the decoder either, alone or as an envelope's signer.
        assert!(encoding::decode::<NodeId>(&encoding::try_encode(bad).unwrap()).is_err());
        let bytes = envelope(&commit, *bad, &[0; 64]);
        assert!(SignedCommit::decode(&bytes, None).is_err());
    }
    // Genuine keys are accepted.
    for n in 0..16 {
        let id = keypair(n).node_id();
        assert_eq!(NodeId::from_bytes(*id.as_bytes()), Ok(id));
    }
}

#[test]
fn weak_key_cannot_sign_everything() {
    // The identity point is a small-order key: with R = identity and s = 0 the cofactorless
    // equation holds for every message. Strict verification must refuse it.
    let mut identity = [0u8; 32];
    identity[0] = 1;
    let forged = {
        let mut s = [0u8; 64];
        s[0] = 1;
        s
    };
    if let Ok(weak) = NodeId::from_bytes(identity) {
        assert!(weak.verify(COMMIT_CONTEXT, b"anything", &forged).is_err());
        let commit = small_commit(weak);
        let bytes = envelope(&commit, identity, &forged);
        assert!(SignedCommit::decode(&bytes, None).is_err());
        assert!(SignedCommit::decode(&bytes, None).is_err());
    }
}
