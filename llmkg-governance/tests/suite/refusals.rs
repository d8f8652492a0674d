#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
//! Every refusal of the security plane, through the manager: each is a typed error, changes
//! nothing, and is itself recorded as one audit entry.

use crate::common;

use common::*;

use llmkg_federation_core::security::{
    CrossFederationMerge, FederatedBranchRequest, NamespaceClaim, Operation, SecurityError,
    SecurityLevel, SecurityManager,
};
use llmkg_federation_core::{
    CertificateError, ChangeSet, CommitRefusal, MemoryKv, NodeCertificate, NodeKeypair, OrgKeypair,
    Role,
};
use llmkg_governance::GovernanceError;
use llmkg_governance::access::{AccessPolicy, PrincipalPattern, Rule};
use llmkg_governance::audit::LogSigner;
use llmkg_governance::keys::{KeyError, OrgEncryptionKeypair};
use llmkg_governance::manager::{FederatedSecurityManager, SignedPolicy};
use llmkg_governance::trust::{RootRotation, TrustError, TrustLevel};
use llmkg_sync::replica::{ReceiveError, Replica, ReplicaConfig};

/// Runs `refused`, checking it recorded exactly one audit entry of kind `event`.
fn audited<T: std::fmt::Debug>(
    m: &FederatedSecurityManager<MemoryKv>,
    event: &str,
    refused: impl FnOnce() -> T,
) -> T {
    let before = m.audit_size();
    let out = refused();
    assert_eq!(m.audit_size(), before + 1, "one audit entry for {out:?}");
    assert_eq!(last_event(m)["event"], event, "{}", last_event(m));
    out
}

#[test]
fn forged_certificate_is_refused() {
    let (acme, globex, _) = orgs();
    let m = acme.manager(&[&acme]);
    // A flipped byte in the bytes of a genuine certificate: it no longer decodes.
    let mut bytes = acme.cert(globex.writer_id(), &[Role::Writer], 9).encode();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    assert!(matches!(NodeCertificate::decode(&bytes), Err(CertificateError::BadSignature { .. })));
    // A certificate for acme signed by a root that is not acme's pinned root.
    let forger = OrgKeypair::from_secret_bytes([99; 32]);
    let forged = forger
        .certify(acme.id.clone(), globex.writer_id(), [Role::Admin], t(0), t(100), 7)
        .unwrap();
    let err = audited(&m, "certificate-refused", || m.add_certificate(forged, t(2)));
    assert!(
        matches!(
            err,
            Err(GovernanceError::Trust(TrustError::Certificate(
                CertificateError::WrongRoot { .. }
            )))
        ),
        "{err:?}"
    );
    // Nothing changed: the forged node is still unknown.
    let req = FederatedBranchRequest {
        requester: globex.writer_id(),
        ..request(&acme, "b", &[&acme], SecurityLevel::Internal)
    };
    assert!(matches!(
        m.validate_branch_request(&req, t(3)),
        Err(SecurityError::UnknownRequester(_))
    ));
}

#[test]
fn expired_and_not_yet_valid_certificates_are_refused() {
    let (acme, globex, _) = orgs();
    let m = acme.manager(&[&acme, &globex]);
    let node = NodeKeypair::from_secret_bytes([77; 32]).node_id();
    let cert =
        globex.root.certify(globex.id.clone(), node, [Role::Writer], t(100), t(200), 5).unwrap();
    let err = audited(&m, "certificate-refused", || m.add_certificate(cert.clone(), t(300)));
    assert!(matches!(
        err,
        Err(GovernanceError::Trust(TrustError::Certificate(CertificateError::Expired { .. })))
    ));
    let err = audited(&m, "certificate-refused", || m.add_certificate(cert, t(50)));
    assert!(matches!(
        err,
        Err(GovernanceError::Trust(TrustError::Certificate(CertificateError::NotYetValid { .. })))
    ));
    // A certificate that lapses after being accepted stops authorizing.
    let short =
        globex.root.certify(globex.id.clone(), node, [Role::Admin], t(0), t(20), 6).unwrap();
    m.add_certificate(short, t(10)).unwrap();
    let req = FederatedBranchRequest {
        requester: node,
        ..request(&globex, "late", &[&globex], SecurityLevel::Internal)
    };
    let err = audited(&m, "access-decision", || m.validate_branch_request(&req, t(30)));
    assert!(
        matches!(err, Err(SecurityError::Identity { error: CertificateError::Expired { .. }, .. })),
        "{err:?}"
    );
}

