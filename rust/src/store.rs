//! The Store: CAS + ActionCache + StatCache in one LMDB environment.
//!
//! Layout of a store directory:
//!   lmdb/        the environment (data.mdb, lock.mdb)
//!   blobs/ab/…   blobs larger than INLINE_MAX, written atomically (tmp + fsync + rename)
//!   tmp/         staging for those files
//!
//! Databases inside the environment:
//!   info   "digest_function" / "format" -> utf-8 value
//!   meta   hash -> size u64 | atime u64 | location u8   (one row per blob; the source of truth)
//!   blobs  hash -> bytes                                (inline blobs only)
//!   ac     ActionKey hash -> ActionResult bytes (opaque, encoded by the Python layer)
//!   stat   absolute path -> StatEntry
//!
//! LMDB gives multi-process safety and crash atomicity: a transaction killed mid-way never
//! becomes visible. External blob files are renamed into place before the transaction that
//! references them commits, so a committed row never points at a torn file; a file whose
//! row never committed is an orphan that gc/verify remove.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::Write;
use std::mem::MaybeUninit;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use heed::types::{Bytes, Str};
use heed::{Database, Env, EnvFlags, EnvOpenOptions, MdbError, RoTxn, RwTxn};
use rayon::prelude::*;

use crate::hash::{hash_bytes, hash_bytes_many, hash_path, Digest, DigestFn};
use crate::stat_cache::StatEntry;

/// Blobs up to this size live inside LMDB; larger ones are files beside it.
pub const INLINE_MAX: u64 = 1 << 20;
const DEFAULT_MAP_SIZE: usize = 1 << 30;
/// Orphaned files younger than this may belong to a writer that has not committed yet.
const ORPHAN_GRACE: Duration = Duration::from_secs(3600);
const TOUCH_FLUSH_AT: usize = 4096;
/// Blobs hashed together (small ones share SIMD lanes) per parallel task.
const HASH_BATCH: usize = 64;
const FORMAT: &str = "1";

const LOC_INLINE: u8 = 0;
const LOC_EXTERNAL: u8 = 1;

#[derive(Debug)]
pub enum StoreError {
    /// Bad path, wrong digest function, unreadable file: the user can fix it.
    Invalid(String),
    /// A blob failed verification and has been removed.
    Corrupt(String),
    /// LMDB or filesystem failure.
    Internal(String),
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Invalid(m) | StoreError::Corrupt(m) | StoreError::Internal(m) => f.write_str(m),
        }
    }
}

impl From<heed::Error> for StoreError {
    fn from(e: heed::Error) -> Self {
        StoreError::Internal(format!("store database error: {e}"))
    }
}

type Result<T> = std::result::Result<T, StoreError>;

fn io_err(path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Internal(format!("{}: {e}", path.display()))
}

#[derive(Clone, Copy, Debug)]
struct Meta {
    size: u64,
    atime: u64,
    loc: u8,
}

impl Meta {
    fn encode(&self) -> [u8; 17] {
        let mut b = [0u8; 17];
        b[..8].copy_from_slice(&self.size.to_le_bytes());
        b[8..16].copy_from_slice(&self.atime.to_le_bytes());
        b[16] = self.loc;
        b
    }
    fn decode(b: &[u8]) -> Option<Meta> {
        (b.len() == 17).then(|| Meta {
            size: u64::from_le_bytes(b[..8].try_into().unwrap()),
            atime: u64::from_le_bytes(b[8..16].try_into().unwrap()),
            loc: b[16],
        })
    }
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

pub struct Store {
    pub dir: PathBuf,
    pub digest_fn: DigestFn,
    env: Env,
    /// Every transaction holds it shared; growing the map holds it exclusively, because
    /// LMDB allows mdb_env_set_mapsize only with no live transaction in the process.
    gate: RwLock<()>,
    info: Database<Str, Str>,
    meta: Database<Bytes, Bytes>,
    blobs: Database<Bytes, Bytes>,
    ac: Database<Bytes, Bytes>,
    stat: Database<Bytes, Bytes>,
    /// Blobs read since the last flush; their atime is bumped in one batch (LRU for gc)
    /// instead of paying a write transaction on every read.
    touched: Mutex<HashSet<[u8; 32]>>,
    tmp_counter: AtomicU64,
}

/// LMDB must not be opened twice in one process (its locks are per process), so handles
/// on the same directory share one Store.
static OPEN: Mutex<Option<HashMap<PathBuf, Weak<Store>>>> = Mutex::new(None);

pub struct Stats {
    pub blobs: u64,
    pub blob_bytes: u64,
    pub inline_blobs: u64,
    pub external_blobs: u64,
    pub action_results: u64,
    pub stat_entries: u64,
    pub env_bytes: u64,
}

#[derive(Default)]
pub struct VerifyReport {
    pub checked: u64,
    pub corrupt: Vec<Digest>,
    pub missing: Vec<Digest>,
    pub orphans_removed: u64,
}

#[derive(Default)]
pub struct GcReport {
    pub evicted: u64,
    pub evicted_bytes: u64,
    pub remaining_bytes: u64,
    pub orphans_removed: u64,
}

/// Outcome of reading one blob.
pub enum Fetched {
    Found(Vec<u8>),
    Absent,
    Corrupt,
}

/// Outcome of reading one blob into a caller's buffer (`fetch_into`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Filled {
    Found,
    Absent,
    Corrupt,
}

