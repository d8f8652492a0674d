#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
//! Laws of access control, checked against the contracts in `access.rs` and `security.rs`
//! (not against the implementation): order independence, default deny, forbid wins, a
//! reference evaluator written from the module docs, the consent of every owner, and the
//! policy document.
//!
//! The generated world is small on purpose so that rules and requests collide often: three
//! organizations, three roles, four nodes, two branches, and namespaces that are prefixes of
//! one another.

use std::collections::BTreeSet;
use std::sync::LazyLock;

use llmkg_federation_core::security::{Operation, OrgVerdict, SecurityDecision, Verdict};
use llmkg_federation_core::{BranchName, NodeId, NodeKeypair, OrgId, Role};
use llmkg_governance::access::{
    AccessControl, AccessDecision, AccessPolicy, MAX_NAMESPACE_LEN, MAX_RULE_ID_LEN, MAX_RULES,
    PolicyError, PrincipalPattern, Resource, Rule, RuleId,
};
use llmkg_governance::trust::Principal;
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;

const ORGS: [&str; 3] = ["acme", "globex", "initech"];
const ROLES: [Role; 3] = [Role::Reader, Role::Writer, Role::Admin];
const BRANCHES: [&str; 2] = ["main", "dev"];
/// Rule namespaces: each but the last is a prefix of the next; the last shares a prefix
/// with the second without being inside it.
const NAMESPACES: [&str; 4] = [
    "https://a.example/",
    "https://a.example/hr",
    "https://a.example/hr/salary",
    "https://a.example/hrx",
];
/// Requested IRIs: every namespace, something inside the deepest, something outside all,
/// and something shorter than all.
const IRIS: [&str; 7] = [
    "https://a.example/",
    "https://a.example/hr",
    "https://a.example/hr/salary",
    "https://a.example/hrx",
    "https://a.example/hr/salary/base",
    "http://xmlns.com/foaf/0.1/name",
    "https://a.example",
];
/// Rule id stems, chosen so that id order (byte order) differs from generation order.
const WORDS: [&str; 8] = ["a", "zed", "m.x", "r:1", "Q/2", "b_", "A", "r"];

static NODES: LazyLock<Vec<NodeId>> = LazyLock::new(|| {
    (1u8..=4).map(|i| NodeKeypair::from_secret_bytes([i; 32]).node_id()).collect()
});
static ORG_IDS: LazyLock<Vec<OrgId>> =
    LazyLock::new(|| ORGS.iter().map(|o| OrgId::new(*o).unwrap()).collect());
static BRANCH_NAMES: LazyLock<Vec<BranchName>> =
    LazyLock::new(|| BRANCHES.iter().map(|b| BranchName::new(*b).unwrap()).collect());

// ---------------------------------------------------------------------------------------
// Specifications of principals, rules and resources, and their library values.

#[derive(Debug, Clone)]
struct PSpec {
    node: usize,
    org: usize,
    /// Bit i: holds `ROLES[i]`.
    roles: u8,
}

impl PSpec {
    fn has_role(&self, r: usize) -> bool {
        self.roles & (1 << r) != 0
    }

    fn principal(&self) -> Principal {
        let roles = (0..ROLES.len()).filter(|r| self.has_role(*r)).map(|r| ROLES[r]);
        Principal::new(NODES[self.node], ORG_IDS[self.org].clone(), roles)
    }
}

#[derive(Debug, Clone)]
enum Pat {
    Any,
    Org(usize),
    Role(usize),
    OrgRole(usize, usize),
    Node(usize),
}

impl Pat {
    fn pattern(&self) -> PrincipalPattern {
        match *self {
            Pat::Any => PrincipalPattern::Any,
            Pat::Org(o) => PrincipalPattern::Org(ORG_IDS[o].clone()),
            Pat::Role(r) => PrincipalPattern::Role(ROLES[r]),
            Pat::OrgRole(o, r) => PrincipalPattern::OrgRole(ORG_IDS[o].clone(), ROLES[r]),
            Pat::Node(n) => PrincipalPattern::Node(NODES[n]),
        }
    }

    /// From the docs: anyone; the nodes of one organization; the nodes holding a role in any
    /// organization; the nodes of one organization holding a role; one node.
    fn matches(&self, p: &PSpec) -> bool {
        match *self {
            Pat::Any => true,
            Pat::Org(o) => p.org == o,
            Pat::Role(r) => p.has_role(r),
            Pat::OrgRole(o, r) => p.org == o && p.has_role(r),
            Pat::Node(n) => p.node == n,
        }
    }
}

