//! Access control: which principals may perform which operations on which resources.
//!
//! Each organization publishes an [`AccessPolicy`]: a set of [`Rule`]s, each permitting or
//! forbidding some [`Operation`]s to a principal pattern (anyone, an organization, a role, an
//! organization's role, one node) on a resource (any branch or one, optionally a predicate
//! namespace within it). Evaluation is:
//!
//! - **default deny**: nothing is allowed unless a rule permits it;
//! - **forbid wins**: a matching forbid beats any number of matching permits;
//! - **order-independent**: the rule set is a set; the rule reported as deciding is the one
//!   with the smallest id among the deciding kind, whatever order the rules were given in;
//! - **every owner consents**: [`AccessControl::decide`] asks the policy of every
//!   organization whose data the operation touches, and approves only if all permit.
//!
//! Namespaces are IRI prefixes. A namespace-scoped *permit* grants only requests inside its
//! namespace; a namespace-scoped *forbid* also refuses requests for an enclosing namespace
//! and for the whole branch (both include that namespace's data), so scoping never widens a
//! grant. Rule ids compare as byte strings.
//!
//! ```
//! use llmkg_federation_core::security::Operation;
//! use llmkg_federation_core::{BranchName, NodeKeypair, OrgId, Role};
//! use llmkg_governance::access::{AccessDecision, AccessPolicy, PrincipalPattern, Resource, Rule};
//! use llmkg_governance::trust::Principal;
//!
//! let acme = OrgId::new("acme")?;
//! let policy = AccessPolicy::new(acme.clone(), 1, vec![
//!     Rule::permit("writers-commit", PrincipalPattern::Role(Role::Writer), [Operation::Read, Operation::Commit])?,
//!     Rule::forbid("no-salaries", PrincipalPattern::Any, [Operation::Read, Operation::Commit])?
//!         .in_namespace("https://acme.example/hr/salary"),
//! ])?;
//! let main = BranchName::new("main")?;
//! let writer = Principal::new(NodeKeypair::from_secret_bytes([1; 32]).node_id(), acme, [Role::Writer]);
//!
//! let foaf = Resource::namespace(&main, "http://xmlns.com/foaf/0.1/name");
//! assert!(policy.decide(&writer, Operation::Commit, &foaf).is_permit());
//! let salary = Resource::namespace(&main, "https://acme.example/hr/salary/base");
//! assert_eq!(policy.decide(&writer, Operation::Commit, &salary).rule().map(|r| r.as_str()), Some("no-salaries"));
//! assert_eq!(policy.decide(&writer, Operation::Merge, &foaf), AccessDecision::DefaultDeny);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use llmkg_federation_core::security::{Operation, OrgVerdict, SecurityDecision, Verdict};
use llmkg_federation_core::{BranchName, NodeId, OrgId, Role};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::trust::Principal;

/// Most rules one policy may hold.
pub const MAX_RULES: usize = 100_000;
/// Longest rule id, in bytes.
pub const MAX_RULE_ID_LEN: usize = 128;
/// Longest namespace prefix, in bytes.
pub const MAX_NAMESPACE_LEN: usize = 4096;

/// A policy or rule was malformed. Nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// A rule id is empty, longer than [`MAX_RULE_ID_LEN`] or uses other characters than
    /// ASCII letters, digits and `-_.:/`.
    #[error("invalid rule id {0:?}")]
    InvalidRuleId(String),
    /// Two rules share an id.
    #[error("rule id {0} is used twice")]
    DuplicateRuleId(RuleId),
    /// A rule lists no operation.
    #[error("rule {0} lists no operation")]
    NoOperations(RuleId),
    /// A namespace is empty or longer than [`MAX_NAMESPACE_LEN`].
    #[error("rule {0} has an invalid namespace")]
    InvalidNamespace(RuleId),
    /// More than [`MAX_RULES`] rules.
    #[error("{0} rules exceed the limit of {MAX_RULES}")]
    TooManyRules(usize),
    /// A policy update does not advance the version.
    #[error("policy version {new} of {org} does not exceed the current {current}")]
    StaleVersion {
        /// The organization.
        org: OrgId,
        /// The version held.
        current: u64,
        /// The version offered.
        new: u64,
    },
    /// A policy document did not parse.
    #[error("policy document: {0}")]
    Document(String),
}

