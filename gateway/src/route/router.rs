//! Longest-prefix routing of request paths to APIs.
//!
//! APIs are stored in a trie keyed by path segments, so finding the API for a
//! path costs one hash lookup per segment of the path, whatever the number of
//! APIs. A prefix only matches on a segment boundary (`/a/b` matches `/a/b`
//! and `/a/b/c`, never `/a/bc`).

use foldhash::HashMap;

/// A trie from path-segment prefixes to targets.
#[derive(Debug)]
pub struct PrefixRouter<T> {
    nodes: Vec<Node<T>>,
}

#[derive(Debug)]
struct Node<T> {
    children: HashMap<Box<str>, usize>,
    target: Option<T>,
}

impl<T> Default for PrefixRouter<T> {
    fn default() -> Self {
        PrefixRouter { nodes: vec![Node { children: HashMap::default(), target: None }] }
    }
}

/// A match: the target and the byte length of the matched prefix.
#[derive(Debug)]
pub struct PrefixMatch<'a, T> {
    pub target: &'a T,
    pub prefix_len: usize,
}

impl<T> PrefixRouter<T> {
    /// Inserts `target` at `prefix` (for example `/open-banking/aisp/v3.1`).
    /// Returns the target already there, if any, leaving it in place.
    pub fn insert(&mut self, prefix: &str, target: T) -> Result<(), T> {
        let mut node = 0;
        for seg in prefix.split('/').filter(|s| !s.is_empty()) {
            node = match self.nodes[node].children.get(seg) {
                Some(&n) => n,
                None => {
                    self.nodes.push(Node { children: HashMap::default(), target: None });
                    let n = self.nodes.len() - 1;
                    self.nodes[node].children.insert(seg.into(), n);
                    n
                }
            };
        }
        if self.nodes[node].target.is_some() {
            return Err(target);
        }
        self.nodes[node].target = Some(target);
        Ok(())
    }

    /// The target with the longest prefix of `path` (a path without query).
    pub fn lookup(&self, path: &str) -> Option<PrefixMatch<'_, T>> {
        let mut node = 0;
        let mut best = self.nodes[0].target.as_ref().map(|t| PrefixMatch { target: t, prefix_len: 0 });
        let bytes = path.as_bytes();
        let mut pos = 0;
        while pos < bytes.len() {
            if bytes[pos] != b'/' {
                return best;
            }
            let start = pos + 1;
            let end = path[start..].find('/').map_or(path.len(), |i| start + i);
            let seg = &path[start..end];
            if seg.is_empty() {
                return best;
            }
            match self.nodes[node].children.get(seg) {
                Some(&n) => node = n,
                None => return best,
            }
            if let Some(t) = self.nodes[node].target.as_ref() {
                best = Some(PrefixMatch { target: t, prefix_len: end });
            }
            pos = end;
        }
        best
    }

    /// Number of prefixes stored.
    pub fn len(&self) -> usize {
        self.nodes.iter().filter(|n| n.target.is_some()).count()
    }

    /// Whether no prefix is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_prefix_on_segment_boundaries() {
        let mut r = PrefixRouter::default();
        r.insert("/open-banking", "ob").unwrap();
        r.insert("/open-banking/aisp", "aisp").unwrap();
        r.insert("/open-banking/aisp/v3.1", "aisp-v3.1").unwrap();
        let m = r.lookup("/open-banking/aisp/v3.1/accounts/1").unwrap();
        assert_eq!((*m.target, m.prefix_len), ("aisp-v3.1", "/open-banking/aisp/v3.1".len()));
        assert_eq!(*r.lookup("/open-banking/aisp/v2/accounts").unwrap().target, "aisp");
        assert_eq!(*r.lookup("/open-banking/aispx").unwrap().target, "ob");
        assert_eq!(*r.lookup("/open-banking/aisp/").unwrap().target, "aisp");
        assert!(r.lookup("/other").is_none());
        assert!(r.lookup("").is_none());
        assert!(r.insert("/open-banking/aisp", "dup").is_err());
        assert_eq!(r.len(), 3);
    }

    use proptest::prelude::*;

    /// The longest inserted prefix that `path` starts with on a segment
    /// boundary, found the slow way.
    fn naive<'a>(prefixes: &'a [String], path: &str) -> Option<&'a String> {
        prefixes
            .iter()
            .filter(|p| path.starts_with(p.as_str()) && matches!(path.as_bytes().get(p.len()), None | Some(b'/')))
            .max_by_key(|p| p.len())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn lookup_agrees_with_a_naive_longest_prefix_search(
            prefixes in prop::collection::btree_set(prop::collection::vec("[ab]{1,2}", 1..4), 1..8),
            path in prop::collection::vec("[ab]{0,2}", 0..6),
        ) {
            let prefixes: Vec<String> = prefixes.into_iter().map(|segs| format!("/{}", segs.join("/"))).collect();
            let mut r = PrefixRouter::default();
            for p in &prefixes {
                r.insert(p, p.clone()).unwrap();
            }
            let path = format!("/{}", path.join("/"));
            let want = naive(&prefixes, &path);
            match (r.lookup(&path), want) {
                (Some(m), Some(w)) => {
                    prop_assert_eq!(m.target, w);
                    prop_assert_eq!(m.prefix_len, w.len());
                }
                (None, None) => {}
                (got, want) => prop_assert!(false, "{path}: got {:?}, want {want:?}", got.map(|m| m.target)),
            }
        }

        #[test]
        fn lookup_never_panics(path in any::<String>()) {
            let mut r = PrefixRouter::default();
            r.insert("/a/b", 1).unwrap();
            let _ = r.lookup(&path);
        }
    }

    #[test]
    fn lookup_is_per_segment_for_many_routes() {
        let mut r = PrefixRouter::default();
        for i in 0..10_000 {
            r.insert(&format!("/api{i}/v1"), i).unwrap();
        }
        assert_eq!(*r.lookup("/api9999/v1/x").unwrap().target, 9999);
        assert!(r.lookup("/api10000/v1").is_none());
    }
}