#[derive(Debug, Clone)]
struct RSpec {
    id: String,
    forbid: bool,
    pat: Pat,
    /// Bit i: covers `Operation::ALL[i]`; never 0.
    ops: u8,
    branch: Option<usize>,
    ns: Option<usize>,
}

impl RSpec {
    fn rule(&self) -> Rule {
        let ops = (0..Operation::ALL.len())
            .filter(|i| self.ops & (1 << i) != 0)
            .map(|i| Operation::ALL[i]);
        let mut rule = if self.forbid {
            Rule::forbid(&self.id, self.pat.pattern(), ops)
        } else {
            Rule::permit(&self.id, self.pat.pattern(), ops)
        }
        .unwrap();
        if let Some(b) = self.branch {
            rule = rule.on_branch(BRANCH_NAMES[b].clone());
        }
        if let Some(ns) = self.ns {
            rule = rule.in_namespace(NAMESPACES[ns]);
        }
        rule
    }
}

#[derive(Debug, Clone, Copy)]
struct Res {
    branch: usize,
    iri: Option<usize>,
}

impl Res {
    fn resource(&self) -> Resource<'static> {
        let branch = &BRANCH_NAMES[self.branch];
        match self.iri {
            None => Resource::branch(branch),
            Some(i) => Resource::namespace(branch, IRIS[i]),
        }
    }
}

/// Every resource of the world: each branch, whole or at each IRI.
fn all_resources() -> Vec<Res> {
    let mut out = Vec::new();
    for branch in 0..BRANCHES.len() {
        out.push(Res { branch, iri: None });
        for i in 0..IRIS.len() {
            out.push(Res { branch, iri: Some(i) });
        }
    }
    out
}

fn policy(org: usize, version: u64, rules: &[RSpec]) -> AccessPolicy {
    AccessPolicy::new(ORG_IDS[org].clone(), version, rules.iter().map(RSpec::rule).collect())
        .unwrap()
}

// ---------------------------------------------------------------------------------------
// The reference evaluator, from the module docs.

#[derive(Debug, Clone, PartialEq, Eq)]
enum Expected {
    Permit(String),
    Forbid(String),
    Deny,
}

fn observed(d: &AccessDecision) -> Expected {
    match d {
        AccessDecision::Permit { rule } => Expected::Permit(rule.as_str().to_owned()),
        AccessDecision::Forbid { rule } => Expected::Forbid(rule.as_str().to_owned()),
        AccessDecision::DefaultDeny => Expected::Deny,
    }
}

/// Whether `rule` covers the request, from the docs: its operations include `op`, its
/// principal pattern matches, it is on the requested branch (or any), and
/// - an unscoped rule covers the whole branch and every IRI in it;
/// - a namespace-scoped rule covers the IRIs that start with its prefix;
/// - a namespace-scoped *forbid* also covers whole-branch requests, a scoped *permit* does not.
fn ref_covers(rule: &RSpec, p: &PSpec, op: usize, res: Res) -> bool {
    if rule.ops & (1 << op) == 0 || !rule.pat.matches(p) {
        return false;
    }
    if rule.branch.is_some_and(|b| b != res.branch) {
        return false;
    }
    match (rule.ns, res.iri) {
        (None, _) => true,
        (Some(ns), Some(iri)) => {
            IRIS[iri].starts_with(NAMESPACES[ns])
                || (rule.forbid && NAMESPACES[ns].starts_with(IRIS[iri]))
        }
        (Some(_), None) => rule.forbid,
    }
}

/// Default deny, forbid wins, and the reported rule is the smallest id of the deciding kind.
fn ref_decide(rules: &[RSpec], p: &PSpec, op: usize, res: Res) -> Expected {
    let covering = || rules.iter().filter(|r| ref_covers(r, p, op, res));
    if let Some(id) = covering().filter(|r| r.forbid).map(|r| r.id.clone()).min() {
        Expected::Forbid(id)
    } else if let Some(id) = covering().filter(|r| !r.forbid).map(|r| r.id.clone()).min() {
        Expected::Permit(id)
    } else {
        Expected::Deny
    }
}

// ---------------------------------------------------------------------------------------
// Generators.

fn pat() -> impl Strategy<Value = Pat> {
    prop_oneof![
        Just(Pat::Any),
        (0..ORGS.len()).prop_map(Pat::Org),
        (0..ROLES.len()).prop_map(Pat::Role),
        (0..ORGS.len(), 0..ROLES.len()).prop_map(|(o, r)| Pat::OrgRole(o, r)),
        (0..4usize).prop_map(Pat::Node),
    ]
}