/// Fills `buf` with the file's bytes and returns them; a file of another length is an error.
fn read_exact_file<'b>(path: &Path, buf: &'b mut [MaybeUninit<u8>]) -> std::io::Result<&'b [u8]> {
    use std::io::Read;
    let mut f = fs::File::open(path)?;
    if f.metadata()?.len() != buf.len() as u64 {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "size differs from the digest"));
    }
    buf.fill(MaybeUninit::new(0));
    // SAFETY: every byte was just initialised.
    let buf = unsafe { &mut *(buf as *mut [MaybeUninit<u8>] as *mut [u8]) };
    f.read_exact(buf)?;
    Ok(buf)
}

/// Copies `src` into `dst` (of the same length) and returns the now initialised bytes.
fn write_init<'b>(dst: &'b mut [MaybeUninit<u8>], src: &[u8]) -> &'b [u8] {
    assert_eq!(dst.len(), src.len());
    // SAFETY: lengths are equal, the regions cannot overlap (one is ours, one LMDB's), and
    // after the copy every byte of `dst` is initialised.
    unsafe {
        std::ptr::copy_nonoverlapping(src.as_ptr(), dst.as_mut_ptr() as *mut u8, src.len());
        &*(dst as *const [MaybeUninit<u8>] as *const [u8])
    }
}

/// An initialised buffer seen as possibly uninitialised (for `fetch_into`); sound because
/// only initialised bytes are ever written through it.
pub fn as_uninit(b: &mut [u8]) -> &mut [MaybeUninit<u8>] {
    // SAFETY: same layout; the caller's bytes stay initialised (fetch_into writes only
    // initialised values).
    unsafe { &mut *(b as *mut [u8] as *mut [MaybeUninit<u8>]) }
}

impl Store {
    pub fn open(path: &Path, want: Option<DigestFn>) -> Result<Arc<Store>> {
        if path.exists() && !path.is_dir() {
            return Err(StoreError::Invalid(format!(
                "store path {} exists and is not a directory",
                path.display()
            )));
        }
        fs::create_dir_all(path).map_err(|e| StoreError::Invalid(format!("cannot create store {}: {e}", path.display())))?;
        let dir = fs::canonicalize(path).map_err(|e| io_err(path, e))?;

        let mut reg = OPEN.lock().unwrap();
        let reg = reg.get_or_insert_with(HashMap::new);
        if let Some(existing) = reg.get(&dir).and_then(Weak::upgrade) {
            if let Some(w) = want {
                if w != existing.digest_fn {
                    return Err(mismatch(&dir, existing.digest_fn, w));
                }
            }
            return Ok(existing);
        }
        let store = Arc::new(Store::open_new(dir.clone(), want)?);
        reg.insert(dir, Arc::downgrade(&store));
        Ok(store)
    }

