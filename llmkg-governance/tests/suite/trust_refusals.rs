#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
//! Every refusal of the trust store, checked against the contracts in `trust.rs` and
//! `certificate.rs`: each asserts the typed error and that nothing changed (the store
//! answers exactly as before: same pins, levels, certificates, revocations and principals).

use llmkg_federation_core::security::Operation;
use llmkg_federation_core::{
    CertificateError, NodeCertificate, NodeId, NodeKeypair, OrgId, OrgKeypair, OrgRootKey, Role,
    Timestamp, TrustAnchors,
};
use llmkg_governance::trust::{
    NodeKeyRotation, Principal, RootEndorsement, RootRotation, TrustError, TrustLevel, TrustStore,
};

fn t(s: i64) -> Timestamp {
    Timestamp::from_micros(s * 1_000_000)
}

fn org(name: &str) -> OrgId {
    OrgId::new(name).unwrap()
}

fn root(seed: u8) -> OrgKeypair {
    OrgKeypair::from_secret_bytes([seed; 32])
}

fn node(seed: u8) -> NodeId {
    NodeKeypair::from_secret_bytes([seed; 32]).node_id()
}

/// The rotating organization, and the others with their root seeds and levels.
const ACME: (&str, u8) = ("acme", 1);
const ACME_NEW: u8 = 11;
const OTHERS: [(&str, u8, TrustLevel); 6] = [
    ("bravo", 2, TrustLevel::Member),
    ("charlie", 3, TrustLevel::Member),
    ("delta", 4, TrustLevel::Full),
    ("echo", 5, TrustLevel::Full),
    ("relay", 6, TrustLevel::Relay),
    ("reader", 7, TrustLevel::Reader),
];
/// Not pinned anywhere.
const OUTSIDER: (&str, u8) = ("outsider", 8);
/// Some key no one pins.
const STRANGER: u8 = 9;

/// Node seeds the snapshots look at.
const NODES: [u8; 6] = [101, 102, 103, 104, 105, 106];
/// Times the snapshots ask at.
const TIMES: [i64; 4] = [0, 10, 500, 5_000];

/// A store pinning acme (Member) and the others, with acme's node 101 certified (serial 1,
/// valid 0..=1000) and bravo's node 102 (serial 1).
fn world() -> TrustStore {
    let mut s = TrustStore::new();
    s.pin(org(ACME.0), root(ACME.1).root_key(), TrustLevel::Member);
    for (name, seed, level) in OTHERS {
        s.pin(org(name), root(seed).root_key(), level);
    }
    s.add_certificate(cert(ACME.1, ACME.0, 101, 1), t(10)).unwrap();
    s.add_certificate(cert(2, "bravo", 102, 1), t(10)).unwrap();
    s
}

/// `org`'s certificate for node `node` signed by root `seed`, roles Writer, valid 0..=1000.
fn cert(seed: u8, org_name: &str, node_seed: u8, serial: u64) -> NodeCertificate {
    root(seed)
        .certify(org(org_name), node(node_seed), [Role::Writer], t(0), t(1_000), serial)
        .unwrap()
}

/// What the store answers about one organization: its root, its level, its root voters.
type OrgView = (OrgId, Option<OrgRootKey>, Option<TrustLevel>, Vec<OrgId>);

/// Everything the store answers, for "nothing changed" checks.
#[derive(Debug, Clone, PartialEq)]
struct Snapshot {
    anchors: TrustAnchors,
    orgs: Vec<OrgView>,
    certificates: Vec<Vec<NodeCertificate>>,
    principals: Vec<Result<Principal, TrustError>>,
}

fn snapshot(s: &TrustStore) -> Snapshot {
    let names = [ACME.0, OUTSIDER.0].into_iter().chain(OTHERS.iter().map(|o| o.0));
    let orgs = names
        .map(|n| {
            let o = org(n);
            (o.clone(), s.root(&o), s.level(&o), s.root_voters(&o))
        })
        .collect();
    let certificates = NODES.iter().map(|n| s.certificates(&node(*n)).to_vec()).collect();
    let principals = NODES
        .iter()
        .flat_map(|n| TIMES.iter().map(move |at| s.principal(&node(*n), t(*at))))
        .collect();
    Snapshot { anchors: s.anchors().clone(), orgs, certificates, principals }
}

