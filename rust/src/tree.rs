//! Merkle trees over a set of files: a directory's Digest is the hash of the canonical
//! encoding of its sorted children, so the root Digest identifies names, contents,
//! executable bits, symlink targets and directory structure (docs/merkle-tree.md).

use std::collections::BTreeMap;

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
pub fn merkle_root(f: DigestFn, leaves: &[Leaf], dirs: &[String]) -> Digest {
    // dir path -> (child name -> (kind, digest)); "" is the root.
    let mut children: BTreeMap<String, BTreeMap<String, (NodeKind, Digest)>> = BTreeMap::new();
    children.insert(String::new(), BTreeMap::new());
    let ensure_dir = |children: &mut BTreeMap<String, BTreeMap<String, (NodeKind, Digest)>>, dir: &str| {
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
        children
            .get_mut(dir)
            .unwrap()
            .insert(basename(&leaf.rel).to_string(), (leaf.kind, leaf.digest));
    }
    // Deepest first, so every subdirectory's digest is known before its parent is encoded.
    let mut order: Vec<String> = children.keys().cloned().collect();
    order.sort_by_key(|d| std::cmp::Reverse(if d.is_empty() { 0 } else { d.matches('/').count() + 1 }));
    let mut root = None;
    for dir in order {
        let kids = children.remove(&dir).unwrap();
        let digest = hash_bytes(f, &encode_dir(&kids));
        if dir.is_empty() {
            root = Some(digest);
        } else {
            let p = parent(&dir).to_string();
            children
                .get_mut(&p)
                .expect("parent directory registered")
                .insert(basename(&dir).to_string(), (NodeKind::Dir, digest));
        }
    }
    root.expect("root directory present")
}

fn encode_dir(kids: &BTreeMap<String, (NodeKind, Digest)>) -> Vec<u8> {
    let mut out = Vec::with_capacity(MAGIC.len() + kids.len() * 64);
    out.extend_from_slice(MAGIC);
    // BTreeMap<String> iterates in byte order of the UTF-8 names: the canonical order.
    for (name, (kind, digest)) in kids {
        out.push(kind.tag());
        out.extend_from_slice(&(name.len() as u32).to_le_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&digest.hash);
        out.extend_from_slice(&digest.size.to_le_bytes());
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
