//! Item dependencies: a directed acyclic graph over the items of one plan ("extraction before implant").
//! An edge `a -> b` reads "a depends on b" (b is a prerequisite of a).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::Hash;

/// The first cycle found, as a path whose first node is repeated last (`[a, b, a]`), or None.
/// `nodes` gives every node with its prerequisites, in a stable order, so the answer is deterministic.
pub fn find_cycle<I>(nodes: &[(I, Vec<I>)]) -> Option<Vec<I>>
where
    I: Clone + Eq + Hash,
{
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        OnPath,
        Done,
    }
    let index: HashMap<&I, usize> = nodes
        .iter()
        .enumerate()
        .map(|(i, (id, _))| (id, i))
        .collect();
    let mut marks = vec![Mark::New; nodes.len()];
    for start in 0..nodes.len() {
        if marks[start] != Mark::New {
            continue;
        }
        // Iterative DFS: (node, next edge to follow); the stack is the current path.
        let mut stack: Vec<(usize, usize)> = vec![(start, 0)];
        marks[start] = Mark::OnPath;
        while let Some(&mut (node, ref mut edge)) = stack.last_mut() {
            let prerequisites = &nodes[node].1;
            if *edge < prerequisites.len() {
                let next_id = &prerequisites[*edge];
                *edge += 1;
                // An edge to an unknown node is the caller's to refuse; it cannot close a cycle.
                let Some(&next) = index.get(next_id) else {
                    continue;
                };
                match marks[next] {
                    Mark::New => {
                        marks[next] = Mark::OnPath;
                        stack.push((next, 0));
                    }
                    Mark::OnPath => {
                        let from = stack.iter().position(|(n, _)| *n == next).unwrap_or(0);
                        let mut path: Vec<I> = stack[from..]
                            .iter()
                            .map(|(n, _)| nodes[*n].0.clone())
                            .collect();
                        path.push(nodes[next].0.clone());
                        return Some(path);
                    }
                    Mark::Done => {}
                }
            } else {
                marks[node] = Mark::Done;
                stack.pop();
            }
        }
    }
    None
}

/// A node of the display tree: an item and the items that depend on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TreeNode<I> {
    pub id: I,
    pub dependents: Vec<TreeNode<I>>,
}