fn principal() -> impl Strategy<Value = PSpec> {
    (0..4usize, 0..ORGS.len(), 0u8..8).prop_map(|(node, org, roles)| PSpec { node, org, roles })
}

fn resource() -> impl Strategy<Value = Res> {
    (0..BRANCHES.len(), option::of(0..IRIS.len())).prop_map(|(branch, iri)| Res { branch, iri })
}

fn op() -> impl Strategy<Value = usize> {
    0..Operation::ALL.len()
}

/// Up to `max` rules with distinct ids (a stem and the position) over every dimension.
fn rules(max: usize) -> impl Strategy<Value = Vec<RSpec>> {
    let body = (
        any::<bool>(),
        pat(),
        1u8..64,
        option::of(0..BRANCHES.len()),
        option::of(0..NAMESPACES.len()),
        0..WORDS.len(),
    );
    vec(body, 0..=max).prop_map(|v| {
        v.into_iter()
            .enumerate()
            .map(|(i, (forbid, pat, ops, branch, ns, w))| RSpec {
                id: format!("{}-{i}", WORDS[w]),
                forbid,
                pat,
                ops,
                branch,
                ns,
            })
            .collect()
    })
}

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig { failure_persistence: None, ..ProptestConfig::with_cases(cases) }
}

// ---------------------------------------------------------------------------------------
// Laws of one policy.

