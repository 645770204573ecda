//! Merkle trees over a set of files: a directory's Digest is the hash of the canonical
//! encoding of its sorted children, so the root Digest identifies names, contents,
//! executable bits, symlink targets and directory structure (docs/merkle-tree.md).

use std::collections::HashMap;

use crate::hash::{hash_bytes, Digest, DigestFn};

/// Versioned so a future encoding change can never collide with today's digests.
const MAGIC: &[u8] = b"ciopt-tree-v1\0";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeKind {
    File,
    Executable,
    Symlink,
    Dir,
}

impl NodeKind {
    fn tag(self) -> u8 {
        match self {
            NodeKind::File => b'f',
            NodeKind::Executable => b'x',
            NodeKind::Symlink => b'l',
            NodeKind::Dir => b'd',
        }
    }
}

/// One file or symlink of a tree, addressed by its root-relative path.
#[derive(Clone, Debug)]
pub struct Leaf {
    pub rel: String,
    pub digest: Digest,
    pub kind: NodeKind,
}

/// Computes the root Digest from the leaves and the (possibly empty) directories.
///
/// Children with the same name in one directory: a directory wins over a leaf, and among
/// leaves the last one given wins.
pub fn merkle_root(f: DigestFn, leaves: &[Leaf], dirs: &[String]) -> Digest {
    let mut t = Dirs::default();
    t.index.insert("", 0);
    t.nodes.push(Vec::new());
    for d in dirs {
        t.ensure(d);
    }
    // Leaves mostly come sorted, so consecutive ones share their directory.
    let mut last: Option<(&str, usize)> = None;
    for leaf in leaves {
        let dir = parent(&leaf.rel);
        let node = match last {
            Some((d, n)) if d == dir => n,
            _ => t.ensure(dir),
        };
        last = Some((dir, node));
        t.nodes[node].push((basename(&leaf.rel), Child::Leaf(leaf.kind, leaf.digest)));
    }
    let mut buf = Vec::new();
    t.digest(0, f, &mut buf)
}

#[derive(Clone, Copy)]
enum Child {
    Leaf(NodeKind, Digest),
    Dir(usize),
}

/// Directories by path (`""` is the root), each with its children in insertion order.
#[derive(Default)]
struct Dirs<'a> {
    index: HashMap<&'a str, usize>,
    nodes: Vec<Vec<(&'a str, Child)>>,
}

impl<'a> Dirs<'a> {
    /// The node of directory `path`, registering it and its ancestors as needed.
    fn ensure(&mut self, path: &'a str) -> usize {
        if let Some(&i) = self.index.get(path) {
            return i;
        }
        let up = self.ensure(parent(path));
        let i = self.nodes.len();
        self.nodes.push(Vec::new());
        self.nodes[up].push((basename(path), Child::Dir(i)));
        self.index.insert(path, i);
        i
    }

    /// Digest of directory `i`: its subdirectories first, then the encoding of its children.
    fn digest(&mut self, i: usize, f: DigestFn, buf: &mut Vec<u8>) -> Digest {
        let mut kids = std::mem::take(&mut self.nodes[i]);
        // Stable: among equal names, insertion order is kept for the tie-break below.
        kids.sort_by(|a, b| a.0.cmp(b.0));
        if kids.windows(2).any(|w| w[0].0 == w[1].0) {
            kids = dedup_names(kids);
        }
        let resolved: Vec<(&str, NodeKind, Digest)> = kids
            .into_iter()
            .map(|(name, c)| match c {
                Child::Leaf(kind, d) => (name, kind, d),
                Child::Dir(j) => (name, NodeKind::Dir, self.digest(j, f, buf)),
            })
            .collect();
        buf.clear();
        buf.extend_from_slice(MAGIC);
        // Sorted by the UTF-8 bytes of the names: the canonical order.
        for (name, kind, digest) in resolved {
            buf.push(kind.tag());
            buf.extend_from_slice(&(name.len() as u32).to_le_bytes());
            buf.extend_from_slice(name.as_bytes());
            buf.extend_from_slice(&digest.hash);
            buf.extend_from_slice(&digest.size.to_le_bytes());
        }
        hash_bytes(f, buf)
    }
}

/// One child per name (input sorted by name, stably): a directory wins, else the last leaf.
fn dedup_names(kids: Vec<(&str, Child)>) -> Vec<(&str, Child)> {
    let mut out: Vec<(&str, Child)> = Vec::with_capacity(kids.len());
    for (name, c) in kids {
        match out.last_mut() {
            Some((n, prev)) if *n == name => {
                if !matches!(prev, Child::Dir(_)) {
                    *prev = c;
                }
            }
            _ => out.push((name, c)),
        }
    }
    out
}

fn parent(rel: &str) -> &str {
    rel.rfind('/').map(|i| &rel[..i]).unwrap_or("")
}

