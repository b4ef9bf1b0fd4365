//! Parity arithmetic: XOR of many equal-length sources into one destination, vectorised.
//!
//! One pass reads every source once and writes the destination once, so the cost is bounded by
//! memory bandwidth (N reads + 1 write per byte of parity), not by instruction count. AVX-512
//! and AVX2 are detected at run time; the portable path works on 64-bit words, which the
//! compiler turns into SSE2.

/// The instruction set the XOR kernel runs with on this machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XorKernel {
    /// 512-bit vectors (AVX-512F).
    Avx512,
    /// 256-bit vectors (AVX2).
    Avx2,
    /// 64-bit words.
    Portable,
}

/// The best kernel this CPU supports.
pub fn kernel() -> XorKernel {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return XorKernel::Avx512;
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            return XorKernel::Avx2;
        }
    }
    XorKernel::Portable
}

/// `dst = srcs[0] ^ srcs[1] ^ …`. Every source has `dst.len()` bytes; at least one source.
pub fn xor_into(dst: &mut [u8], srcs: &[&[u8]]) {
    xor_into_with(kernel(), dst, srcs);
}

/// [`xor_into`] with an explicit kernel (tests compare the kernels with each other).
pub fn xor_into_with(kernel: XorKernel, dst: &mut [u8], srcs: &[&[u8]]) {
    assert!(!srcs.is_empty(), "xor needs at least one source");
    assert!(
        srcs.iter().all(|s| s.len() == dst.len()),
        "xor sources differ in length"
    );
    match kernel {
        #[cfg(target_arch = "x86_64")]
        XorKernel::Avx512 if std::arch::is_x86_feature_detected!("avx512f") => {
            // SAFETY: the feature was detected just above; lengths were asserted equal.
            unsafe { xor_avx512(dst, srcs) }
        }
        #[cfg(target_arch = "x86_64")]
        XorKernel::Avx2 if std::arch::is_x86_feature_detected!("avx2") => {
            // SAFETY: as above.
            unsafe { xor_avx2(dst, srcs) }
        }
        _ => xor_portable(dst, srcs),
    }
}

fn xor_portable(dst: &mut [u8], srcs: &[&[u8]]) {
    let words = dst.len() / 8;
    for w in 0..words {
        let at = w * 8;
        let mut acc = word(srcs[0], at);
        for src in &srcs[1..] {
            acc ^= word(src, at);
        }
        dst[at..at + 8].copy_from_slice(&acc.to_ne_bytes());
    }
    for at in words * 8..dst.len() {
        dst[at] = srcs.iter().fold(0, |acc, s| acc ^ s[at]);
    }
}

fn word(src: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&src[at..at + 8]);
    u64::from_ne_bytes(b)
}

