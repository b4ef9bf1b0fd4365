//! The checksum block: the last block of every chunk. It names the chunk (aggregate, disk
//! position, stripe, write stamp) and holds the crc32c of each data row, so a bad block is
//! identified (which disk, which row), and a misdirected or torn chunk write is caught.
//! Byte layout: `docs/format.md`, "Checksum block".

use uuid::Uuid;

use crate::label::{get_u32, get_u64, put_u32, put_u64};
use crate::layout::BLOCK_SIZE;

/// Checksum block magic.
pub const CSUM_MAGIC: [u8; 8] = *b"TWF-R4CK";
/// Checksum block format version.
pub const CSUM_VERSION: u32 = 1;
const OFF_CRCS: usize = 56;
const OFF_CRC: usize = BLOCK_SIZE - 4;

/// What a chunk's checksum block must say for the chunk to be trusted.
#[derive(Clone, Copy, Debug)]
pub struct ChunkId {
    /// The aggregate.
    pub aggregate: Uuid,
    /// Disk position.
    pub position: usize,
    /// Stripe number.
    pub stripe: u64,
    /// Blocks per chunk.
    pub depth: usize,
}

/// A decoded, validated checksum block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CsumBlock {
    /// Stamp of the stripe write that produced this chunk; equal on every disk of the stripe.
    pub write_stamp: u64,
    /// crc32c per data row.
    pub crcs: Vec<u32>,
}

/// Verdict on a checksum block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CsumState {
    /// Valid and about this chunk.
    Valid(CsumBlock),
    /// All zeros: the chunk was never written.
    Unwritten,
    /// Corrupt, misdirected or foreign; the reason says which.
    Bad(String),
}

/// Fills `out` (one block) with the checksum block of a chunk whose rows are `rows`
/// (`depth - 1` blocks, contiguous).
pub fn encode(out: &mut [u8], id: &ChunkId, write_stamp: u64, row_crcs: &[u32]) {
    assert_eq!(out.len(), BLOCK_SIZE);
    assert_eq!(row_crcs.len(), id.depth - 1);
    out.fill(0);
    out[0..8].copy_from_slice(&CSUM_MAGIC);
    put_u32(out, 8, CSUM_VERSION);
    put_u32(out, 12, id.position as u32);
    out[16..32].copy_from_slice(id.aggregate.as_bytes());
    put_u64(out, 32, id.stripe);
    put_u64(out, 40, write_stamp);
    put_u32(out, 48, id.depth as u32);
    for (i, c) in row_crcs.iter().enumerate() {
        put_u32(out, OFF_CRCS + 4 * i, *c);
    }
    let crc = crate::crc::crc32c(&out[..OFF_CRC]);
    put_u32(out, OFF_CRC, crc);
}

/// crc32c of each block of `rows`.
pub fn row_crcs(rows: &[u8]) -> Vec<u32> {
    rows.chunks_exact(BLOCK_SIZE)
        .map(crate::crc::crc32c)
        .collect()
}

/// crc32c of the XOR of `k` equal-length blocks, from the crcs of the blocks alone.
///
/// crc32c is affine over GF(2) for a fixed length: `crc(x) = L(x) ^ crc(zeros)` with `L`
/// linear. So `crc(x1 ^ … ^ xk) = crc(x1) ^ … ^ crc(xk)`, plus `crc(zeros)` once more when
/// `k` is even. The parity row's crc thus costs no pass over the parity block.
pub fn xor_crc(block_crcs: &[u32]) -> u32 {
    let folded = block_crcs.iter().fold(0, |a, c| a ^ c);
    if block_crcs.len().is_multiple_of(2) {
        folded ^ zero_block_crc()
    } else {
        folded
    }
}

/// crc32c of one all-zero block (computed once).
fn zero_block_crc() -> u32 {
    static CRC: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *CRC.get_or_init(|| crate::crc::crc32c(&[0u8; BLOCK_SIZE]))
}

/// Decodes and checks a checksum block against the chunk it should describe.
pub fn decode(b: &[u8], id: &ChunkId) -> CsumState {
    if b.len() != BLOCK_SIZE {
        return CsumState::Bad("checksum block of the wrong size".into());
    }
    if b[0..8] != CSUM_MAGIC {
        if b.iter().all(|&x| x == 0) {
            return CsumState::Unwritten;
        }
        return CsumState::Bad(
            "checksum block magic missing (overwritten or never written)".into(),
        );
    }
    if get_u32(b, OFF_CRC) != crate::crc::crc32c(&b[..OFF_CRC]) {
        return CsumState::Bad("checksum block fails its own crc".into());
    }
    if get_u32(b, 8) != CSUM_VERSION {
        return CsumState::Bad(format!("checksum block version {}", get_u32(b, 8)));
    }
    if b[16..32] != id.aggregate.as_bytes()[..] {
        return CsumState::Bad("chunk belongs to another aggregate (misdirected write)".into());
    }
    let (pos, stripe, depth) = (
        get_u32(b, 12) as usize,
        get_u64(b, 32),
        get_u32(b, 48) as usize,
    );
    if pos != id.position || stripe != id.stripe || depth != id.depth {
        return CsumState::Bad(format!(
            "chunk says position {pos} stripe {stripe} depth {depth}, expected position {} stripe {} depth {} (misdirected write)",
            id.position, id.stripe, id.depth
        ));
    }
    let crcs = (0..depth - 1)
        .map(|i| get_u32(b, OFF_CRCS + 4 * i))
        .collect();
    CsumState::Valid(CsumBlock {
        write_stamp: get_u64(b, 40),
        crcs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xor_crc_matches_crc_of_xor() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        for k in 1..=9usize {
            let blocks: Vec<Vec<u8>> = (0..k)
                .map(|_| (0..BLOCK_SIZE).map(|_| rng.gen()).collect())
                .collect();
            let mut x = vec![0u8; BLOCK_SIZE];
            for b in &blocks {
                x.iter_mut().zip(b).for_each(|(a, b)| *a ^= b);
            }
            let crcs: Vec<u32> = blocks.iter().map(|b| crate::crc::crc32c(b)).collect();
            assert_eq!(xor_crc(&crcs), crate::crc::crc32c(&x), "k = {k}");
        }
    }

    #[test]
    fn roundtrip_misdirection_and_corruption() {
        let id = ChunkId {
            aggregate: Uuid::new_v4(),
            position: 2,
            stripe: 77,
            depth: 8,
        };
        let rows = vec![5u8; 7 * BLOCK_SIZE];
        let crcs = row_crcs(&rows);
        let mut b = vec![0u8; BLOCK_SIZE];
        encode(&mut b, &id, 42, &crcs);
        assert_eq!(
            decode(&b, &id),
            CsumState::Valid(CsumBlock {
                write_stamp: 42,
                crcs: crcs.clone()
            })
        );
        let other = ChunkId { stripe: 78, ..id };
        assert!(matches!(decode(&b, &other), CsumState::Bad(_)));
        let other = ChunkId { position: 1, ..id };
        assert!(matches!(decode(&b, &other), CsumState::Bad(_)));
        let mut c = b.clone();
        c[100] ^= 4;
        assert!(matches!(decode(&c, &id), CsumState::Bad(_)));
        assert_eq!(decode(&[0u8; BLOCK_SIZE], &id), CsumState::Unwritten);
    }
}