proptest! {
    #![proptest_config(config(512))]

    /// The rule set is a set: any order of the same rules gives the same decision and the
    /// same reported rule, for every principal, operation and resource.
    #[test]
    fn decisions_do_not_depend_on_rule_order(
        (rules, shuffled) in rules(14).prop_flat_map(|r| (Just(r.clone()), Just(r).prop_shuffle())),
        principals in vec(principal(), 1..4),
    ) {
        let a = policy(0, 1, &rules);
        let b = policy(0, 1, &shuffled);
        prop_assert_eq!(&a, &b);
        let ids: Vec<&str> = a.rules().iter().map(|r| r.id().as_str()).collect();
        prop_assert!(ids.windows(2).all(|w| w[0] < w[1]), "rules() not sorted by id: {:?}", ids);
        for p in &principals {
            let pr = p.principal();
            for op in Operation::ALL {
                for res in all_resources() {
                    let r = res.resource();
                    prop_assert_eq!(a.decide(&pr, op, &r), b.decide(&pr, op, &r));
                }
            }
        }
    }

    /// Default deny: a principal that no permit matches is denied everything, whatever the
    /// forbids and the other principals' permits.
    #[test]
    fn unmatched_principal_is_denied_everything(rules in rules(14), p in principal()) {
        let kept: Vec<RSpec> =
            rules.into_iter().filter(|r| r.forbid || !r.pat.matches(&p)).collect();
        let pol = policy(1, 7, &kept);
        let pr = p.principal();
        for op in Operation::ALL {
            for res in all_resources() {
                let d = pol.decide(&pr, op, &res.resource());
                prop_assert!(!d.is_permit(), "{:?} {:?} {:?}: {:?}", p, op, res, d);
                prop_assert!(matches!(d, AccessDecision::DefaultDeny | AccessDecision::Forbid { .. }), "{:?}", d);
            }
        }
    }

    /// The empty policy denies everything by default (no rule to report).
    #[test]
    fn empty_policy_denies_everything(p in principal(), version in any::<u64>()) {
        let pol = policy(2, version, &[]);
        let pr = p.principal();
        for op in Operation::ALL {
            for res in all_resources() {
                let d = pol.decide(&pr, op, &res.resource());
                prop_assert_eq!(&d, &AccessDecision::DefaultDeny);
                prop_assert_eq!(d.rule(), None);
            }
        }
    }

    /// Forbid wins: adding a forbid that matches the request turns any decision into
    /// `Forbid` (reported: the smallest forbid id that matches).
    #[test]
    fn a_matching_forbid_always_wins(
        rules in rules(14),
        p in principal(),
        op in op(),
        res in resource(),
        how in (0..5usize, 0u8..64, any::<bool>(), any::<prop::sample::Index>(), 0..WORDS.len()),
    ) {
        let (kind, extra_ops, on_branch, ns_pick, w) = how;
        let held: Vec<usize> = (0..ROLES.len()).filter(|r| p.has_role(*r)).collect();
        let pat = match kind {
            0 => Pat::Any,
            1 => Pat::Org(p.org),
            2 => Pat::Node(p.node),
            3 if !held.is_empty() => Pat::Role(held[ns_pick.index(held.len())]),
            4 if !held.is_empty() => Pat::OrgRole(p.org, held[ns_pick.index(held.len())]),
            _ => Pat::Any,
        };
        // A namespace the request falls in (any one for a whole-branch request), or none.
        let nss: Vec<usize> = match res.iri {
            Some(i) => (0..NAMESPACES.len()).filter(|n| IRIS[i].starts_with(NAMESPACES[*n])).collect(),
            None => (0..NAMESPACES.len()).collect(),
        };
        let ns = (!nss.is_empty() && ns_pick.index(3) != 0).then(|| nss[ns_pick.index(nss.len())]);
        let forbid = RSpec {
            id: format!("{}-forbid", WORDS[w]),
            forbid: true,
            pat,
            ops: extra_ops | (1 << op),
            branch: on_branch.then_some(res.branch),
            ns,
        };
        prop_assert!(ref_covers(&forbid, &p, op, res));
        let mut with = rules.clone();
        with.push(forbid.clone());
        let d = policy(0, 1, &with).decide(&p.principal(), Operation::ALL[op], &res.resource());
        prop_assert!(matches!(d, AccessDecision::Forbid { .. }), "{:?} after adding {:?}", d, forbid);
        let smallest = with
            .iter()
            .filter(|r| r.forbid && ref_covers(r, &p, op, res))
            .map(|r| r.id.as_str())
            .min()
            .unwrap();
        prop_assert_eq!(d.rule().map(|r| r.as_str()), Some(smallest));
    }

    /// Adding permits never turns a `Forbid` into a permit (nor changes the forbidding
    /// rule), and never turns a permit into a refusal.
    #[test]
    fn adding_permits_never_lifts_a_forbid(
        rules in rules(12),
        more in rules(8),
        p in principal(),
    ) {
        let before = policy(0, 1, &rules);
        let permits = more.into_iter().map(|mut r| {
            r.forbid = false;
            r.id = format!("{}-more", r.id);
            r
        });
        let all: Vec<RSpec> = rules.iter().cloned().chain(permits).collect();
        let after = policy(0, 2, &all);
        let pr = p.principal();
        for op in Operation::ALL {
            for res in all_resources() {
                let r = res.resource();
                let (b, a) = (before.decide(&pr, op, &r), after.decide(&pr, op, &r));
                match &b {
                    AccessDecision::Forbid { .. } => prop_assert_eq!(&a, &b),
                    AccessDecision::Permit { .. } => prop_assert!(a.is_permit(), "{:?} -> {:?}", b, a),
                    AccessDecision::DefaultDeny => {}
                }
            }
        }
    }

    /// The policy agrees with the reference evaluator written from the docs, reported rule
    /// included, for every operation and resource.
    #[test]
    fn policy_agrees_with_the_reference_evaluator(
        rules in rules(16),
        principals in vec(principal(), 1..4),
    ) {
        let pol = policy(0, 1, &rules);
        for p in &principals {
            let pr = p.principal();
            for (op, operation) in Operation::ALL.into_iter().enumerate() {
                for res in all_resources() {
                    let got = observed(&pol.decide(&pr, operation, &res.resource()));
                    let want = ref_decide(&rules, p, op, res);
                    prop_assert_eq!(
                        &got, &want,
                        "principal {:?} op {:?} resource {:?} rules {:?}", p, operation, res, rules
                    );
                }
            }
        }
    }
}

