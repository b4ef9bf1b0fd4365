//! crc32c (Castagnoli, as in iSCSI) of blocks, fast.
//!
//! The `crc32c` crate runs the SSE4.2 `crc32` instruction three streams wide: one 8-byte
//! step per cycle at best, which made checksums most of the CPU of a full-stripe write.
//! Where the CPU has VPCLMULQDQ with AVX-512, buffers of at least [`FOLD_MIN_BYTES`] are
//! instead folded 256 bytes at a time with carry-less multiplies (16 lanes of 128 bits in
//! flight), and only the last 16 folded bytes and the tail go through the `crc32`
//! instruction. Everywhere else this is the `crc32c` crate. Both give the same value (tests
//! compare them on random data of many lengths).
//!
//! Folding: a 128-bit lane `V` (bit `i` holding the coefficient of `x^(127-i)`, the
//! reflected order of the crc) that sits `D` bits before the data it is folded into is
//! replaced by `V·x^D mod P`, which changes the message but not its remainder mod `P`.
//! With `V = L·x^64 + H`, that is `L·(x^(D+64) mod P) + H·(x^D mod P)`; a reflected
//! carry-less multiply of two 64-bit halves lands one degree low, hence the constants are
//! taken one degree lower (`x^(D+63)`, `x^(D-1)`).

/// Shortest buffer the folding path takes (shorter ones are not worth the setup).
pub const FOLD_MIN_BYTES: usize = 256;

/// Bytes folded per loop step: four 512-bit accumulators.
#[cfg(target_arch = "x86_64")]
const FOLD_STEP_BYTES: usize = 256;

/// crc32c of `data` (initial value and final inversion as in the `crc32c` crate).
pub fn crc32c(data: &[u8]) -> u32 {
    #[cfg(target_arch = "x86_64")]
    if data.len() >= FOLD_MIN_BYTES && fold_available() {
        // SAFETY: the required CPU features were detected.
        return unsafe { crc32c_fold(data) };
    }
    crc32c::crc32c(data)
}

/// Whether this CPU takes the carry-less multiply path.
pub fn fold_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("vpclmulqdq")
            && std::arch::is_x86_feature_detected!("pclmulqdq")
            && std::arch::is_x86_feature_detected!("sse4.2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// The crc32c polynomial without its x^32 term, normal (not reflected) bit order.
const POLY_NORMAL: u32 = 0x1EDC_6F41;

/// `x^n mod P` as a normal-order 32-bit remainder.
const fn xpow_mod(n: u32) -> u32 {
    let mut r: u32 = 1;
    let mut i = 0;
    while i < n {
        let carry = r & 0x8000_0000 != 0;
        r <<= 1;
        if carry {
            r ^= POLY_NORMAL;
        }
        i += 1;
    }
    r
}

/// The 64-bit reflected operand for `x^n mod P`: coefficient of `x^m` at bit `63 - m`.
const fn reflected(n: u32) -> u64 {
    (xpow_mod(n).reverse_bits() as u64) << 32
}

/// Constants (low half, high half) that fold a 128-bit lane forward by `bits`.
const fn fold_consts(bits: u32) -> (u64, u64) {
    (reflected(bits + 63), reflected(bits - 1))
}

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::{__m128i, __m512i};

/// The fold constants in every 128-bit lane (element 0 is the low half of lane 0).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn k512(k: (u64, u64)) -> __m512i {
    use std::arch::x86_64::_mm512_set_epi64;
    let (lo, hi) = (k.0 as i64, k.1 as i64);
    _mm512_set_epi64(hi, lo, hi, lo, hi, lo, hi, lo)
}

/// Folds each 128-bit lane of `a` forward (constants from [`k512`]).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,vpclmulqdq")]
#[inline]
fn fold512(a: __m512i, k: __m512i) -> __m512i {
    use std::arch::x86_64::{_mm512_clmulepi64_epi128, _mm512_xor_si512};
    _mm512_xor_si512(
        _mm512_clmulepi64_epi128::<0x00>(a, k),
        _mm512_clmulepi64_epi128::<0x11>(a, k),
    )
}

