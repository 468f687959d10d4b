//! Which task gets a new connection: a pure choice over the candidates, the
//! connections this node has open to each, and what it must avoid.

use std::collections::BTreeSet;

use shoal_raft::{BalancePolicy, NodeId};

/// One task that could take the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub node_id: NodeId,
    /// Connections this node has open to the task now.
    pub active: u32,
}

/// What the choice must respect besides the policy.
#[derive(Debug, Clone, Default)]
pub struct Avoid {
    /// Candidates already tried for this connection (by index).
    pub tried: BTreeSet<usize>,
    /// Nodes that failed a connection recently: used only when nothing else is left.
    pub suspect: BTreeSet<NodeId>,
    /// Most connections per task; a task at the cap is skipped.
    pub max_per_backend: u32,
}

/// The index of the candidate to use, or `None` when none may take it.
/// `me` is this node; `turn` rotates the choice among equals (and is the
/// whole choice for round-robin).
pub fn choose(
    policy: BalancePolicy,
    me: NodeId,
    candidates: &[Candidate],
    avoid: &Avoid,
    turn: u64,
) -> Option<usize> {
    let open: Vec<usize> = (0..candidates.len())
        .filter(|i| !avoid.tried.contains(i) && candidates[*i].active < avoid.max_per_backend)
        .collect();
    let trusted: Vec<usize> = open
        .iter()
        .copied()
        .filter(|i| !avoid.suspect.contains(&candidates[*i].node_id))
        .collect();
    let mut pool = if trusted.is_empty() { open } else { trusted };
    if policy == BalancePolicy::LocalFirst && pool.iter().any(|i| candidates[*i].node_id == me) {
        pool.retain(|i| candidates[*i].node_id == me);
    }
    if pool.is_empty() {
        return None;
    }
    if policy != BalancePolicy::RoundRobin {
        let fewest = pool.iter().map(|i| candidates[*i].active).min()?;
        pool.retain(|i| candidates[*i].active == fewest);
    }
    Some(pool[(turn % pool.len() as u64) as usize])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidates(list: &[(NodeId, u32)]) -> Vec<Candidate> {
        list.iter()
            .map(|&(node_id, active)| Candidate { node_id, active })
            .collect()
    }

    fn avoid() -> Avoid {
        Avoid {
            max_per_backend: 100,
            ..Avoid::default()
        }
    }

    /// The choices for turns 0.. as indexes.
    fn check(
        policy: BalancePolicy,
        list: &[(NodeId, u32)],
        avoid: &Avoid,
        expected: &[Option<usize>],
    ) {
        let c = candidates(list);
        let got: Vec<Option<usize>> = (0..expected.len() as u64)
            .map(|turn| choose(policy, 1, &c, avoid, turn))
            .collect();
        assert_eq!(got, expected, "{policy:?} {list:?}");
    }

    #[test]
    fn least_connections_rotates_among_the_least_busy() {
        use BalancePolicy::*;
        check(
            LeastConnections,
            &[(1, 3), (2, 1), (3, 1)],
            &avoid(),
            &[Some(1), Some(2), Some(1)],
        );
        check(LeastConnections, &[(1, 0)], &avoid(), &[Some(0), Some(0)]);
        check(LeastConnections, &[], &avoid(), &[None]);
    }

    #[test]
    fn round_robin_ignores_load() {
        check(
            BalancePolicy::RoundRobin,
            &[(1, 9), (2, 0), (3, 5)],
            &avoid(),
            &[Some(0), Some(1), Some(2), Some(0)],
        );
    }

    #[test]
    fn local_first_prefers_this_node_only_when_it_has_a_task() {
        use BalancePolicy::*;
        check(
            LocalFirst,
            &[(2, 0), (1, 5), (1, 4)],
            &avoid(),
            &[Some(2), Some(2)],
        );
        check(LocalFirst, &[(2, 3), (3, 0)], &avoid(), &[Some(1)]);
        // Least connections does not prefer local tasks.
        check(LeastConnections, &[(2, 0), (1, 5)], &avoid(), &[Some(0)]);
    }

    #[test]
    fn tried_capped_and_suspect_candidates_are_avoided() {
        use BalancePolicy::*;
        let mut a = avoid();
        a.tried.insert(0);
        check(LeastConnections, &[(1, 0), (2, 5)], &a, &[Some(1)]);
        a.tried.insert(1);
        check(LeastConnections, &[(1, 0), (2, 5)], &a, &[None]);

        let mut a = avoid();
        a.max_per_backend = 5;
        check(LeastConnections, &[(1, 5), (2, 4)], &a, &[Some(1)]);
        check(RoundRobin, &[(1, 5), (2, 5)], &a, &[None]);

        // A suspect node is used only when nothing else is left.
        let mut a = avoid();
        a.suspect.insert(2);
        check(LeastConnections, &[(2, 0), (3, 7)], &a, &[Some(1)]);
        check(LeastConnections, &[(2, 0)], &a, &[Some(0)]);
        check(LocalFirst, &[(2, 0), (1, 7)], &a, &[Some(1)]);
    }
}
