#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
//! Adversarial review of the security plane through `FederatedSecurityManager`.
//!
//! Each test states the behaviour the project rules ask for. Sixteen of them failed when they
//! were written, each for a defect since fixed; the others document behaviour that was
//! checked and held.

use crate::common;

use std::sync::atomic::Ordering;

use common::*;
use llmkg_federation_core::security::{
    CrossFederationMerge, FederatedBranchRequest, NamespaceClaim, Operation, SecurityError,
    SecurityLevel, SecurityManager,
};
use llmkg_federation_core::{ChangeSet, MemoryKv, Role};
use llmkg_governance::GovernanceError;
use llmkg_governance::access::{AccessPolicy, PolicyError, PrincipalPattern, Rule};
use llmkg_governance::keys::KeyError;
use llmkg_governance::manager::{FederatedSecurityManager, MAX_POLICY_LEN, SignedPolicy};
use llmkg_governance::trust::TrustLevel;
use llmkg_sync::replica::{Replica, ReplicaConfig};
use rand::SeedableRng;

// ------------------------------------------------------------------------------------------
// Key epochs and sealing

/// An organization removed from a sealed branch must not be able to read what is sealed
/// afterwards. Its admin node still holds a valid Admin certificate of a Full-trust
/// organization, so it can issue the *next* epoch of the chain wrapping the data key for
/// itself again; the remaining member accepts it and seals under it.
#[test]
fn removed_organization_cannot_rekey_itself_back_in() {
    let (acme, globex, initech) = orgs();
    let all = [&acme, &globex, &initech];
    let ma = acme.manager(&all);
    let ctx = ma
        .create_security_context(
            &request(&acme, "conf", &[&acme, &globex], SecurityLevel::Confidential),
            t(2),
        )
        .unwrap();
    let b = ctx.branch;
    ma.remove_member(&acme.admin_id(), &b, &globex.id, t(3)).unwrap();
    // Globex follows the public chain (epoch 1 member, epoch 2 not) and issues epoch 3.
    let mut ring = globex.keyring();
    ring.accept_all(&ma.key_epochs(&federation())).unwrap();
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
    let members = [
        (acme.id.clone(), acme.enc_keypair().public_key()),
        (globex.id.clone(), globex.enc_keypair().public_key()),
    ];
    let epoch3 = ring.rotate(&mut rng, &globex.node(globex.admin), &members).unwrap();
    let accepted = ma.accept_key_epoch(&epoch3, t(4));
    let sealed = ma.seal(&b, &changes("after removal")).unwrap();
    assert!(
        ring.open(&b.branch, &sealed).is_err(),
        "removed globex reads data sealed after its removal (accept: {accepted:?}, context \
         members {:?})",
        ma.context(&b).unwrap().members
    );
}

/// The same hole from an organization that was never a member: any Full-trust admin may
/// issue the federation's next epoch with itself among the recipients.
#[test]
fn outsider_cannot_issue_an_epoch_for_a_federation_it_is_not_in() {
    let (acme, globex, initech) = orgs();
    let all = [&acme, &globex, &initech];
    let ma = acme.manager(&all);
    let ctx = ma
        .create_security_context(
            &request(&acme, "conf", &[&acme, &globex], SecurityLevel::Secret),
            t(2),
        )
        .unwrap();
    let mut ring = initech.keyring();
    ring.accept_all(&ma.key_epochs(&federation())).unwrap();
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(2);
    let members = [
        (acme.id.clone(), acme.enc_keypair().public_key()),
        (initech.id.clone(), initech.enc_keypair().public_key()),
    ];
    let epoch2 = ring.rotate(&mut rng, &initech.node(initech.admin), &members).unwrap();
    let before = ma.audit_size();
    let r = ma.accept_key_epoch(&epoch2, t(3));
    assert_eq!(ma.audit_size(), before + 1, "accepted or refused, one entry");
    assert!(r.is_err(), "an epoch from a non-member's admin was accepted: {r:?}");
    let sealed = ma.seal(&ctx.branch, &changes("x")).unwrap();
    assert!(ring.open(&ctx.branch.branch, &sealed).is_err(), "outsider reads sealed data");
}