/// The namespace rule on fixed cases, including the module example's intent.
#[test]
fn namespace_scoping_on_fixed_cases() {
    let acme = 0;
    let p = PSpec { node: 0, org: acme, roles: 0b010 };
    let rules = vec![
        RSpec { id: "all".into(), forbid: false, pat: Pat::Any, ops: 0b1, branch: None, ns: None },
        RSpec {
            id: "hr-only".into(),
            forbid: false,
            pat: Pat::Any,
            ops: 0b10,
            branch: None,
            ns: Some(1),
        },
        RSpec {
            id: "no-salary".into(),
            forbid: true,
            pat: Pat::Any,
            ops: 0b11,
            branch: None,
            ns: Some(2),
        },
    ];
    let pol = policy(acme, 1, &rules);
    let pr = p.principal();
    let main = &BRANCH_NAMES[0];
    let d = |op, r: Resource<'_>| observed(&pol.decide(&pr, op, &r));
    // A scoped permit grants inside its namespace only, never the whole branch.
    assert_eq!(
        d(Operation::Commit, Resource::namespace(main, "https://a.example/hr/x")),
        Expected::Permit("hr-only".into())
    );
    // ... and a request for an enclosing namespace includes the forbidden salaries.
    assert_eq!(
        d(Operation::Commit, Resource::namespace(main, "https://a.example/h")),
        Expected::Forbid("no-salary".into())
    );
    assert_eq!(
        d(Operation::Commit, Resource::namespace(main, "https://a.example/hx")),
        Expected::Deny
    );
    assert_eq!(d(Operation::Commit, Resource::branch(main)), Expected::Forbid("no-salary".into()));
    // A scoped forbid refuses inside its namespace and whole-branch requests.
    assert_eq!(
        d(Operation::Read, Resource::namespace(main, "https://a.example/hr/salary/base")),
        Expected::Forbid("no-salary".into())
    );
    assert_eq!(d(Operation::Read, Resource::branch(main)), Expected::Forbid("no-salary".into()));
    assert_eq!(
        d(Operation::Read, Resource::namespace(main, "http://xmlns.com/foaf/0.1/name")),
        Expected::Permit("all".into())
    );
}

/// "A namespace-scoped forbid also refuses whole-branch requests (which include that
/// namespace's data), so scoping never widens a grant." A request for a *wider namespace*
/// (an IRI prefix of the forbidden namespace, a namespace read) also includes that data.
#[test]
fn a_scoped_forbid_refuses_requests_for_an_enclosing_namespace() {
    let p = PSpec { node: 0, org: 0, roles: 0b010 };
    let rules = vec![
        RSpec {
            id: "read-all".into(),
            forbid: false,
            pat: Pat::Any,
            ops: 0b1,
            branch: None,
            ns: None,
        },
        RSpec {
            id: "no-salary".into(),
            forbid: true,
            pat: Pat::Any,
            ops: 0b1,
            branch: None,
            ns: Some(2),
        },
    ];
    let pol = policy(0, 1, &rules);
    let main = &BRANCH_NAMES[0];
    let wider = Resource::namespace(main, "https://a.example/hr");
    let d = pol.decide(&p.principal(), Operation::Read, &wider);
    assert_eq!(observed(&d), Expected::Forbid("no-salary".into()));
}

// ---------------------------------------------------------------------------------------
// Every owner consents.

/// An owner's verdict from the docs of `AccessControl::decide`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum OwnerExpected {
    Approved { permits: BTreeSet<String> },
    Refused { rule: Option<String> },
    Pending,
}

fn owner_expected(
    rules: Option<&Vec<RSpec>>,
    p: &PSpec,
    op: usize,
    branch: usize,
    iris: &[usize],
) -> OwnerExpected {
    let Some(rules) = rules else { return OwnerExpected::Pending };
    let targets: Vec<Res> = if iris.is_empty() {
        vec![Res { branch, iri: None }]
    } else {
        iris.iter().map(|i| Res { branch, iri: Some(*i) }).collect()
    };
    let mut permits = BTreeSet::new();
    for t in targets {
        match ref_decide(rules, p, op, t) {
            Expected::Permit(id) => {
                permits.insert(id);
            }
            Expected::Forbid(id) => return OwnerExpected::Refused { rule: Some(id) },
            Expected::Deny => return OwnerExpected::Refused { rule: None },
        }
    }
    OwnerExpected::Approved { permits }
}

