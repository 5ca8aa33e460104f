//! Import circles: the strongly connected components of a crate's file graph that
//! hold more than one file (Tarjan's algorithm), each with one concrete loop to show.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;

/// Files that import each other, directly or round a longer loop: untangling them
/// means moving what the lower ones need down to where it belongs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Circle {
    /// Every file in the circle, sorted: `["auth", "config"]`.
    pub files: Vec<String>,
    /// The shortest loop through the first file, which it starts and ends with:
    /// `["auth", "config", "auth"]`.
    pub cycle: Vec<String>,
}

impl fmt::Display for Circle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} files, e.g. {}\n    {}", self.files.len(), self.cycle.join(" -> "), self.files.join(", "))
    }
}

/// The circles of the graph `imports` (file → the files it imports, each of them a
/// key too), sorted by their files.
pub(crate) fn find(imports: &BTreeMap<String, BTreeSet<String>>) -> Vec<Circle> {
    let names: Vec<&String> = imports.keys().collect();
    let number: BTreeMap<&String, usize> = names.iter().enumerate().map(|(n, name)| (*name, n)).collect();
    let edges: Vec<Vec<usize>> =
        imports.values().map(|targets| targets.iter().map(|target| number[target]).collect()).collect();

    let mut circles: Vec<Circle> = components(&edges)
        .into_iter()
        .filter(|component| component.len() > 1)
        .map(|mut component| {
            component.sort_unstable();
            let cycle = shortest_loop(&edges, &component);
            Circle {
                files: component.iter().map(|&n| names[n].clone()).collect(),
                cycle: cycle.iter().map(|&n| names[n].clone()).collect(),
            }
        })
        .collect();
    circles.sort_by(|a, b| a.files.cmp(&b.files));
    circles
}

/// The strongly connected components of the graph `edges` (node → its successors).
fn components(edges: &[Vec<usize>]) -> Vec<Vec<usize>> {
    let mut tarjan = Tarjan {
        edges,
        index: vec![None; edges.len()],
        low: vec![0; edges.len()],
        stack: Vec::new(),
        on_stack: vec![false; edges.len()],
        next_index: 0,
        components: Vec::new(),
    };
    for node in 0..edges.len() {
        if tarjan.index[node].is_none() {
            tarjan.visit(node);
        }
    }
    tarjan.components
}

/// The state of one run of Tarjan's algorithm.
struct Tarjan<'g> {
    edges: &'g [Vec<usize>],
    /// The order each node was first visited in.
    index: Vec<Option<usize>>,
    /// The lowest index reachable from each node through the nodes still on the stack.
    low: Vec<usize>,
    stack: Vec<usize>,
    on_stack: Vec<bool>,
    next_index: usize,
    components: Vec<Vec<usize>>,
}

impl Tarjan<'_> {
    fn visit(&mut self, node: usize) {
        self.index[node] = Some(self.next_index);
        self.low[node] = self.next_index;
        self.next_index += 1;
        self.stack.push(node);
        self.on_stack[node] = true;

        for &next in &self.edges[node] {
            match self.index[next] {
                None => {
                    self.visit(next);
                    self.low[node] = self.low[node].min(self.low[next]);
                }
                Some(index) if self.on_stack[next] => self.low[node] = self.low[node].min(index),
                Some(_) => {}
            }
        }

        if Some(self.low[node]) == self.index[node] {
            let mut component = Vec::new();
            while let Some(member) = self.stack.pop() {
                self.on_stack[member] = false;
                component.push(member);
                if member == node {
                    break;
                }
            }
            self.components.push(component);
        }
    }
}

/// The shortest loop through the first node of `component` (sorted, more than one
/// node, strongly connected), staying inside it: a breadth-first search from that
/// node back to it.
fn shortest_loop(edges: &[Vec<usize>], component: &[usize]) -> Vec<usize> {
    let start = component[0];
    let mut came_from: BTreeMap<usize, usize> = BTreeMap::new();
    let mut queue = VecDeque::from([start]);
    while let Some(node) = queue.pop_front() {
        for &next in &edges[node] {
            if next == start {
                // Back from `node` to the start, then turned round and closed.
                let mut cycle = Vec::new();
                let mut at = node;
                while at != start {
                    cycle.push(at);
                    at = came_from[&at];
                }
                cycle.push(start);
                cycle.reverse();
                cycle.push(start);
                return cycle;
            }
            if component.binary_search(&next).is_ok() && !came_from.contains_key(&next) {
                came_from.insert(next, node);
                queue.push_back(next);
            }
        }
    }
    unreachable!("every file of a strongly connected component lies on a loop through the first")
}