/// Key epochs are per federation but contexts per branch: a second sealed branch of the
/// same federation with other members rotates the key that the first branch seals under.
#[test]
fn sealed_branches_of_one_federation_do_not_leak_to_each_others_members() {
    let (acme, globex, initech) = orgs();
    let all = [&acme, &globex, &initech];
    let ma = acme.manager(&all);
    let x = ma
        .create_security_context(
            &request(&acme, "x", &[&acme, &globex], SecurityLevel::Confidential),
            t(2),
        )
        .unwrap();
    // Either this is refused (members differ from the federation's epoch) ...
    let y = ma.create_security_context(
        &request(&acme, "y", &[&acme, &initech], SecurityLevel::Confidential),
        t(3),
    );
    // ... or initech, not a member of x, still cannot read x.
    let sealed = ma.seal(&x.branch, &changes("only acme and globex")).unwrap();
    let mut ring = initech.keyring();
    ring.accept_all(&ma.key_epochs(&federation())).unwrap();
    assert!(
        ring.open(&x.branch.branch, &sealed).is_err(),
        "initech reads branch x it is not a member of (y: {:?}, x now says key epoch {:?})",
        y.map(|c| c.members),
        ma.context(&x.branch).unwrap().key_epoch
    );
    // And globex, a member of x, can no longer read x.
    let mut ring = globex.keyring();
    ring.accept_all(&ma.key_epochs(&federation())).unwrap();
    assert!(ring.open(&x.branch.branch, &sealed).is_ok(), "globex cannot read branch x");
}

/// A failed audit write must leave nothing changed: no key epoch issued, no new key in use.
#[test]
fn membership_change_that_cannot_be_audited_issues_no_epoch() {
    let (acme, globex, _) = orgs();
    let (kv, fail) = Flaky::new();
    let ma = acme.manager_on(&[&acme, &globex], kv);
    let ctx = ma
        .create_security_context(
            &request(&acme, "conf", &[&acme, &globex], SecurityLevel::Confidential),
            t(2),
        )
        .unwrap();
    let b = ctx.branch;
    fail.store(true, Ordering::SeqCst);
    let err = ma.remove_member(&acme.admin_id(), &b, &globex.id, t(3));
    assert!(matches!(err, Err(GovernanceError::Audit(_))), "{err:?}");
    assert_eq!(ma.context(&b).unwrap().members.len(), 2, "membership unchanged");
    assert_eq!(ma.key_epochs(&federation()).len(), 1, "an unaudited epoch was issued");
    let sealed = ma.seal(&b, &changes("x")).unwrap();
    assert_eq!(sealed.epoch(), 1, "sealing moved to the unaudited epoch");
}

/// Accepting an epoch whose record cannot be written must not install it.
#[test]
fn key_epoch_that_cannot_be_audited_is_not_installed() {
    let (acme, globex, _) = orgs();
    let ma = acme.manager(&[&acme, &globex]);
    let (kv, fail) = Flaky::new();
    let mg = globex.manager_on(&[&acme, &globex], kv);
    let req = request(&acme, "conf", &[&acme, &globex], SecurityLevel::Confidential);
    let b = ma.create_security_context(&req, t(2)).unwrap().branch;
    mg.create_security_context(&req, t(2)).unwrap();
    fail.store(true, Ordering::SeqCst);
    let epochs = ma.key_epochs(&federation());
    let err = mg.accept_key_epoch(&epochs[0], t(3));
    assert!(matches!(err, Err(GovernanceError::Audit(_))), "{err:?}");
    assert_eq!(mg.context(&b).unwrap().key_epoch, None);
    let sealed = mg.seal(&b, &changes("x"));
    assert!(
        matches!(sealed, Err(GovernanceError::KeyEpochPending(_))),
        "the unaudited epoch is in use: {:?}",
        sealed.map(|s| s.epoch())
    );
}