#[test]
fn revoked_certificate_is_refused() {
    let (acme, globex, _) = orgs();
    let m = acme.manager(&[&acme, &globex]);
    let req = request(&globex, "r", &[&acme, &globex], SecurityLevel::Internal);
    assert!(m.validate_branch_request(&req, t(2)).unwrap().is_approved());
    let revocation = globex.root.revoke(globex.id.clone(), [1], t(3)).unwrap();
    audited(&m, "revocation", || m.add_revocation(&revocation, t(3)).unwrap());
    let err = audited(&m, "access-decision", || m.validate_branch_request(&req, t(4)));
    assert!(
        matches!(err, Err(SecurityError::Identity { error: CertificateError::Revoked { .. }, .. })),
        "{err:?}"
    );
    // A revocation signed by another root is refused and changes nothing.
    let bogus = acme.root.revoke(globex.id.clone(), [2], t(3)).unwrap();
    let err = audited(&m, "revocation-refused", || m.add_revocation(&bogus, t(5)));
    assert!(matches!(
        err,
        Err(GovernanceError::Trust(TrustError::Certificate(CertificateError::WrongRoot { .. })))
    ));
}

#[test]
fn unpinned_root_is_refused() {
    let (acme, globex, _) = orgs();
    let m = acme.manager(&[&acme]);
    let err = audited(&m, "certificate-refused", || {
        m.add_certificate(globex.cert(globex.writer_id(), &[Role::Writer], 2), t(2))
    });
    assert!(matches!(
        err,
        Err(GovernanceError::Trust(TrustError::Certificate(CertificateError::UnknownOrg(_))))
    ));
    // A policy of an unpinned organization is refused too.
    let err = audited(&m, "policy-refused", || m.publish_policy(&globex.policy(1), t(2)));
    assert!(matches!(err, Err(GovernanceError::PolicyNotSigned(_))), "{err:?}");
}

#[test]
fn access_is_denied_by_default_and_forbid_overrides_permit() {
    let (acme, globex, _) = orgs();
    let m = acme.manager(&[&acme, &globex]);
    let ctx = m
        .create_security_context(
            &request(&acme, "main", &[&acme, &globex], SecurityLevel::Internal),
            t(2),
        )
        .unwrap();
    let b = ctx.branch;
    // A writer may commit, but not merge: nothing permits it.
    let err = audited(&m, "access-decision", || {
        m.authorize(&acme.writer_id(), Operation::Merge, &b, &[], t(3))
    });
    let Err(GovernanceError::NotApproved(d)) = err else { panic!("{err:?}") };
    assert!(d.refused_by().all(|(_, rule, _)| rule.is_none()), "{d}");
    assert_eq!(d.refused_by().count(), 2);
    // The writer may commit a foaf name, but the forbid on /secret/ beats the writer permit.
    m.authorize(
        &acme.writer_id(),
        Operation::Commit,
        &b,
        &["http://xmlns.com/foaf/0.1/name"],
        t(3),
    )
    .unwrap();
    let err = audited(&m, "access-decision", || {
        m.authorize(
            &acme.writer_id(),
            Operation::Commit,
            &b,
            &["https://ex.org/secret/salary"],
            t(3),
        )
    });
    let Err(GovernanceError::NotApproved(d)) = err else { panic!("{err:?}") };
    assert!(d.refused_by().all(|(_, rule, _)| rule == Some("no-secret")), "{d}");
    let event = last_event(&m);
    assert_eq!(event["approved"], false);
    assert_eq!(event["verdicts"][0]["rule"], "no-secret");
}