#[track_caller]
fn assert_unchanged(s: &TrustStore, before: &Snapshot) {
    assert_eq!(&snapshot(s), before, "a refused change changed the store");
}

// ---------------------------------------------------------------------------------------
// Trust levels.

#[test]
fn trust_levels_cap_operations() {
    for op in Operation::ALL {
        assert!(!TrustLevel::Relay.allows(op), "relay allows {op}");
        assert_eq!(TrustLevel::Reader.allows(op), op == Operation::Read, "reader, {op}");
        assert_eq!(TrustLevel::Member.allows(op), op != Operation::Administer, "member, {op}");
        assert!(TrustLevel::Full.allows(op), "full refuses {op}");
    }
    assert!(!TrustLevel::Relay.votes() && !TrustLevel::Reader.votes());
    assert!(TrustLevel::Member.votes() && TrustLevel::Full.votes());
}

// ---------------------------------------------------------------------------------------
// Certificates.

#[test]
fn the_world_answers_as_set_up() {
    let s = world();
    let p = s.principal(&node(101), t(10)).unwrap();
    assert_eq!((p.org(), p.roles(), p.serial()), (&org("acme"), &[Role::Writer][..], 1));
    assert_eq!(s.root_voters(&org("acme")), ["bravo", "charlie", "delta", "echo"].map(org));
}

#[test]
fn forged_certificate_bytes_fail_to_decode() {
    let c = cert(ACME.1, ACME.0, 101, 1);
    let bytes = c.encode();
    assert_eq!(NodeCertificate::decode(&bytes).unwrap(), c);
    // A flipped signature byte (the signature is the last 64 bytes): a bad signature.
    for i in [bytes.len() - 64, bytes.len() - 1] {
        let mut forged = bytes.clone();
        forged[i] ^= 0x01;
        assert_eq!(
            NodeCertificate::decode(&forged),
            Err(CertificateError::BadSignature { org: org(ACME.0) }),
            "flip at {i}"
        );
    }
    // No single flipped bit anywhere decodes.
    for i in 0..bytes.len() {
        for bit in 0..8 {
            let mut forged = bytes.clone();
            forged[i] ^= 1 << bit;
            assert!(NodeCertificate::decode(&forged).is_err(), "flip of bit {bit} at {i} decoded");
        }
    }
}

#[test]
fn certificate_signed_by_an_unpinned_root_for_a_pinned_org_is_wrong_root() {
    let mut s = world();
    let before = snapshot(&s);
    let forged = cert(STRANGER, ACME.0, 103, 7);
    assert_eq!(
        s.add_certificate(forged, t(10)),
        Err(TrustError::Certificate(CertificateError::WrongRoot {
            org: org(ACME.0),
            claimed: root(STRANGER).root_key(),
        }))
    );
    assert_unchanged(&s, &before);
    // Claiming another pinned organization's node with acme's root: wrong root too.
    let cross = cert(ACME.1, "bravo", 103, 8);
    assert_eq!(
        s.add_certificate(cross, t(10)),
        Err(TrustError::Certificate(CertificateError::WrongRoot {
            org: org("bravo"),
            claimed: root(ACME.1).root_key(),
        }))
    );
    assert_unchanged(&s, &before);
}

#[test]
fn expired_certificate_is_refused() {
    let mut s = world();
    let before = snapshot(&s);
    let c = cert(ACME.1, ACME.0, 103, 5); // valid 0..=1000 inclusive
    assert_eq!(
        s.add_certificate(c.clone(), Timestamp::from_micros(t(1_000).as_micros() + 1)),
        Err(TrustError::Certificate(CertificateError::Expired {
            org: org(ACME.0),
            serial: 5,
            not_after: t(1_000),
        }))
    );
    assert_unchanged(&s, &before);
    // The end of validity is inclusive.
    s.add_certificate(c, t(1_000)).unwrap();
    assert!(s.principal(&node(103), t(1_000)).is_ok());
    assert!(matches!(
        s.principal(&node(103), t(1_001)),
        Err(TrustError::Certificate(CertificateError::Expired { serial: 5, .. }))
    ));
}