/// After acme's removal epoch, globex (removed) has no key for the current epoch and
/// cannot seal in it.
#[test]
fn removed_organization_cannot_seal_in_the_new_epoch() {
    let (acme, globex, _) = orgs();
    let all = [&acme, &globex];
    let ma = acme.manager(&all);
    let mg = globex.manager(&all);
    let req = request(&acme, "conf", &all, SecurityLevel::Confidential);
    let b = ma.create_security_context(&req, t(2)).unwrap().branch;
    mg.create_security_context(&req, t(2)).unwrap();
    mg.accept_key_epoch(&ma.key_epochs(&federation())[0], t(2)).unwrap();
    ma.remove_member(&acme.admin_id(), &b, &globex.id, t(3)).unwrap();
    // Globex's node applies its own removal too, then receives the new epoch.
    mg.remove_member(&acme.admin_id(), &b, &globex.id, t(3)).unwrap();
    mg.accept_key_epochs(&ma.key_epochs(&federation()), t(4)).unwrap();
    let err = mg.seal(&b, &changes("x"));
    assert!(matches!(err, Err(GovernanceError::Key(KeyError::NoKeyForEpoch { epoch: 2 }))));
}

/// A key epoch signed by a writer, or by an admin of an organization trusted only as a
/// member, is refused, audited once, and installs nothing.
#[test]
fn non_admin_key_epochs_are_refused_and_audited_once() {
    let (acme, globex, initech) = orgs();
    let mg = globex.manager(&[&acme, &globex]);
    Org::admit(&mg, &initech, TrustLevel::Member);
    let req = request(&globex, "conf", &[&globex], SecurityLevel::Confidential);
    // Globex's node is not the requester here, so it issues nothing.
    let req = FederatedBranchRequest { requester: acme.admin_id(), ..req };
    let b = mg.create_security_context(&req, t(2)).unwrap().branch;
    let members = [(globex.id.clone(), globex.enc_keypair().public_key())];
    for signer in [acme.node(acme.writer), initech.node(initech.admin)] {
        let mut ring = acme.keyring();
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(3);
        let epoch = ring.rotate(&mut rng, &signer, &members).unwrap();
        let before = mg.audit_size();
        let err = mg.accept_key_epoch(&epoch, t(3));
        assert!(matches!(err, Err(GovernanceError::NotAnAdministrator { .. })), "{err:?}");
        assert_eq!(mg.audit_size(), before + 1);
        assert_eq!(last_event(&mg)["event"], "key-epoch-refused");
        assert!(matches!(mg.seal(&b, &changes("x")), Err(GovernanceError::KeyEpochPending(_))));
    }
}

// ------------------------------------------------------------------------------------------
// Refusals that are not audited

/// Creating a sealed context when a member has no encryption key is refused; the refusal
/// must be recorded (today the log ends with the approved access decision).
#[test]
fn missing_encryption_key_refusal_is_audited() {
    let (acme, globex, _) = orgs();
    let m = acme.manager(&[&acme]);
    m.pin(globex.id.clone(), globex.root.root_key(), TrustLevel::Full, t(0)).unwrap();
    m.add_certificate(globex.cert(globex.admin_id(), &[Role::Admin], 1), t(1)).unwrap();
    m.publish_policy(&globex.policy(1), t(1)).unwrap();
    let req = request(&acme, "conf", &[&acme, &globex], SecurityLevel::Confidential);
    let err = m.create_security_context(&req, t(2));
    assert!(err.is_err());
    assert!(m.context(&branch("conf")).is_none());
    let ev = last_event(&m);
    assert!(
        ev.to_string().contains("encryption key") || ev["approved"] == false,
        "the last entry does not record the refusal: {ev}"
    );
}