#[test]
fn one_organization_withholding_consent_refuses() {
    let (acme, globex, initech) = orgs();
    let m = acme.manager(&[&acme, &globex, &initech]);
    // Initech publishes a stricter policy: only its own admins administer.
    let strict = AccessPolicy::new(
        initech.id.clone(),
        2,
        vec![
            Rule::permit(
                "own-admins",
                PrincipalPattern::OrgRole(initech.id.clone(), Role::Admin),
                Operation::ALL,
            )
            .unwrap(),
        ],
    )
    .unwrap();
    m.publish_policy(&SignedPolicy::sign(&strict, &initech.root).unwrap(), t(2)).unwrap();
    let req = request(&acme, "joint", &[&acme, &globex, &initech], SecurityLevel::Internal);
    let d = audited(&m, "access-decision", || m.validate_branch_request(&req, t(3)).unwrap());
    assert!(!d.is_approved());
    assert_eq!(
        d.approved_by().cloned().collect::<Vec<_>>(),
        vec![acme.id.clone(), globex.id.clone()]
    );
    assert_eq!(
        d.refused_by().map(|(o, _, _)| o.clone()).collect::<Vec<_>>(),
        vec![initech.id.clone()]
    );
    let err = m.create_security_context(&req, t(3));
    assert!(matches!(err, Err(SecurityError::NotApproved(_))), "{err:?}");
    assert!(m.context(&branch("joint")).is_none(), "no context was created");
    // Without initech the same request passes.
    let req2 = request(&acme, "pair", &[&acme, &globex], SecurityLevel::Internal);
    assert!(m.validate_branch_request(&req2, t(3)).unwrap().is_approved());
    // An owner whose policy is unknown here is pending, never approved.
    let hooli = Org::new("hooli", 40);
    m.pin(hooli.id.clone(), hooli.root.root_key(), TrustLevel::Member, t(3)).unwrap();
    let req3 = request(&acme, "four", &[&acme, &hooli], SecurityLevel::Internal);
    let d = m.validate_branch_request(&req3, t(4)).unwrap();
    assert_eq!(d.pending().cloned().collect::<Vec<_>>(), vec![hooli.id.clone()]);
    assert!(!d.is_approved());
}

#[test]
fn merge_needs_both_branches_organizations() {
    let (acme, globex, initech) = orgs();
    let m = acme.manager(&[&acme, &globex, &initech]);
    let s = m
        .create_security_context(
            &request(&acme, "source", &[&acme, &initech], SecurityLevel::Internal),
            t(2),
        )
        .unwrap();
    let tgt = m
        .create_security_context(
            &request(&acme, "target", &[&acme, &globex], SecurityLevel::Internal),
            t(2),
        )
        .unwrap();
    let merge = CrossFederationMerge {
        requester: acme.admin_id(),
        source: s.branch.clone(),
        target: tgt.branch.clone(),
        predicates: vec![],
    };
    let d = m.validate_cross_federation_merge(&merge, t(3)).unwrap();
    assert!(d.is_approved(), "{d}");
    assert_eq!(d.verdicts().len(), 3);
    // A writer may not merge: every organization refuses.
    let by_writer = CrossFederationMerge { requester: acme.writer_id(), ..merge };
    let d = audited(&m, "access-decision", || {
        m.validate_cross_federation_merge(&by_writer, t(3)).unwrap()
    });
    assert_eq!(d.refused_by().count(), 3, "{d}");
}

