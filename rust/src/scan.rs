//! Turning paths into Digests: stat in parallel, trust the StatCache where the file
//! provably has not changed, hash the rest in parallel, record what was hashed.

use std::fs::{self, Metadata};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::hash::{hash_bytes, open_and_hash_many, Digest, DigestFn};
use crate::stat_cache::{now_ns, FileMeta, StatEntry};
use crate::store::{Store, StoreError};
use crate::tree::{merkle_root, Leaf, NodeKind};
use crate::walk::{walk, Kind, WalkOptions};

/// Files opened and hashed per parallel task.
const READ_BATCH: usize = 32;
/// Files stat'ed and looked up in the StatCache per parallel task (one read transaction).
const LOOKUP_BATCH: usize = 256;

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

/// One file's digest, its metadata, and whether it had to be read (a StatCache miss).
pub struct FileDigest {
    pub digest: Digest,
    pub meta: FileMeta,
    pub was_read: bool,
}

/// Digests of regular files, through the StatCache when a store is given.
/// `follow` follows symlinks (hash_files semantics); tree scans pass false, and a path that
/// has turned into a symlink since the walk is then an error instead of being followed.
pub fn digest_files(f: DigestFn, store: Option<&Store>, paths: &[PathBuf], follow: bool) -> Result<Vec<FileDigest>, ScanError> {
    let Some(s) = store else {
        // No cache to consult: open, fstat, read, close, and nothing else per file.
        return Ok(read_and_hash(f, paths.iter(), follow)?
            .into_iter()
            .map(|(digest, meta)| FileDigest { digest, meta: FileMeta::from(&meta), was_read: true })
            .collect());
    };

    // Stat and StatCache lookup in parallel chunks, each chunk in a read transaction of its
    // own (LMDB allows one per thread; nothing inside a chunk waits on other rayon work).
    let keys = CacheKeys::new(paths);
    let looked: Vec<Vec<(FileMeta, Option<Digest>)>> = paths
        .par_chunks(LOOKUP_BATCH)
        .enumerate()
        .map(|(c, chunk)| {
            let metas: Vec<FileMeta> = chunk
                .iter()
                .map(|p| {
                    let m = if follow { fs::metadata(p) } else { fs::symlink_metadata(p) };
                    match m {
                        Ok(m) if m.is_dir() => Err(ScanError::Io(p.clone(), std::io::Error::from_raw_os_error(21 /* EISDIR */))),
                        Ok(m) => Ok(FileMeta::from(&m)),
                        Err(e) => Err(ScanError::Io(p.clone(), e)),
                    }
                })
                .collect::<Result<_, _>>()?;
            let base = c * LOOKUP_BATCH;
            let key_refs: Vec<&[u8]> = (base..base + chunk.len()).map(|i| keys.get(i)).collect();
            let entries = s.stat_lookup(&key_refs)?;
            Ok(metas.into_iter().zip(entries).map(|(m, e)| (m, e.and_then(|e| e.fresh_digest(&m)))).collect())
        })
        .collect::<Result<_, ScanError>>()?;
    let (metas, cached): (Vec<FileMeta>, Vec<Option<Digest>>) = looked.into_iter().flatten().unzip();

    // Taken before any read: a write that lands while we hash makes mtime >= this, so the
    // entry counts as racily clean and is re-checked next time.
    let started = now_ns();
    let misses: Vec<&PathBuf> = paths.iter().zip(&cached).filter(|(_, c)| c.is_none()).map(|(p, _)| p).collect();
    // The metadata recorded for a re-hashed file is the fstat of the file actually read.
    let mut hashed = read_and_hash(f, misses.into_iter(), follow)?.into_iter();
    let results: Vec<FileDigest> = cached
        .into_iter()
        .zip(metas)
        .map(|(c, meta)| match c {
            Some(digest) => FileDigest { digest, meta, was_read: false },
            None => {
                let (digest, meta) = hashed.next().expect("one result per miss");
                FileDigest { digest, meta: FileMeta::from(&meta), was_read: true }
            }
        })
        .collect();

    let fresh: Vec<(&[u8], StatEntry)> = results
        .iter()
        .enumerate()
        .filter(|(_, r)| r.was_read)
        .map(|(i, r)| (keys.get(i), StatEntry::new(&r.meta, &r.digest, started)))
        .collect();
    s.stat_record(&fresh)?;
    Ok(results)
}