proptest! {
    #![proptest_config(config(1024))]

    /// Several owners: an owner approves only if its policy permits every resource, refuses
    /// on the first one it forbids (reporting the rule) or does not permit (no rule), and is
    /// pending without a policy; the decision is approved only if every owner approved.
    #[test]
    fn every_owner_must_consent(
        owners in 0u8..8,
        policies in [option::of(rules(8)), option::of(rules(8)), option::of(rules(8))],
        p in principal(),
        op in op(),
        branch in 0..BRANCHES.len(),
        iris in vec(0..IRIS.len(), 0..4),
    ) {
        let mut ac = AccessControl::new();
        for (org, rules) in policies.iter().enumerate() {
            if let Some(rules) = rules {
                ac.set_policy(policy(org, 1, rules)).unwrap();
            }
        }
        let owner_set: BTreeSet<OrgId> =
            (0..ORGS.len()).filter(|o| owners & (1 << o) != 0).map(|o| ORG_IDS[o].clone()).collect();
        let iri_strs: Vec<&str> = iris.iter().map(|i| IRIS[*i]).collect();
        let decision = ac.decide(&owner_set, &p.principal(), Operation::ALL[op], &BRANCH_NAMES[branch], &iri_strs);

        let orgs: Vec<&OrgId> = decision.verdicts().iter().map(|v| &v.org).collect();
        prop_assert_eq!(orgs, owner_set.iter().collect::<Vec<_>>());
        let mut all_approved = !owner_set.is_empty();
        for v in decision.verdicts() {
            let o = ORG_IDS.iter().position(|x| *x == v.org).unwrap();
            let want = owner_expected(policies[o].as_ref(), &p, op, branch, &iris);
            match (&want, &v.verdict) {
                (OwnerExpected::Pending, Verdict::Pending { .. }) => all_approved = false,
                (OwnerExpected::Refused { rule }, Verdict::Refused { rule: got, .. }) => {
                    prop_assert_eq!(rule, got);
                    all_approved = false;
                }
                (OwnerExpected::Approved { permits }, Verdict::Approved { rule }) => {
                    let rule = rule.as_ref();
                    prop_assert!(
                        rule.is_some_and(|r| permits.contains(r)),
                        "approval names {:?}, not one of the permits {:?}", rule, permits
                    );
                }
                (want, got) => prop_assert!(false, "{}: expected {:?}, got {:?}", v.org, want, got),
            }
        }
        prop_assert_eq!(decision.is_approved(), all_approved);
        prop_assert_eq!(decision.is_refused(), decision.refused_by().next().is_some());
    }

    /// `SecurityDecision`: approved only if at least one organization was asked and every
    /// one approved; an organization listed twice keeps its least favourable verdict.
    #[test]
    fn a_decision_is_approved_only_if_every_verdict_is(
        entries in vec((0..ORGS.len(), 0u8..3), 0..7),
    ) {
        let verdict = |k: u8| match k {
            0 => Verdict::Refused { rule: Some("r".into()), reason: "no".into() },
            1 => Verdict::Pending { reason: "later".into() },
            _ => Verdict::Approved { rule: Some("p".into()) },
        };
        let d = SecurityDecision::new(
            entries.iter().map(|(o, k)| OrgVerdict::new(ORG_IDS[*o].clone(), verdict(*k))).collect(),
        );
        // Least favourable kind per organization: 0 refused, 1 pending, 2 approved.
        let worst = |o: usize| entries.iter().filter(|(x, _)| *x == o).map(|(_, k)| *k).min();
        let asked: Vec<usize> = (0..ORGS.len()).filter(|o| worst(*o).is_some()).collect();
        let orgs: Vec<&OrgId> = d.verdicts().iter().map(|v| &v.org).collect();
        prop_assert_eq!(orgs, asked.iter().map(|o| &ORG_IDS[*o]).collect::<Vec<_>>());
        for v in d.verdicts() {
            let o = ORG_IDS.iter().position(|x| *x == v.org).unwrap();
            prop_assert_eq!(&v.verdict, &verdict(worst(o).unwrap()));
        }
        let any_not_approved = asked.iter().any(|o| worst(*o) != Some(2));
        prop_assert_eq!(d.is_approved(), !asked.is_empty() && !any_not_approved);
        prop_assert_eq!(d.is_refused(), asked.iter().any(|o| worst(*o) == Some(0)));
        let approved: Vec<&OrgId> = d.approved_by().collect();
        prop_assert_eq!(approved, asked.iter().filter(|o| worst(**o) == Some(2)).map(|o| &ORG_IDS[*o]).collect::<Vec<_>>());
        let pending: Vec<&OrgId> = d.pending().collect();
        prop_assert_eq!(pending, asked.iter().filter(|o| worst(**o) == Some(1)).map(|o| &ORG_IDS[*o]).collect::<Vec<_>>());
    }
}

#[test]
fn no_owner_means_no_approval_and_unknown_owners_are_pending() {
    let ac = AccessControl::new();
    let p = PSpec { node: 1, org: 0, roles: 0b111 }.principal();
    let main = &BRANCH_NAMES[0];
    let none = ac.decide(&BTreeSet::new(), &p, Operation::Read, main, &[]);
    assert!(none.verdicts().is_empty());
    assert!(!none.is_approved());
    let all: BTreeSet<OrgId> = ORG_IDS.iter().cloned().collect();
    let d = ac.decide(&all, &p, Operation::Read, main, &["https://a.example/hr"]);
    assert!(!d.is_approved());
    assert!(!d.is_refused());
    assert_eq!(d.pending().collect::<Vec<_>>(), ORG_IDS.iter().collect::<Vec<_>>());
}