/// The items as a forest: roots have no prerequisite; a node's children depend on it, in the order of
/// `nodes`. An item with several prerequisites appears under each. `nodes` must be acyclic.
pub fn tree<I>(nodes: &[(I, Vec<I>)]) -> Vec<TreeNode<I>>
where
    I: Clone + Eq + Hash + Ord,
{
    let known: BTreeSet<&I> = nodes.iter().map(|(id, _)| id).collect();
    let mut dependents: BTreeMap<&I, Vec<&I>> = BTreeMap::new();
    for (id, prerequisites) in nodes {
        for prerequisite in prerequisites {
            if known.contains(prerequisite) {
                dependents.entry(prerequisite).or_default().push(id);
            }
        }
    }
    fn build<'a, I: Clone + Ord>(
        id: &'a I,
        dependents: &BTreeMap<&'a I, Vec<&'a I>>,
        depth: usize,
    ) -> TreeNode<I> {
        // Depth is bounded by the item count in an acyclic graph; the guard keeps a corrupt graph finite.
        let children = if depth > 1000 {
            Vec::new()
        } else {
            dependents
                .get(id)
                .map(|ids| {
                    ids.iter()
                        .map(|d| build(*d, dependents, depth + 1))
                        .collect()
                })
                .unwrap_or_default()
        };
        TreeNode {
            id: id.clone(),
            dependents: children,
        }
    }
    nodes
        .iter()
        .filter(|(_, prerequisites)| !prerequisites.iter().any(|p| known.contains(p)))
        .map(|(id, _)| build(id, &dependents, 0))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn graph(edges: &[(u32, &[u32])]) -> Vec<(u32, Vec<u32>)> {
        edges.iter().map(|(n, deps)| (*n, deps.to_vec())).collect()
    }

    #[test]
    fn a_chain_has_no_cycle_and_is_one_branch() {
        let g = graph(&[(1, &[]), (2, &[1]), (3, &[2])]);
        assert_eq!(find_cycle(&g), None);
        let forest = tree(&g);
        assert_eq!(forest.len(), 1);
        assert_eq!(forest[0].id, 1);
        assert_eq!(forest[0].dependents[0].id, 2);
        assert_eq!(forest[0].dependents[0].dependents[0].id, 3);
    }

    #[test]
    fn cycles_are_named_as_a_path() {
        assert_eq!(find_cycle(&graph(&[(1, &[1])])), Some(vec![1, 1]));
        assert_eq!(
            find_cycle(&graph(&[(1, &[2]), (2, &[3]), (3, &[1])])),
            Some(vec![1, 2, 3, 1])
        );
        // The cycle need not include the first node.
        assert_eq!(
            find_cycle(&graph(&[(1, &[2]), (2, &[3]), (3, &[2])])),
            Some(vec![2, 3, 2])
        );
    }

    #[test]
    fn a_diamond_repeats_the_shared_dependent() {
        let g = graph(&[(1, &[]), (2, &[1]), (3, &[1]), (4, &[2, 3])]);
        assert_eq!(find_cycle(&g), None);
        let forest = tree(&g);
        assert_eq!(forest.len(), 1);
        let children: Vec<u32> = forest[0].dependents.iter().map(|n| n.id).collect();
        assert_eq!(children, vec![2, 3]);
        assert_eq!(forest[0].dependents[0].dependents[0].id, 4);
        assert_eq!(forest[0].dependents[1].dependents[0].id, 4);
    }

    /// Random graphs over up to 12 nodes, each edge present or not.
    fn random_graph() -> impl Strategy<Value = Vec<(u32, Vec<u32>)>> {
        (1usize..12).prop_flat_map(|n| {
            proptest::collection::vec(proptest::collection::vec(0..n as u32, 0..4), n).prop_map(
                |edges| {
                    edges
                        .into_iter()
                        .enumerate()
                        .map(|(i, mut deps)| {
                            deps.sort_unstable();
                            deps.dedup();
                            (i as u32, deps)
                        })
                        .collect()
                },
            )
        })
    }

    /// Random acyclic graphs: each node depends only on nodes listed before it.
    fn random_dag() -> impl Strategy<Value = Vec<(u32, Vec<u32>)>> {
        random_graph().prop_map(|g| {
            g.into_iter()
                .map(|(id, deps)| (id, deps.into_iter().filter(|d| *d < id).collect()))
                .collect()
        })
    }

    /// A topological order exists exactly when the graph is acyclic (Kahn's algorithm as the oracle).
    fn has_topological_order(g: &[(u32, Vec<u32>)]) -> bool {
        let mut remaining: Vec<(u32, Vec<u32>)> = g.to_vec();
        let mut done = BTreeSet::new();
        loop {
            let before = remaining.len();
            remaining.retain(|(id, deps)| {
                if deps.iter().all(|d| done.contains(d)) {
                    done.insert(*id);
                    false
                } else {
                    true
                }
            });
            if remaining.is_empty() {
                return true;
            }
            if remaining.len() == before {
                return false;
            }
        }
    }

    proptest! {
        #[test]
        fn no_cycle_is_ever_accepted(g in random_graph()) {
            match find_cycle(&g) {
                None => prop_assert!(has_topological_order(&g), "a cyclic graph was accepted: {g:?}"),
                Some(path) => {
                    prop_assert!(!has_topological_order(&g));
                    // The reported path is a real cycle: first = last, each step an edge.
                    prop_assert_eq!(path.first(), path.last());
                    for pair in path.windows(2) {
                        let deps = &g.iter().find(|(id, _)| *id == pair[0]).expect("node").1;
                        prop_assert!(deps.contains(&pair[1]), "{:?} is not an edge", pair);
                    }
                }
            }
        }

        #[test]
        fn every_acyclic_item_appears_in_the_tree_below_its_prerequisites(g in random_dag()) {
            prop_assert!(find_cycle(&g).is_none(), "a DAG has no cycle: {g:?}");
            let forest = tree(&g);
            let mut seen = BTreeSet::new();
            fn walk(node: &TreeNode<u32>, path: &mut Vec<u32>, g: &[(u32, Vec<u32>)], seen: &mut BTreeSet<u32>) {
                seen.insert(node.id);
                if let Some(parent) = path.last() {
                    let deps = &g.iter().find(|(id, _)| *id == node.id).expect("node").1;
                    assert!(deps.contains(parent));
                }
                path.push(node.id);
                for child in &node.dependents {
                    walk(child, path, g, seen);
                }
                path.pop();
            }
            for root in &forest {
                prop_assert!(g.iter().any(|(id, deps)| *id == root.id && deps.is_empty()));
                walk(root, &mut Vec::new(), &g, &mut seen);
            }
            prop_assert_eq!(seen.len(), g.len());
        }
    }
}
