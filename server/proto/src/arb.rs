//! Test-only value generator: every wire type can produce a random valid instance, so the
//! round-trip property (`decode(encode(v)) == v`) is checked for all of them from one seed.

/// A small deterministic generator (xorshift64*), seeded by proptest.
pub struct Gen(u64);

impl Gen {
    pub fn new(seed: u64) -> Self {
        Gen(seed | 1)
    }
    pub fn u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn u32(&mut self) -> u32 {
        (self.u64() >> 32) as u32
    }
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.u64() % n as u64) as usize
        }
    }
    pub fn bool(&mut self) -> bool {
        self.u64() & 1 == 1
    }
    /// Random bytes of a length up to `max` (biased towards short and towards the maximum).
    pub fn bytes(&mut self, max: usize) -> Vec<u8> {
        let len = match self.below(4) {
            0 => max,
            _ => self.below(max.min(40) + 1),
        };
        (0..len).map(|_| self.u64() as u8).collect()
    }
}

/// Types that can produce a random valid instance.
pub trait Arb {
    fn arb(g: &mut Gen) -> Self;
}

impl Arb for () {
    fn arb(_: &mut Gen) -> Self {}
}
impl Arb for u32 {
    fn arb(g: &mut Gen) -> Self {
        g.u32()
    }
}
impl Arb for u64 {
    fn arb(g: &mut Gen) -> Self {
        g.u64()
    }
}
impl Arb for bool {
    fn arb(g: &mut Gen) -> Self {
        g.bool()
    }
}
impl<T: Arb> Arb for Option<T> {
    fn arb(g: &mut Gen) -> Self {
        g.bool().then(|| T::arb(g))
    }
}
impl<const N: usize> Arb for [u8; N] {
    fn arb(g: &mut Gen) -> Self {
        let mut a = [0u8; N];
        for b in a.iter_mut() {
            *b = g.u64() as u8;
        }
        a
    }
}
/// Short lists (list bounds are exercised by dedicated tests).
pub fn arb_vec<T: Arb>(g: &mut Gen, max: usize) -> Vec<T> {
    let n = g.below(max.min(6) + 1);
    (0..n).map(|_| T::arb(g)).collect()
}