/// A rule's name, unique within its policy; decisions report it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RuleId(Box<str>);

impl RuleId {
    /// Validates `id`.
    pub fn new(id: impl Into<String>) -> Result<Self, PolicyError> {
        let id = id.into();
        let ok = !id.is_empty()
            && id.len() <= MAX_RULE_ID_LEN
            && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:/".contains(&b));
        if ok { Ok(Self(id.into_boxed_str())) } else { Err(PolicyError::InvalidRuleId(id)) }
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for RuleId {
    type Error = PolicyError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<RuleId> for String {
    fn from(value: RuleId) -> Self {
        value.0.into()
    }
}

impl fmt::Display for RuleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whether a rule grants or refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Effect {
    /// Allows the operation, unless a forbid also matches.
    Permit,
    /// Refuses the operation, whatever permits match.
    Forbid,
}

/// Whom a rule is about.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PrincipalPattern {
    /// Every certified node.
    Any,
    /// The nodes of one organization.
    Org(OrgId),
    /// The nodes holding a role, in any organization.
    Role(Role),
    /// The nodes of one organization holding a role.
    OrgRole(OrgId, Role),
    /// One node.
    Node(NodeId),
}

impl PrincipalPattern {
    fn matches(&self, p: &Principal) -> bool {
        match self {
            Self::Any => true,
            Self::Org(o) => o == p.org(),
            Self::Role(r) => p.roles().contains(r),
            Self::OrgRole(o, r) => o == p.org() && p.roles().contains(r),
            Self::Node(n) => *n == p.node(),
        }
    }
}

/// One permit or forbid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawRule")]
pub struct Rule {
    id: RuleId,
    effect: Effect,
    principal: PrincipalPattern,
    operations: Vec<Operation>,
    branch: Option<BranchName>,
    namespace: Option<String>,
}

#[derive(Deserialize)]
struct RawRule {
    id: RuleId,
    effect: Effect,
    principal: PrincipalPattern,
    operations: Vec<Operation>,
    #[serde(default)]
    branch: Option<BranchName>,
    #[serde(default)]
    namespace: Option<String>,
}

impl TryFrom<RawRule> for Rule {
    type Error = PolicyError;
    fn try_from(r: RawRule) -> Result<Self, PolicyError> {
        let mut rule = Rule::new(r.id.as_str(), r.effect, r.principal, r.operations)?;
        rule.branch = r.branch;
        if let Some(ns) = r.namespace {
            rule = rule.in_namespace(ns);
        }
        rule.check()?;
        Ok(rule)
    }
}

impl Rule {
    /// A rule with `effect` on `operations` for `principal`, on every branch and namespace.
    pub fn new(
        id: &str,
        effect: Effect,
        principal: PrincipalPattern,
        operations: impl IntoIterator<Item = Operation>,
    ) -> Result<Self, PolicyError> {
        let id = RuleId::new(id)?;
        let ops: BTreeSet<Operation> = operations.into_iter().collect();
        if ops.is_empty() {
            return Err(PolicyError::NoOperations(id));
        }
        Ok(Self {
            id,
            effect,
            principal,
            operations: ops.into_iter().collect(),
            branch: None,
            namespace: None,
        })
    }

    /// A permit.
    pub fn permit(
        id: &str,
        principal: PrincipalPattern,
        operations: impl IntoIterator<Item = Operation>,
    ) -> Result<Self, PolicyError> {
        Self::new(id, Effect::Permit, principal, operations)
    }

    /// A forbid.
    pub fn forbid(
        id: &str,
        principal: PrincipalPattern,
        operations: impl IntoIterator<Item = Operation>,
    ) -> Result<Self, PolicyError> {
        Self::new(id, Effect::Forbid, principal, operations)
    }

    /// Restricts the rule to one branch.
    pub fn on_branch(mut self, branch: BranchName) -> Self {
        self.branch = Some(branch);
        self
    }

    /// Restricts the rule to the resources whose IRI starts with `prefix`.
    pub fn in_namespace(mut self, prefix: impl Into<String>) -> Self {
        self.namespace = Some(prefix.into());
        self
    }

    fn check(&self) -> Result<(), PolicyError> {
        if let Some(ns) = &self.namespace
            && (ns.is_empty() || ns.len() > MAX_NAMESPACE_LEN)
        {
            return Err(PolicyError::InvalidNamespace(self.id.clone()));
        }
        Ok(())
    }

    /// Its id.
    pub fn id(&self) -> &RuleId {
        &self.id
    }

    /// Permit or forbid.
    pub fn effect(&self) -> Effect {
        self.effect
    }

    /// Whom it is about.
    pub fn principal(&self) -> &PrincipalPattern {
        &self.principal
    }

    /// The operations it covers, sorted.
    pub fn operations(&self) -> &[Operation] {
        &self.operations
    }

    fn matches_resource(&self, r: &Resource<'_>) -> bool {
        if let Some(b) = &self.branch
            && b != r.branch
        {
            return false;
        }
        match (&self.namespace, r.namespace) {
            (None, _) => true,
            // A scoped permit grants only requests inside its namespace. A scoped forbid also
            // covers requests for an enclosing namespace and for the whole branch: both
            // include its data.
            (Some(ns), Some(iri)) => {
                iri.starts_with(ns.as_str())
                    || (self.effect == Effect::Forbid && ns.starts_with(iri))
            }
            (Some(_), None) => self.effect == Effect::Forbid,
        }
    }
}

/// What an operation acts on: a branch, and optionally one IRI within it (a predicate a
/// commit writes, a namespace read).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resource<'a> {
    /// The branch.
    pub branch: &'a BranchName,
    /// The IRI within it, or `None` for the whole branch.
    pub namespace: Option<&'a str>,
}

impl<'a> Resource<'a> {
    /// The whole branch.
    pub fn branch(branch: &'a BranchName) -> Self {
        Self { branch, namespace: None }
    }