#[test]
fn not_yet_valid_certificate_is_refused() {
    let mut s = world();
    let before = snapshot(&s);
    let c =
        root(ACME.1).certify(org(ACME.0), node(103), [Role::Reader], t(100), t(200), 6).unwrap();
    assert_eq!(
        s.add_certificate(c.clone(), Timestamp::from_micros(t(100).as_micros() - 1)),
        Err(TrustError::Certificate(CertificateError::NotYetValid {
            org: org(ACME.0),
            serial: 6,
            not_before: t(100),
        }))
    );
    assert_unchanged(&s, &before);
    // The start of validity is inclusive.
    s.add_certificate(c, t(100)).unwrap();
    assert_eq!(s.principal(&node(103), t(100)).unwrap().serial(), 6);
}

#[test]
fn revoked_certificate_no_longer_gives_a_principal() {
    let mut s = world();
    assert_eq!(s.principal(&node(101), t(10)).unwrap().serial(), 1);
    s.add_revocation(&root(ACME.1).revoke(org(ACME.0), [1], t(20)).unwrap()).unwrap();
    let revoked =
        Err(TrustError::Certificate(CertificateError::Revoked { org: org(ACME.0), serial: 1 }));
    // Revocation is timeless: also before it was issued.
    assert_eq!(s.principal(&node(101), t(10)), revoked);
    assert_eq!(s.principal(&node(101), t(30)), revoked);
    // Adding the revoked certificate again is refused and changes nothing.
    let before = snapshot(&s);
    assert_eq!(s.add_certificate(cert(ACME.1, ACME.0, 101, 1), t(30)), revoked.map(|_| ()));
    assert_unchanged(&s, &before);
    // Bravo's serial 1 is another certificate: untouched.
    assert_eq!(s.principal(&node(102), t(30)).unwrap().org(), &org("bravo"));
}

#[test]
fn revocation_by_another_root_or_of_an_unpinned_org_is_refused() {
    let mut s = world();
    let before = snapshot(&s);
    let forged = root(STRANGER).revoke(org(ACME.0), [1], t(20)).unwrap();
    assert_eq!(
        s.add_revocation(&forged),
        Err(TrustError::Certificate(CertificateError::WrongRoot {
            org: org(ACME.0),
            claimed: root(STRANGER).root_key(),
        }))
    );
    assert_unchanged(&s, &before);
    let unpinned = root(OUTSIDER.1).revoke(org(OUTSIDER.0), [1], t(20)).unwrap();
    assert_eq!(
        s.add_revocation(&unpinned),
        Err(TrustError::Certificate(CertificateError::UnknownOrg(org(OUTSIDER.0))))
    );
    assert_unchanged(&s, &before);
}

#[test]
fn certificate_of_an_unpinned_org_is_refused() {
    let mut s = world();
    let before = snapshot(&s);
    assert_eq!(
        s.add_certificate(cert(OUTSIDER.1, OUTSIDER.0, 103, 1), t(10)),
        Err(TrustError::Certificate(CertificateError::UnknownOrg(org(OUTSIDER.0))))
    );
    assert_unchanged(&s, &before);
}

#[test]
fn principal_of_a_node_without_certificate() {
    let s = world();
    let before = snapshot(&s);
    assert_eq!(s.principal(&node(104), t(10)), Err(TrustError::NoCertificate(node(104))));
    assert_unchanged(&s, &before);
}

// ---------------------------------------------------------------------------------------
// Node-key rotation.

fn node_rotation(
    cert_seed: u8,
    cert_org: &str,
    rev_seed: u8,
    rev_org: &str,
    revoke: u64,
) -> NodeKeyRotation {
    NodeKeyRotation {
        certificate: cert(cert_seed, cert_org, 103, 2),
        revocation: root(rev_seed).revoke(org(rev_org), [revoke], t(20)).unwrap(),
    }
}