/// Folds one 128-bit lane forward.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "pclmulqdq,sse2")]
#[inline]
fn fold128(a: __m128i, k: (u64, u64)) -> __m128i {
    use std::arch::x86_64::{_mm_clmulepi64_si128, _mm_set_epi64x, _mm_xor_si128};
    let k = _mm_set_epi64x(k.1 as i64, k.0 as i64);
    _mm_xor_si128(
        _mm_clmulepi64_si128::<0x00>(a, k),
        _mm_clmulepi64_si128::<0x11>(a, k),
    )
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,vpclmulqdq,pclmulqdq,sse4.2,sse4.1")]
unsafe fn crc32c_fold(data: &[u8]) -> u32 {
    use std::arch::x86_64::*;
    const K2048: (u64, u64) = fold_consts(2048);
    const K1536: (u64, u64) = fold_consts(1536);
    const K1024: (u64, u64) = fold_consts(1024);
    const K512: (u64, u64) = fold_consts(512);
    const K384: (u64, u64) = fold_consts(384);
    const K256: (u64, u64) = fold_consts(256);
    const K128: (u64, u64) = fold_consts(128);

    assert!(data.len() >= FOLD_STEP_BYTES);
    let steps = data.len() / FOLD_STEP_BYTES;
    let p = data.as_ptr();
    // SAFETY (all loads): `step * 256 + 256 <= data.len()` for every step < steps.
    let load = |at: usize| {
        // SAFETY: see above; unaligned loads.
        unsafe { _mm512_loadu_si512(p.add(at) as *const _) }
    };
    // The initial value ~0 is the same as inverting the first 32 message bits.
    let init = _mm512_zextsi128_si512(_mm_cvtsi32_si128(-1));
    let mut a0 = _mm512_xor_si512(load(0), init);
    let mut a1 = load(64);
    let mut a2 = load(128);
    let mut a3 = load(192);
    let k = k512(K2048);
    for step in 1..steps {
        let at = step * FOLD_STEP_BYTES;
        a0 = _mm512_xor_si512(fold512(a0, k), load(at));
        a1 = _mm512_xor_si512(fold512(a1, k), load(at + 64));
        a2 = _mm512_xor_si512(fold512(a2, k), load(at + 128));
        a3 = _mm512_xor_si512(fold512(a3, k), load(at + 192));
    }
    // Everything onto a3's position, then its four lanes onto the last one.
    let x = _mm512_xor_si512(
        _mm512_xor_si512(fold512(a0, k512(K1536)), fold512(a1, k512(K1024))),
        _mm512_xor_si512(fold512(a2, k512(K512)), a3),
    );
    let l0 = _mm512_extracti32x4_epi32::<0>(x);
    let l1 = _mm512_extracti32x4_epi32::<1>(x);
    let l2 = _mm512_extracti32x4_epi32::<2>(x);
    let l3 = _mm512_extracti32x4_epi32::<3>(x);
    let y = _mm_xor_si128(
        _mm_xor_si128(fold128(l0, K384), fold128(l1, K256)),
        _mm_xor_si128(fold128(l2, K128), l3),
    );
    // The remainder of the folded message: the last 16 bytes through the crc32 instruction
    // from a zero register, then the unfolded tail.
    let lo = _mm_cvtsi128_si64(y) as u64;
    let hi = _mm_extract_epi64::<1>(y) as u64;
    let raw = _mm_crc32_u64(_mm_crc32_u64(0, lo), hi) as u32;
    crc32c::crc32c_append(!raw, &data[steps * FOLD_STEP_BYTES..])
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn matches_the_crc32c_crate() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let lens = [
            0usize, 1, 15, 255, 256, 257, 300, 511, 512, 513, 1000, 4095, 4096, 4097, 8192, 12345,
            65536,
        ];
        for &len in &lens {
            for _ in 0..4 {
                let d: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
                assert_eq!(crc32c(&d), crc32c::crc32c(&d), "len {len}");
            }
        }
        assert_eq!(crc32c(&[0u8; 4096]), crc32c::crc32c(&[0u8; 4096]));
        assert_eq!(crc32c(&[0xFFu8; 4096]), crc32c::crc32c(&[0xFFu8; 4096]));
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn constants_follow_the_polynomial() {
        // x^32 mod P is P without its top term.
        assert_eq!(xpow_mod(32), POLY_NORMAL);
        assert_eq!(xpow_mod(31), 0x8000_0000);
    }
}