/// `add_member` of an organization without an encryption key fails; the refusal is not in
/// the log.
#[test]
fn add_member_without_encryption_key_is_audited() {
    let (acme, globex, initech) = orgs();
    let m = acme.manager(&[&acme, &globex]);
    m.pin(initech.id.clone(), initech.root.root_key(), TrustLevel::Full, t(0)).unwrap();
    m.publish_policy(&initech.policy(1), t(1)).unwrap();
    let b = m
        .create_security_context(
            &request(&acme, "conf", &[&acme, &globex], SecurityLevel::Confidential),
            t(2),
        )
        .unwrap()
        .branch;
    let before = m.audit_size();
    let err = m.add_member(&acme.admin_id(), &b, initech.id.clone(), t(3));
    assert!(matches!(err, Err(GovernanceError::NoEncryptionKey(_))), "{err:?}");
    assert_eq!(m.audit_size(), before + 1, "refusal not recorded");
}

/// `authorize` on a branch with no context here, and a merge whose source is unknown, are
/// refusals and need one audit entry each.
#[test]
fn unknown_branch_refusals_are_audited() {
    let (acme, _, _) = orgs();
    let m = acme.manager(&[&acme]);
    let known = m
        .create_security_context(&request(&acme, "known", &[&acme], SecurityLevel::Internal), t(2))
        .unwrap()
        .branch;
    let before = m.audit_size();
    let err = m.authorize(&acme.admin_id(), Operation::Read, &branch("nowhere"), &[], t(3));
    assert!(matches!(err, Err(GovernanceError::UnknownBranch(_))), "{err:?}");
    assert_eq!(m.audit_size(), before + 1, "authorize refusal not recorded");
    let merge = CrossFederationMerge {
        requester: acme.admin_id(),
        source: branch("nowhere"),
        target: known,
        predicates: vec![],
    };
    // Only the target is known here: this node answers for the target's side (the source's
    // organizations consent on their own nodes), and the decision is recorded.
    let before = m.audit_size();
    assert!(m.validate_cross_federation_merge(&merge, t(3)).is_ok());
    assert_eq!(m.audit_size(), before + 1, "merge decision not recorded");
    // Neither branch known: refused, and recorded.
    let unknown = CrossFederationMerge { target: branch("nowhere-either"), ..merge };
    let before = m.audit_size();
    assert!(m.validate_cross_federation_merge(&unknown, t(3)).is_err());
    assert_eq!(m.audit_size(), before + 1, "merge refusal not recorded");
}

/// Attacker-sized strings end up verbatim in the reasons of refusal records; past the
/// 64 KiB entry limit the refusal cannot be recorded at all.
#[test]
fn oversized_iri_refusal_is_still_audited() {
    let (acme, globex, _) = orgs();
    let m = acme.manager(&[&acme, &globex]);
    let b = m
        .create_security_context(
            &request(&acme, "main", &[&acme, &globex], SecurityLevel::Internal),
            t(2),
        )
        .unwrap()
        .branch;
    let huge = format!("https://ex.org/secret/{}", "a".repeat(70_000));
    let merge = CrossFederationMerge {
        requester: acme.writer_id(),
        source: b.clone(),
        target: b.clone(),
        predicates: vec![huge.clone()],
    };
    let before = m.audit_size();
    let r = m.validate_cross_federation_merge(&merge, t(3));
    assert_eq!(m.audit_size(), before + 1, "merge refusal not recorded: {r:?}");
    // The same through the commit policy: a forbidden predicate IRI of 70 KB.
    let mut author = Replica::open(
        MemoryKv::new(),
        acme.node(acme.writer),
        acme.id.clone(),
        ReplicaConfig::default(),
    )
    .unwrap();
    let c = author.write(t(5), ChangeSet::adding([triple(&huge, "1")]), "big").unwrap();
    let policy = m.commit_policy(&b).unwrap();
    let before = m.audit_size();
    let r = policy.check(&c);
    assert!(r.is_err());
    assert_eq!(m.audit_size(), before + 1, "commit refusal not recorded: {r:?}");
}

// ------------------------------------------------------------------------------------------
// Trust levels