#[test]
fn node_key_rotation_revokes_the_old_key_and_certifies_the_new() {
    let mut s = world();
    s.rotate_node_key(&node_rotation(ACME.1, ACME.0, ACME.1, ACME.0, 1), t(20)).unwrap();
    assert_eq!(
        s.principal(&node(101), t(30)),
        Err(TrustError::Certificate(CertificateError::Revoked { org: org(ACME.0), serial: 1 }))
    );
    let p = s.principal(&node(103), t(30)).unwrap();
    assert_eq!((p.org(), p.serial(), p.roles()), (&org(ACME.0), 2, &[Role::Writer][..]));
    assert!(s.anchors().is_revoked(&org(ACME.0), 1));
}

#[test]
fn node_key_rotation_mixing_organizations_is_refused() {
    let mut s = world();
    let before = snapshot(&s);
    assert_eq!(
        s.rotate_node_key(&node_rotation(ACME.1, ACME.0, 2, "bravo", 1), t(20)),
        Err(TrustError::RotationOrgMismatch { certificate: org(ACME.0), revocation: org("bravo") })
    );
    assert_unchanged(&s, &before);
}

#[test]
fn node_key_rotation_with_a_revocation_by_another_root_is_refused() {
    let mut s = world();
    let before = snapshot(&s);
    assert_eq!(
        s.rotate_node_key(&node_rotation(ACME.1, ACME.0, STRANGER, ACME.0, 1), t(20)),
        Err(TrustError::Certificate(CertificateError::WrongRoot {
            org: org(ACME.0),
            claimed: root(STRANGER).root_key(),
        }))
    );
    assert_unchanged(&s, &before);
}

#[test]
fn node_key_rotation_revoking_its_own_new_serial_is_refused() {
    let mut s = world();
    let before = snapshot(&s);
    assert_eq!(
        s.rotate_node_key(&node_rotation(ACME.1, ACME.0, ACME.1, ACME.0, 2), t(20)),
        Err(TrustError::RotationRevokesItself(2))
    );
    assert_unchanged(&s, &before);
}

#[test]
fn node_key_rotation_with_an_invalid_new_certificate_applies_no_revocation() {
    let mut s = world();
    let before = snapshot(&s);
    // The new certificate is expired at `now`: the revocation must not be applied either.
    assert_eq!(
        s.rotate_node_key(&node_rotation(ACME.1, ACME.0, ACME.1, ACME.0, 1), t(2_000)),
        Err(TrustError::Certificate(CertificateError::Expired {
            org: org(ACME.0),
            serial: 2,
            not_after: t(1_000),
        }))
    );
    assert_unchanged(&s, &before);
    // A new certificate by a foreign root, with a genuine revocation: nothing applied.
    let mixed = NodeKeyRotation {
        certificate: cert(STRANGER, ACME.0, 103, 2),
        revocation: root(ACME.1).revoke(org(ACME.0), [1], t(20)).unwrap(),
    };
    assert!(matches!(
        s.rotate_node_key(&mixed, t(20)),
        Err(TrustError::Certificate(CertificateError::WrongRoot { .. }))
    ));
    assert_unchanged(&s, &before);
}

// ---------------------------------------------------------------------------------------
// Root rotation.

fn acme_rotation(sequence: u64) -> RootRotation {
    RootRotation::sign(&root(ACME_NEW), org(ACME.0), root(ACME.1).root_key(), sequence, t(50))
        .unwrap()
}

fn endorse(r: &RootRotation, name: &str, seed: u8) -> RootEndorsement {
    r.endorse(org(name), &root(seed)).unwrap()
}

fn endorsements(r: &RootRotation, who: &[&str]) -> Vec<RootEndorsement> {
    who.iter()
        .map(|name| {
            let seed = OTHERS.iter().find(|o| o.0 == *name).map_or(OUTSIDER.1, |o| o.1);
            endorse(r, name, seed)
        })
        .collect()
}

fn quorum_not_met(have: usize) -> Result<Vec<OrgId>, TrustError> {
    Err(TrustError::QuorumNotMet { org: org(ACME.0), have, need: 3 })
}

