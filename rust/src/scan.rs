//! Turning paths into Digests: stat in parallel, trust the StatCache where the file
//! provably has not changed, hash the rest in parallel, record what was hashed.

use std::fs::{self, Metadata};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::hash::{hash_bytes, hash_path, Digest, DigestFn};
use crate::stat_cache::{now_ns, StatEntry};
use crate::store::{Store, StoreError};
use crate::tree::{merkle_root, Leaf, NodeKind};
use crate::walk::{walk, Kind, WalkOptions};

#[derive(Debug)]
pub enum ScanError {
    Io(PathBuf, std::io::Error),
    Walk(String),
    Store(StoreError),
}

impl From<StoreError> for ScanError {
    fn from(e: StoreError) -> Self {
        ScanError::Store(e)
    }
}

pub struct Scanned {
    pub root: Digest,
    pub leaves: Vec<Leaf>,
    /// Files actually read (StatCache misses) and their bytes: what the cache did not save.
    pub files_read: u64,
    pub bytes_read: u64,
}

/// Digests of regular files, through the StatCache when a store is given.
/// `follow` follows symlinks (hash_files semantics); tree scans pass lstat results.
/// One file's digest, its metadata, and whether it had to be read (a StatCache miss).
pub struct FileDigest {
    pub digest: Digest,
    pub meta: Metadata,
    pub was_read: bool,
}

pub fn digest_files(f: DigestFn, store: Option<&Store>, paths: &[PathBuf], follow: bool) -> Result<Vec<FileDigest>, ScanError> {
    let metas: Vec<Metadata> = paths
        .par_iter()
        .map(|p| {
            let m = if follow { fs::metadata(p) } else { fs::symlink_metadata(p) };
            match m {
                Ok(m) if m.is_dir() => Err(ScanError::Io(p.clone(), std::io::Error::from_raw_os_error(21 /* EISDIR */))),
                Ok(m) => Ok(m),
                Err(e) => Err(ScanError::Io(p.clone(), e)),
            }
        })
        .collect::<Result<_, _>>()?;

    let cached: Vec<Option<Digest>> = match store {
        Some(s) => {
            let keys: Vec<Vec<u8>> = paths.par_iter().map(|p| cache_key(p)).collect();
            let key_refs: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
            s.stat_lookup(&key_refs)?
                .into_iter()
                .zip(&metas)
                .map(|(e, m)| e.and_then(|e| e.fresh_digest(m)))
                .collect()
        }
        None => vec![None; paths.len()],
    };

    // Taken before any read: a write that lands while we hash makes mtime >= this, so the
    // entry counts as racily clean and is re-checked next time.
    let started = now_ns();
    let results: Vec<(Digest, bool)> = paths
        .par_iter()
        .zip(&cached)
        .map(|(p, c)| match c {
            Some(d) => Ok((*d, false)),
            None => hash_path(f, p).map(|d| (d, true)).map_err(|e| ScanError::Io(p.clone(), e)),
        })
        .collect::<Result<_, _>>()?;

    if let Some(s) = store {
        let fresh: Vec<(Vec<u8>, StatEntry)> = results
            .iter()
            .zip(paths.iter().zip(&metas))
            .filter(|((_, hashed), _)| *hashed)
            .map(|((d, _), (p, m))| (cache_key(p), StatEntry::new(m, d, started)))
            .collect();
        s.stat_record(&fresh)?;
    }
    Ok(results
        .into_iter()
        .zip(metas)
        .map(|((digest, was_read), meta)| FileDigest { digest, meta, was_read })
        .collect())
}

/// Walks `root` and computes its Merkle root.
pub fn scan_tree(f: DigestFn, store: Option<&Store>, root: &Path, opts: &WalkOptions) -> Result<Scanned, ScanError> {
    let entries = walk(root, opts).map_err(ScanError::Walk)?;
    let mut files: Vec<(String, PathBuf)> = Vec::new();
    let mut links: Vec<(String, PathBuf)> = Vec::new();
    let mut dirs: Vec<String> = Vec::new();
    for e in entries {
        match e.kind {
            Kind::File => files.push((e.rel, e.abs)),
            Kind::Symlink => links.push((e.rel, e.abs)),
            Kind::Dir => dirs.push(e.rel),
        }
    }
    let abs: Vec<PathBuf> = files.iter().map(|(_, a)| a.clone()).collect();
    let digests = digest_files(f, store, &abs, false)?;
    let read: Vec<&FileDigest> = digests.iter().filter(|d| d.was_read).collect();
    let (files_read, bytes_read) = (read.len() as u64, read.iter().map(|d| d.digest.size).sum());
    let mut leaves: Vec<Leaf> = files
        .into_iter()
        .zip(digests)
        .map(|((rel, _), fd)| {
            let kind = if fd.meta.permissions().mode() & 0o111 != 0 { NodeKind::Executable } else { NodeKind::File };
            Leaf { rel, digest: fd.digest, kind }
        })
        .collect();
    for (rel, abs) in links {
        // A symlink is identified by its target text, not by what it points at.
        let target = fs::read_link(&abs).map_err(|e| ScanError::Io(abs.clone(), e))?;
        leaves.push(Leaf { rel, digest: hash_bytes(f, target.as_os_str().as_bytes()), kind: NodeKind::Symlink });
    }
    leaves.sort_by(|a, b| a.rel.cmp(&b.rel));
    let root_digest = merkle_root(f, &leaves, &dirs);
    Ok(Scanned { root: root_digest, leaves, files_read, bytes_read })
}

fn cache_key(p: &Path) -> Vec<u8> {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf()).as_os_str().as_bytes().to_vec()
}
