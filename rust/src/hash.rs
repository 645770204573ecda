//! Content hashing: BLAKE3 (default) or SHA-256 (REAPI/Bazel interop).
//!
//! Small files are read into a per-thread buffer; large ones are memory-mapped so the
//! kernel pages them in without a copy, and very large ones are hashed with BLAKE3's
//! multi-threaded tree mode.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::fs::{File, Metadata, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use sha2::Digest as _;

use crate::b3many;

/// Files at or above this size are memory-mapped instead of read.
const MMAP_THRESHOLD: u64 = 256 * 1024;
/// Files at or above this size use BLAKE3's rayon-parallel tree hashing.
const PARALLEL_THRESHOLD: u64 = 16 * 1024 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DigestFn {
    Blake3,
    Sha256,
}

impl DigestFn {
    pub fn parse(name: &str) -> Result<Self, String> {
        match name.to_ascii_lowercase().as_str() {
            "blake3" => Ok(DigestFn::Blake3),
            "sha256" | "sha-256" => Ok(DigestFn::Sha256),
            other => Err(format!("unknown digest function '{other}' (expected blake3 or sha256)")),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            DigestFn::Blake3 => "blake3",
            DigestFn::Sha256 => "sha256",
        }
    }
}

/// (hash, size) of a byte string. Both supported functions produce 32 bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    pub hash: [u8; 32],
    pub size: u64,
}

impl Digest {
    pub fn hex(&self) -> String {
        hex::encode(self.hash)
    }

    /// Parses `<hex>/<size>`.
    pub fn parse(text: &str) -> Result<Digest, String> {
        let (h, s) = text
            .split_once('/')
            .ok_or_else(|| format!("invalid digest '{text}': expected <hex>/<size>"))?;
        let hash = parse_hex(h).map_err(|e| format!("invalid digest '{text}': {e}"))?;
        let size = s
            .parse::<u64>()
            .map_err(|_| format!("invalid digest '{text}': size '{s}' is not a number"))?;
        Ok(Digest { hash, size })
    }
}

pub fn parse_hex(h: &str) -> Result<[u8; 32], String> {
    let mut out = [0u8; 32];
    if h.len() != 64 {
        return Err(format!("hash must be 64 hex characters, got {}", h.len()));
    }
    hex::decode_to_slice(h, &mut out).map_err(|_| "hash is not hexadecimal".to_string())?;
    Ok(out)
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.hex(), self.size)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

pub fn hash_bytes(f: DigestFn, data: &[u8]) -> Digest {
    let hash: [u8; 32] = match f {
        DigestFn::Blake3 => {
            if data.len() as u64 >= PARALLEL_THRESHOLD {
                *blake3::Hasher::new().update_rayon(data).finalize().as_bytes()
            } else {
                *blake3::hash(data).as_bytes()
            }
        }
        DigestFn::Sha256 => sha2::Sha256::digest(data).into(),
    };
    Digest { hash, size: data.len() as u64 }
}

/// Digests of many byte strings. With BLAKE3, inputs under 16 KiB are hashed together so
/// that their chunks share SIMD lanes (`b3many`); longer ones fill the lanes on their own.
pub fn hash_bytes_many(f: DigestFn, inputs: &[&[u8]]) -> Vec<Digest> {
    if f != DigestFn::Blake3 {
        return inputs.iter().map(|d| hash_bytes(f, d)).collect();
    }
    let small: Vec<&[u8]> = inputs.iter().copied().filter(|d| d.len() < b3many::BATCH_BELOW).collect();
    let mut hashes = vec![[0u8; 32]; small.len()];
    b3many::hash_batch(&small, &mut hashes);
    let mut hashes = hashes.into_iter();
    inputs
        .iter()
        .map(|d| match d.len() < b3many::BATCH_BELOW {
            true => Digest { hash: hashes.next().expect("one hash per small input"), size: d.len() as u64 },
            false => hash_bytes(f, d),
        })
        .collect()
}

thread_local! {
    // Reused across files on the same rayon worker so small-file hashing never allocates
    // (and never zeroes: the buffers stay initialised at their high-water length).
    static READ_BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    static BATCH_BUF: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
}

/// Hashes the file at `path` (following symlinks, as b3sum and sha256sum do).
pub fn hash_path(f: DigestFn, path: &Path) -> io::Result<Digest> {
    open_and_hash(f, path, true).map(|(d, _)| d)
}

/// Opens `path`, refusing a directory. With `follow` false a symlink is refused (ELOOP)
/// instead of followed. Returns the fstat of the opened file, so no separate stat is needed.
fn open_file(path: &Path, follow: bool) -> io::Result<(File, Metadata)> {
    let mut opts = OpenOptions::new();
    opts.read(true);
    if !follow {
        opts.custom_flags(libc_o_nofollow());
    }
    let file = opts.open(path)?;
    let meta = file.metadata()?;
    if meta.is_dir() {
        return Err(io::Error::from_raw_os_error(21 /* EISDIR */));
    }
    Ok((file, meta))
}

/// Opens `path` and hashes it: open, fstat, read, close for a small file and nothing else.
pub fn open_and_hash(f: DigestFn, path: &Path, follow: bool) -> io::Result<(Digest, Metadata)> {
    let (file, meta) = open_file(path, follow)?;
    Ok((hash_open_file(f, file, meta.len())?, meta))
}