/// `validate_branch_request` refuses owners trusted below `Reader` as data holders;
/// `add_member` must apply the same bar (and today it hands them the data key).
#[test]
fn add_member_applies_trust_levels() {
    let (acme, globex, initech) = orgs();
    let m = acme.manager(&[&acme, &globex]);
    Org::admit(&m, &initech, TrustLevel::Relay);
    // Creation with initech is refused on trust level ...
    let d = m
        .validate_branch_request(
            &request(&acme, "conf", &[&acme, &initech], SecurityLevel::Confidential),
            t(2),
        )
        .unwrap();
    assert!(d.refused_by().any(|(o, r, _)| *o == initech.id && r == Some("trust-level")), "{d}");
    // ... but adding it afterwards is not.
    let b = m
        .create_security_context(
            &request(&acme, "conf", &[&acme, &globex], SecurityLevel::Confidential),
            t(2),
        )
        .unwrap()
        .branch;
    let r = m.add_member(&acme.admin_id(), &b, initech.id.clone(), t(3));
    assert!(r.is_err(), "relay-trusted initech became a member: {r:?}");
    let mut ring = initech.keyring();
    ring.accept_all(&m.key_epochs(&federation())).unwrap();
    let sealed = m.seal(&b, &changes("x")).unwrap();
    assert!(ring.open(&b.branch, &sealed).is_err());
}

/// The commit policy is a function of the node's trust configuration (pins, levels,
/// certificates, revocations) and the published policies (decision D63): nodes configured
/// alike reach the same verdict on a received commit; a node that trusts an organization less
/// refuses what that organization's nodes commit, as it would if it had not pinned it.
#[test]
fn commit_policy_is_the_same_function_of_the_same_configuration() {
    let (acme, globex, _) = orgs();
    let req = request(&acme, "shared", &[&acme, &globex], SecurityLevel::Internal);
    let mut req_g = req.clone();
    req_g.requester = globex.admin_id();
    // Acme and globex trust each other fully.
    let ma = acme.manager(&[&acme, &globex]);
    let mg = globex.manager(&[&acme, &globex]);
    ma.create_security_context(&req, t(2)).unwrap();
    mg.create_security_context(&req_g, t(2)).unwrap();
    // A third node of acme's trusts globex only as a reader.
    let cautious = FederatedSecurityManager::new(acme.options(), MemoryKv::new()).unwrap();
    Org::admit(&cautious, &acme, TrustLevel::Full);
    Org::admit(&cautious, &globex, TrustLevel::Reader);
    cautious.create_security_context(&req, t(2)).unwrap();
    let b = branch("shared");
    let mut author = Replica::open(
        MemoryKv::new(),
        globex.node(globex.writer),
        globex.id.clone(),
        ReplicaConfig::default(),
    )
    .unwrap();
    let c = author.write(t(5), changes("from globex"), "c").unwrap();
    let on_acme = ma.commit_policy(&b).unwrap().check(&c);
    let on_globex = mg.commit_policy(&b).unwrap().check(&c);
    assert!(on_acme.is_ok() && on_globex.is_ok(), "acme: {on_acme:?}, globex: {on_globex:?}");
    let on_cautious = cautious.commit_policy(&b).unwrap().check(&c);
    assert!(on_cautious.is_err(), "a reader-level organization's commit was admitted");
}

// ------------------------------------------------------------------------------------------
// Namespace ownership