    fn open_new(dir: PathBuf, want: Option<DigestFn>) -> Result<Store> {
        for sub in ["lmdb", "blobs", "tmp"] {
            let p = dir.join(sub);
            fs::create_dir_all(&p).map_err(|e| io_err(&p, e))?;
        }
        let map_size = std::env::var("CIOPT_STORE_MAP_SIZE")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .map(|v| round_to_page(v.max(page_size())))
            .unwrap_or(DEFAULT_MAP_SIZE);
        // SAFETY: the environment is opened once per process (OPEN registry) and only
        // through LMDB's own locking; we never modify data.mdb behind LMDB's back.
        //
        // NO_META_SYNC: one fdatasync per commit (the data pages) instead of two; the meta
        // page reaches the disk with the next commit or the OS's own writeback. LMDB keeps
        // atomicity, consistency and isolation with it, and a killed process loses nothing;
        // an OS crash or power cut may undo the last committed transaction, which for a cache
        // whose every read is verified means a miss, never a wrong answer. (NO_SYNC and
        // MAP_ASYNC would risk the B-tree itself; WRITE_MAP measured slower reads.)
        let env = unsafe {
            EnvOpenOptions::new()
                .flags(EnvFlags::NO_META_SYNC)
                .map_size(map_size)
                .max_dbs(8)
                .max_readers(1022)
                .open(dir.join("lmdb"))
        }
            .map_err(|e| StoreError::Internal(format!("cannot open store {}: {e}", dir.display())))?;
        // Reader slots of processes killed with SIGKILL would otherwise pin old pages forever.
        let _ = env.clear_stale_readers();

        let mut wtxn = env.write_txn()?;
        let info: Database<Str, Str> = env.create_database(&mut wtxn, Some("info"))?;
        let meta = env.create_database(&mut wtxn, Some("meta"))?;
        let blobs = env.create_database(&mut wtxn, Some("blobs"))?;
        let ac = env.create_database(&mut wtxn, Some("ac"))?;
        let stat = env.create_database(&mut wtxn, Some("stat"))?;
        let recorded = info.get(&wtxn, "digest_function")?.map(str::to_string);
        let digest_fn = match (recorded, want) {
            (Some(r), w) => {
                let r = DigestFn::parse(&r).map_err(StoreError::Internal)?;
                if let Some(w) = w {
                    if w != r {
                        return Err(mismatch(&dir, r, w));
                    }
                }
                r
            }
            (None, w) => {
                let f = w.unwrap_or(DigestFn::Blake3);
                info.put(&mut wtxn, "digest_function", f.name())?;
                info.put(&mut wtxn, "format", FORMAT)?;
                f
            }
        };
        wtxn.commit()?;
        Ok(Store {
            dir,
            digest_fn,
            env,
            gate: RwLock::new(()),
            info,
            meta,
            blobs,
            ac,
            stat,
            touched: Mutex::new(HashSet::new()),
            tmp_counter: AtomicU64::new(0),
        })
    }

    // ---- transactions -------------------------------------------------------------

    fn read<T>(&self, mut f: impl FnMut(&RoTxn) -> heed::Result<T>) -> Result<T> {
        loop {
            let res = {
                let _g = self.gate.read().unwrap();
                self.env.read_txn().and_then(|t| f(&t))
            };
            match res {
                Err(heed::Error::Mdb(MdbError::MapResized)) => self.adopt_map_size()?,
                other => return other.map_err(Into::into),
            }
        }
    }

    fn write<T>(&self, mut f: impl FnMut(&mut RwTxn) -> heed::Result<T>) -> Result<T> {
        loop {
            let res = {
                let _g = self.gate.read().unwrap();
                self.env.write_txn().and_then(|mut t| {
                    let v = f(&mut t)?;
                    t.commit()?;
                    Ok(v)
                })
            };
            match res {
                Err(heed::Error::Mdb(MdbError::MapFull)) => self.grow_map()?,
                Err(heed::Error::Mdb(MdbError::MapResized)) => self.adopt_map_size()?,
                other => return other.map_err(Into::into),
            }
        }
    }

    /// The map is a reservation of address space; doubling it lets the file keep growing.
    fn grow_map(&self) -> Result<()> {
        let _g = self.gate.write().unwrap();
        let new = round_to_page(self.env.info().map_size.saturating_mul(2));
        // SAFETY: the exclusive gate guarantees no transaction of this process is live.
        unsafe { self.env.resize(new) }.map_err(Into::into)
    }

    /// Another process grew the map; size 0 makes LMDB adopt the size recorded in the file.
    fn adopt_map_size(&self) -> Result<()> {
        let _g = self.gate.write().unwrap();
        // SAFETY: as in grow_map.
        unsafe { self.env.resize(0) }.map_err(Into::into)
    }

    pub fn map_size(&self) -> usize {
        self.env.info().map_size
    }

    // ---- CAS ------------------------------------------------------------------------

    fn external_path(&self, hash: &[u8; 32]) -> PathBuf {
        let h = hex::encode(hash);
        self.dir.join("blobs").join(&h[..2]).join(&h)
    }

    fn write_external(&self, hash: &[u8; 32], write: impl FnOnce(&mut fs::File) -> std::io::Result<()>) -> Result<()> {
        let dest = self.external_path(hash);
        if dest.exists() {
            return Ok(());
        }
        let tmp = self.dir.join("tmp").join(format!(
            "{}.{}.{}",
            hex::encode(&hash[..8]),
            std::process::id(),
            self.tmp_counter.fetch_add(1, Ordering::Relaxed)
        ));
        let res = (|| {
            let mut f = fs::File::create(&tmp)?;
            write(&mut f)?;
            f.sync_all()?;
            fs::create_dir_all(dest.parent().unwrap())?;
            fs::rename(&tmp, &dest)
        })();
        if let Err(e) = res {
            let _ = fs::remove_file(&tmp);
            return Err(io_err(&dest, e));
        }
        Ok(())
    }

