//! A linearizability checker: Wing and Gong's search with Lowe's memoization.
//!
//! Give it a sequential specification ([`Model`]) and a concurrent history: each operation's
//! input, when it was invoked and, if it completed, when it returned and what it returned. It
//! decides whether some order of the operations (a *linearization*) explains the history:
//! every operation takes effect at one instant between its invocation and its return, the
//! outputs are those the model gives in that order, and an operation that never returned (its
//! client crashed or gave up) either took effect at some instant after its invocation or not
//! at all.
//!
//! ```
//! use llmkg_consensus::linearizability::{check, Model, Operation, Verdict};
//!
//! /// A register holding one number.
//! struct Register;
//! #[derive(Debug, Clone, PartialEq, Eq, Hash)]
//! enum Op { Write(u8), Read }
//!
//! impl Model for Register {
//!     type State = u8;
//!     type Input = Op;
//!     type Output = u8;
//!     fn init(&self) -> u8 { 0 }
//!     fn step(&self, state: &u8, input: &Op) -> (u8, u8) {
//!         match input {
//!             Op::Write(v) => (*v, *v),
//!             Op::Read => (*state, *state),
//!         }
//!     }
//! }
//!
//! // A write of 1 overlaps a read that returns 1, and a later read returns 0: the second
//! // read cannot come after the write.
//! let history = vec![
//!     Operation::completed(Op::Write(1), 0, 10, 1),
//!     Operation::completed(Op::Read, 1, 2, 1),
//!     Operation::completed(Op::Read, 11, 12, 0),
//! ];
//! assert_eq!(check(&Register, &history, None), Verdict::NotLinearizable);
//! assert_eq!(check(&Register, &history[..2], None), Verdict::Linearizable);
//! ```
//!
//! The search visits each (set of operations linearized, model state) pair at most once, so
//! its cost is bounded by the number of such pairs; a step budget turns a search that would
//! take too long into [`Verdict::Inconclusive`] rather than a hang.

use std::collections::HashSet;
use std::hash::Hash;

/// A sequential specification: what each operation does to the state and returns.
pub trait Model {
    /// The state; two equal states must behave the same from then on.
    type State: Clone + Eq + Hash;
    /// An operation's input.
    type Input;
    /// An operation's output.
    type Output: Eq;

    /// The state before any operation.
    fn init(&self) -> Self::State;

    /// Applies `input` to `state`: the next state and the output.
    fn step(&self, state: &Self::State, input: &Self::Input) -> (Self::State, Self::Output);
}

/// One operation of a concurrent history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation<I, O> {
    /// What was asked.
    pub input: I,
    /// When it was invoked.
    pub call: u64,
    /// When it returned and what it returned; `None` if it never returned.
    pub returned: Option<(u64, O)>,
}

impl<I, O> Operation<I, O> {
    /// An operation invoked at `call` that returned `output` at `ret` (`ret >= call`).
    pub fn completed(input: I, call: u64, ret: u64, output: O) -> Self {
        Self { input, call, returned: Some((ret.max(call), output)) }
    }

    /// An operation invoked at `call` that never returned: it may or may not have taken
    /// effect.
    pub fn pending(input: I, call: u64) -> Self {
        Self { input, call, returned: None }
    }
}

/// What the checker concluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Some linearization explains the history.
    Linearizable,
    /// No linearization does.
    NotLinearizable,
    /// The step budget ran out first.
    Inconclusive,
}

#[derive(Clone, Copy)]
enum Kind {
    Call,
    Return,
}

struct Node {
    op: usize,
    kind: Kind,
    /// For a call, the index of its return node.
    partner: usize,
    prev: usize,
    next: usize,
}

/// A doubly linked list of call and return events with a sentinel at index 0, from which a
/// call and its return can be unlinked and relinked in O(1) ("dancing links").
struct Events {
    nodes: Vec<Node>,
}

const HEAD: usize = 0;
const END: usize = usize::MAX;

impl Events {
    fn first(&self) -> usize {
        self.nodes.get(HEAD).map_or(END, |n| n.next)
    }

    fn node(&self, i: usize) -> Option<&Node> {
        self.nodes.get(i)
    }

