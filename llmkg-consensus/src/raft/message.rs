//! What Raft nodes say to each other.

use llmkg_federation_core::consensus::{GroupId, Member, Membership, RaftAck};
use llmkg_federation_core::{NodeId, Signed};
use serde::{Deserialize, Serialize};

use crate::log::SnapshotPoint;

/// A message between the members of one group. Every message names its group (a message for
/// another group is dropped and counted) and the sender's term.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaftMessage {
    /// The group.
    pub group: GroupId,
    /// The sender's term (for a pre-vote: the term the sender would campaign in).
    pub term: u64,
    /// What it says.
    pub body: RaftBody,
}

/// The kinds of message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum RaftBody {
    /// Would you vote for me in `term`? (Changes nobody's term.)
    PreVote {
        /// The candidate's last index.
        last_index: u64,
        /// The candidate's last term.
        last_term: u64,
    },
    /// The answer to a pre-vote.
    PreVoteResponse {
        /// Whether it would vote.
        granted: bool,
    },
    /// Vote for me in `term`.
    Vote {
        /// The candidate's last index.
        last_index: u64,
        /// The candidate's last term.
        last_term: u64,
        /// The leader handed over leadership: vote even if a leader was heard recently.
        transfer: bool,
    },
    /// The answer to a vote request.
    VoteResponse {
        /// Whether the vote was granted.
        granted: bool,
    },
    /// Entries after (`prev_index`, `prev_term`), and the leader's commit index.
    Append {
        /// The index of the entry before the new ones.
        prev_index: u64,
        /// Its term.
        prev_term: u64,
        /// The new entries, consecutive from `prev_index + 1`.
        entries: Vec<WireEntry>,
        /// The leader's commit index.
        commit: u64,
        /// Signed acknowledgements certifying the leader's commit index (empty when unchanged
        /// since the last message to this follower, or when acknowledgements are unsigned).
        certificate: Vec<Signed<RaftAck>>,
    },
    /// The answer to an append.
    AppendResponse(AppendResult),
    /// The leader is alive; commit up to `commit` (which the follower is known to hold).
    Heartbeat {
        /// `min(leader's commit, follower's match)`.
        commit: u64,
    },
    /// The answer to a heartbeat.
    HeartbeatResponse {
        /// The follower's last index (a hint for the leader).
        last_index: u64,
    },
    /// A chunk of the leader's snapshot.
    Snapshot(SnapshotChunk),
    /// The answer to a snapshot chunk.
    SnapshotResponse {
        /// The snapshot's index.
        index: u64,
        /// The offset the follower expects next (`total` once installed).
        next_offset: u64,
        /// Whether the snapshot is installed.
        done: bool,
    },
    /// Start an election now (the leader hands over leadership).
    TimeoutNow,
}

/// An entry on the wire: its index follows from its position, its chain hash is recomputed
/// by the receiver.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireEntry {
    /// The term it was appended in.
    pub term: u64,
    /// Its encoding.
    #[serde(with = "llmkg_federation_core::encoding::bytes")]
    pub payload: Vec<u8>,
}

/// How a follower answered an append.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AppendResult {
    /// The follower's log matches the leader's up to `index`.
    Accepted {
        /// The last index the append covered.
        index: u64,
        /// The follower's signed acknowledgement of that entry (if acknowledgements are
        /// signed).
        ack: Option<Signed<RaftAck>>,
    },
    /// The follower's log does not hold (`prev_index`, `prev_term`).
    Rejected {
        /// The `prev_index` rejected.
        rejected: u64,
        /// Where the leader should look: the follower's last index, or the index of the
        /// conflicting entry, whichever is smaller.
        hint_index: u64,
        /// The follower's term at `hint_index`.
        hint_term: u64,
    },
}

/// A chunk of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotChunk {
    /// What the snapshot covers.
    pub point: SnapshotPoint,
    /// The snapshot's total length.
    pub total: u64,
    /// Where this chunk starts.
    pub offset: u64,
    /// The chunk.
    #[serde(with = "llmkg_federation_core::encoding::bytes")]
    pub data: Vec<u8>,
}

