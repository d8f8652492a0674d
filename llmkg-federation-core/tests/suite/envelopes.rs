#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
//! Federation-bound signed envelopes, reserved contexts, `Signer` and batch verification.

use llmkg_federation_core::encoding;
use llmkg_federation_core::{
    ChangeSet, Commit, CommitVerifyError, FederationId, NodeId, NodeKeypair, OrgId, SignError,
    Signable, SignatureError, Signed, SignedCommit, Signer, SignerError, SigningInput, StateRoot,
    Timestamp,
};
use proptest::collection::vec;
use proptest::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Vote {
    round: u64,
    choice: String,
}

impl Signable for Vote {
    const CONTEXT: &'static str = "test/vote/v1";
}

/// Same shape as `Vote`, another kind.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Ballot {
    round: u64,
    choice: String,
}

impl Signable for Ballot {
    const CONTEXT: &'static str = "test/ballot/v1";
}

/// A host kind trying to squat a reserved context.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Squatter([u8; 32]);

impl Signable for Squatter {
    const CONTEXT: &'static str = "llmkg/commit/v1";
}

/// A protocol message carrying an envelope.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Message {
    seq: u32,
    vote: Signed<Vote>,
    note: String,
}

fn kp(n: u8) -> NodeKeypair {
    NodeKeypair::from_secret_bytes([n; 32])
}

fn fed(name: &str) -> FederationId {
    FederationId::from_name(name)
}

fn vote() -> Vote {
    Vote { round: 7, choice: "yes".into() }
}

#[test]
fn federation_id_derivation_is_unchanged() {
    // The value the transport's FederationId::from_name gave before the move.
    let id = fed("acme");
    assert_eq!(*id.as_bytes(), blake3::derive_key("llmkg/transport/federation-id/v1", b"acme"));
    assert_eq!(FederationId::from_bytes(*id.as_bytes()), id);
    assert_eq!(id.to_string().len(), 64);
    assert!(format!("{id:?}").starts_with("FederationId("));
    let bytes = encoding::encode(&id);
    assert_eq!(encoding::decode::<FederationId>(&bytes), Ok(id));
}

#[test]
fn sign_open_and_decode() {
    let a = kp(1);
    let f = fed("f");
    let signed = a.sign(&f, vote()).unwrap();
    assert_eq!(signed.open(&f), Ok(&vote()));
    assert_eq!(signed.signer(), a.node_id());
    assert_eq!(signed.federation(), f);
    let bytes = signed.encode().unwrap();
    assert_eq!(Signed::<Vote>::decode(&bytes, &f), Ok(signed.clone()));
    assert_eq!(signed.into_open(&f), Ok(vote()));
}

#[test]
fn replay_under_another_federation_is_refused() {
    let a = kp(1);
    let (f, g) = (fed("f"), fed("g"));
    let signed = a.sign(&f, vote()).unwrap();
    let bytes = signed.encode().unwrap();
    // As is: it verifies (for f) but does not open in g.
    let mismatch = SignatureError::FederationMismatch { expected: g, actual: f };
    assert_eq!(signed.open(&g), Err(mismatch.clone()));
    assert_eq!(Signed::<Vote>::decode(&bytes, &g), Err(mismatch));
    // With the federation field rewritten to g: the signature no longer verifies.
    let pos = bytes.windows(32).position(|w| w == f.as_bytes()).unwrap();
    let mut moved = bytes.clone();
    moved[pos..pos + 32].copy_from_slice(g.as_bytes());
    assert_eq!(
        Signed::<Vote>::decode(&moved, &g),
        Err(SignatureError::BadSignature { signer: a.node_id(), kind: Vote::CONTEXT })
    );
}

#[test]
fn replay_as_another_kind_is_refused() {
    let a = kp(1);
    let f = fed("f");
    let bytes = a.sign(&f, vote()).unwrap().encode().unwrap();
    // Same encoding, another kind: the context differs, so the signature does not verify.
    assert_eq!(
        Signed::<Ballot>::decode(&bytes, &f),
        Err(SignatureError::BadSignature { signer: a.node_id(), kind: Ballot::CONTEXT })
    );
    // Nor does a raw signature over the same bytes under the kind's own context.
    let raw = a.sign_raw(Vote::CONTEXT, &encoding::try_encode(&vote()).unwrap()).unwrap();
    let mut forged = bytes.clone();
    let n = forged.len();
    forged[n - 64..].copy_from_slice(&raw);
    assert!(matches!(
        Signed::<Vote>::decode(&forged, &f),
        Err(SignatureError::BadSignature { .. })
    ));
}