/// `open_and_hash` for a batch of paths on the calling thread: files small enough for
/// `hash_bytes_many` are read into one buffer and hashed together at the end, so their
/// chunks share SIMD lanes; the others are hashed as they come.
pub fn open_and_hash_many<P: AsRef<Path>>(f: DigestFn, paths: &[P], follow: bool) -> Vec<io::Result<(Digest, Metadata)>> {
    // Taken out of the thread-local rather than borrowed: hashing a huge file below may run
    // other rayon tasks on this thread, and they get a buffer of their own.
    let mut buf = BATCH_BUF.take();
    let mut end = 0;
    let mut out: Vec<io::Result<(Digest, Metadata)>> = Vec::with_capacity(paths.len());
    let mut pending: Vec<(usize, std::ops::Range<usize>)> = Vec::new();
    for p in paths {
        let res = open_file(p.as_ref(), follow).and_then(|(mut file, meta)| {
            let len = meta.len();
            if f == DigestFn::Blake3 && len < b3many::BATCH_BELOW as u64 {
                let start = end;
                end = read_whole(&mut file, &mut buf, start, len as usize)?;
                pending.push((out.len(), start..end));
                // Placeholder, replaced once the batch is hashed.
                Ok((Digest { hash: [0; 32], size: 0 }, meta))
            } else {
                Ok((hash_open_file(f, file, len)?, meta))
            }
        });
        out.push(res);
    }
    if !pending.is_empty() {
        let views: Vec<&[u8]> = pending.iter().map(|(_, r)| &buf[r.clone()]).collect();
        for ((i, _), d) in pending.iter().zip(hash_bytes_many(f, &views)) {
            if let Ok((digest, _)) = &mut out[*i] {
                *digest = d;
            }
        }
    }
    BATCH_BUF.set(buf);
    out
}

/// Hashes an open file whose size (from fstat) is `len`.
pub fn hash_open_file(f: DigestFn, mut file: File, len: u64) -> io::Result<Digest> {
    if len >= MMAP_THRESHOLD {
        // SAFETY: the map is read-only and dropped before returning; a concurrent writer can
        // at worst make us hash torn bytes, which the stat cache's racy-clean rule re-checks.
        let map = unsafe { memmap2::Mmap::map(&file)? };
        return Ok(hash_bytes(f, &map[..]));
    }
    READ_BUF.with(|buf| {
        let mut buf = buf.borrow_mut();
        let n = read_whole(&mut file, &mut buf, 0, len as usize)?;
        Ok(hash_bytes(f, &buf[..n]))
    })
}

/// Reads the whole file into `buf` from offset `start` and returns where its bytes end.
/// `buf` only ever grows and stays initialised, so reuse costs no zeroing.
///
/// The first read asks for one byte more than fstat's size: a regular file that returns
/// exactly `len` bytes for it is at EOF, so the common case costs one read(2). A file that
/// grew or came back short keeps being read until read(2) returns 0.
fn read_whole(file: &mut File, buf: &mut Vec<u8>, start: usize, len: usize) -> io::Result<usize> {
    let want = start + len + 1;
    if buf.len() < want {
        buf.resize(want, 0);
    }
    let mut filled = start;
    loop {
        let ask = if filled < want { want - filled } else { buf.len() - filled };
        match file.read(&mut buf[filled..filled + ask]) {
            Ok(0) => return Ok(filled),
            Ok(n) => {
                filled += n;
                if filled == start + len && n < ask {
                    return Ok(filled);
                }
                if filled == buf.len() {
                    let grow = buf.len().max(8192);
                    buf.resize(buf.len() + grow, 0);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

const fn libc_o_nofollow() -> i32 {
    // O_NOFOLLOW (std has no constant and the libc crate is not a direct dependency):
    // 0o100000 on arm, aarch64 and powerpc, 0o400000 on the generic ABI (x86, riscv, ...).
    if cfg!(any(target_arch = "aarch64", target_arch = "arm", target_arch = "powerpc", target_arch = "powerpc64")) {
        0o100000
    } else {
        0o400000
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blake3_empty_matches_reference() {
        let d = hash_bytes(DigestFn::Blake3, b"");
        assert_eq!(d.hex(), "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262");
        assert_eq!(d.size, 0);
    }

    #[test]
    fn sha256_abc_matches_reference() {
        let d = hash_bytes(DigestFn::Sha256, b"abc");
        assert_eq!(d.hex(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    #[test]
    fn digest_parse_round_trip() {
        let d = hash_bytes(DigestFn::Blake3, b"hello");
        assert_eq!(Digest::parse(&d.to_string()).unwrap(), d);
        assert!(Digest::parse("zz/1").is_err());
        assert!(Digest::parse(&format!("{}/x", d.hex())).is_err());
    }

    #[test]
    fn file_hash_equals_bytes_hash_across_thresholds() {
        let dir = tempfile::tempdir().unwrap();
        for size in [0usize, 1, 1024, MMAP_THRESHOLD as usize - 1, MMAP_THRESHOLD as usize, 3 << 20] {
            let data: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
            let p = dir.path().join(format!("f{size}"));
            std::fs::write(&p, &data).unwrap();
            for f in [DigestFn::Blake3, DigestFn::Sha256] {
                assert_eq!(hash_path(f, &p).unwrap(), hash_bytes(f, &data), "size {size}");
            }
        }
    }
}