/// An IRI in an organization's declared namespace needs only that owner.
#[test]
fn iri_in_a_declared_namespace_needs_only_its_owner() {
    let (acme, globex, _) = orgs();
    let m = acme.manager(&[&acme, &globex]);
    let mut req = request(&acme, "ns", &[&acme, &globex], SecurityLevel::Internal);
    req.namespaces = vec![
        NamespaceClaim { prefix: "https://globex.example/".into(), owner: globex.id.clone() },
        NamespaceClaim { prefix: "https://globex.example/hr/".into(), owner: acme.id.clone() },
    ];
    let b = m.create_security_context(&req, t(2)).unwrap().branch;
    // Globex lets nobody else in; acme keeps the open fixture policy.
    m.publish_policy(&globex.own_only(2), t(3)).unwrap();
    let d = m
        .authorize(&globex.writer_id(), Operation::Commit, &b, &["https://globex.example/p"], t(4))
        .unwrap();
    assert_eq!(d.verdicts().len(), 1);
    assert_eq!(d.verdicts()[0].org, globex.id);
    // The longest claim decides: /hr/ is acme's alone.
    let d = m
        .authorize(&acme.writer_id(), Operation::Commit, &b, &["https://globex.example/hr/x"], t(4))
        .unwrap();
    assert_eq!(d.verdicts().len(), 1);
    assert_eq!(d.verdicts()[0].org, acme.id);
    // Outside every claim: all members.
    let d = m
        .authorize(&globex.writer_id(), Operation::Commit, &b, &["urn:x:unclaimed"], t(4))
        .unwrap();
    assert_eq!(d.verdicts().len(), 2, "{d}");
    // Odd IRIs do not panic and fall to all members.
    for odd in ["", "\u{0}", "https://globex.example", "HTTPS://GLOBEX.EXAMPLE/p"] {
        let r = m.authorize(&acme.writer_id(), Operation::Read, &b, &[odd], t(4));
        let Err(GovernanceError::NotApproved(d)) = r else { panic!("{odd:?}: {r:?}") };
        assert_eq!(d.verdicts().len(), 2, "{odd:?}: {d}");
    }
}

/// A claim of the empty prefix (or any catch-all such as `h`) makes the claimant the sole
/// owner of every IRI, including what other members own jointly.
#[test]
fn catch_all_namespace_claim_does_not_take_other_members_data() {
    let (acme, globex, _) = orgs();
    let m = acme.manager(&[&acme, &globex]);
    let mut req = request(&acme, "grab", &[&acme, &globex], SecurityLevel::Internal);
    req.namespaces = vec![NamespaceClaim { prefix: String::new(), owner: acme.id.clone() }];
    // The members approve creating the branch (their policies see an Administer request,
    // not the claims), so the claim is kept as declared unless the manager refuses it.
    // Either the claim is refused when the branch is requested, or it takes no one's data.
    match m.create_security_context(&req, t(2)) {
        Err(SecurityError::InvalidRequest(_)) => {}
        Err(e) => panic!("{e:?}"),
        Ok(ctx) => {
            m.publish_policy(&globex.own_only(2), t(3)).unwrap();
            let r = m.authorize(
                &acme.writer_id(),
                Operation::Commit,
                &ctx.branch,
                &["https://globex.example/price"],
                t(4),
            );
            assert!(r.is_err(), "acme alone decided on data globex holds jointly: {r:?}");
        }
    }
}

/// Two organizations claiming the same prefix: the greater `OrgId` silently wins.
#[test]
fn same_prefix_claimed_by_two_owners_needs_both() {
    let (acme, globex, _) = orgs();
    let m = acme.manager(&[&acme, &globex]);
    let mut req = request(&acme, "dup", &[&acme, &globex], SecurityLevel::Internal);
    req.namespaces = vec![
        NamespaceClaim { prefix: "https://ex.org/shared/".into(), owner: acme.id.clone() },
        NamespaceClaim { prefix: "https://ex.org/shared/".into(), owner: globex.id.clone() },
    ];
    // Either the duplicate claim is refused, or both owners are asked.
    match m.create_security_context(&req, t(2)) {
        Err(SecurityError::InvalidRequest(_)) => {}
        Err(e) => panic!("{e:?}"),
        Ok(ctx) => {
            m.publish_policy(&acme.own_only(2), t(3)).unwrap();
            let r = m.authorize(
                &globex.writer_id(),
                Operation::Commit,
                &ctx.branch,
                &["https://ex.org/shared/x"],
                t(4),
            );
            assert!(r.is_err(), "acme's claim was ignored: {r:?}");
        }
    }
}

