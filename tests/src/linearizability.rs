//! A linearizability checker for the KV history: Wing & Gong's search with Lowe's
//! memoisation of (linearized set, state) pairs, run per key (keys are independent, so a
//! history is linearizable iff each key's sub-history is — Herlihy & Wing's locality).

use std::collections::{BTreeMap, HashSet};

use crate::kv::{Key, Op, OpResult, Value, step};

/// One completed (or possibly applied but unanswered) operation.
#[derive(Clone, Debug)]
pub struct Call {
    /// Operation.
    pub op: Op,
    /// Virtual time the client invoked it.
    pub invoke: u64,
    /// Virtual time the client got the answer; `u64::MAX` if it never did.
    pub complete: u64,
    /// The answer; `None` if unknown (the op may or may not have taken effect).
    pub result: Option<OpResult>,
}

/// The verdict for one key.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A valid linearization exists.
    Linearizable,
    /// None exists.
    Violation {
        /// The key.
        key: Key,
    },
    /// The search gave up (too many states); not a violation.
    Unknown,
}

/// Checks a whole history. Returns the first failing key's verdict, or `Linearizable`.
pub fn check(history: &[Call], budget: usize) -> Verdict {
    let mut by_key: BTreeMap<Key, Vec<Call>> = BTreeMap::new();
    for c in history {
        // An unanswered read has no effect and no result: it constrains nothing.
        if c.result.is_none() && matches!(c.op, Op::Get { .. }) {
            continue;
        }
        by_key.entry(c.op.key()).or_default().push(c.clone());
    }
    let mut unknown = false;
    for (key, calls) in by_key {
        match check_key(&calls, budget) {
            Some(true) => {}
            Some(false) => return Verdict::Violation { key },
            None => unknown = true,
        }
    }
    if unknown {
        Verdict::Unknown
    } else {
        Verdict::Linearizable
    }
}

/// Depth-first search over linearizations of one key's calls. `Some(true)`: found one;
/// `Some(false)`: none exists; `None`: budget exhausted.
fn check_key(calls: &[Call], budget: usize) -> Option<bool> {
    let n = calls.len();
    if n > 128 {
        return None;
    }
    let mut seen: HashSet<(u128, Option<Value>)> = HashSet::new();
    // Stack of (linearized set, state, chosen index) for backtracking.
    let mut stack: Vec<(u128, Option<Value>)> = vec![(0, None)];
    let all: u128 = if n == 128 {
        u128::MAX
    } else {
        (1u128 << n) - 1
    };
    let mut explored = 0usize;
    while let Some((done, state)) = stack.pop() {
        if done == all {
            return Some(true);
        }
        explored += 1;
        if explored > budget {
            return None;
        }
        // A call may be linearized next only if no pending call completed before it was
        // invoked (real-time order).
        let min_complete = (0..n)
            .filter(|i| done & (1u128 << i) == 0)
            .map(|i| calls[i].complete)
            .min()
            .unwrap_or(u64::MAX);
        for (i, call) in calls.iter().enumerate() {
            if done & (1u128 << i) != 0 || call.invoke > min_complete {
                continue;
            }
            let (next, result) = step(state, &call.op);
            let ok = match call.result {
                Some(r) => r == result,
                None => true,
            };
            if !ok {
                continue;
            }
            let key = (done | (1u128 << i), next);
            if seen.insert(key) {
                stack.push(key);
            }
        }
        // An unanswered write may also never have happened: allow skipping it.
        for (i, call) in calls.iter().enumerate() {
            if done & (1u128 << i) == 0 && call.result.is_none() {
                let key = (done | (1u128 << i), state);
                if seen.insert(key) {
                    stack.push(key);
                }
            }
        }
    }
    Some(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(op: Op, invoke: u64, complete: u64, result: OpResult) -> Call {
        Call {
            op,
            invoke,
            complete,
            result: Some(result),
        }
    }

    #[test]
    fn sequential_history_is_linearizable() {
        let h = vec![
            call(Op::Put { key: 1, value: 10 }, 0, 1, OpResult::Put(None)),
            call(Op::Get { key: 1 }, 2, 3, OpResult::Get(Some(10))),
        ];
        assert_eq!(check(&h, 100_000), Verdict::Linearizable);
    }

    #[test]
    fn stale_read_after_completed_write_is_a_violation() {
        let h = vec![
            call(Op::Put { key: 1, value: 10 }, 0, 1, OpResult::Put(None)),
            call(Op::Get { key: 1 }, 2, 3, OpResult::Get(None)),
        ];
        assert_eq!(check(&h, 100_000), Verdict::Violation { key: 1 });
    }

    #[test]
    fn concurrent_read_may_see_old_or_new_value() {
        for seen in [None, Some(10)] {
            let h = vec![
                call(Op::Put { key: 1, value: 10 }, 0, 5, OpResult::Put(None)),
                call(Op::Get { key: 1 }, 1, 2, OpResult::Get(seen)),
            ];
            assert_eq!(check(&h, 100_000), Verdict::Linearizable, "{seen:?}");
        }
    }

    #[test]
    fn reads_must_not_go_back_in_time() {
        // Two sequential reads around a concurrent write: new then old is impossible.
        let h = vec![
            call(Op::Put { key: 1, value: 10 }, 0, 10, OpResult::Put(None)),
            call(Op::Get { key: 1 }, 1, 2, OpResult::Get(Some(10))),
            call(Op::Get { key: 1 }, 3, 4, OpResult::Get(None)),
        ];
        assert_eq!(check(&h, 100_000), Verdict::Violation { key: 1 });
    }

    #[test]
    fn a_write_applied_twice_is_caught_by_its_returned_previous_value() {
        // put 10, put 20, then a retried put 10 applied again would return prev=20 and leave
        // 10: a read of 10 after "put 20 returned prev 10" with no other write is impossible.
        let h = vec![
            call(Op::Put { key: 1, value: 10 }, 0, 1, OpResult::Put(None)),
            call(Op::Put { key: 1, value: 20 }, 2, 3, OpResult::Put(Some(10))),
            call(Op::Get { key: 1 }, 4, 5, OpResult::Get(Some(10))),
        ];
        assert_eq!(check(&h, 100_000), Verdict::Violation { key: 1 });
    }

    #[test]
    fn an_unanswered_write_may_or_may_not_have_happened() {
        for seen in [None, Some(10)] {
            let h = vec![
                Call {
                    op: Op::Put { key: 1, value: 10 },
                    invoke: 0,
                    complete: u64::MAX,
                    result: None,
                },
                call(Op::Get { key: 1 }, 5, 6, OpResult::Get(seen)),
            ];
            assert_eq!(check(&h, 100_000), Verdict::Linearizable, "{seen:?}");
        }
    }

    #[test]
    fn cas_results_must_agree_with_the_order() {
        let h = vec![
            call(Op::Put { key: 2, value: 1 }, 0, 1, OpResult::Put(None)),
            call(
                Op::Cas {
                    key: 2,
                    expect: Some(1),
                    value: 2,
                },
                2,
                3,
                OpResult::Cas(true, Some(1)),
            ),
            call(
                Op::Cas {
                    key: 2,
                    expect: Some(1),
                    value: 3,
                },
                4,
                5,
                OpResult::Cas(true, Some(1)),
            ),
        ];
        assert_eq!(check(&h, 100_000), Verdict::Violation { key: 2 });
    }
}