/// Opens and hashes files in parallel, a batch per task (small files of a batch are hashed
/// together, see `open_and_hash_many`); the first failure names its path.
fn read_and_hash<'p>(
    f: DigestFn,
    paths: impl ExactSizeIterator<Item = &'p PathBuf>,
    follow: bool,
) -> Result<Vec<(Digest, Metadata)>, ScanError> {
    let paths: Vec<&PathBuf> = paths.collect();
    let batches: Vec<Vec<(Digest, Metadata)>> = paths
        .par_chunks(READ_BATCH)
        .map(|batch| {
            open_and_hash_many(f, batch, follow)
                .into_iter()
                .zip(batch)
                .map(|(r, p)| r.map_err(|e| ScanError::Io((*p).clone(), e)))
                .collect::<Result<Vec<_>, _>>()
        })
        .collect::<Result<_, _>>()?;
    Ok(batches.into_iter().flatten().collect())
}

/// StatCache keys: absolute paths, as `std::path::absolute` spells them. Paths that are
/// already absolute and normal (every path a tree walk yields) are borrowed as they are;
/// the rest are made absolute against one getcwd for the whole batch.
struct CacheKeys<'a> {
    paths: &'a [PathBuf],
    /// Owned keys for the paths that needed rewriting, by index.
    owned: Vec<Option<Vec<u8>>>,
}

impl<'a> CacheKeys<'a> {
    fn new(paths: &'a [PathBuf]) -> Self {
        let mut cwd: Option<Option<PathBuf>> = None;
        let mut owned: Vec<Option<Vec<u8>>> = Vec::new();
        for (i, p) in paths.iter().enumerate() {
            if is_normal_absolute(p.as_os_str().as_bytes()) {
                continue;
            }
            let base = cwd.get_or_insert_with(|| std::env::current_dir().ok());
            let joined = match base {
                Some(b) if p.is_relative() => b.join(p),
                _ => p.clone(),
            };
            let key = std::path::absolute(&joined).unwrap_or(joined);
            if owned.is_empty() {
                owned.resize(paths.len(), None);
            }
            owned[i] = Some(key.into_os_string().into_vec());
        }
        CacheKeys { paths, owned }
    }

    fn get(&self, i: usize) -> &[u8] {
        match self.owned.get(i) {
            Some(Some(k)) => k,
            _ => self.paths[i].as_os_str().as_bytes(),
        }
    }
}

/// True when `std::path::absolute` would return the path unchanged: it starts with '/', has
/// no empty (`//`) or `.` components, and no trailing slash.
fn is_normal_absolute(b: &[u8]) -> bool {
    if b.first() != Some(&b'/') {
        return false;
    }
    if b.len() == 1 {
        return true;
    }
    b[1..].split(|c| *c == b'/').all(|comp| !comp.is_empty() && comp != b".")
}

/// Walks `root` and computes its Merkle root.
pub fn scan_tree(f: DigestFn, store: Option<&Store>, root: &Path, opts: &WalkOptions) -> Result<Scanned, ScanError> {
    // StatCache keys are absolute paths: an absolute root makes every walked path one
    // already, so no key needs building (nor a getcwd) per file.
    let abs_root;
    let root = if store.is_some() && !is_normal_absolute(root.as_os_str().as_bytes()) {
        abs_root = std::path::absolute(root).map_err(|e| ScanError::Io(root.to_path_buf(), e))?;
        abs_root.as_path()
    } else {
        root
    };
    let entries = walk(root, opts).map_err(ScanError::Walk)?;
    let mut files: Vec<String> = Vec::with_capacity(entries.len());
    let mut abs: Vec<PathBuf> = Vec::with_capacity(entries.len());
    let mut links: Vec<(String, PathBuf)> = Vec::new();
    let mut dirs: Vec<String> = Vec::new();
    for e in entries {
        match e.kind {
            Kind::File => {
                files.push(e.rel);
                abs.push(e.abs);
            }
            Kind::Symlink => links.push((e.rel, e.abs)),
            Kind::Dir => dirs.push(e.rel),
        }
    }
    let digests = digest_files(f, store, &abs, false)?;
    let read: Vec<&FileDigest> = digests.iter().filter(|d| d.was_read).collect();
    let (files_read, bytes_read) = (read.len() as u64, read.iter().map(|d| d.digest.size).sum());
    let mut leaves: Vec<Leaf> = files
        .into_iter()
        .zip(digests)
        .map(|(rel, fd)| {
            let kind = if fd.meta.mode & 0o111 != 0 { NodeKind::Executable } else { NodeKind::File };
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