/// Bytes handled per inner-loop step: four vector registers of accumulators keep the load
/// ports busy while the stores drain.
#[cfg(target_arch = "x86_64")]
const AVX512_STEP_BYTES: usize = 256;
#[cfg(target_arch = "x86_64")]
const AVX2_STEP_BYTES: usize = 128;

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn xor_avx512(dst: &mut [u8], srcs: &[&[u8]]) {
    use std::arch::x86_64::*;
    let len = dst.len();
    let steps = len / AVX512_STEP_BYTES;
    let d = dst.as_mut_ptr();
    for step in 0..steps {
        let at = step * AVX512_STEP_BYTES;
        // SAFETY (whole block): `at + 256 <= len` for every source and dst.
        unsafe {
            let s0 = srcs[0].as_ptr().add(at);
            let mut a0 = _mm512_loadu_si512(s0 as *const _);
            let mut a1 = _mm512_loadu_si512(s0.add(64) as *const _);
            let mut a2 = _mm512_loadu_si512(s0.add(128) as *const _);
            let mut a3 = _mm512_loadu_si512(s0.add(192) as *const _);
            for src in &srcs[1..] {
                let s = src.as_ptr().add(at);
                a0 = _mm512_xor_si512(a0, _mm512_loadu_si512(s as *const _));
                a1 = _mm512_xor_si512(a1, _mm512_loadu_si512(s.add(64) as *const _));
                a2 = _mm512_xor_si512(a2, _mm512_loadu_si512(s.add(128) as *const _));
                a3 = _mm512_xor_si512(a3, _mm512_loadu_si512(s.add(192) as *const _));
            }
            let o = d.add(at);
            _mm512_storeu_si512(o as *mut _, a0);
            _mm512_storeu_si512(o.add(64) as *mut _, a1);
            _mm512_storeu_si512(o.add(128) as *mut _, a2);
            _mm512_storeu_si512(o.add(192) as *mut _, a3);
        }
    }
    let done = steps * AVX512_STEP_BYTES;
    let tails: Vec<&[u8]> = srcs.iter().map(|s| &s[done..]).collect();
    xor_portable(&mut dst[done..], &tails);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn xor_avx2(dst: &mut [u8], srcs: &[&[u8]]) {
    use std::arch::x86_64::*;
    let len = dst.len();
    let steps = len / AVX2_STEP_BYTES;
    let d = dst.as_mut_ptr();
    for step in 0..steps {
        let at = step * AVX2_STEP_BYTES;
        // SAFETY (whole block): `at + 128 <= len` for every source and dst.
        unsafe {
            let s0 = srcs[0].as_ptr().add(at);
            let mut a0 = _mm256_loadu_si256(s0 as *const __m256i);
            let mut a1 = _mm256_loadu_si256(s0.add(32) as *const __m256i);
            let mut a2 = _mm256_loadu_si256(s0.add(64) as *const __m256i);
            let mut a3 = _mm256_loadu_si256(s0.add(96) as *const __m256i);
            for src in &srcs[1..] {
                let s = src.as_ptr().add(at);
                a0 = _mm256_xor_si256(a0, _mm256_loadu_si256(s as *const __m256i));
                a1 = _mm256_xor_si256(a1, _mm256_loadu_si256(s.add(32) as *const __m256i));
                a2 = _mm256_xor_si256(a2, _mm256_loadu_si256(s.add(64) as *const __m256i));
                a3 = _mm256_xor_si256(a3, _mm256_loadu_si256(s.add(96) as *const __m256i));
            }
            let o = d.add(at);
            _mm256_storeu_si256(o as *mut __m256i, a0);
            _mm256_storeu_si256(o.add(32) as *mut __m256i, a1);
            _mm256_storeu_si256(o.add(64) as *mut __m256i, a2);
            _mm256_storeu_si256(o.add(96) as *mut __m256i, a3);
        }
    }
    let done = steps * AVX2_STEP_BYTES;
    let tails: Vec<&[u8]> = srcs.iter().map(|s| &s[done..]).collect();
    xor_portable(&mut dst[done..], &tails);
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn all_kernels_agree_with_bytewise_xor() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for &len in &[0usize, 1, 63, 64, 255, 256, 257, 4096, 4096 * 3 + 17] {
            for n in [1usize, 2, 5, 28] {
                let srcs: Vec<Vec<u8>> = (0..n)
                    .map(|_| (0..len).map(|_| rng.gen()).collect())
                    .collect();
                let refs: Vec<&[u8]> = srcs.iter().map(|s| s.as_slice()).collect();
                let want: Vec<u8> = (0..len)
                    .map(|i| srcs.iter().fold(0, |a, s| a ^ s[i]))
                    .collect();
                for k in [XorKernel::Avx512, XorKernel::Avx2, XorKernel::Portable] {
                    let mut dst = vec![0xAAu8; len];
                    xor_into_with(k, &mut dst, &refs);
                    assert_eq!(dst, want, "kernel {k:?} len {len} n {n}");
                }
            }
        }
    }
}
