#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
//! Organization roots, node certificates, revocations and the certificate commit policy.

use llmkg_federation_core::encoding;
use llmkg_federation_core::{
    AcceptAll, CertificateError, CertificatePolicy, ChangeSet, Commit, CommitPolicy, CommitRefusal,
    NodeCertificate, NodeId, NodeKeypair, OrgId, OrgKeypair, Revocation, Role, SignedCommit,
    StateRoot, Timestamp, TrustAnchors,
};
use proptest::collection::vec;
use proptest::prelude::*;

const T0: i64 = 1_700_000_000_000_000;
const DAY: i64 = 86_400_000_000;

fn org(name: &str) -> OrgId {
    OrgId::new(name).unwrap()
}

fn ts(days: i64) -> Timestamp {
    Timestamp::from_micros(T0 + days * DAY)
}

fn node(n: u8) -> NodeKeypair {
    NodeKeypair::from_secret_bytes([n; 32])
}

fn root(n: u8) -> OrgKeypair {
    OrgKeypair::from_secret_bytes([100 + n; 32])
}

/// acme pinned to root(1).
fn anchors() -> TrustAnchors {
    let mut a = TrustAnchors::new();
    a.pin(org("acme"), root(1).root_key());
    a
}

fn cert(node: NodeId, serial: u64) -> NodeCertificate {
    root(1).certify(org("acme"), node, [Role::Writer], ts(0), ts(30), serial).unwrap()
}

fn signed_commit(author: &NodeKeypair, org_name: &str, at: Timestamp) -> SignedCommit {
    let c = Commit::new(
        vec![],
        ChangeSet::default(),
        author.node_id(),
        org(org_name),
        at,
        "m".into(),
        StateRoot::from_bytes([0; 32]),
    )
    .unwrap();
    SignedCommit::sign(author, c).unwrap()
}

#[test]
fn valid_certificate_verifies_and_round_trips() {
    let n = node(1);
    let c = cert(n.node_id(), 1);
    assert_eq!(c.verify_for(&anchors(), ts(10), &n.node_id()), Ok(()));
    assert_eq!(c.verify(&anchors(), ts(0)), Ok(()));
    assert_eq!(c.verify(&anchors(), ts(30)), Ok(()));
    assert_eq!(c.org(), &org("acme"));
    assert!(c.has_role(Role::Writer) && !c.has_role(Role::Admin));
    let bytes = c.encode();
    assert_eq!(NodeCertificate::decode(&bytes), Ok(c.clone()));
    assert_eq!(encoding::decode::<NodeCertificate>(&bytes), Ok(c));
}

#[test]
fn expired_and_not_yet_valid_are_refused() {
    let c = cert(node(1).node_id(), 9);
    assert_eq!(
        c.verify(&anchors(), ts(31)),
        Err(CertificateError::Expired { org: org("acme"), serial: 9, not_after: ts(30) })
    );
    assert_eq!(
        c.verify(&anchors(), ts(-1)),
        Err(CertificateError::NotYetValid { org: org("acme"), serial: 9, not_before: ts(0) })
    );
}

#[test]
fn unknown_org_and_wrong_root_are_refused() {
    let n = node(1).node_id();
    // An unpinned organization.
    let other = root(2).certify(org("other"), n, [Role::Writer], ts(0), ts(30), 1).unwrap();
    assert_eq!(other.verify(&anchors(), ts(1)), Err(CertificateError::UnknownOrg(org("other"))));
    // Another root claiming acme.
    let forged = root(2).certify(org("acme"), n, [Role::Writer], ts(0), ts(30), 1).unwrap();
    assert_eq!(
        forged.verify(&anchors(), ts(1)),
        Err(CertificateError::WrongRoot { org: org("acme"), claimed: root(2).root_key() })
    );
}

#[test]
fn forged_signature_is_refused_on_decode() {
    let n = node(1).node_id();
    let genuine = cert(n, 1).encode();
    // Signed by root(2) but naming root(1): take root(2)'s signature over the same body.
    let by_2 = root(2).certify(org("acme"), n, [Role::Writer], ts(0), ts(30), 1).unwrap();
    let mut forged = genuine.clone();
    let len = forged.len();
    forged[len - 64..].copy_from_slice(by_2.signature());
    assert_eq!(
        NodeCertificate::decode(&forged),
        Err(CertificateError::BadSignature { org: org("acme") })
    );
    assert!(encoding::decode::<NodeCertificate>(&forged).is_err());
    // Any flipped byte: refused, never a panic.
    for pos in 0..genuine.len() {
        let mut bad = genuine.clone();
        bad[pos] ^= 0x01;
        assert!(NodeCertificate::decode(&bad).is_err(), "flip at {pos} accepted");
    }
}