    /// Stores blobs whose digests are already known (computed by the caller, in parallel).
    fn insert(&self, items: &[(Digest, &[u8])]) -> Result<()> {
        for (d, data) in items {
            if d.size > INLINE_MAX {
                self.write_external(&d.hash, |f| f.write_all(data))?;
            }
        }
        let now = now_secs();
        // In key order, each B-tree page is found and filled once rather than revisited at
        // random (and the blobs' overflow pages follow the key order in the file).
        let mut order: Vec<usize> = (0..items.len()).collect();
        order.sort_unstable_by(|a, b| items[*a].0.hash.cmp(&items[*b].0.hash));
        self.write(|txn| {
            for (d, data) in order.iter().map(|&i| &items[i]) {
                let loc = if d.size > INLINE_MAX { LOC_EXTERNAL } else { LOC_INLINE };
                let present = self.meta.get(txn, &d.hash)?.is_some();
                if !present && loc == LOC_INLINE {
                    self.blobs.put(txn, &d.hash, data)?;
                }
                self.meta.put(txn, &d.hash, &Meta { size: d.size, atime: now, loc }.encode())?;
            }
            Ok(())
        })
    }

    pub fn put(&self, data: &[u8]) -> Result<Digest> {
        let d = hash_bytes(self.digest_fn, data);
        self.insert(&[(d, data)])?;
        Ok(d)
    }

    pub fn put_many(&self, blobs: &[&[u8]]) -> Result<Vec<Digest>> {
        let digests: Vec<Digest> =
            blobs.par_chunks(HASH_BATCH).flat_map_iter(|chunk| hash_bytes_many(self.digest_fn, chunk)).collect();
        let items: Vec<(Digest, &[u8])> = digests.iter().copied().zip(blobs.iter().copied()).collect();
        self.insert(&items)?;
        Ok(digests)
    }

    /// Many files in one transaction (one fsync); files over INLINE_MAX are streamed one by one.
    pub fn put_files(&self, paths: &[PathBuf]) -> Result<Vec<Digest>> {
        let read: Vec<Option<Vec<u8>>> = paths
            .par_iter()
            .map(|p| match fs::metadata(p) {
                Ok(m) if m.len() > INLINE_MAX => Ok(None),
                Ok(_) => fs::read(p).map(Some),
                Err(e) => Err(e),
            }
            .map_err(|e| StoreError::Invalid(format!("{}: {e}", p.display()))))
            .collect::<Result<_>>()?;
        let small: Vec<&[u8]> = read.iter().flatten().map(Vec::as_slice).collect();
        let mut small_digests = self.put_many(&small)?.into_iter();
        paths
            .iter()
            .zip(&read)
            .map(|(p, r)| match r {
                Some(_) => Ok(small_digests.next().expect("one digest per small file")),
                None => self.put_file(p),
            })
            .collect()
    }

    /// Streams a file into the store; large files never pass through memory whole.
    pub fn put_file(&self, path: &Path) -> Result<Digest> {
        let d = hash_path(self.digest_fn, path).map_err(|e| StoreError::Invalid(format!("{}: {e}", path.display())))?;
        if d.size > INLINE_MAX {
            self.write_external(&d.hash, |f| {
                let mut src = fs::File::open(path)?;
                std::io::copy(&mut src, f).map(|_| ())
            })?;
            // The file may have changed since we hashed it: the copy must still match.
            let stored = self.external_path(&d.hash);
            if hash_path(self.digest_fn, &stored).ok() != Some(d) {
                let _ = fs::remove_file(&stored);
                return Err(StoreError::Invalid(format!("{}: changed while being stored", path.display())));
            }
            let now = now_secs();
            self.write(|txn| self.meta.put(txn, &d.hash, &Meta { size: d.size, atime: now, loc: LOC_EXTERNAL }.encode()))?;
            Ok(d)
        } else {
            let data = fs::read(path).map_err(|e| StoreError::Invalid(format!("{}: {e}", path.display())))?;
            let d2 = hash_bytes(self.digest_fn, &data);
            if d2 != d {
                return Err(StoreError::Invalid(format!("{}: changed while being stored", path.display())));
            }
            self.insert(&[(d, &data)])?;
            Ok(d)
        }
    }

    /// Looks up the size of a blob known only by hash.
    pub fn size_of(&self, hash: &[u8; 32]) -> Result<Option<u64>> {
        self.read(|txn| Ok(self.meta.get(txn, hash)?.and_then(Meta::decode).map(|m| m.size)))
    }