    fn unlink(&mut self, i: usize) {
        let Some((prev, next)) = self.nodes.get(i).map(|n| (n.prev, n.next)) else { return };
        if let Some(p) = self.nodes.get_mut(prev) {
            p.next = next;
        }
        if let Some(n) = self.nodes.get_mut(next) {
            n.prev = prev;
        }
    }

    fn relink(&mut self, i: usize) {
        let Some((prev, next)) = self.nodes.get(i).map(|n| (n.prev, n.next)) else { return };
        if let Some(p) = self.nodes.get_mut(prev) {
            p.next = i;
        }
        if let Some(n) = self.nodes.get_mut(next) {
            n.prev = i;
        }
    }

    /// Takes a call and its return out of the list.
    fn lift(&mut self, call: usize) {
        let partner = self.nodes.get(call).map_or(END, |n| n.partner);
        self.unlink(call);
        self.unlink(partner);
    }

    /// Puts back what [`lift`](Self::lift) took out (in reverse order).
    fn unlift(&mut self, call: usize) {
        let partner = self.nodes.get(call).map_or(END, |n| n.partner);
        self.relink(partner);
        self.relink(call);
    }
}

/// Builds the event list: calls and returns in time order, a call before a return at the same
/// instant (so operations that touch in time count as concurrent), operations that never
/// returned getting a return after everything else.
fn events<I, O>(history: &[Operation<I, O>]) -> Events {
    let last = history
        .iter()
        .map(|op| op.returned.as_ref().map_or(op.call, |(ret, _)| *ret))
        .max()
        .unwrap_or(0);
    // (time, 0 for a call / 1 for a return, operation)
    let mut order: Vec<(u64, u8, usize)> = Vec::with_capacity(2 * history.len());
    for (i, op) in history.iter().enumerate() {
        order.push((op.call, 0, i));
        let ret = op.returned.as_ref().map_or(last.saturating_add(1), |(ret, _)| *ret);
        order.push((ret, 1, i));
    }
    order.sort_unstable();
    let mut nodes = Vec::with_capacity(order.len() + 1);
    nodes.push(Node { op: usize::MAX, kind: Kind::Call, partner: END, prev: END, next: END });
    let mut return_of = vec![END; history.len()];
    for (position, (_, kind, op)) in order.iter().enumerate() {
        let index = position + 1;
        let kind = if *kind == 0 { Kind::Call } else { Kind::Return };
        if let (Kind::Return, Some(slot)) = (kind, return_of.get_mut(*op)) {
            *slot = index;
        }
        let next = if position + 1 < order.len() { index + 1 } else { END };
        nodes.push(Node { op: *op, kind, partner: END, prev: index - 1, next });
    }
    if let Some(head) = nodes.get_mut(HEAD) {
        head.next = if order.is_empty() { END } else { 1 };
    }
    for node in nodes.iter_mut().skip(1) {
        if let Kind::Call = node.kind {
            node.partner = return_of.get(node.op).copied().unwrap_or(END);
        }
    }
    Events { nodes }
}

/// A set of operation indices.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Bits(Vec<u64>);

impl Bits {
    fn new(n: usize) -> Self {
        Self(vec![0; n.div_ceil(64)])
    }

    fn set(&mut self, i: usize, on: bool) {
        if let Some(word) = self.0.get_mut(i / 64) {
            if on {
                *word |= 1 << (i % 64);
            } else {
                *word &= !(1 << (i % 64));
            }
        }
    }
}