    /// One IRI (or namespace) within the branch.
    pub fn namespace(branch: &'a BranchName, iri: &'a str) -> Self {
        Self { branch, namespace: Some(iri) }
    }
}

/// One policy's answer, with the rule that decided it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessDecision {
    /// A permit matched and no forbid did.
    Permit {
        /// The permitting rule with the smallest id.
        rule: RuleId,
    },
    /// A forbid matched.
    Forbid {
        /// The forbidding rule with the smallest id.
        rule: RuleId,
    },
    /// No rule permitted it.
    DefaultDeny,
}

impl AccessDecision {
    /// Whether the operation is allowed.
    pub fn is_permit(&self) -> bool {
        matches!(self, Self::Permit { .. })
    }

    /// The deciding rule (`None` for default deny).
    pub fn rule(&self) -> Option<&RuleId> {
        match self {
            Self::Permit { rule } | Self::Forbid { rule } => Some(rule),
            Self::DefaultDeny => None,
        }
    }
}

impl fmt::Display for AccessDecision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Permit { rule } => write!(f, "permitted by rule {rule}"),
            Self::Forbid { rule } => write!(f, "forbidden by rule {rule}"),
            Self::DefaultDeny => f.write_str("no rule permits it (default deny)"),
        }
    }
}

type Map<K, V> = HashMap<K, V, foldhash::fast::FixedState>;

/// Rule positions (ascending) of one principal bucket, split by the branch they name.
#[derive(Debug, Clone, Default)]
struct Lists {
    any_branch: Vec<u32>,
    by_branch: Map<BranchName, Vec<u32>>,
}

impl Lists {
    fn push(&mut self, branch: Option<&BranchName>, pos: u32) {
        match branch {
            None => self.any_branch.push(pos),
            Some(b) => self.by_branch.entry(b.clone()).or_default().push(pos),
        }
    }