    /// Reads and verifies blobs; corrupt ones are removed before returning.
    pub fn fetch_many(&self, digests: &[Digest]) -> Result<Vec<Fetched>> {
        let present = self.present(digests)?;
        let mut bufs: Vec<Vec<u8>> =
            digests.iter().zip(&present).map(|(d, p)| if *p { vec![0; d.size as usize] } else { Vec::new() }).collect();
        let filled = {
            let mut slices: Vec<&mut [MaybeUninit<u8>]> = bufs.iter_mut().map(|b| as_uninit(b)).collect();
            self.fetch_into(digests, &mut slices)?
        };
        Ok(filled
            .into_iter()
            .zip(bufs)
            .map(|(f, b)| match f {
                Filled::Found => Fetched::Found(b),
                Filled::Absent => Fetched::Absent,
                Filled::Corrupt => Fetched::Corrupt,
            })
            .collect())
    }

    /// Which blobs have a row of the digest's size: the ones worth a buffer for `fetch_into`.
    /// Records no access (the read that follows does).
    pub fn present(&self, digests: &[Digest]) -> Result<Vec<bool>> {
        self.read(|txn| {
            digests
                .iter()
                .map(|d| Ok(self.meta.get(txn, &d.hash)?.and_then(Meta::decode).is_some_and(|m| m.size == d.size)))
                .collect()
        })
    }

    /// Reads blobs into the caller's buffers, one copy each: inline blobs straight from the
    /// LMDB map while one read transaction pins its pages, in parallel, each verified from
    /// the buffer it was copied to. A buffer whose length is not the digest's size is left
    /// alone and reported Absent. Corrupt blobs are removed before returning. A buffer is
    /// initialised (and holds the blob) exactly when its blob is reported Found.
    pub fn fetch_into(&self, digests: &[Digest], bufs: &mut [&mut [MaybeUninit<u8>]]) -> Result<Vec<Filled>> {
        assert_eq!(digests.len(), bufs.len(), "one buffer per digest");
        enum Src<'t> {
            Inline(&'t [u8]),
            External,
            Absent,
        }
        let filled: Vec<Filled> = self.read(|txn| {
            let mut srcs = Vec::with_capacity(digests.len());
            for (d, buf) in digests.iter().zip(bufs.iter()) {
                let meta = self.meta.get(txn, &d.hash)?.and_then(Meta::decode);
                srcs.push(match meta {
                    Some(m) if m.size != d.size || buf.len() as u64 != d.size => Src::Absent,
                    Some(m) if m.loc == LOC_EXTERNAL => Src::External,
                    // A row without its bytes is corrupt (unless the blob is empty).
                    Some(_) => Src::Inline(self.blobs.get(txn, &d.hash)?.unwrap_or(&[])),
                    None => Src::Absent,
                });
            }
            Ok(srcs
                .par_chunks(HASH_BATCH)
                .zip(bufs.par_chunks_mut(HASH_BATCH))
                .zip(digests.par_chunks(HASH_BATCH))
                .flat_map_iter(|((srcs, bufs), digests)| {
                    // The bytes each buffer now holds, for the blobs that could be read.
                    let written: Vec<Option<&[u8]>> = srcs
                        .iter()
                        .zip(bufs.iter_mut())
                        .zip(digests)
                        .map(|((src, buf), d)| match src {
                            Src::Absent => None,
                            Src::Inline(b) if b.len() == buf.len() => Some(write_init(buf, b)),
                            Src::Inline(_) => None,
                            Src::External => read_exact_file(&self.external_path(&d.hash), buf).ok(),
                        })
                        .collect();
                    // Verified from the very bytes handed back, a batch at a time.
                    let views: Vec<&[u8]> = written.iter().flatten().copied().collect();
                    let mut hashed = hash_bytes_many(self.digest_fn, &views).into_iter();
                    srcs.iter()
                        .zip(&written)
                        .zip(digests)
                        .map(|((src, w), d)| match (src, w) {
                            (Src::Absent, _) => Filled::Absent,
                            (_, Some(_)) if hashed.next() == Some(*d) => Filled::Found,
                            _ => Filled::Corrupt,
                        })
                        .collect::<Vec<_>>()
                })
                .collect())
        })?;
        let corrupt: Vec<Digest> =
            filled.iter().zip(digests).filter(|(f, _)| **f == Filled::Corrupt).map(|(_, d)| *d).collect();
        if !corrupt.is_empty() {
            self.remove(&corrupt)?;
        }
        self.touch(filled.iter().zip(digests).filter(|(f, _)| **f == Filled::Found).map(|(_, d)| d.hash))?;
        Ok(filled)
    }

    pub fn contains_many(&self, digests: &[Digest]) -> Result<Vec<bool>> {
        let found = self.read(|txn| {
            digests
                .iter()
                .map(|d| Ok(self.meta.get(txn, &d.hash)?.and_then(Meta::decode).is_some_and(|m| m.size == d.size)))
                .collect::<heed::Result<Vec<bool>>>()
        })?;
        // REAPI semantics: asking about a blob extends its life.
        self.touch(found.iter().zip(digests).filter(|(f, _)| **f).map(|(_, d)| d.hash))?;
        Ok(found)
    }

