#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
//! The commit-policy hook of the repository: commits refused by the host's policy — an author
//! certified by another organization than the commit names, an expired or revoked
//! certificate, an uncertified author — are typed errors and nothing is stored, whether they
//! are received, made locally, or met on the way to a state.

use std::sync::{Arc, RwLock};

use llmkg_federation_core::{
    BranchName, CertificateError, CertificatePolicy, ChangeSet, CommitPolicy, CommitRefusal,
    ManualClock, MemoryStore, NodeKeypair, ObjectId, OrgId, OrgKeypair, RepoError, Repository,
    Role, SignedCommit, Store, Term, Timestamp, Triple, TrustAnchors,
};

const T0: i64 = 1_700_000_000_000_000;
const DAY: i64 = 86_400_000_000;

fn ts(days: i64) -> Timestamp {
    Timestamp::from_micros(T0 + days * DAY)
}

fn org(name: &str) -> OrgId {
    OrgId::new(name).unwrap()
}

fn node(n: u8) -> NodeKeypair {
    NodeKeypair::from_secret_bytes([n; 32])
}

fn acme_root() -> OrgKeypair {
    OrgKeypair::from_secret_bytes([101; 32])
}

fn t(n: u32) -> Triple {
    Triple::new(
        Term::iri(format!("https://example.org/s{n}")).unwrap(),
        Term::iri("https://example.org/p").unwrap(),
        Term::string(format!("v{n}")).unwrap(),
    )
    .unwrap()
}

/// A policy the host can change while repositories hold it.
#[derive(Clone)]
struct Shared(Arc<RwLock<CertificatePolicy>>);

impl CommitPolicy for Shared {
    fn check(&self, commit: &SignedCommit) -> Result<(), CommitRefusal> {
        self.0.read().unwrap().check(commit)
    }
}

/// acme pinned; node 1 certified as a writer of acme for 30 days (serial 1); node 3 certified
/// as a reader only.
fn policy() -> Shared {
    let mut anchors = TrustAnchors::new();
    anchors.pin(org("acme"), acme_root().root_key());
    let mut p = CertificatePolicy::new(anchors).require_role(Role::Writer);
    p.add_certificate(
        acme_root()
            .certify(org("acme"), node(1).node_id(), [Role::Writer], ts(0), ts(30), 1)
            .unwrap(),
    );
    p.add_certificate(
        acme_root()
            .certify(org("acme"), node(3).node_id(), [Role::Reader], ts(0), ts(30), 3)
            .unwrap(),
    );
    Shared(Arc::new(RwLock::new(p)))
}

/// A repository of node `n` committing for `org_name` at `at`, without a policy of its own.
fn author(n: u8, org_name: &str, at: Timestamp) -> Repository<MemoryStore> {
    Repository::new(MemoryStore::new(), node(n), org(org_name), ManualClock::new(at))
}

fn main_branch() -> BranchName {
    BranchName::new("main").unwrap()
}

/// The envelope of a root commit by node `n` for `org_name` at `at`.
fn envelope(n: u8, org_name: &str, at: Timestamp, k: u32) -> Vec<u8> {
    let mut r = author(n, org_name, at);
    let id = r.commit(&main_branch(), ChangeSet::adding([t(k)]), "work").unwrap();
    r.store().object(&ObjectId::from(id)).unwrap().unwrap()
}

fn receiver(policy: &Shared) -> Repository<MemoryStore> {
    Repository::new(MemoryStore::new(), node(9), org("acme"), ManualClock::new(ts(1)))
        .with_policy(policy.clone())
}

fn refusal(result: Result<impl std::fmt::Debug, RepoError>) -> CommitRefusal {
    match result {
        Err(RepoError::Refused { reason, .. }) => *reason,
        other => panic!("expected a policy refusal, got {other:?}"),
    }
}

#[test]
fn received_commits_pass_the_policy_or_nothing_is_stored() {
    let policy = policy();
    let mut r = receiver(&policy);
    // Admitted: a certified writer of acme within its validity.
    r.receive(&envelope(1, "acme", ts(2), 1)).unwrap();
    let stored = r.store().object_count();

    // The org field is not the author's certificate's.
    let reason = refusal(r.receive(&envelope(1, "globex", ts(2), 2)));
    assert!(matches!(reason, CommitRefusal::OrgMismatch { .. }), "{reason:?}");
    // No certificate at all.
    let reason = refusal(r.receive(&envelope(2, "acme", ts(2), 3)));
    assert!(matches!(reason, CommitRefusal::NoCertificate { .. }), "{reason:?}");
    // Made after the certificate expired (by the commit's timestamp).
    let reason = refusal(r.receive(&envelope(1, "acme", ts(31), 4)));
    assert!(
        matches!(
            reason,
            CommitRefusal::InvalidCertificate { error: CertificateError::Expired { .. }, .. }
        ),
        "{reason:?}"
    );
    // A reader is not a writer.
    let reason = refusal(r.receive(&envelope(3, "acme", ts(2), 5)));
    assert!(matches!(reason, CommitRefusal::MissingRole { .. }), "{reason:?}");
    // A certificate signed by a root that is not acme's pinned one (forged) admits nothing.
    let forger = OrgKeypair::from_secret_bytes([7; 32]);
    let forged =
        forger.certify(org("acme"), node(4).node_id(), [Role::Writer], ts(0), ts(30), 9).unwrap();
    policy.0.write().unwrap().add_certificate(forged);
    let reason = refusal(r.receive(&envelope(4, "acme", ts(2), 6)));
    assert!(
        matches!(
            reason,
            CommitRefusal::InvalidCertificate { .. } | CommitRefusal::NoCertificate { .. }
        ),
        "{reason:?}"
    );

    assert_eq!(r.store().object_count(), stored, "a refused commit was stored");
}