    fn visit<'a>(&'a self, branch: &BranchName, f: &mut impl FnMut(&'a [u32])) {
        f(&self.any_branch);
        if !self.by_branch.is_empty()
            && let Some(list) = self.by_branch.get(branch)
        {
            f(list);
        }
    }
}

/// The rules of one effect and operation, bucketed by the principal and branch they name.
#[derive(Debug, Clone, Default)]
struct Buckets {
    any: Lists,
    by_org: Map<OrgId, Lists>,
    by_role: BTreeMap<Role, Lists>,
    by_org_role: Map<OrgId, BTreeMap<Role, Lists>>,
    by_node: Map<NodeId, Lists>,
}

impl Buckets {
    fn lists_for(&mut self, principal: &PrincipalPattern) -> &mut Lists {
        match principal {
            PrincipalPattern::Any => &mut self.any,
            PrincipalPattern::Org(o) => self.by_org.entry(o.clone()).or_default(),
            PrincipalPattern::Role(r) => self.by_role.entry(*r).or_default(),
            PrincipalPattern::OrgRole(o, r) => {
                self.by_org_role.entry(o.clone()).or_default().entry(*r).or_default()
            }
            PrincipalPattern::Node(n) => self.by_node.entry(*n).or_default(),
        }
    }

    /// Calls `f` with every list of rules that can match `principal` on `branch`.
    fn visit<'a>(&'a self, p: &Principal, branch: &BranchName, mut f: impl FnMut(&'a [u32])) {
        self.any.visit(branch, &mut f);
        if let Some(l) = self.by_org.get(p.org()) {
            l.visit(branch, &mut f);
        }
        if let Some(l) = self.by_node.get(&p.node()) {
            l.visit(branch, &mut f);
        }
        let org_roles = self.by_org_role.get(p.org());
        for role in p.roles() {
            if let Some(l) = self.by_role.get(role) {
                l.visit(branch, &mut f);
            }
            if let Some(l) = org_roles.and_then(|m| m.get(role)) {
                l.visit(branch, &mut f);
            }
        }
    }
}

/// The rules of one operation: forbids and permits apart, so that a decision looks at
/// permits only when no forbid matched, and stops in each list at its first match.
#[derive(Debug, Clone, Default)]
struct OpIndex {
    forbid: Buckets,
    permit: Buckets,
}

/// One organization's published rules, indexed for evaluation.
#[derive(Debug, Clone)]
pub struct AccessPolicy {
    org: OrgId,
    version: u64,
    /// Sorted by id: a rule's position is its rank, so the smallest matching position is the
    /// smallest matching id.
    rules: Vec<Rule>,
    index: Vec<OpIndex>,
}

impl PartialEq for AccessPolicy {
    fn eq(&self, other: &Self) -> bool {
        (&self.org, self.version, &self.rules) == (&other.org, other.version, &other.rules)
    }
}

impl Eq for AccessPolicy {}

/// The serialized form of a policy (JSON in documents and policy updates).
#[derive(Serialize, Deserialize)]
struct PolicyDocument {
    org: OrgId,
    version: u64,
    rules: Vec<Rule>,
}

fn op_slot(op: Operation) -> usize {
    Operation::ALL.iter().position(|o| *o == op).unwrap_or(0)
}

impl AccessPolicy {
    /// `org`'s policy at `version` (updates must increase it) with `rules` in any order.
    /// Refuses duplicate ids and more than [`MAX_RULES`] rules.
    pub fn new(org: OrgId, version: u64, mut rules: Vec<Rule>) -> Result<Self, PolicyError> {
        if rules.len() > MAX_RULES {
            return Err(PolicyError::TooManyRules(rules.len()));
        }
        for r in &rules {
            r.check()?;
        }
        rules.sort_by(|a, b| a.id.cmp(&b.id));
        if let Some(w) = rules.windows(2).find(|w| matches!(w, [a, b] if a.id == b.id))
            && let Some(r) = w.first()
        {
            return Err(PolicyError::DuplicateRuleId(r.id.clone()));
        }
        let mut index = vec![OpIndex::default(); Operation::ALL.len()];
        for (pos, rule) in rules.iter().enumerate() {
            let pos = pos as u32; // at most MAX_RULES
            for op in &rule.operations {
                let Some(ix) = index.get_mut(op_slot(*op)) else { continue };
                let buckets = match rule.effect {
                    Effect::Forbid => &mut ix.forbid,
                    Effect::Permit => &mut ix.permit,
                };
                buckets.lists_for(&rule.principal).push(rule.branch.as_ref(), pos);
            }
        }
        Ok(Self { org, version, rules, index })
    }