    fn remove(&self, digests: &[Digest]) -> Result<()> {
        let mut files = Vec::new();
        self.write(|txn| {
            for d in digests {
                if let Some(m) = self.meta.get(txn, &d.hash)?.and_then(Meta::decode) {
                    if m.loc == LOC_EXTERNAL {
                        files.push(self.external_path(&d.hash));
                    }
                }
                self.meta.delete(txn, &d.hash)?;
                self.blobs.delete(txn, &d.hash)?;
            }
            Ok(())
        })?;
        for f in files {
            let _ = fs::remove_file(f);
        }
        Ok(())
    }

    fn touch(&self, hashes: impl Iterator<Item = [u8; 32]>) -> Result<()> {
        let pending = {
            let mut t = self.touched.lock().unwrap();
            t.extend(hashes);
            t.len()
        };
        if pending >= TOUCH_FLUSH_AT {
            self.flush_touches()?;
        }
        Ok(())
    }

    /// Writes the batched access times (LRU order for gc).
    pub fn flush_touches(&self) -> Result<()> {
        let mut hashes: Vec<[u8; 32]> = std::mem::take(&mut *self.touched.lock().unwrap()).into_iter().collect();
        hashes.sort_unstable();
        if hashes.is_empty() {
            return Ok(());
        }
        let now = now_secs();
        self.write(|txn| {
            for h in &hashes {
                if let Some(mut m) = self.meta.get(txn, h)?.and_then(Meta::decode) {
                    if m.atime < now {
                        m.atime = now;
                        self.meta.put(txn, h, &m.encode())?;
                    }
                }
            }
            Ok(())
        })
    }

    // ---- ActionCache ----------------------------------------------------------------

    pub fn action_get(&self, key: &[u8; 32]) -> Result<Option<Vec<u8>>> {
        self.read(|txn| Ok(self.ac.get(txn, key)?.map(<[u8]>::to_vec)))
    }

    pub fn action_get_many(&self, keys: &[[u8; 32]]) -> Result<Vec<Option<Vec<u8>>>> {
        self.read(|txn| keys.iter().map(|k| Ok(self.ac.get(txn, k)?.map(<[u8]>::to_vec))).collect())
    }

    /// Many entries in one transaction: one fsync instead of one per entry.
    pub fn action_put_many(&self, items: &[([u8; 32], &[u8])]) -> Result<()> {
        self.write(|txn| {
            for (k, v) in items {
                self.ac.put(txn, k, v)?;
            }
            Ok(())
        })
    }

    pub fn action_put(&self, key: &[u8; 32], value: &[u8]) -> Result<()> {
        self.write(|txn| self.ac.put(txn, key, value))
    }

    pub fn action_delete(&self, key: &[u8; 32]) -> Result<bool> {
        self.write(|txn| self.ac.delete(txn, key))
    }

    // ---- StatCache ------------------------------------------------------------------

    pub fn stat_lookup(&self, keys: &[&[u8]]) -> Result<Vec<Option<StatEntry>>> {
        self.read(|txn| {
            keys.iter()
                .map(|k| Ok(self.stat.get(txn, k)?.and_then(StatEntry::decode)))
                .collect::<heed::Result<Vec<_>>>()
        })
    }