#[test]
fn unauthorized_commit_is_refused_on_receive_everywhere() {
    let (acme, globex, _) = orgs();
    let ma = acme.manager(&[&acme, &globex]);
    let mg = globex.manager(&[&acme, &globex]);
    let mut req = request(&acme, "shared", &[&acme, &globex], SecurityLevel::Internal);
    // Globex's namespace is globex's data alone.
    req.namespaces =
        vec![NamespaceClaim { prefix: "https://globex.example/".into(), owner: globex.id.clone() }];
    ma.create_security_context(&req, t(2)).unwrap();
    mg.create_security_context(&req, t(2)).unwrap();
    let b = branch("shared");
    // The writer's own replica lets it write anything (no policy).
    let mut author = Replica::open(
        MemoryKv::new(),
        acme.node(acme.writer),
        acme.id.clone(),
        ReplicaConfig::default(),
    )
    .unwrap();
    let ok = author
        .write(t(5), ChangeSet::adding([triple("https://ex.org/name", "x")]), "fine")
        .unwrap();
    let bad = author
        .write(t(6), ChangeSet::adding([triple("https://ex.org/secret/salary", "1")]), "bad")
        .unwrap();
    for m in [&ma, &mg] {
        let mut replica = Replica::open_with_policy(
            MemoryKv::new(),
            NodeKeypair::from_secret_bytes([200; 32]),
            acme.id.clone(),
            ReplicaConfig::default(),
            m.commit_policy(&b).unwrap(),
        )
        .unwrap();
        replica.receive(t(7), &ok.encode()).unwrap();
        let before = m.audit_size();
        let err = replica.receive(t(7), &bad.encode()).unwrap_err();
        let ReceiveError::Refused { reason, .. } = &err else { panic!("{err:?}") };
        assert!(matches!(**reason, CommitRefusal::AccessDenied { .. }), "{reason:?}");
        assert_eq!(m.audit_size(), before + 1);
        assert_eq!(last_event(m)["event"], "commit-refused");
        assert_eq!(replica.len(), 1, "the refused commit was not kept");
    }
    // A commit claiming another organization than its author's certificate.
    let mut liar = Replica::open(
        MemoryKv::new(),
        acme.node(acme.writer),
        globex.id.clone(),
        ReplicaConfig::default(),
    )
    .unwrap();
    let forged_org = liar
        .write(t(5), ChangeSet::adding([triple("https://ex.org/name", "y")]), "as globex")
        .unwrap();
    let policy = mg.commit_policy(&b).unwrap();
    assert!(matches!(policy.check(&forged_org), Err(CommitRefusal::OrgMismatch { .. })));
    // Globex's namespace: acme's writer may not write it without globex, even though acme permits it.
    let strict = AccessPolicy::new(
        globex.id.clone(),
        2,
        vec![
            Rule::permit("own", PrincipalPattern::Org(globex.id.clone()), Operation::ALL).unwrap(),
        ],
    )
    .unwrap();
    mg.publish_policy(&SignedPolicy::sign(&strict, &globex.root).unwrap(), t(8)).unwrap();
    let gx = author
        .write(t(9), ChangeSet::adding([triple("https://globex.example/price", "3")]), "gx")
        .unwrap();
    assert!(matches!(policy.check(&gx), Err(CommitRefusal::AccessDenied { .. })));
}