#[test]
fn envelope_nested_in_a_message_round_trips_and_verifies_on_decode() {
    let a = kp(1);
    let f = fed("f");
    let msg = Message { seq: 3, vote: a.sign(&f, vote()).unwrap(), note: "n".into() };
    let bytes = encoding::try_encode(&msg).unwrap();
    let back: Message = encoding::decode(&bytes).unwrap();
    assert_eq!(back, msg);
    assert_eq!(back.vote.open(&f), Ok(&vote()));
    // Any flipped byte in the envelope part: decoding the message fails (or, for the
    // surrounding fields, decodes to a different message), never panics.
    for pos in 0..bytes.len() {
        for mask in [0x01u8, 0x80, 0xff] {
            let mut bad = bytes.clone();
            bad[pos] ^= mask;
            if let Ok(m) = encoding::decode::<Message>(&bad) {
                assert_ne!(m, msg, "flip at {pos} decoded to the same message");
                assert_eq!(m.vote, msg.vote, "flip at {pos} changed a verified envelope");
            }
        }
    }
}

#[test]
fn flipping_any_byte_of_an_envelope_is_refused() {
    let a = kp(1);
    let f = fed("f");
    let bytes = a.sign(&f, vote()).unwrap().encode().unwrap();
    for pos in 0..bytes.len() {
        for mask in [0x01u8, 0x80, 0xff] {
            let mut bad = bytes.clone();
            bad[pos] ^= mask;
            let r = Signed::<Vote>::decode(&bad, &f);
            assert!(r.is_err(), "flip at {pos} with {mask:#04x} accepted");
        }
    }
    for cut in 0..bytes.len() {
        assert!(Signed::<Vote>::decode(&bytes[..cut], &f).is_err());
    }
    let mut long = bytes.clone();
    long.push(0);
    assert!(matches!(
        Signed::<Vote>::decode(&long, &f),
        Err(SignatureError::Decode(llmkg_federation_core::DecodeError::TrailingBytes { .. }))
    ));
}

#[test]
fn reserved_contexts_are_refused() {
    let a = kp(1);
    for ctx in ["llmkg/commit/v1", "llmkg/", "llmkg/anything", "llmkg/envelope/v1"] {
        assert_eq!(
            a.sign_raw(ctx, b"x"),
            Err(SignError::ReservedContext { context: ctx.into() }),
            "{ctx}"
        );
        assert!(SigningInput::raw(ctx, b"x").is_err());
    }
    assert!(a.sign_raw("acme/llmkg/v1", b"x").is_ok());
    assert_eq!(
        a.sign(&fed("f"), Squatter([0; 32])),
        Err(SignError::ReservedContext { context: "llmkg/commit/v1".into() })
    );
}

/// Every public way of signing, tried for a commit-domain signature over a commit's id: none
/// produces one.
#[test]
fn host_cannot_obtain_a_commit_domain_signature() {
    let a = kp(1);
    let commit = Commit::new(
        vec![],
        ChangeSet::default(),
        a.node_id(),
        OrgId::new("acme").unwrap(),
        Timestamp::from_micros(1),
        "m".into(),
        StateRoot::from_bytes([0; 32]),
    )
    .unwrap();
    let id = commit.id();
    let genuine = SignedCommit::sign(&a, commit.clone()).unwrap();
    let ok =
        |sig: &[u8; 64]| a.node_id().verify(Commit::SIGNATURE_CONTEXT, id.as_bytes(), sig).is_ok();
    assert!(ok(genuine.signature()));
    // 1. sign_raw refuses the context.
    assert!(a.sign_raw(Commit::SIGNATURE_CONTEXT, id.as_bytes()).is_err());
    // 2. A Signer call needs a SigningInput, which cannot be built for the context.
    assert!(SigningInput::raw(Commit::SIGNATURE_CONTEXT, id.as_bytes()).is_err());
    // 3. A host kind claiming the context cannot be signed.
    assert!(a.sign(&fed("f"), Squatter(*id.as_bytes())).is_err());
    // 4. The transport binding is another context.
    let sig = Signer::sign(&a, &SigningInput::transport_binding(id.as_bytes())).unwrap();
    assert!(!ok(&sig));
    // 5. Envelopes of a host kind are in the envelope domain.
    let env = a.sign(&fed("f"), vote()).unwrap();
    assert!(!ok(env.signature()));
}

/// A signer that holds its key elsewhere (here: a copy) and counts calls.
struct Remote {
    key: NodeKeypair,
    calls: std::sync::atomic::AtomicUsize,
    fail: bool,
}