#[test]
fn root_rotation_with_a_majority_of_the_other_voters() {
    let mut s = world();
    let r = acme_rotation(1);
    // Relay and reader orgs are pinned but do not vote: 4 voters, 3 needed.
    let counted = s.rotate_root(&r, &endorsements(&r, &["delta", "bravo", "charlie"])).unwrap();
    assert_eq!(counted, ["bravo", "charlie", "delta"].map(org));
    assert_eq!(s.root(&org(ACME.0)), Some(root(ACME_NEW).root_key()));
    assert_eq!(s.level(&org(ACME.0)), Some(TrustLevel::Member));

    // Certificates of the old root stop verifying, already held or new.
    let wrong_root = |_| {
        Err::<(), _>(TrustError::Certificate(CertificateError::WrongRoot {
            org: org(ACME.0),
            claimed: root(ACME.1).root_key(),
        }))
    };
    assert_eq!(s.principal(&node(101), t(60)).map(|_| ()), wrong_root(()));
    assert_eq!(s.add_certificate(cert(ACME.1, ACME.0, 104, 3), t(60)), wrong_root(()));
    // Other organizations are untouched.
    assert!(s.principal(&node(102), t(60)).is_ok());
    // Certificates of the new root verify.
    s.add_certificate(cert(ACME_NEW, ACME.0, 101, 4), t(60)).unwrap();
    assert_eq!(s.principal(&node(101), t(60)).unwrap().serial(), 4);

    // The old root can no longer revoke.
    let before = snapshot(&s);
    let old_rev = root(ACME.1).revoke(org(ACME.0), [4], t(60)).unwrap();
    assert_eq!(s.add_revocation(&old_rev), wrong_root(()));
    assert_unchanged(&s, &before);

    // Replaying the same rotation is refused and changes nothing.
    let before = snapshot(&s);
    let replay = s.rotate_root(&r, &endorsements(&r, &["bravo", "charlie", "delta", "echo"]));
    assert!(matches!(replay, Err(TrustError::StaleRotation { .. })), "{replay:?}");
    assert_unchanged(&s, &before);

    // The next rotation needs sequence 2 and names the new root as the old one.
    let next =
        RootRotation::sign(&root(12), org(ACME.0), root(ACME_NEW).root_key(), 2, t(70)).unwrap();
    s.rotate_root(&next, &endorsements(&next, &["bravo", "echo", "delta"])).unwrap();
    assert_eq!(s.root(&org(ACME.0)), Some(root(12).root_key()));
}

#[test]
fn root_rotation_with_all_voters_and_with_full_only() {
    let mut s = world();
    let r = acme_rotation(1);
    let all = endorsements(&r, &["bravo", "charlie", "delta", "echo"]);
    assert_eq!(s.rotate_root(&r, &all).unwrap(), ["bravo", "charlie", "delta", "echo"].map(org));

    // With delta and echo Full and one Member, three counted is enough.
    let mut s = world();
    s.rotate_root(&r, &endorsements(&r, &["echo", "delta", "charlie"])).unwrap();
}

#[test]
fn root_rotation_with_two_of_four_voters_is_refused() {
    let mut s = world();
    let before = snapshot(&s);
    let r = acme_rotation(1);
    assert_eq!(s.rotate_root(&r, &endorsements(&r, &["bravo", "echo"])), quorum_not_met(2));
    assert_unchanged(&s, &before);
    assert_eq!(s.rotate_root(&r, &[]), quorum_not_met(0));
    assert_unchanged(&s, &before);
}

#[test]
fn relay_and_reader_endorsements_do_not_count() {
    let mut s = world();
    let before = snapshot(&s);
    let r = acme_rotation(1);
    let e = endorsements(&r, &["bravo", "relay", "charlie", "reader"]);
    assert_eq!(s.rotate_root(&r, &e), quorum_not_met(2));
    assert_unchanged(&s, &before);
}

#[test]
fn a_voter_lowered_to_reader_no_longer_counts() {
    let mut s = world();
    assert!(s.set_level(&org("delta"), TrustLevel::Reader));
    let before = snapshot(&s);
    let r = acme_rotation(1);
    // 3 voters left (bravo, charlie, echo): 2 needed, but delta's does not count.
    let e = endorsements(&r, &["bravo", "delta"]);
    assert_eq!(
        s.rotate_root(&r, &e),
        Err(TrustError::QuorumNotMet { org: org(ACME.0), have: 1, need: 2 })
    );
    assert_unchanged(&s, &before);
}