#[test]
fn removed_organization_cannot_read_what_is_sealed_after_its_removal() {
    let (acme, globex, initech) = orgs();
    let all = [&acme, &globex, &initech];
    let ma = acme.manager(&all);
    let mi = initech.manager(&all);
    let req = request(&acme, "conf", &all, SecurityLevel::Confidential);
    let ctx = ma.create_security_context(&req, t(2)).unwrap();
    assert_eq!(ctx.key_epoch, Some(1));
    let b = ctx.branch;
    // Initech's node creates the same context; it did not ask, so it issues no epoch and
    // learns acme's epoch 1 (it is a member) when it arrives.
    let mi2 = mi;
    let ci = mi2.create_security_context(&req, t(2)).unwrap();
    assert_eq!(ci.key_epoch, None);
    let epochs = ma.key_epochs(&federation());
    mi2.accept_key_epoch(&epochs[0], t(3)).unwrap();
    assert_eq!(mi2.context(&b).unwrap().key_epoch, Some(1));
    let before = ChangeSet::adding([triple("https://ex.org/name", "before")]);
    let sealed_before = ma.seal(&b, &before).unwrap();
    assert_eq!(mi2.open(&b, &sealed_before, t(4)).unwrap(), before);
    // Acme removes initech: a new epoch it is not a member of.
    let ctx = ma.remove_member(&acme.admin_id(), &b, &initech.id, t(5)).unwrap();
    assert_eq!(ctx.key_epoch, Some(2));
    // Every member's node applies the same change (decided by the branch's group); only the
    // requester's node issues the epoch, which the others then accept.
    let ci = mi2.remove_member(&acme.admin_id(), &b, &initech.id, t(5)).unwrap();
    assert_eq!(ci.key_epoch, None);
    let epochs = ma.key_epochs(&federation());
    mi2.accept_key_epoch(&epochs[1], t(6)).unwrap();
    let after = ChangeSet::adding([triple("https://ex.org/name", "after")]);
    let sealed_after = ma.seal(&b, &after).unwrap();
    let err = audited(&mi2, "sealed-read-refused", || mi2.open(&b, &sealed_after, t(7)));
    assert!(
        matches!(err, Err(GovernanceError::Key(KeyError::NoKeyForEpoch { epoch: 2 }))),
        "{err:?}"
    );
    // What it could read before, it still can; globex, still a member, reads both.
    assert_eq!(mi2.open(&b, &sealed_before, t(8)).unwrap(), before);
    let mg = globex.manager(&all);
    mg.create_security_context(&req, t(2)).unwrap();
    mg.accept_key_epoch(&epochs[0], t(6)).unwrap();
    mg.remove_member(&acme.admin_id(), &b, &initech.id, t(6)).unwrap();
    mg.accept_key_epoch(&epochs[1], t(6)).unwrap();
    assert_eq!(mg.open(&b, &sealed_after, t(9)).unwrap(), after);
}

#[test]
fn root_rotation_needs_a_quorum_of_the_other_members() {
    let (acme, globex, initech) = orgs();
    let hooli = Org::new("hooli", 40);
    let umbrella = Org::new("umbrella", 50);
    let all = [&acme, &globex, &initech, &hooli, &umbrella];
    let m = acme.manager(&all);
    // Globex lost its root: it makes a new one; 4 other voting members, so 3 must endorse.
    let new_root = OrgKeypair::from_secret_bytes([21; 32]);
    let rotation =
        RootRotation::sign(&new_root, globex.id.clone(), globex.root.root_key(), 1, t(5)).unwrap();
    let e: Vec<_> = [&acme, &initech, &hooli]
        .iter()
        .map(|o| rotation.endorse(o.id.clone(), &o.root).unwrap())
        .collect();
    let err = audited(&m, "root-rotation-refused", || m.rotate_root(&rotation, &e[..2], t(6)));
    assert!(
        matches!(
            err,
            Err(GovernanceError::Trust(TrustError::QuorumNotMet { have: 2, need: 3, .. }))
        ),
        "{err:?}"
    );
    // Nothing changed: certificates under the old root still verify, new ones do not.
    m.add_certificate(globex.cert(globex.writer_id(), &[Role::Writer], 3), t(6)).unwrap();
    let new_cert = new_root
        .certify(globex.id.clone(), globex.writer_id(), [Role::Writer], t(0), t(100), 4)
        .unwrap();
    assert!(m.add_certificate(new_cert.clone(), t(6)).is_err());
    // The rotating organization's own endorsement does not count.
    let own = rotation.endorse(globex.id.clone(), &globex.root).unwrap();
    let err = m.rotate_root(&rotation, &[e[0].clone(), e[1].clone(), own], t(6));
    assert!(matches!(err, Err(GovernanceError::Trust(TrustError::QuorumNotMet { have: 2, .. }))));
    // With three, the new root is installed.
    audited(&m, "root-rotated", || m.rotate_root(&rotation, &e, t(7)).unwrap());
    m.add_certificate(new_cert, t(8)).unwrap();
    let err = m.add_certificate(globex.cert(globex.writer_id(), &[Role::Writer], 5), t(8));
    assert!(matches!(
        err,
        Err(GovernanceError::Trust(TrustError::Certificate(CertificateError::WrongRoot { .. })))
    ));
}