/// A removed organization's namespace claim stays: data in it then needs only the removed
/// organization, which alone may authorize its own node on a branch it has left.
#[test]
fn removed_member_no_longer_owns_a_namespace() {
    let (acme, globex, _) = orgs();
    let m = acme.manager(&[&acme, &globex]);
    let mut req = request(&acme, "ns", &[&acme, &globex], SecurityLevel::Internal);
    req.namespaces =
        vec![NamespaceClaim { prefix: "https://globex.example/".into(), owner: globex.id.clone() }];
    let b = m.create_security_context(&req, t(2)).unwrap().branch;
    m.publish_policy(&acme.own_only(2), t(3)).unwrap();
    let ctx = m.remove_member(&acme.admin_id(), &b, &globex.id, t(4)).unwrap();
    assert_eq!(ctx.members, vec![acme.id.clone()]);
    let r = m.authorize(
        &globex.writer_id(),
        Operation::Commit,
        &b,
        &["https://globex.example/p"],
        t(5),
    );
    assert!(r.is_err(), "removed globex authorized on its old namespace: {r:?}");
}

/// Each owner consents to its own data: a commit touching acme's and globex's namespaces,
/// each of which the writer may write separately, is refused together because every owner
/// is asked about every IRI.
#[test]
fn owners_are_asked_only_about_their_own_iris() {
    let (acme, globex, _) = orgs();
    let m = acme.manager(&[&acme, &globex]);
    let mut req = request(&acme, "two", &[&acme, &globex], SecurityLevel::Internal);
    req.namespaces = vec![
        NamespaceClaim { prefix: "https://acme.example/".into(), owner: acme.id.clone() },
        NamespaceClaim { prefix: "https://globex.example/".into(), owner: globex.id.clone() },
    ];
    let b = m.create_security_context(&req, t(2)).unwrap().branch;
    let scoped = |o: &Org, ns: &str| {
        let p = AccessPolicy::new(
            o.id.clone(),
            2,
            vec![
                Rule::permit(
                    "acme-writers",
                    PrincipalPattern::Org(acme.id.clone()),
                    [Operation::Commit],
                )
                .unwrap()
                .in_namespace(ns),
            ],
        )
        .unwrap();
        SignedPolicy::sign(&p, &o.root).unwrap()
    };
    m.publish_policy(&scoped(&acme, "https://acme.example/"), t(3)).unwrap();
    m.publish_policy(&scoped(&globex, "https://globex.example/"), t(3)).unwrap();
    let (a, g) = ("https://acme.example/p", "https://globex.example/p");
    m.authorize(&acme.writer_id(), Operation::Commit, &b, &[a], t(4)).unwrap();
    m.authorize(&acme.writer_id(), Operation::Commit, &b, &[g], t(4)).unwrap();
    let both = m.authorize(&acme.writer_id(), Operation::Commit, &b, &[a, g], t(4));
    assert!(both.is_ok(), "{both:?}");
}

// ------------------------------------------------------------------------------------------
// Hostile input and checked behaviour

/// A request whose requester's organization is in no participant list (or an empty list)
/// makes the requester's organization the member; nothing panics.
#[test]
fn requester_outside_the_participants_and_empty_participants() {
    let (acme, globex, _) = orgs();
    let m = acme.manager(&[&acme, &globex]);
    let ctx = m
        .create_security_context(&request(&acme, "solo", &[], SecurityLevel::Confidential), t(2))
        .unwrap();
    assert_eq!(ctx.members, vec![acme.id.clone()]);
    assert_eq!(ctx.key_epoch, Some(1));
    let ctx = m
        .create_security_context(&request(&acme, "g", &[&globex], SecurityLevel::Internal), t(2))
        .unwrap();
    assert_eq!(ctx.members, vec![acme.id.clone(), globex.id.clone()]);
}