#[test]
fn unpinned_endorsements_do_not_count() {
    let mut s = world();
    let before = snapshot(&s);
    let r = acme_rotation(1);
    let e = endorsements(&r, &["bravo", "outsider", "charlie"]);
    assert_eq!(s.rotate_root(&r, &e), quorum_not_met(2));
    assert_unchanged(&s, &before);
}

#[test]
fn duplicated_endorsements_count_once() {
    let mut s = world();
    let before = snapshot(&s);
    let r = acme_rotation(1);
    let e = endorsements(&r, &["bravo", "charlie", "bravo", "charlie", "bravo"]);
    assert_eq!(s.rotate_root(&r, &e), quorum_not_met(2));
    assert_unchanged(&s, &before);
}

#[test]
fn endorsements_with_bad_signatures_do_not_count() {
    let mut s = world();
    let before = snapshot(&s);
    let r = acme_rotation(1);
    let mut e = endorsements(&r, &["bravo", "charlie"]);
    // Delta's name, signed by a key that is not delta's root.
    e.push(endorse(&r, "delta", STRANGER));
    // Echo's name, signed by acme's new root.
    e.push(endorse(&r, "echo", ACME_NEW));
    // Delta's genuine endorsement of another rotation (other time of issue).
    let other = RootRotation::sign(&root(ACME_NEW), org(ACME.0), root(ACME.1).root_key(), 1, t(51))
        .unwrap();
    e.push(endorse(&other, "delta", 4));
    // Echo's genuine endorsement of a rotation to another root.
    let elsewhere =
        RootRotation::sign(&root(12), org(ACME.0), root(ACME.1).root_key(), 1, t(50)).unwrap();
    e.push(endorse(&elsewhere, "echo", 5));
    assert_eq!(s.rotate_root(&r, &e), quorum_not_met(2));
    assert_unchanged(&s, &before);
}

#[test]
fn the_rotating_orgs_own_endorsement_does_not_count() {
    let mut s = world();
    let before = snapshot(&s);
    let r = acme_rotation(1);
    let mut e = endorsements(&r, &["bravo", "charlie"]);
    e.push(endorse(&r, ACME.0, ACME.1)); // by the old root
    e.push(endorse(&r, ACME.0, ACME_NEW)); // by the new root
    assert_eq!(s.rotate_root(&r, &e), quorum_not_met(2));
    assert_unchanged(&s, &before);
}

/// `rotation` with one field of its JSON form replaced by the same field of `donor`.
fn splice(rotation: &RootRotation, donor: &RootRotation, path: &[&str]) -> RootRotation {
    let mut a = serde_json::to_value(rotation).unwrap();
    let b = serde_json::to_value(donor).unwrap();
    let (mut at, mut from) = (&mut a, &b);
    for key in path {
        at = at.get_mut(*key).unwrap();
        from = from.get(*key).unwrap();
    }
    *at = from.clone();
    serde_json::from_value(a).unwrap()
}

#[test]
fn rotation_not_signed_by_its_new_root_is_refused() {
    let mut s = world();
    let before = snapshot(&s);
    let genuine = acme_rotation(1);
    let by_other =
        RootRotation::sign(&root(12), org(ACME.0), root(ACME.1).root_key(), 1, t(50)).unwrap();
    // Installs ACME_NEW, signed by another key.
    let unsigned = splice(&genuine, &by_other, &["signature"]);
    // Installs key 12, signed by ACME_NEW.
    let swapped = splice(&genuine, &by_other, &["body", "new_root"]);
    for r in [unsigned, swapped] {
        assert_ne!(r, genuine);
        let e = endorsements(&r, &["bravo", "charlie", "delta", "echo"]);
        assert_eq!(s.rotate_root(&r, &e), Err(TrustError::RotationNotSigned(org(ACME.0))));
        assert_unchanged(&s, &before);
    }
    // Signed by the old root (which is what a thief of the old key could make).
    let by_old =
        RootRotation::sign(&root(ACME.1), org(ACME.0), root(ACME.1).root_key(), 1, t(50)).unwrap();
    let r = splice(&genuine, &by_old, &["signature"]);
    let e = endorsements(&r, &["bravo", "charlie", "delta", "echo"]);
    assert_eq!(s.rotate_root(&r, &e), Err(TrustError::RotationNotSigned(org(ACME.0))));
    assert_unchanged(&s, &before);
}