#[test]
fn a_revoked_key_is_refused_everywhere() {
    let policy = policy();
    let mut r = receiver(&policy);
    let id = r.receive(&envelope(1, "acme", ts(2), 1)).unwrap();
    r.create_branch(&main_branch(), id).unwrap();
    assert_eq!(r.state(&main_branch()).unwrap().len(), 1);
    // The host learns that node 1's certificate was revoked.
    let revocation = acme_root().revoke(org("acme"), [1], ts(3)).unwrap();
    policy.0.write().unwrap().anchors_mut().add_revocation(&revocation).unwrap();
    // New commits by that key are refused...
    let reason = refusal(r.receive(&envelope(1, "acme", ts(2), 2)));
    assert!(
        matches!(
            reason,
            CommitRefusal::InvalidCertificate { error: CertificateError::Revoked { .. }, .. }
        ),
        "{reason:?}"
    );
    // ...and so is its stored commit, when a state is rebuilt from it: here once the cache
    // is cleared...
    r.clear_cache();
    refusal(r.state(&main_branch()).map(|_| ()));
    // ...and in a fresh repository over the same store.
    let mut fresh =
        Repository::new(r.store().clone(), node(9), org("acme"), ManualClock::new(ts(1)))
            .with_policy(policy.clone());
    refusal(fresh.materialize(id));
    refusal(fresh.state(&main_branch()).map(|_| ()));
}

#[test]
fn local_commits_pass_the_policy_too() {
    let policy = policy();
    // Node 2 has no certificate: its own repository refuses to make the commit.
    let mut r = Repository::new(MemoryStore::new(), node(2), org("acme"), ManualClock::new(ts(1)))
        .with_policy(policy.clone());
    let reason = refusal(r.commit(&main_branch(), ChangeSet::adding([t(1)]), "uncertified"));
    assert!(matches!(reason, CommitRefusal::NoCertificate { .. }));
    assert_eq!(r.store().object_count(), 0);
    assert_eq!(r.head(&main_branch()).unwrap(), None);
    // Node 1 is certified: the commit is made.
    let mut ok = Repository::new(MemoryStore::new(), node(1), org("acme"), ManualClock::new(ts(1)))
        .with_policy(policy);
    ok.commit(&main_branch(), ChangeSet::adding([t(1)]), "certified").unwrap();
}

/// Refuses one commit once switched on.
struct RefuseOne(Arc<RwLock<Option<llmkg_federation_core::CommitId>>>);

impl CommitPolicy for RefuseOne {
    fn check(&self, commit: &SignedCommit) -> Result<(), CommitRefusal> {
        match *self.0.read().unwrap() {
            Some(id) if id == commit.id() => {
                Err(CommitRefusal::NoCertificate { author: commit.commit().author() })
            }
            _ => Ok(()),
        }
    }
}

/// A refused commit is refused whichever way a state reaches it: replayed forward, or
/// landed on by undoing a later commit from a checkpoint.
#[test]
fn a_refused_commit_is_refused_on_backward_steps_too() {
    let refused = Arc::new(RwLock::new(None));
    let mut r = Repository::new(MemoryStore::new(), node(1), org("acme"), ManualClock::new(ts(1)))
        .with_policy(RefuseOne(refused.clone()));
    let main = main_branch();
    r.commit(&main, ChangeSet::adding([t(0)]), "c0").unwrap();
    let c1 = r.commit(&main, ChangeSet::adding([t(1)]), "c1").unwrap();
    let c2 = r.commit(&main, ChangeSet::adding([t(2)]), "c2").unwrap();
    r.checkpoint(c2).unwrap();
    *refused.write().unwrap() = Some(c1);
    r.clear_cache();
    refusal(r.state_at(c1).map(|_| ()));
    r.clear_cache();
    assert_eq!(r.state_at(c2).unwrap().len(), 3, "the checkpointed state is served");
    refusal(r.state_at(c1).map(|_| ()));
}