fn basename(rel: &str) -> &str {
    rel.rfind('/').map(|i| &rel[i + 1..]).unwrap_or(rel)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// The original BTreeMap formulation, kept as the reference the fast one must match.
    fn reference_root(f: DigestFn, leaves: &[Leaf], dirs: &[String]) -> Digest {
        type Kids = BTreeMap<String, (NodeKind, Digest)>;
        let mut children: BTreeMap<String, Kids> = BTreeMap::new();
        children.insert(String::new(), BTreeMap::new());
        let ensure_dir = |children: &mut BTreeMap<String, Kids>, dir: &str| {
            let mut cur = dir;
            while !cur.is_empty() && !children.contains_key(cur) {
                children.insert(cur.to_string(), BTreeMap::new());
                cur = parent(cur);
            }
        };
        for d in dirs {
            ensure_dir(&mut children, d);
        }
        for leaf in leaves {
            let dir = parent(&leaf.rel);
            ensure_dir(&mut children, dir);
            children.get_mut(dir).unwrap().insert(basename(&leaf.rel).to_string(), (leaf.kind, leaf.digest));
        }
        let mut order: Vec<String> = children.keys().cloned().collect();
        order.sort_by_key(|d| std::cmp::Reverse(if d.is_empty() { 0 } else { d.matches('/').count() + 1 }));
        let mut root = None;
        for dir in order {
            let kids = children.remove(&dir).unwrap();
            let mut out = MAGIC.to_vec();
            for (name, (kind, digest)) in &kids {
                out.push(kind.tag());
                out.extend_from_slice(&(name.len() as u32).to_le_bytes());
                out.extend_from_slice(name.as_bytes());
                out.extend_from_slice(&digest.hash);
                out.extend_from_slice(&digest.size.to_le_bytes());
            }
            let digest = hash_bytes(f, &out);
            if dir.is_empty() {
                root = Some(digest);
            } else {
                children.get_mut(parent(&dir)).unwrap().insert(basename(&dir).to_string(), (NodeKind::Dir, digest));
            }
        }
        root.unwrap()
    }

    #[test]
    fn matches_reference_on_random_trees() {
        let names = ["a", "b", "a.txt", "a-b", "Z", "\u{e9}", "a b", "x.py", "__init__.py", "b0"];
        let kinds = [NodeKind::File, NodeKind::Executable, NodeKind::Symlink];
        let mut seed = 7u64;
        let mut next = |n: usize| {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            (seed >> 33) as usize % n
        };
        for round in 0..300 {
            let mut leaves = Vec::new();
            for _ in 0..next(40) {
                let depth = 1 + next(4);
                let rel: Vec<&str> = (0..depth).map(|_| names[next(names.len())]).collect();
                let content = format!("{round}-{}", next(1000));
                leaves.push(leaf(&rel.join("/"), content.as_bytes(), kinds[next(3)]));
            }
            // Mostly sorted input (as walks produce), sometimes not; duplicates and
            // file/directory name clashes included.
            if next(3) > 0 {
                leaves.sort_by(|a, b| a.rel.cmp(&b.rel));
            }
            let dirs: Vec<String> = (0..next(4)).map(|_| format!("{}/{}", names[next(names.len())], names[next(names.len())])).collect();
            for f in [DigestFn::Blake3, DigestFn::Sha256] {
                assert_eq!(merkle_root(f, &leaves, &dirs), reference_root(f, &leaves, &dirs), "round {round}");
            }
        }
        assert_eq!(merkle_root(DigestFn::Blake3, &[], &[]), reference_root(DigestFn::Blake3, &[], &[]));
    }

    fn leaf(rel: &str, content: &[u8], kind: NodeKind) -> Leaf {
        Leaf { rel: rel.to_string(), digest: hash_bytes(DigestFn::Blake3, content), kind }
    }

    #[test]
    fn root_changes_with_content_name_mode_and_structure() {
        let base = vec![leaf("a/b.txt", b"x", NodeKind::File), leaf("c.txt", b"y", NodeKind::File)];
        let r0 = merkle_root(DigestFn::Blake3, &base, &[]);
        let mut content = base.clone();
        content[0] = leaf("a/b.txt", b"z", NodeKind::File);
        let mut renamed = base.clone();
        renamed[0] = leaf("a/B.txt", b"x", NodeKind::File);
        let mut moved = base.clone();
        moved[0] = leaf("b.txt", b"x", NodeKind::File);
        let mut mode = base.clone();
        mode[0].kind = NodeKind::Executable;
        for other in [content, renamed, moved, mode] {
            assert_ne!(merkle_root(DigestFn::Blake3, &other, &[]), r0);
        }
        assert_ne!(merkle_root(DigestFn::Blake3, &base, &["empty".to_string()]), r0);
        // Order of the input list must not matter.
        let rev: Vec<Leaf> = base.iter().rev().cloned().collect();
        assert_eq!(merkle_root(DigestFn::Blake3, &rev, &[]), r0);
    }
}