#[test]
fn revoked_certificate_is_refused() {
    let c = cert(node(1).node_id(), 5);
    let mut a = anchors();
    let rev = root(1).revoke(org("acme"), [4, 5], ts(2)).unwrap();
    assert_eq!(Revocation::decode(&rev.encode()), Ok(rev.clone()));
    a.add_revocation(&rev).unwrap();
    assert_eq!(c.verify(&a, ts(1)), Err(CertificateError::Revoked { org: org("acme"), serial: 5 }));
    // A revocation by a root not pinned for acme is refused and changes nothing.
    let mut b = anchors();
    let fake = root(2).revoke(org("acme"), [5], ts(2)).unwrap();
    assert!(matches!(b.add_revocation(&fake), Err(CertificateError::WrongRoot { .. })));
    assert_eq!(c.verify(&b, ts(1)), Ok(()));
}

#[test]
fn node_mismatch_and_bounds() {
    let c = cert(node(1).node_id(), 1);
    assert_eq!(
        c.verify_for(&anchors(), ts(1), &node(2).node_id()),
        Err(CertificateError::NodeMismatch {
            expected: node(2).node_id(),
            certified: node(1).node_id()
        })
    );
    let n = node(1).node_id();
    assert!(matches!(
        root(1).certify(org("acme"), n, [Role::Writer], ts(5), ts(1), 1),
        Err(CertificateError::Invalid(_))
    ));
    // Duplicate roles are merged.
    let c =
        root(1).certify(org("acme"), n, [Role::Admin, Role::Reader, Role::Admin], ts(0), ts(1), 1);
    assert_eq!(c.unwrap().roles(), &[Role::Reader, Role::Admin]);
}

#[test]
fn certificate_policy_admits_and_refuses_commits() {
    let (alice, bob, carol) = (node(1), node(2), node(3));
    let mut policy = CertificatePolicy::new(anchors()).require_role(Role::Writer);
    policy.add_certificate(cert(alice.node_id(), 1));
    policy.add_certificate(
        root(1).certify(org("acme"), carol.node_id(), [Role::Reader], ts(0), ts(30), 3).unwrap(),
    );
    // Valid.
    assert_eq!(policy.check(&signed_commit(&alice, "acme", ts(3))), Ok(()));
    assert_eq!(AcceptAll.check(&signed_commit(&bob, "acme", ts(3))), Ok(()));
    // No certificate.
    assert_eq!(
        policy.check(&signed_commit(&bob, "acme", ts(3))),
        Err(CommitRefusal::NoCertificate { author: bob.node_id() })
    );
    // Org mismatch.
    assert_eq!(
        policy.check(&signed_commit(&alice, "other", ts(3))),
        Err(CommitRefusal::OrgMismatch {
            author: alice.node_id(),
            commit_org: org("other"),
            certified_org: org("acme"),
        })
    );
    // Outside the validity window (by the commit's timestamp).
    assert!(matches!(
        policy.check(&signed_commit(&alice, "acme", ts(40))),
        Err(CommitRefusal::InvalidCertificate { error: CertificateError::Expired { .. }, .. })
    ));
    assert!(matches!(
        policy.check(&signed_commit(&alice, "acme", ts(-2))),
        Err(CommitRefusal::InvalidCertificate { error: CertificateError::NotYetValid { .. }, .. })
    ));
    // Missing role.
    assert_eq!(
        policy.check(&signed_commit(&carol, "acme", ts(3))),
        Err(CommitRefusal::MissingRole { author: carol.node_id(), role: Role::Writer })
    );
    // Revoked.
    let rev = root(1).revoke(org("acme"), [1], ts(4)).unwrap();
    policy.anchors_mut().add_revocation(&rev).unwrap();
    assert_eq!(
        policy.check(&signed_commit(&alice, "acme", ts(3))),
        Err(CommitRefusal::InvalidCertificate {
            author: alice.node_id(),
            error: CertificateError::Revoked { org: org("acme"), serial: 1 },
        })
    );
    // A renewed certificate with a new serial admits her again.
    policy.add_certificate(cert(alice.node_id(), 2));
    assert_eq!(policy.check(&signed_commit(&alice, "acme", ts(3))), Ok(()));
    // Policies are usable as trait objects.
    let boxed: Box<dyn CommitPolicy> = Box::new(policy);
    assert!(boxed.check(&signed_commit(&bob, "acme", ts(3))).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_never_panic_the_certificate_decoders(bytes in vec(any::<u8>(), 0..400)) {
        let _ = NodeCertificate::decode(&bytes);
        let _ = Revocation::decode(&bytes);
        let _ = encoding::decode::<NodeCertificate>(&bytes);
    }

    #[test]
    fn mutated_certificates_never_verify(at in any::<prop::sample::Index>(), mask in 1u8..) {
        let bytes = cert(node(1).node_id(), 1).encode();
        let mut bad = bytes.clone();
        bad[at.index(bytes.len())] ^= mask;
        prop_assert!(NodeCertificate::decode(&bad).is_err());
    }
}