// ---------------------------------------------------------------------------------------
// The policy document and policy updates.

proptest! {
    #![proptest_config(config(128))]

    /// `to_json` then `from_json` gives an equal policy that decides identically.
    #[test]
    fn json_round_trip_keeps_policy_and_decisions(
        rules in rules(12),
        org in 0..ORGS.len(),
        version in any::<u64>(),
        principals in vec(principal(), 1..3),
    ) {
        let pol = policy(org, version, &rules);
        let json = pol.to_json();
        let back = AccessPolicy::from_json(&json).unwrap();
        prop_assert_eq!(&back, &pol);
        prop_assert_eq!(back.org(), &ORG_IDS[org]);
        prop_assert_eq!(back.version(), version);
        prop_assert_eq!(back.to_json(), json);
        for p in &principals {
            let pr = p.principal();
            for op in Operation::ALL {
                for res in all_resources() {
                    let r = res.resource();
                    prop_assert_eq!(back.decide(&pr, op, &r), pol.decide(&pr, op, &r));
                }
            }
        }
    }

    /// Arbitrary bytes never panic `from_json`; they give a typed error (or, if they happen
    /// to be a valid document, a policy that round-trips).
    #[test]
    fn from_json_never_panics_on_arbitrary_bytes(bytes in vec(any::<u8>(), 0..256)) {
        if let Ok(p) = AccessPolicy::from_json(&bytes) {
            prop_assert_eq!(AccessPolicy::from_json(&p.to_json()).unwrap(), p);
        }
    }

    /// Damaged valid documents (bytes replaced, inserted or cut) never panic `from_json`.
    #[test]
    fn from_json_never_panics_on_damaged_documents(
        rules in rules(6),
        edits in vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..6),
    ) {
        let mut json = policy(0, 3, &rules).to_json();
        for (at, byte, kind) in edits {
            let i = at.index(json.len() + 1);
            match kind {
                0 if i < json.len() => json[i] = byte,
                1 => json.insert(i, byte),
                _ => json.truncate(i),
            }
        }
        if let Ok(p) = AccessPolicy::from_json(&json) {
            prop_assert_eq!(AccessPolicy::from_json(&p.to_json()).unwrap(), p);
        }
    }

    /// Two rules with the same id are refused, in code and in a document.
    #[test]
    fn duplicate_rule_ids_are_refused(
        rules in rules(8).prop_filter("needs a rule", |r| !r.is_empty()),
        pick in any::<prop::sample::Index>(),
        twin in (any::<bool>(), pat(), 1u8..64),
    ) {
        let orig = &rules[pick.index(rules.len())];
        let dup = RSpec { id: orig.id.clone(), forbid: twin.0, pat: twin.1, ops: twin.2, branch: None, ns: None };
        let mut all: Vec<Rule> = rules.iter().map(RSpec::rule).collect();
        all.push(dup.rule());
        let err = AccessPolicy::new(ORG_IDS[0].clone(), 1, all.clone()).unwrap_err();
        prop_assert!(
            matches!(&err, PolicyError::DuplicateRuleId(id) if id.as_str() == orig.id),
            "{:?}", err
        );
        // The same rules as a document (built by hand: no policy value can hold them).
        let doc = serde_json::json!({ "org": ORGS[0], "version": 1, "rules": all });
        let bytes = serde_json::to_vec(&doc).unwrap();
        prop_assert!(AccessPolicy::from_json(&bytes).is_err());
    }

    /// `set_policy` refuses a version that does not exceed the held one and changes
    /// nothing; a greater version replaces the policy.
    #[test]
    fn set_policy_refuses_stale_versions_and_changes_nothing(
        held in rules(8),
        offered in rules(8),
        org in 0..ORGS.len(),
        current in 0u64..1_000,
        back in 0u64..1_000,
        p in principal(),
    ) {
        let mut ac = AccessControl::new();
        let held_policy = policy(org, current, &held);
        ac.set_policy(held_policy.clone()).unwrap();
        let stale = current - back.min(current);
        let err = ac.set_policy(policy(org, stale, &offered)).unwrap_err();
        prop_assert_eq!(
            err,
            PolicyError::StaleVersion { org: ORG_IDS[org].clone(), current, new: stale }
        );
        prop_assert_eq!(ac.policy(&ORG_IDS[org]), Some(&held_policy));
        let owners: BTreeSet<OrgId> = [ORG_IDS[org].clone()].into();
        let pr = p.principal();
        for op in Operation::ALL {
            let d = ac.decide(&owners, &pr, op, &BRANCH_NAMES[0], &[]);
            let want = owner_expected(Some(&held), &p, Operation::ALL.iter().position(|o| *o == op).unwrap(), 0, &[]);
            prop_assert_eq!(d.is_approved(), matches!(want, OwnerExpected::Approved { .. }));
        }
        let newer = policy(org, current + 1, &offered);
        ac.set_policy(newer.clone()).unwrap();
        prop_assert_eq!(ac.policy(&ORG_IDS[org]), Some(&newer));
    }
}