    /// Parses a policy document (JSON: `{"org": .., "version": .., "rules": [..]}`).
    pub fn from_json(bytes: &[u8]) -> Result<Self, PolicyError> {
        let doc: PolicyDocument =
            serde_json::from_slice(bytes).map_err(|e| PolicyError::Document(e.to_string()))?;
        Self::new(doc.org, doc.version, doc.rules)
    }

    /// The policy as a JSON document (rules sorted by id), which
    /// [`from_json`](Self::from_json) reads back.
    pub fn to_json(&self) -> Vec<u8> {
        let doc = PolicyDocument {
            org: self.org.clone(),
            version: self.version,
            rules: self.rules.clone(),
        };
        serde_json::to_vec(&doc).unwrap_or_default()
    }

    /// The organization whose policy this is.
    pub fn org(&self) -> &OrgId {
        &self.org
    }

    /// Its version.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The rules, sorted by id.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Whether `principal` may perform `op` on `resource` under this policy alone.
    pub fn decide(
        &self,
        principal: &Principal,
        op: Operation,
        resource: &Resource<'_>,
    ) -> AccessDecision {
        let Some(ix) = self.index.get(op_slot(op)) else { return AccessDecision::DefaultDeny };
        // Lists hold positions in ascending order and positions are ranks (id order): the
        // first match of a list is its smallest, and a list is abandoned once past the best.
        let first_match = |buckets: &Buckets| {
            let mut best = u32::MAX;
            buckets.visit(principal, resource.branch, |list| {
                for &pos in list {
                    if pos >= best {
                        break;
                    }
                    if self.rules.get(pos as usize).is_some_and(|r| r.matches_resource(resource)) {
                        best = pos;
                        break;
                    }
                }
            });
            (best != u32::MAX)
                .then(|| self.rules.get(best as usize).map(|r| r.id.clone()))
                .flatten()
        };
        if let Some(rule) = first_match(&ix.forbid) {
            AccessDecision::Forbid { rule }
        } else if let Some(rule) = first_match(&ix.permit) {
            AccessDecision::Permit { rule }
        } else {
            AccessDecision::DefaultDeny
        }
    }

    /// Matches `principal`'s pattern the slow way (every rule): the reference the index is
    /// tested against.
    #[doc(hidden)]
    pub fn decide_unindexed(
        &self,
        principal: &Principal,
        op: Operation,
        resource: &Resource<'_>,
    ) -> AccessDecision {
        let matching = || {
            self.rules.iter().filter(|r| {
                r.operations.contains(&op)
                    && r.principal.matches(principal)
                    && r.matches_resource(resource)
            })
        };
        if let Some(r) = matching().find(|r| r.effect == Effect::Forbid) {
            AccessDecision::Forbid { rule: r.id.clone() }
        } else if let Some(r) = matching().find(|r| r.effect == Effect::Permit) {
            AccessDecision::Permit { rule: r.id.clone() }
        } else {
            AccessDecision::DefaultDeny
        }
    }
}

/// The published policies of every organization, and the rule that an operation touching
/// several organizations' data needs all of them.
#[derive(Debug, Clone, Default)]
pub struct AccessControl {
    policies: BTreeMap<OrgId, AccessPolicy>,
}

impl AccessControl {
    /// No policy known: every organization's verdict is pending.
    pub fn new() -> Self {
        Self::default()
    }

    /// Installs `policy` for its organization; its version must exceed the one held. On error
    /// nothing changed.
    pub fn set_policy(&mut self, policy: AccessPolicy) -> Result<(), PolicyError> {
        if let Some(current) = self.policies.get(policy.org())
            && policy.version() <= current.version()
        {
            return Err(PolicyError::StaleVersion {
                org: policy.org().clone(),
                current: current.version(),
                new: policy.version(),
            });
        }
        self.policies.insert(policy.org().clone(), policy);
        Ok(())
    }