/// What a log entry holds (its payload is this, canonically encoded).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryKind {
    /// A new leader's first entry.
    Noop,
    /// A command for the state machine.
    Command(#[serde(with = "llmkg_federation_core::encoding::bytes")] Vec<u8>),
    /// A new configuration.
    Config(Configuration),
}

/// Who is in the group, as Raft sees it: the voters, during a change also the outgoing
/// voters (a decision then needs a majority of each), and the learners.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Configuration {
    /// The voters (the incoming ones during a change).
    pub voters: Vec<Member>,
    /// The outgoing voters while a joint change is in progress; empty otherwise.
    pub outgoing: Vec<Member>,
    /// Members that receive the log but do not vote.
    pub learners: Vec<Member>,
}

/// A snapshot as stored and sent: the configuration at its point and the state machine's
/// snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SnapshotBlob {
    pub(crate) config: Configuration,
    #[serde(with = "llmkg_federation_core::encoding::bytes")]
    pub(crate) state: Vec<u8>,
}

impl Configuration {
    /// A configuration with `voters` and `learners`, not in a change.
    pub fn new(voters: Vec<Member>, learners: Vec<Member>) -> Self {
        Self { voters, outgoing: Vec::new(), learners }
    }

    /// Whether a joint change is in progress.
    pub fn is_joint(&self) -> bool {
        !self.outgoing.is_empty()
    }

    /// Whether `node` votes (in either half of a joint configuration).
    pub fn is_voter(&self, node: &NodeId) -> bool {
        self.voters.iter().chain(&self.outgoing).any(|m| m.node == *node)
    }

    /// Whether `node` receives the log (voter, outgoing voter or learner).
    pub fn contains(&self, node: &NodeId) -> bool {
        self.is_voter(node) || self.learners.iter().any(|m| m.node == *node)
    }

    /// Every node that receives the log, each once, in node order.
    pub fn members(&self) -> Vec<NodeId> {
        let mut all: Vec<NodeId> = self
            .voters
            .iter()
            .chain(&self.outgoing)
            .chain(&self.learners)
            .map(|m| m.node)
            .collect();
        all.sort();
        all.dedup();
        all
    }

    /// Every voter (both halves of a joint configuration), each once, in node order.
    pub fn all_voters(&self) -> Vec<NodeId> {
        let mut all: Vec<NodeId> =
            self.voters.iter().chain(&self.outgoing).map(|m| m.node).collect();
        all.sort();
        all.dedup();
        all
    }

    /// Whether the nodes for which `yes` holds are a majority of the voters and, during a
    /// change, of the outgoing voters too.
    pub fn has_quorum(&self, yes: impl Fn(&NodeId) -> bool) -> bool {
        let majority = |set: &[Member]| {
            set.is_empty() || set.iter().filter(|m| yes(&m.node)).count() > set.len() / 2
        };
        majority(&self.voters) && majority(&self.outgoing)
    }

    /// The highest index a majority of the voters (and of the outgoing voters) hold, given
    /// each node's matched index.
    pub fn committed_index(&self, matched: impl Fn(&NodeId) -> u64) -> u64 {
        let half = |set: &[Member]| {
            if set.is_empty() {
                return u64::MAX;
            }
            let mut m: Vec<u64> = set.iter().map(|x| matched(&x.node)).collect();
            m.sort_unstable_by(|a, b| b.cmp(a));
            m.get(set.len() / 2).copied().unwrap_or(0)
        };
        half(&self.voters).min(half(&self.outgoing))
    }

    /// The voters as a [`Membership`] of `group` (the incoming half during a change), with the
    /// learners.
    pub fn membership(&self, group: GroupId) -> Option<Membership> {
        Membership::new(group, self.voters.clone(), self.learners.clone()).ok()
    }
}
