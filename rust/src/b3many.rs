//! BLAKE3 of many small inputs at once, with SIMD lanes running across inputs.
//!
//! BLAKE3 parallelises within one input by hashing up to 16 of its 1 KiB chunks side by
//! side (AVX-512). An input of a few KiB has too few chunks to fill the lanes, so small
//! files and blobs hash at a fraction of the large-input speed. Here the chunks of many
//! inputs share the lanes instead: every input's chunk k is compressed in one wide call
//! (chunk k of any input uses the same counter, k), prefixes of the partial last chunks
//! likewise, and only the final block of a partial chunk and the parent nodes are
//! compressed one at a time. The result is bit-for-bit `blake3::hash` of each input
//! (tests below compare every length up to several chunks).
//!
//! The wide calls are blake3's own SIMD kernels (`blake3::platform`, which the crate
//! exposes but does not document as stable); Cargo.lock pins the version.

use blake3::platform::Platform;
use blake3::IncrementCounter;

const BLOCK_LEN: usize = 64;
const CHUNK_LEN: usize = 1024;
/// At most this many chunks per input; longer inputs fill the lanes on their own.
const MAX_CHUNKS: usize = 16;
/// `hash_batch` takes inputs shorter than this; longer ones fill the lanes on their own.
pub const BATCH_BELOW: usize = MAX_CHUNKS * CHUNK_LEN;

const CHUNK_START: u8 = 1 << 0;
const CHUNK_END: u8 = 1 << 1;
const PARENT: u8 = 1 << 2;
const ROOT: u8 = 1 << 3;
const IV: [u32; 8] = [0x6A09E667, 0xBB67AE85, 0x3C6EF372, 0xA54FF53A, 0x510E527F, 0x9B05688C, 0x1F83D9AB, 0x5BE0CD19];

fn platform() -> Platform {
    static P: std::sync::OnceLock<Platform> = std::sync::OnceLock::new();
    *P.get_or_init(Platform::detect)
}