    /// `org`'s policy, if known.
    pub fn policy(&self, org: &OrgId) -> Option<&AccessPolicy> {
        self.policies.get(org)
    }

    /// Asks every organization in `owners` whether `principal` may perform `op` on every one
    /// of `resources` (an empty list means the whole branch of `branch`). An owner approves
    /// only if its policy permits every resource; it refuses on the first resource its policy
    /// forbids or does not permit; an owner without a known policy is pending.
    pub fn decide(
        &self,
        owners: &BTreeSet<OrgId>,
        principal: &Principal,
        op: Operation,
        branch: &BranchName,
        resources: &[&str],
    ) -> SecurityDecision {
        let asks = owners
            .iter()
            .map(|o| (o.clone(), vec![Ask { branch, iris: resources.to_vec() }]))
            .collect();
        self.decide_each(principal, op, &asks)
    }

    /// Asks each organization about its own part of an operation: `asks` maps an organization
    /// to the branches and IRIs it owns among those touched (an empty IRI list: the whole
    /// branch). An organization approves only if its policy permits every one of its asks.
    pub fn decide_each(
        &self,
        principal: &Principal,
        op: Operation,
        asks: &BTreeMap<OrgId, Vec<Ask<'_>>>,
    ) -> SecurityDecision {
        let verdicts = asks
            .iter()
            .map(|(org, asks)| {
                let verdict = match self.policies.get(org) {
                    None => {
                        Verdict::Pending { reason: format!("no policy of {org} is known here") }
                    }
                    Some(policy) => owner_verdict(policy, principal, op, asks),
                };
                OrgVerdict::new(org.clone(), verdict)
            })
            .collect();
        SecurityDecision::new(verdicts)
    }
}

/// One organization's part of an operation: a branch and the IRIs of it the organization
/// owns among those touched (empty: the whole branch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ask<'a> {
    /// The branch.
    pub branch: &'a BranchName,
    /// The IRIs, or none for the whole branch.
    pub iris: Vec<&'a str>,
}

/// At most this many characters of an IRI go into a refusal's reason.
const REASON_IRI_CHARS: usize = 200;

fn short(iri: &str) -> String {
    match iri.char_indices().nth(REASON_IRI_CHARS) {
        None => iri.to_string(),
        Some((cut, _)) => format!("{}… ({} bytes)", &iri[..cut], iri.len()),
    }
}

fn owner_verdict(
    policy: &AccessPolicy,
    principal: &Principal,
    op: Operation,
    asks: &[Ask<'_>],
) -> Verdict {
    let mut first_rule = None;
    for ask in asks {
        let whole = [Resource::branch(ask.branch)];
        let scoped: Vec<Resource<'_>> =
            ask.iris.iter().map(|iri| Resource::namespace(ask.branch, iri)).collect();
        let targets: &[Resource<'_>] = if ask.iris.is_empty() { &whole } else { &scoped };
        for target in targets {
            // Only a refusal needs the words.
            let what = || match target.namespace {
                Some(iri) => format!("{op} on {}", short(iri)),
                None => format!("{op} on branch {:?}", target.branch.as_str()),
            };
            match policy.decide(principal, op, target) {
                AccessDecision::Permit { rule } => {
                    first_rule.get_or_insert(rule);
                }
                AccessDecision::Forbid { rule } => {
                    return Verdict::Refused {
                        reason: format!(
                            "{} by {} forbidden by rule {rule}",
                            what(),
                            principal.node()
                        ),
                        rule: Some(rule.to_string()),
                    };
                }
                AccessDecision::DefaultDeny => {
                    return Verdict::Refused {
                        reason: format!("{} by {}: no rule permits it", what(), principal.node()),
                        rule: None,
                    };
                }
            }
        }
    }
    Verdict::Approved { rule: first_rule.map(|r| r.to_string()) }
}
