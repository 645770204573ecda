//! StatCache entries: (size, mtime, ctime, inode, device, mode) -> digest, so an unchanged
//! file is never read again.
//!
//! Git's "racily clean" rule applies: a file whose mtime or ctime lies within the
//! filesystem's timestamp granularity of the moment we hashed it may be modified again
//! without any stat field changing, so such an entry is not trusted and the file is
//! re-hashed next time.

use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::hash::Digest;

/// For filesystems with sub-second timestamps. Linux stamps files from a coarse clock that
/// lags the wall clock by up to one tick (1-10 ms); 100 ms leaves a wide margin.
pub const RACY_WINDOW_NS: i64 = 100_000_000;
/// For filesystems that keep whole seconds only (FAT keeps two): both nanosecond fields
/// are zero there, and an edit within the same second leaves every stat field unchanged.
pub const COARSE_RACY_WINDOW_NS: i64 = 2_000_000_000;

const ENCODED_LEN: usize = 8 * 7 + 4 + 32;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatEntry {
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    pub ino: u64,
    pub dev: u64,
    pub mode: u32,
    /// Wall-clock time at which the digest was computed.
    pub hashed_at_ns: i64,
    pub hash: [u8; 32],
}

pub fn now_ns() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0)
}

/// The stat fields a StatEntry compares: a compact copy of `std::fs::Metadata`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileMeta {
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    pub ino: u64,
    pub dev: u64,
    pub mode: u32,
}

impl From<&Metadata> for FileMeta {
    fn from(meta: &Metadata) -> FileMeta {
        FileMeta {
            size: meta.size(),
            mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
            ctime_ns: meta.ctime() * 1_000_000_000 + meta.ctime_nsec(),
            ino: meta.ino(),
            dev: meta.dev(),
            mode: meta.mode(),
        }
    }
}

/// Anything the stat fields can be read from.
pub trait StatFields {
    fn stat_fields(&self) -> FileMeta;
}

impl StatFields for Metadata {
    fn stat_fields(&self) -> FileMeta {
        FileMeta::from(self)
    }
}

impl StatFields for FileMeta {
    fn stat_fields(&self) -> FileMeta {
        *self
    }
}

impl StatEntry {
    pub fn new(meta: &impl StatFields, digest: &Digest, hashed_at_ns: i64) -> StatEntry {
        let m = meta.stat_fields();
        StatEntry {
            size: m.size,
            mtime_ns: m.mtime_ns,
            ctime_ns: m.ctime_ns,
            ino: m.ino,
            dev: m.dev,
            mode: m.mode,
            hashed_at_ns,
            hash: digest.hash,
        }
    }

    /// The cached digest, when the file provably has not changed since it was hashed.
    pub fn fresh_digest(&self, meta: &impl StatFields) -> Option<Digest> {
        let now = StatEntry::new(meta, &Digest { hash: self.hash, size: 0 }, self.hashed_at_ns);
        let same = now == *self;
        let coarse = self.mtime_ns % 1_000_000_000 == 0 && self.ctime_ns % 1_000_000_000 == 0;
        let window = if coarse { COARSE_RACY_WINDOW_NS } else { RACY_WINDOW_NS };
        let settled = self.mtime_ns + window < self.hashed_at_ns && self.ctime_ns + window < self.hashed_at_ns;
        (same && settled).then_some(Digest { hash: self.hash, size: self.size })
    }

    pub fn encode(&self) -> [u8; ENCODED_LEN] {
        let mut out = [0u8; ENCODED_LEN];
        let mut w = 0;
        for v in [self.size, self.mtime_ns as u64, self.ctime_ns as u64, self.ino, self.dev] {
            out[w..w + 8].copy_from_slice(&v.to_le_bytes());
            w += 8;
        }
        out[w..w + 4].copy_from_slice(&self.mode.to_le_bytes());
        w += 4;
        out[w..w + 8].copy_from_slice(&(self.hashed_at_ns as u64).to_le_bytes());
        w += 8;
        out[w..w + 32].copy_from_slice(&self.hash);
        out
    }

    /// None for anything that is not a well-formed entry (treated as a miss, never an error).
    pub fn decode(b: &[u8]) -> Option<StatEntry> {
        if b.len() != ENCODED_LEN {
            return None;
        }
        let u = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap());
        Some(StatEntry {
            size: u(0),
            mtime_ns: u(8) as i64,
            ctime_ns: u(16) as i64,
            ino: u(24),
            dev: u(32),
            mode: u32::from_le_bytes(b[40..44].try_into().unwrap()),
            hashed_at_ns: u(44) as i64,
            hash: b[52..84].try_into().unwrap(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::{hash_bytes, DigestFn};

    #[test]
    fn encode_round_trip_and_racy_rule() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"hello").unwrap();
        let meta = std::fs::metadata(&p).unwrap();
        let d = hash_bytes(DigestFn::Blake3, b"hello");
        let fresh = StatEntry::new(&meta, &d, now_ns());
        assert_eq!(StatEntry::decode(&fresh.encode()), Some(fresh.clone()));
        // Hashed just now: racily clean, must not be trusted.
        assert_eq!(fresh.fresh_digest(&meta), None);
        let settled = StatEntry { hashed_at_ns: now_ns() + 3 * COARSE_RACY_WINDOW_NS, ..fresh };
        assert_eq!(settled.fresh_digest(&meta), Some(d));
        let other_size = StatEntry { size: 6, ..settled };
        assert_eq!(other_size.fresh_digest(&meta), None);
        assert_eq!(StatEntry::decode(b"short"), None);
    }
}