/// An oversized policy document and a deeply nested one are refused with a typed error,
/// one audit entry each, and the installed policy is unchanged.
#[test]
fn hostile_policy_documents_are_refused_and_audited_once() {
    let (acme, globex, _) = orgs();
    let m = acme.manager(&[&acme, &globex]);
    let sig = *globex.policy(2).signature();
    let huge = vec![b' '; MAX_POLICY_LEN + 1];
    let nested = format!("{}{}", "[".repeat(200_000), "]".repeat(200_000)).into_bytes();
    let not_utf8 = vec![0xff; 100];
    for doc in [huge, nested, not_utf8] {
        let before = m.audit_size();
        let err = m.publish_policy(&SignedPolicy::from_parts(doc, sig), t(2));
        assert!(matches!(err, Err(GovernanceError::Policy(PolicyError::Document(_)))), "{err:?}");
        assert_eq!(m.audit_size(), before + 1);
        assert_eq!(last_event(&m)["event"], "policy-refused");
    }
    // A genuine document with a flipped signature byte: refused, version 1 still held.
    let good = globex.policy(2);
    let mut bad_sig = *good.signature();
    bad_sig[0] ^= 1;
    let err = m.publish_policy(&SignedPolicy::from_parts(good.document().to_vec(), bad_sig), t(3));
    assert!(matches!(err, Err(GovernanceError::PolicyNotSigned(_))), "{err:?}");
    m.publish_policy(&good, t(4)).unwrap();
    // Replaying it is stale.
    let err = m.publish_policy(&good, t(5));
    assert!(matches!(err, Err(GovernanceError::Policy(PolicyError::StaleVersion { .. }))));
}

/// A panic inside a caller's `with_audit` closure poisons the manager's mutex; the manager
/// keeps working and stays consistent.
#[test]
fn a_panicking_audit_reader_does_not_wedge_the_manager() {
    let (acme, _, _) = orgs();
    let m = acme.manager(&[&acme]);
    let size = m.audit_size();
    let m2 = m.clone();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        m2.with_audit(|_| panic!("reader panics"));
    }));
    assert!(r.is_err());
    assert_eq!(m.audit_size(), size);
    m.create_security_context(&request(&acme, "after", &[&acme], SecurityLevel::Internal), t(2))
        .unwrap();
    assert!(m.checkpoint().is_ok());
}

/// A non-admin may not create a branch, and trust `Member` caps administering.
#[test]
fn non_admins_and_member_trusted_orgs_cannot_administer() {
    let (acme, globex, _) = orgs();
    let m = acme.manager(&[&acme]);
    Org::admit(&m, &globex, TrustLevel::Member);
    let by_writer = FederatedBranchRequest {
        requester: acme.writer_id(),
        ..request(&acme, "w", &[&acme], SecurityLevel::Internal)
    };
    let before = m.audit_size();
    assert!(!m.validate_branch_request(&by_writer, t(2)).unwrap().is_approved());
    assert_eq!(m.audit_size(), before + 1);
    let by_member = request(&globex, "m", &[&globex], SecurityLevel::Internal);
    let d = m.validate_branch_request(&by_member, t(2)).unwrap();
    assert!(d.refused_by().any(|(_, r, _)| r == Some("trust-level")), "{d}");
    assert!(m.create_security_context(&by_member, t(2)).is_err());
    assert!(m.context(&branch("m")).is_none());
}

/// Creating a context for a branch that already has one replaces it, with the consent of
/// the new request's organizations only: a member is evicted (and its claims dropped)
/// without being asked.
#[test]
fn recreating_a_branch_does_not_evict_members_without_their_consent() {
    let (acme, globex, _) = orgs();
    let m = acme.manager(&[&acme, &globex]);
    let mut req = request(&acme, "conf", &[&acme, &globex], SecurityLevel::Confidential);
    req.namespaces =
        vec![NamespaceClaim { prefix: "https://globex.example/".into(), owner: globex.id.clone() }];
    let b = m.create_security_context(&req, t(2)).unwrap().branch;
    m.publish_policy(&globex.own_only(2), t(3)).unwrap();
    let again = request(&acme, "conf", &[&acme], SecurityLevel::Confidential);
    let r = m.create_security_context(&again, t(4));
    let ctx = m.context(&b).unwrap();
    assert!(
        r.is_err() && ctx.members.contains(&globex.id),
        "globex evicted without consent: {r:?}, members now {:?}, claims {:?}",
        ctx.members,
        ctx.namespaces
    );
}