fn words_to_bytes(w: &[u32; 8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (o, w) in out.chunks_exact_mut(4).zip(w) {
        o.copy_from_slice(&w.to_le_bytes());
    }
    out
}

fn bytes_to_words(b: &[u8; 32]) -> [u32; 8] {
    let mut out = [0u32; 8];
    for (o, c) in out.iter_mut().zip(b.chunks_exact(4)) {
        *o = u32::from_le_bytes(c.try_into().unwrap());
    }
    out
}

/// BLAKE3 of every input (each shorter than BATCH_BELOW); `out[i]` receives the hash of
/// `inputs[i]`.
pub fn hash_batch(inputs: &[&[u8]], out: &mut [[u8; 32]]) {
    hash_batch_on(platform(), inputs, out)
}

fn hash_batch_on(p: Platform, inputs: &[&[u8]], out: &mut [[u8; 32]]) {
    assert_eq!(inputs.len(), out.len());
    assert!(inputs.iter().all(|i| i.len() < BATCH_BELOW), "hash_batch takes inputs below BATCH_BELOW");
    let n = inputs.len();
    // Chaining values of each input's chunks (inputs of one chunk write their root hash
    // to `out` directly).
    let mut cvs: Vec<[[u8; 32]; MAX_CHUNKS]> = vec![[[0u8; 32]; MAX_CHUNKS]; n];
    let mut ptrs: Vec<&[u8; CHUNK_LEN]> = Vec::with_capacity(n);
    let mut who: Vec<usize> = Vec::with_capacity(n);
    let mut buf: Vec<u8> = Vec::with_capacity(n * 32);

    // Whole 1 KiB chunks: chunk k of every input in one call, counter k.
    for k in 0..MAX_CHUNKS {
        ptrs.clear();
        who.clear();
        for (i, inp) in inputs.iter().enumerate() {
            // A lone chunk of exactly 1 KiB is the root: handled below with ROOT.
            if inp.len() >= (k + 1) * CHUNK_LEN && inp.len() > CHUNK_LEN {
                ptrs.push(inp[k * CHUNK_LEN..(k + 1) * CHUNK_LEN].try_into().unwrap());
                who.push(i);
            }
        }
        if ptrs.is_empty() {
            if k > 0 {
                break;
            }
            continue;
        }
        buf.resize(ptrs.len() * 32, 0);
        p.hash_many(&ptrs, &IV, k as u64, IncrementCounter::No, 0, CHUNK_START, CHUNK_END, &mut buf);
        for (j, &i) in who.iter().enumerate() {
            cvs[i][k].copy_from_slice(&buf[j * 32..(j + 1) * 32]);
        }
    }
    // Inputs of exactly one whole chunk: root chunks.
    ptrs.clear();
    who.clear();
    for (i, inp) in inputs.iter().enumerate() {
        if inp.len() == CHUNK_LEN {
            ptrs.push((*inp).try_into().unwrap());
            who.push(i);
        }
    }
    if !ptrs.is_empty() {
        buf.resize(ptrs.len() * 32, 0);
        p.hash_many(&ptrs, &IV, 0, IncrementCounter::No, 0, CHUNK_START, CHUNK_END | ROOT, &mut buf);
        for (j, &i) in who.iter().enumerate() {
            out[i].copy_from_slice(&buf[j * 32..(j + 1) * 32]);
        }
    }

    // Partial last chunks: all blocks but the last, grouped by (counter, block count),
    // then the last block of each on its own.
    let mut prefix_cv: Vec<[u32; 8]> = vec![IV; n];
    let mut groups: Vec<(u8, u8, usize)> = Vec::new(); // (counter, prefix blocks, input)
    for (i, inp) in inputs.iter().enumerate() {
        let len = inp.len();
        if len % CHUNK_LEN == 0 && len > 0 {
            continue;
        }
        let k = len / CHUNK_LEN;
        let r = len - k * CHUNK_LEN;
        let blocks = r.div_ceil(BLOCK_LEN).max(1);
        if blocks > 1 {
            groups.push((k as u8, (blocks - 1) as u8, i));
        }
    }
    groups.sort_unstable();
    let mut g = 0;
    while g < groups.len() {
        let (k, nb) = (groups[g].0, groups[g].1);
        let mut e = g;
        while e < groups.len() && groups[e].0 == k && groups[e].1 == nb {
            e += 1;
        }
        let members: Vec<usize> = groups[g..e].iter().map(|x| x.2).collect();
        prefix_group(p, inputs, &members, k as usize, nb as usize, &mut buf, &mut prefix_cv);
        g = e;
    }
    for (i, inp) in inputs.iter().enumerate() {
        let len = inp.len();
        if len % CHUNK_LEN == 0 && len > 0 {
            continue;
        }
        let k = len / CHUNK_LEN;
        let r = len - k * CHUNK_LEN;
        let blocks = r.div_ceil(BLOCK_LEN).max(1);
        let start = k * CHUNK_LEN + (blocks - 1) * BLOCK_LEN;
        let last = &inp[start..];
        let mut block = [0u8; BLOCK_LEN];
        block[..last.len()].copy_from_slice(last);
        let root = k == 0;
        let flags = CHUNK_END | if blocks == 1 { CHUNK_START } else { 0 } | if root { ROOT } else { 0 };
        let mut cv = prefix_cv[i];
        p.compress_in_place(&mut cv, &block, last.len() as u8, k as u64, flags);
        if root {
            out[i] = words_to_bytes(&cv);
        } else {
            cvs[i][k] = words_to_bytes(&cv);
        }
    }

    // Parent nodes of multi-chunk inputs.
    for (i, inp) in inputs.iter().enumerate() {
        let len = inp.len();
        if len <= CHUNK_LEN {
            continue;
        }
        let chunks = len.div_ceil(CHUNK_LEN);
        out[i] = merge(p, &cvs[i][..chunks], true);
    }
}

fn prefix_group(p: Platform, inputs: &[&[u8]], members: &[usize], k: usize, nb: usize, buf: &mut Vec<u8>, cv: &mut [[u32; 8]]) {
    macro_rules! go {
        ($($n:literal)*) => {
            match nb {
                $($n => prefix_group_n::<{ $n * BLOCK_LEN }>(p, inputs, members, k, buf, cv),)*
                _ => unreachable!("a partial chunk has at most 15 whole blocks before its last"),
            }
        };
    }
    go!(1 2 3 4 5 6 7 8 9 10 11 12 13 14 15)
}

fn prefix_group_n<const N: usize>(p: Platform, inputs: &[&[u8]], members: &[usize], k: usize, buf: &mut Vec<u8>, cv: &mut [[u32; 8]]) {
    let ptrs: Vec<&[u8; N]> = members.iter().map(|&i| inputs[i][k * CHUNK_LEN..k * CHUNK_LEN + N].try_into().unwrap()).collect();
    buf.resize(ptrs.len() * 32, 0);
    p.hash_many(&ptrs, &IV, k as u64, IncrementCounter::No, 0, CHUNK_START, 0, buf);
    for (j, &i) in members.iter().enumerate() {
        cv[i] = bytes_to_words(buf[j * 32..(j + 1) * 32].try_into().unwrap());
    }
}

/// The chaining value (or, at the top, the root hash) over chunk CVs: the left subtree
/// holds the largest power of two of chunks that leaves at least one for the right.
fn merge(p: Platform, cvs: &[[u8; 32]], root: bool) -> [u8; 32] {
    if cvs.len() == 1 {
        return cvs[0];
    }
    let left = 1usize << (usize::BITS - 1 - (cvs.len() - 1).leading_zeros());
    let l = merge(p, &cvs[..left], false);
    let r = merge(p, &cvs[left..], false);
    let mut block = [0u8; BLOCK_LEN];
    block[..32].copy_from_slice(&l);
    block[32..].copy_from_slice(&r);
    let mut cv = IV;
    p.compress_in_place(&mut cv, &block, BLOCK_LEN as u8, 0, PARENT | if root { ROOT } else { 0 });
    words_to_bytes(&cv)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data() -> Vec<u8> {
        (0..40_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect()
    }

    fn lengths() -> Vec<usize> {
        let mut lens: Vec<usize> = (0..=3 * CHUNK_LEN + 64).collect();
        for c in 3..=MAX_CHUNKS {
            for d in [-65i64, -64, -63, -1, 0, 1, 63, 64, 65] {
                let l = (c * CHUNK_LEN) as i64 + d;
                if l >= 0 && (l as usize) < BATCH_BELOW {
                    lens.push(l as usize);
                }
            }
        }
        lens
    }

    /// Every SIMD implementation this machine can run, the portable one included.
    fn platforms() -> Vec<Platform> {
        let mut ps = vec![Platform::portable()];
        #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
        ps.extend([Platform::sse2(), Platform::sse41(), Platform::avx2(), Platform::avx512()].into_iter().flatten());
        ps
    }

    fn check(batch: &[&[u8]]) {
        for p in platforms() {
            let mut out = vec![[0u8; 32]; batch.len()];
            hash_batch_on(p, batch, &mut out);
            for (b, o) in batch.iter().zip(&out) {
                assert_eq!(blake3::hash(b).as_bytes(), o, "length {} on {p:?}", b.len());
            }
        }
    }

    #[test]
    fn every_length_in_one_batch_matches_blake3() {
        let data = data();
        let lens = lengths();
        check(&lens.iter().map(|&l| &data[..l]).collect::<Vec<_>>());
    }

    #[test]
    fn mixed_batches_match_blake3() {
        let data = data();
        let lens = lengths();
        let mut seed = 12_345u64;
        for round in 0..60 {
            let mut batch = Vec::new();
            for _ in 0..(1 + round * 7 % 97) {
                seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
                let l = lens[(seed >> 33) as usize % lens.len()];
                let off = (seed >> 20) as usize % 1000;
                batch.push(&data[off..off + l]);
            }
            check(&batch);
        }
        // Many inputs of one length (full SIMD groups), and an empty batch.
        check(&vec![&data[..6656]; 40]);
        check(&[]);
    }
}