    pub fn stat_record(&self, entries: &[(&[u8], StatEntry)]) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        self.write(|txn| {
            for (k, e) in entries {
                if k.len() <= 511 {
                    self.stat.put(txn, k, &e.encode())?;
                }
            }
            Ok(())
        })
    }

    // ---- maintenance ----------------------------------------------------------------

    fn all_meta(&self) -> Result<Vec<([u8; 32], Meta)>> {
        self.read(|txn| {
            let mut out = Vec::new();
            for row in self.meta.iter(txn)? {
                let (k, v) = row?;
                if let (Ok(h), Some(m)) = (<[u8; 32]>::try_from(k), Meta::decode(v)) {
                    out.push((h, m));
                }
            }
            Ok(out)
        })
    }

    pub fn stats(&self) -> Result<Stats> {
        self.flush_touches()?;
        let metas = self.all_meta()?;
        let (action_results, stat_entries) = self.read(|txn| Ok((self.ac.len(txn)?, self.stat.len(txn)?)))?;
        let external_blobs = metas.iter().filter(|(_, m)| m.loc == LOC_EXTERNAL).count() as u64;
        let external_bytes: u64 = metas.iter().filter(|(_, m)| m.loc == LOC_EXTERNAL).map(|(_, m)| m.size).sum();
        Ok(Stats {
            blobs: metas.len() as u64,
            blob_bytes: metas.iter().map(|(_, m)| m.size).sum(),
            inline_blobs: metas.len() as u64 - external_blobs,
            external_blobs,
            action_results,
            stat_entries,
            env_bytes: self.env.real_disk_size().unwrap_or(0) + external_bytes,
        })
    }

    /// Evicts least recently used blobs until the blob bytes fit under `cap`.
    pub fn gc(&self, cap: u64) -> Result<GcReport> {
        self.flush_touches()?;
        let mut metas = self.all_meta()?;
        let mut total: u64 = metas.iter().map(|(_, m)| m.size).sum();
        let mut report = GcReport::default();
        if total > cap {
            // Oldest access first; the hash breaks ties so runs are deterministic.
            metas.sort_by_key(|(h, m)| (m.atime, *h));
            let mut victims = Vec::new();
            for (h, m) in &metas {
                if total <= cap {
                    break;
                }
                total -= m.size;
                report.evicted_bytes += m.size;
                victims.push(Digest { hash: *h, size: m.size });
            }
            report.evicted = victims.len() as u64;
            for chunk in victims.chunks(10_000) {
                self.remove(chunk)?;
            }
        }
        report.remaining_bytes = total;
        report.orphans_removed = self.remove_orphans()?;
        Ok(report)
    }

    /// Re-hashes every blob; corrupt or missing ones are reported and removed.
    pub fn verify(&self) -> Result<VerifyReport> {
        let metas = self.all_meta()?;
        let mut report = VerifyReport { checked: metas.len() as u64, ..Default::default() };
        for chunk in metas.chunks(4096) {
            let digests: Vec<Digest> = chunk.iter().map(|(h, m)| Digest { hash: *h, size: m.size }).collect();
            let missing_files: HashSet<[u8; 32]> = chunk
                .iter()
                .filter(|(h, m)| m.loc == LOC_EXTERNAL && !self.external_path(h).exists())
                .map(|(h, _)| *h)
                .collect();
            for (f, d) in self.fetch_many(&digests)?.iter().zip(&digests) {
                match f {
                    Fetched::Corrupt if missing_files.contains(&d.hash) => report.missing.push(*d),
                    Fetched::Corrupt => report.corrupt.push(*d),
                    // Removed concurrently between listing and reading: not an integrity problem.
                    Fetched::Absent | Fetched::Found(_) => {}
                }
            }
        }
        // Inline rows without a meta row can only come from a bug or manual tampering.
        let stray: Vec<Vec<u8>> = self.read(|txn| {
            let mut out = Vec::new();
            for row in self.blobs.iter(txn)? {
                let (k, _) = row?;
                if self.meta.get(txn, k)?.is_none() {
                    out.push(k.to_vec());
                }
            }
            Ok(out)
        })?;
        if !stray.is_empty() {
            self.write(|txn| {
                for k in &stray {
                    self.blobs.delete(txn, k)?;
                }
                Ok(())
            })?;
        }
        report.orphans_removed = stray.len() as u64 + self.remove_orphans()?;
        Ok(report)
    }

    /// External files with no committed row, and stale staging files, past the grace period.
    fn remove_orphans(&self) -> Result<u64> {
        let known: HashSet<[u8; 32]> =
            self.all_meta()?.into_iter().filter(|(_, m)| m.loc == LOC_EXTERNAL).map(|(h, _)| h).collect();
        let old = |p: &Path| {
            fs::metadata(p)
                .and_then(|m| m.modified())
                .map(|t| t.elapsed().unwrap_or_default() > ORPHAN_GRACE)
                .unwrap_or(false)
        };
        let mut removed = 0;
        for shard in fs::read_dir(self.dir.join("blobs")).into_iter().flatten().flatten() {
            for f in fs::read_dir(shard.path()).into_iter().flatten().flatten() {
                let name = f.file_name();
                let hash = crate::hash::parse_hex(&name.to_string_lossy()).ok();
                if hash.is_none_or(|h| !known.contains(&h)) && old(&f.path()) && fs::remove_file(f.path()).is_ok() {
                    removed += 1;
                }
            }
        }
        for f in fs::read_dir(self.dir.join("tmp")).into_iter().flatten().flatten() {
            if old(&f.path()) && fs::remove_file(f.path()).is_ok() {
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Writes a verified blob to `dest` atomically (tmp + rename), optionally executable.
    pub fn materialize(&self, d: &Digest, dest: &Path, executable: bool) -> Result<bool> {
        let bytes = match self.fetch_many(std::slice::from_ref(d))?.pop() {
            Some(Fetched::Found(b)) => b,
            Some(Fetched::Corrupt) => return Err(StoreError::Corrupt(format!("blob {d} is corrupt and was removed"))),
            _ => return Ok(false),
        };
        let parent = dest.parent().unwrap_or(Path::new("."));
        fs::create_dir_all(parent).map_err(|e| io_err(parent, e))?;
        let tmp = parent.join(format!(
            ".{}.ciopt-tmp.{}.{}",
            dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
            std::process::id(),
            self.tmp_counter.fetch_add(1, Ordering::Relaxed)
        ));
        let res = (|| {
            fs::write(&tmp, &bytes)?;
            let mode = if executable { 0o755 } else { 0o644 };
            fs::set_permissions(&tmp, fs::Permissions::from_mode(mode))?;
            fs::rename(&tmp, dest)
        })();
        if let Err(e) = res {
            let _ = fs::remove_file(&tmp);
            return Err(io_err(dest, e));
        }
        Ok(true)
    }

    pub fn recorded_format(&self) -> Result<Option<String>> {
        self.read(|txn| Ok(self.info.get(txn, "format")?.map(str::to_string)))
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        let _ = self.flush_touches();
    }
}

fn mismatch(dir: &Path, recorded: DigestFn, wanted: DigestFn) -> StoreError {
    StoreError::Invalid(format!(
        "store {} uses digest function {}, not {} (use a different store directory, or omit --digest)",
        dir.display(),
        recorded.name(),
        wanted.name()
    ))
}

fn page_size() -> usize {
    4096
}

fn round_to_page(n: usize) -> usize {
    // heed requires a multiple of the OS page size; 64 KiB covers every page size in use.
    let unit = 64 * 1024;
    n.div_ceil(unit) * unit
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_get_round_trip_inline_and_external() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), None).unwrap();
        let small = b"hello".to_vec();
        let big: Vec<u8> = (0..(INLINE_MAX as usize + 10)).map(|i| (i % 253) as u8).collect();
        let ds = s.put_many(&[&small, &big]).unwrap();
        match &s.fetch_many(&ds).unwrap()[..] {
            [Fetched::Found(a), Fetched::Found(b)] => {
                assert_eq!(a, &small);
                assert_eq!(b, &big);
            }
            _ => panic!("blobs not found"),
        }
        let st = s.stats().unwrap();
        assert_eq!((st.blobs, st.inline_blobs, st.external_blobs), (2, 1, 1));
    }

    #[test]
    fn corrupt_external_blob_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), None).unwrap();
        let big = vec![7u8; INLINE_MAX as usize + 1];
        let d = s.put(&big).unwrap();
        let p = s.external_path(&d.hash);
        let mut bytes = fs::read(&p).unwrap();
        bytes[100] ^= 0xff;
        fs::write(&p, bytes).unwrap();
        assert!(matches!(s.fetch_many(&[d]).unwrap()[0], Fetched::Corrupt));
        assert!(matches!(s.fetch_many(&[d]).unwrap()[0], Fetched::Absent));
    }

    #[test]
    fn map_grows_when_full() {
        let dir = tempfile::tempdir().unwrap();
        std::env::set_var("CIOPT_STORE_MAP_SIZE", "262144");
        let s = Store::open(dir.path(), None).unwrap();
        std::env::remove_var("CIOPT_STORE_MAP_SIZE");
        let before = s.map_size();
        let blobs: Vec<Vec<u8>> = (0..200u32).map(|i| vec![i as u8; 20_000 + i as usize]).collect();
        let refs: Vec<&[u8]> = blobs.iter().map(|b| b.as_slice()).collect();
        let ds = s.put_many(&refs).unwrap();
        assert!(s.map_size() > before);
        assert!(s.contains_many(&ds).unwrap().iter().all(|b| *b));
    }

    #[test]
    fn gc_evicts_least_recently_used_first() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), None).unwrap();
        let a = s.put(&[1u8; 1000]).unwrap();
        let b = s.put(&[2u8; 1000]).unwrap();
        // Make `a` older than `b` without sleeping.
        s.write(|txn| s.meta.put(txn, &a.hash, &Meta { size: 1000, atime: 1, loc: LOC_INLINE }.encode())).unwrap();
        let r = s.gc(1500).unwrap();
        assert_eq!(r.evicted, 1);
        assert_eq!(s.contains_many(&[a, b]).unwrap(), vec![false, true]);
    }

    #[test]
    fn digest_function_mismatch_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        {
            let _s = Store::open(&dir.path().join("s"), Some(DigestFn::Sha256)).unwrap();
        }
        let err = Store::open(&dir.path().join("s"), Some(DigestFn::Blake3)).err().unwrap();
        assert!(err.to_string().contains("uses digest function sha256"), "{err}");
        assert_eq!(Store::open(&dir.path().join("s"), None).unwrap().digest_fn, DigestFn::Sha256);
    }
}