impl Signer for Remote {
    fn node_id(&self) -> NodeId {
        self.key.node_id()
    }
    fn sign(&self, input: &SigningInput) -> Result<[u8; 64], SignerError> {
        self.calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if self.fail {
            return Err(SignerError::Unavailable("unplugged".into()));
        }
        Ok(self.key.sign_input(input))
    }
}

#[test]
fn signer_trait_object_signs_like_the_keypair() {
    let a = kp(1);
    let remote = Remote { key: kp(1), calls: Default::default(), fail: false };
    let dyn_signer: &dyn Signer = &remote;
    let f = fed("f");
    let via_dyn = Signed::sign(dyn_signer, &f, vote()).unwrap();
    assert_eq!(via_dyn, a.sign(&f, vote()).unwrap());
    let commit = Commit::new(
        vec![],
        ChangeSet::default(),
        a.node_id(),
        OrgId::new("acme").unwrap(),
        Timestamp::from_micros(1),
        "m".into(),
        StateRoot::from_bytes([0; 32]),
    )
    .unwrap();
    let sc = SignedCommit::sign_with(dyn_signer, commit.clone()).unwrap();
    assert_eq!(sc, SignedCommit::sign(&a, commit.clone()).unwrap());
    assert_eq!(remote.calls.load(std::sync::atomic::Ordering::Relaxed), 2);
    // A failing signer: typed error, nothing signed.
    let down = Remote { key: kp(1), calls: Default::default(), fail: true };
    assert_eq!(
        SignedCommit::sign_with(&down, commit),
        Err(CommitVerifyError::Signer(SignerError::Unavailable("unplugged".into())))
    );
    assert!(matches!(Signed::sign(&down, &f, vote()), Err(SignError::Signer(_))));
    // The trait is object safe and Send + Sync.
    let boxed: Box<dyn Signer> = Box::new(kp(2));
    std::thread::spawn(move || boxed.node_id()).join().unwrap();
}

#[test]
fn batch_decoding_accepts_good_batches_and_names_the_bad_item() {
    let f = fed("f");
    let items: Vec<Vec<u8>> = (0..40u8)
        .map(|i| {
            kp(i % 5 + 1)
                .sign(&f, Vote { round: u64::from(i), choice: "c".into() })
                .unwrap()
                .encode()
                .unwrap()
        })
        .collect();
    let all = Signed::<Vote>::decode_batch(&items, &f).unwrap();
    assert_eq!(all.len(), 40);
    for (i, s) in all.iter().enumerate() {
        assert_eq!(s.open(&f).unwrap().round, i as u64);
    }
    assert!(Signed::<Vote>::decode_batch::<Vec<u8>>(&[], &f).unwrap().is_empty());
    // One bad signature in the batch: refused, and named.
    let mut bad = items.clone();
    let n = bad[17].len();
    bad[17][n - 1] ^= 1;
    let err = Signed::<Vote>::decode_batch(&bad, &f).unwrap_err();
    assert_eq!(err.index, 17);
    assert!(matches!(err.error, SignatureError::BadSignature { .. }));
    // A valid signature of the wrong federation: named too.
    let mut other = items.clone();
    other[3] = kp(1).sign(&fed("g"), vote()).unwrap().encode().unwrap();
    let err = Signed::<Vote>::decode_batch(&other, &f).unwrap_err();
    assert_eq!(err.index, 3);
    assert!(matches!(err.error, SignatureError::FederationMismatch { .. }));
    // Garbage: a decode error at its index.
    let mut garbage = items;
    garbage[5] = vec![1, 2, 3];
    assert_eq!(Signed::<Vote>::decode_batch(&garbage, &f).unwrap_err().index, 5);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_never_panic_the_envelope_decoders(bytes in vec(any::<u8>(), 0..300)) {
        let f = fed("f");
        let _ = Signed::<Vote>::decode(&bytes, &f);
        let _ = encoding::decode::<Message>(&bytes);
        let _ = encoding::decode::<FederationId>(&bytes);
        let _ = Signed::<Vote>::decode_batch(&[&bytes[..]], &f);
    }

    #[test]
    fn mutated_envelopes_never_panic_and_never_verify(
        at in any::<prop::sample::Index>(),
        mask in 1u8..,
        round in any::<u64>(),
    ) {
        let f = fed("f");
        let bytes = kp(1).sign(&f, Vote { round, choice: "x".into() }).unwrap().encode().unwrap();
        let mut bad = bytes.clone();
        bad[at.index(bytes.len())] ^= mask;
        prop_assert!(Signed::<Vote>::decode(&bad, &f).is_err());
    }
}