#[test]
fn rotation_with_the_wrong_old_root_is_stale() {
    let mut s = world();
    let before = snapshot(&s);
    let r = RootRotation::sign(&root(ACME_NEW), org(ACME.0), root(STRANGER).root_key(), 1, t(50))
        .unwrap();
    let e = endorsements(&r, &["bravo", "charlie", "delta", "echo"]);
    assert!(matches!(
        s.rotate_root(&r, &e),
        Err(TrustError::StaleRotation { org: o, .. }) if o == org(ACME.0)
    ));
    assert_unchanged(&s, &before);
}

#[test]
fn rotation_with_a_sequence_other_than_the_next_is_stale() {
    let mut s = world();
    let before = snapshot(&s);
    for seq in [0, 2, 3, u64::MAX] {
        let r = acme_rotation(seq);
        let e = endorsements(&r, &["bravo", "charlie", "delta", "echo"]);
        assert!(
            matches!(s.rotate_root(&r, &e), Err(TrustError::StaleRotation { org: o, .. }) if o == org(ACME.0)),
            "sequence {seq}"
        );
        assert_unchanged(&s, &before);
    }
}

#[test]
fn rotation_of_an_unpinned_org_is_refused() {
    let mut s = world();
    let before = snapshot(&s);
    let r =
        RootRotation::sign(&root(STRANGER), org(OUTSIDER.0), root(OUTSIDER.1).root_key(), 1, t(50))
            .unwrap();
    let e = endorsements(&r, &["bravo", "charlie", "delta", "echo"]);
    assert_eq!(s.rotate_root(&r, &e), Err(TrustError::UnknownOrg(org(OUTSIDER.0))));
    assert_unchanged(&s, &before);
}

// ---------------------------------------------------------------------------------------
// Which certificate a principal comes from.

#[test]
fn principal_comes_from_the_highest_serial_that_verifies() {
    let mut s = world();
    let a = root(ACME.1);
    let short = a.certify(org(ACME.0), node(105), [Role::Admin], t(0), t(100), 9).unwrap();
    let long = a.certify(org(ACME.0), node(105), [Role::Reader], t(0), t(1_000), 4).unwrap();
    s.add_certificate(long, t(10)).unwrap();
    s.add_certificate(short, t(10)).unwrap();
    assert_eq!(
        s.certificates(&node(105)).iter().map(NodeCertificate::serial).collect::<Vec<_>>(),
        [9, 4]
    );
    assert_eq!(s.principal(&node(105), t(50)).unwrap().roles(), [Role::Admin]);
    // Serial 9 expired at 100: serial 4 answers.
    assert_eq!(s.principal(&node(105), t(500)).unwrap().serial(), 4);
    // Both expired: the error is the first (highest-serial) certificate's.
    assert_eq!(
        s.principal(&node(105), t(5_000)),
        Err(TrustError::Certificate(CertificateError::Expired {
            org: org(ACME.0),
            serial: 9,
            not_after: t(100)
        }))
    );
}

#[test]
fn at_most_eight_certificates_are_kept_per_node_the_highest_serials() {
    let mut s = world();
    for serial in [5, 1, 9, 3, 7, 2, 8, 4, 6, 10] {
        s.add_certificate(cert(ACME.1, ACME.0, 106, serial), t(10)).unwrap();
    }
    let serials: Vec<u64> =
        s.certificates(&node(106)).iter().map(NodeCertificate::serial).collect();
    assert_eq!(serials, [10, 9, 8, 7, 6, 5, 4, 3]);
    // Adding one already held changes nothing.
    let before = snapshot(&s);
    s.add_certificate(cert(ACME.1, ACME.0, 106, 9), t(10)).unwrap();
    assert_unchanged(&s, &before);
}