/// Malformed documents give typed errors; the well-formed one they are made from parses.
#[test]
fn malformed_documents_are_refused() {
    let valid = br#"{"org":"acme","version":1,"rules":[{"id":"x","effect":"permit","principal":"any","operations":["Read"]}]}"#;
    let pol = AccessPolicy::from_json(valid).unwrap();
    assert_eq!(pol.rules().len(), 1);
    let cases = [
        &br#"{"org":"acme","version":1,"rules":[{"id":"x","effect":"permit","principal":"any","operations":[]}]}"#[..],
        br#"{"org":"acme","version":1,"rules":[{"id":"x","effect":"permit","principal":"any","operations":["Read"],"namespace":""}]}"#,
        br#"{"org":"acme","version":1,"rules":[{"id":"bad id","effect":"permit","principal":"any","operations":["Read"]}]}"#,
        br#"{"org":"acme","version":1,"rules":[{"id":"x","effect":"allow","principal":"any","operations":["Read"]}]}"#,
        br#"{"org":"acme","version":1,"rules":[{"id":"x","effect":"permit","principal":"any","operations":["Read"]},{"id":"x","effect":"forbid","principal":"any","operations":["Read"]}]}"#,
        br#"{"org":"ACME","version":1,"rules":[]}"#,
        br#"{"org":"acme","version":-1,"rules":[]}"#,
        br#"{"org":"acme","rules":[]}"#,
        b"",
        b"null",
    ];
    for bytes in cases {
        assert!(AccessPolicy::from_json(bytes).is_err(), "{}", String::from_utf8_lossy(bytes));
    }
}

/// The documented limits on rule ids, operations, namespaces and rule counts.
#[test]
fn rules_and_policies_outside_the_limits_are_refused() {
    let ok = "aZ09-_.:/";
    assert_eq!(RuleId::new(ok).unwrap().as_str(), ok);
    assert!(RuleId::new("x".repeat(MAX_RULE_ID_LEN)).is_ok());
    for bad in
        [String::new(), "x".repeat(MAX_RULE_ID_LEN + 1), "a b".into(), "é".into(), "a+b".into()]
    {
        assert_eq!(RuleId::new(bad.clone()), Err(PolicyError::InvalidRuleId(bad)));
    }
    let id = RuleId::new("r").unwrap();
    assert_eq!(
        Rule::permit("r", PrincipalPattern::Any, []),
        Err(PolicyError::NoOperations(id.clone()))
    );

    let acme = ORG_IDS[0].clone();
    let scoped = |ns: String| {
        Rule::forbid("r", PrincipalPattern::Any, [Operation::Read]).unwrap().in_namespace(ns)
    };
    assert!(
        AccessPolicy::new(acme.clone(), 1, vec![scoped("n".repeat(MAX_NAMESPACE_LEN))]).is_ok()
    );
    for bad in [String::new(), "n".repeat(MAX_NAMESPACE_LEN + 1)] {
        assert_eq!(
            AccessPolicy::new(acme.clone(), 1, vec![scoped(bad)]),
            Err(PolicyError::InvalidNamespace(id.clone()))
        );
    }

    let many = |n: usize| -> Vec<Rule> {
        (0..n)
            .map(|i| {
                Rule::permit(&format!("r{i}"), PrincipalPattern::Any, [Operation::Read]).unwrap()
            })
            .collect()
    };
    assert_eq!(
        AccessPolicy::new(acme.clone(), 1, many(MAX_RULES)).unwrap().rules().len(),
        MAX_RULES
    );
    assert_eq!(
        AccessPolicy::new(acme, 1, many(MAX_RULES + 1)),
        Err(PolicyError::TooManyRules(MAX_RULES + 1))
    );
}