/// Decides whether `history` is linearizable with respect to `model`. `max_steps` bounds the
/// search (each step tries one operation at one point); `None` means no bound.
pub fn check<M: Model>(
    model: &M,
    history: &[Operation<M::Input, M::Output>],
    max_steps: Option<u64>,
) -> Verdict {
    let mut list = events(history);
    let mut linearized = Bits::new(history.len());
    let mut seen: HashSet<(Bits, M::State)> = HashSet::new();
    // The calls linearized so far, with the state before each.
    let mut stack: Vec<(usize, M::State)> = Vec::new();
    let mut state = model.init();
    let mut entry = list.first();
    let mut steps = 0u64;
    loop {
        if list.first() == END {
            return Verdict::Linearizable;
        }
        steps += 1;
        if max_steps.is_some_and(|max| steps > max) {
            return Verdict::Inconclusive;
        }
        let Some(node) = list.node(entry) else { return Verdict::NotLinearizable };
        let op = node.op;
        match node.kind {
            Kind::Call => {
                let next = node.next;
                let Some(operation) = history.get(op) else { return Verdict::NotLinearizable };
                let (after, output) = model.step(&state, &operation.input);
                let matches = operation.returned.as_ref().is_none_or(|(_, out)| *out == output);
                let mut key = linearized.clone();
                key.set(op, true);
                if matches && seen.insert((key.clone(), after.clone())) {
                    stack.push((entry, std::mem::replace(&mut state, after)));
                    linearized = key;
                    list.lift(entry);
                    entry = list.first();
                } else {
                    entry = next;
                }
            }
            Kind::Return => {
                // An operation returned before any order could place it: undo the last
                // choice and try the next one.
                let Some((call, before)) = stack.pop() else { return Verdict::NotLinearizable };
                let Some(undone) = list.node(call).map(|n| n.op) else {
                    return Verdict::NotLinearizable;
                };
                linearized.set(undone, false);
                state = before;
                list.unlift(call);
                entry = list.node(call).map_or(END, |n| n.next);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A key-value store of a few keys; `Cas` is compare-and-set.
    struct Kv;

    #[derive(Debug, Clone, PartialEq, Eq, Hash)]
    enum Op {
        Put(u8, u8),
        Get(u8),
        Cas(u8, u8, u8),
    }

    impl Model for Kv {
        type State = [u8; 3];
        type Input = Op;
        type Output = Option<u8>;
        fn init(&self) -> [u8; 3] {
            [0; 3]
        }
        fn step(&self, s: &[u8; 3], op: &Op) -> ([u8; 3], Option<u8>) {
            let mut s = *s;
            match *op {
                Op::Put(k, v) => {
                    s[usize::from(k % 3)] = v;
                    (s, None)
                }
                Op::Get(k) => (s, Some(s[usize::from(k % 3)])),
                Op::Cas(k, from, to) => {
                    let slot = &mut s[usize::from(k % 3)];
                    let ok = *slot == from;
                    if ok {
                        *slot = to;
                    }
                    (s, Some(u8::from(ok)))
                }
            }
        }
    }

    type History = Vec<Operation<Op, Option<u8>>>;

    /// Whether `a` must come before `b` in real time.
    fn precedes(a: &Operation<Op, Option<u8>>, b: &Operation<Op, Option<u8>>) -> bool {
        a.returned.as_ref().is_some_and(|(ret, _)| *ret < b.call)
    }

    /// Brute force: every subset of the pending operations, every order of the chosen ones
    /// that respects real time, replayed against the model.
    fn brute_force(history: &History) -> bool {
        let pending: Vec<usize> =
            (0..history.len()).filter(|i| history[*i].returned.is_none()).collect();
        for mask in 0..(1u32 << pending.len()) {
            let chosen: Vec<usize> = (0..history.len())
                .filter(|i| {
                    history[*i].returned.is_some()
                        || pending.iter().position(|p| p == i).is_some_and(|b| mask & (1 << b) != 0)
                })
                .collect();
            if permutations_ok(history, &chosen, &mut Vec::new(), Kv.init()) {
                return true;
            }
        }
        false
    }

    fn permutations_ok(
        history: &History,
        left: &[usize],
        placed: &mut Vec<usize>,
        state: [u8; 3],
    ) -> bool {
        if left.is_empty() {
            return true;
        }
        for (k, &i) in left.iter().enumerate() {
            // Nothing still to place may have to come before i.
            if left.iter().any(|&j| j != i && precedes(&history[j], &history[i])) {
                continue;
            }
            let (next, out) = Kv.step(&state, &history[i].input);
            if history[i].returned.as_ref().is_some_and(|(_, o)| *o != out) {
                continue;
            }
            let rest: Vec<usize> =
                left.iter().enumerate().filter(|(m, _)| *m != k).map(|(_, &j)| j).collect();
            placed.push(i);
            if permutations_ok(history, &rest, placed, next) {
                return true;
            }
            placed.pop();
        }
        false
    }

    #[test]
    fn sequential_histories_are_checked_against_the_model() {
        let ok = vec![
            Operation::completed(Op::Put(0, 5), 0, 1, None),
            Operation::completed(Op::Get(0), 2, 3, Some(5)),
            Operation::completed(Op::Cas(0, 5, 6), 4, 5, Some(1)),
            Operation::completed(Op::Get(0), 6, 7, Some(6)),
        ];
        assert_eq!(check(&Kv, &ok, None), Verdict::Linearizable);
        let mut bad = ok.clone();
        bad[3] = Operation::completed(Op::Get(0), 6, 7, Some(5));
        assert_eq!(check(&Kv, &bad, None), Verdict::NotLinearizable);
        assert_eq!(check(&Kv, &History::new(), None), Verdict::Linearizable);
    }

    #[test]
    fn a_pending_write_may_or_may_not_have_happened() {
        let history = vec![
            Operation::pending(Op::Put(1, 9), 0),
            Operation::completed(Op::Get(1), 5, 6, Some(9)),
            Operation::completed(Op::Get(1), 7, 8, Some(9)),
        ];
        assert_eq!(check(&Kv, &history, None), Verdict::Linearizable);
        let never = vec![
            Operation::pending(Op::Put(1, 9), 0),
            Operation::completed(Op::Get(1), 5, 6, Some(0)),
        ];
        assert_eq!(check(&Kv, &never, None), Verdict::Linearizable);
        // But once seen it cannot be unseen.
        let flicker = vec![
            Operation::pending(Op::Put(1, 9), 0),
            Operation::completed(Op::Get(1), 5, 6, Some(9)),
            Operation::completed(Op::Get(1), 7, 8, Some(0)),
        ];
        assert_eq!(check(&Kv, &flicker, None), Verdict::NotLinearizable);
    }

    #[test]
    fn a_tiny_budget_is_inconclusive_not_wrong() {
        let history: History = (0..12)
            .map(|i| Operation::completed(Op::Put(0, i), 0, 100, None))
            .chain([Operation::completed(Op::Get(0), 101, 102, Some(200))])
            .collect();
        assert_eq!(check(&Kv, &history, Some(10)), Verdict::Inconclusive);
        assert_eq!(check(&Kv, &history, None), Verdict::NotLinearizable);
    }

    mod against_brute_force {
        use proptest::prelude::*;

        use super::*;

        fn arb_op() -> impl Strategy<Value = Op> {
            prop_oneof![
                (0..2u8, 0..3u8).prop_map(|(k, v)| Op::Put(k, v)),
                (0..2u8).prop_map(Op::Get),
                (0..2u8, 0..3u8, 0..3u8).prop_map(|(k, f, t)| Op::Cas(k, f, t)),
            ]
        }

        /// Up to seven operations with random overlapping intervals; outputs are random too,
        /// so that both verdicts come up often.
        fn arb_history() -> impl Strategy<Value = History> {
            proptest::collection::vec(
                (arb_op(), 0..12u64, 0..6u64, proptest::option::weighted(0.85, 0..3u8), 0..8u8),
                0..=7,
            )
            .prop_map(|ops| {
                ops.into_iter()
                    .map(|(op, call, len, out, pending)| {
                        let output = match op {
                            Op::Put(..) => None,
                            _ => out,
                        };
                        if pending == 0 {
                            Operation::pending(op, call)
                        } else {
                            Operation::completed(op, call, call + len, output)
                        }
                    })
                    .collect()
            })
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

            #[test]
            fn agrees_with_brute_force(history in arb_history()) {
                let expected = brute_force(&history);
                let verdict = check(&Kv, &history, None);
                prop_assert_eq!(
                    verdict,
                    if expected { Verdict::Linearizable } else { Verdict::NotLinearizable },
                    "{:?}", history
                );
            }
        }

        #[test]
        fn both_verdicts_are_common_in_the_generated_histories() {
            use proptest::strategy::ValueTree;
            use proptest::test_runner::TestRunner;
            let mut runner = TestRunner::deterministic();
            let (mut yes, mut no) = (0, 0);
            for _ in 0..500 {
                let history = arb_history().new_tree(&mut runner).unwrap().current();
                if brute_force(&history) {
                    yes += 1;
                } else {
                    no += 1;
                }
            }
            assert!(yes > 100 && no > 100, "{yes} linearizable, {no} not");
        }
    }
}