/// The decisions above end up in a log that a peer organization witnesses and an outside
/// auditor verifies with the independent Python verifier.
#[test]
fn decisions_are_in_a_witnessed_log_an_outside_auditor_verifies() {
    use llmkg_governance::audit::export::build_export;
    use llmkg_governance::audit::witness::{Witness, WitnessKey};

    let (acme, globex, initech) = orgs();
    let m = acme.manager(&[&acme, &globex, &initech]);
    let mut witness = Witness::new(
        WitnessKey::new(
            "globex.example/witness",
            ed25519_dalek::SigningKey::from_bytes(&[0x77; 32]),
        )
        .unwrap(),
    );
    let verifier = m.log_verifier();
    witness.add_log(verifier.name(), verifier.clone());
    // Some approvals and refusals.
    let ctx = m
        .create_security_context(
            &request(&acme, "main", &[&acme, &globex], SecurityLevel::Internal),
            t(2),
        )
        .unwrap();
    let _ = m.authorize(&acme.writer_id(), Operation::Merge, &ctx.branch, &[], t(3));
    let mut first = m.checkpoint().unwrap();
    first.add_signature(witness.cosign(&first, &[], 1_700_000_100).unwrap());
    let size1 = m.audit_size();
    let _ = m.add_certificate(
        OrgKeypair::from_secret_bytes([99; 32])
            .certify(acme.id.clone(), acme.writer_id(), [Role::Admin], t(0), t(9), 9)
            .unwrap(),
        t(4),
    );
    m.record_consensus_decision(&[1; 32], 7, &[2; 32], "approved", t(5)).unwrap();
    let mut latest = m.checkpoint().unwrap();
    let proof = m.with_audit(|log| log.consistency_proof(size1, log.size()).unwrap());
    latest.add_signature(witness.cosign(&latest, &proof, 1_700_000_200).unwrap());
    let size = m.audit_size();
    let doc = m.with_audit(|log| {
        build_export(
            log,
            &verifier,
            &latest,
            &[witness.verifier()],
            &[first.clone()],
            &[0, size - 1],
        )
        .unwrap()
    });
    // Every entry is a JSON event.
    use base64::Engine as _;
    for e in &doc.entries {
        let bytes = base64::engine::general_purpose::STANDARD.decode(e).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert!(v["event"].is_string() && v["at"].is_i64() && v["by"] == "acme", "{v}");
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("export.json");
    std::fs::write(&path, doc.to_json()).unwrap();
    let script =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/verify-audit.py");
    let out = std::process::Command::new("python3")
        .arg(script)
        .arg(&path)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // A rewritten history is caught by the witness: a log that signs a checkpoint of the same
    // size with another root is equivocating.
    let forged_root = [0u8; 32];
    let other =
        llmkg_governance::audit::Checkpoint::new(verifier.name(), size, forged_root).unwrap();
    let signer = LogSigner::new(
        verifier.name(),
        ed25519_dalek::SigningKey::from_bytes(&[acme.enc + 100; 32]),
    )
    .unwrap();
    let err = witness.cosign(&signer.sign(&other), &[], 1_700_000_300).unwrap_err();
    assert!(matches!(err, llmkg_governance::audit::WitnessError::Equivocation(_)), "{err:?}");
}

#[test]
fn key_epochs_come_only_from_administrators_and_repeats_are_not_news() {
    use llmkg_governance::keys::FederationKeyring;
    let (acme, globex, _) = orgs();
    let all = [&acme, &globex];
    let ma = acme.manager(&all);
    let mg = globex.manager(&all);
    let req = request(&acme, "conf", &all, SecurityLevel::Confidential);
    ma.create_security_context(&req, t(2)).unwrap();
    mg.create_security_context(&req, t(2)).unwrap();
    // A writer (no admin role) issues an epoch of its own: refused, audited, nothing changed.
    let mut rogue = FederationKeyring::new(
        federation(),
        acme.id.clone(),
        OrgEncryptionKeypair::from_secret_bytes([acme.enc; 32]),
    );
    let mut rng = <rand_chacha::ChaCha20Rng as rand::SeedableRng>::seed_from_u64(1);
    let members: Vec<_> = all
        .iter()
        .map(|o| (o.id.clone(), OrgEncryptionKeypair::from_secret_bytes([o.enc; 32]).public_key()))
        .collect();
    let forged = rogue.rotate(&mut rng, &acme.node(acme.writer), &members).unwrap();
    let err = audited(&mg, "key-epoch-refused", || mg.accept_key_epoch(&forged, t(3)));
    assert!(matches!(err, Err(GovernanceError::NotAnAdministrator { .. })), "{err:?}");
    assert_eq!(mg.context(&branch("conf")).unwrap().key_epoch, None);
    // The administrator's epoch is accepted once; delivered again, it changes nothing.
    let epoch = ma.key_epochs(&federation()).remove(0);
    mg.accept_key_epoch(&epoch, t(4)).unwrap();
    let size = mg.audit_size();
    mg.accept_key_epoch(&epoch, t(5)).unwrap();
    assert_eq!(mg.audit_size(), size);
    assert_eq!(mg.key_epochs(&federation()).len(), 1);
}

#[test]
fn membership_changes_need_the_owners_but_not_the_one_removed() {
    let (acme, globex, initech) = orgs();
    let all = [&acme, &globex, &initech];
    let m = acme.manager(&all);
    let b = m
        .create_security_context(&request(&acme, "team", &all, SecurityLevel::Internal), t(2))
        .unwrap()
        .branch;
    // Initech now lets no one but its own nodes do anything: it can no longer consent to
    // acme administering, so acme cannot add or change anything it holds data in ...
    let strict = AccessPolicy::new(
        initech.id.clone(),
        2,
        vec![
            Rule::permit("own", PrincipalPattern::Org(initech.id.clone()), Operation::ALL).unwrap(),
        ],
    )
    .unwrap();
    m.publish_policy(&SignedPolicy::sign(&strict, &initech.root).unwrap(), t(3)).unwrap();
    let hooli = Org::new("hooli", 40);
    Org::admit(&m, &hooli, TrustLevel::Member);
    let err = audited(&m, "access-decision", || {
        m.add_member(&acme.admin_id(), &b, hooli.id.clone(), t(4))
    });
    let Err(GovernanceError::NotApproved(d)) = err else { panic!("{err:?}") };
    assert_eq!(
        d.refused_by().map(|(o, _, _)| o.clone()).collect::<Vec<_>>(),
        vec![initech.id.clone()]
    );
    // ... but initech's consent is not needed to remove initech.
    let ctx = m.remove_member(&acme.admin_id(), &b, &initech.id, t(5)).unwrap();
    assert_eq!(ctx.members, vec![acme.id.clone(), globex.id.clone()]);
    // Changes that change nothing are refused, and recorded.
    let err =
        audited(&m, "request-refused", || m.remove_member(&acme.admin_id(), &b, &initech.id, t(6)));
    assert!(matches!(err, Err(GovernanceError::InvalidRequest(_))), "{err:?}");
    let err = audited(&m, "request-refused", || {
        m.add_member(&acme.admin_id(), &b, globex.id.clone(), t(6))
    });
    assert!(matches!(err, Err(GovernanceError::InvalidRequest(_))), "{err:?}");
}
