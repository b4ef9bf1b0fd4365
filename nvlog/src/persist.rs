//! Making stores durable on persistent memory: cache-line write-back plus a store fence.
//!
//! Rust's stable intrinsics have `clflush` but not `clwb`/`clflushopt`, so those are inline
//! assembly, chosen once from CPUID.

use std::sync::OnceLock;

/// Cache-line size assumed by the flush loops (every x86-64 CPU we target).
pub const CACHE_LINE_BYTES: usize = 64;

/// The instruction used to write a cache line back to the persistence domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlushInsn {
    /// `clwb`: writes back and keeps the line cached (best).
    Clwb,
    /// `clflushopt`: writes back and evicts, weakly ordered.
    Clflushopt,
    /// `clflush`: writes back and evicts, strongly ordered (slow but universal on x86-64).
    Clflush,
    /// No cache-flush instruction (non-x86): rely on msync only.
    None,
}

impl FlushInsn {
    /// Short lowercase name for status lines and metrics.
    pub fn name(self) -> &'static str {
        match self {
            FlushInsn::Clwb => "clwb",
            FlushInsn::Clflushopt => "clflushopt",
            FlushInsn::Clflush => "clflush",
            FlushInsn::None => "none",
        }
    }
}

/// The best flush instruction this CPU has, detected once via CPUID.
pub fn detected() -> FlushInsn {
    static DETECTED: OnceLock<FlushInsn> = OnceLock::new();
    *DETECTED.get_or_init(detect)
}

#[cfg(target_arch = "x86_64")]
fn detect() -> FlushInsn {
    use std::arch::x86_64::__cpuid_count;
    #[allow(unused_unsafe)] // `__cpuid_count` is safe on newer toolchains
    // SAFETY: CPUID exists on every x86-64 CPU; leaf 0 reports the highest leaf.
    let max_leaf = unsafe { __cpuid_count(0, 0) }.eax;
    #[allow(unused_unsafe)]
    // SAFETY: as above; leaf 7 is only read when the CPU reports it.
    let leaf7_ebx = if max_leaf >= 7 {
        unsafe { __cpuid_count(7, 0) }.ebx
    } else {
        0
    };
    #[allow(unused_unsafe)]
    // SAFETY: as above.
    let leaf1_edx = unsafe { __cpuid_count(1, 0) }.edx;
    const CLFLUSHOPT_BIT: u32 = 1 << 23; // CPUID.(EAX=7,ECX=0):EBX[23]
    const CLWB_BIT: u32 = 1 << 24; // CPUID.(EAX=7,ECX=0):EBX[24]
    const CLFSH_BIT: u32 = 1 << 19; // CPUID.(EAX=1):EDX[19]
    if leaf7_ebx & CLWB_BIT != 0 {
        FlushInsn::Clwb
    } else if leaf7_ebx & CLFLUSHOPT_BIT != 0 {
        FlushInsn::Clflushopt
    } else if leaf1_edx & CLFSH_BIT != 0 {
        FlushInsn::Clflush
    } else {
        FlushInsn::None
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn detect() -> FlushInsn {
    FlushInsn::None
}

/// Writes back every cache line of `[ptr, ptr+len)` with `insn`, then fences so the
/// write-backs are ordered before any later store (the persistence barrier).
///
/// # Safety
/// `ptr..ptr+len` must be mapped memory of this process.
pub unsafe fn flush_range(insn: FlushInsn, ptr: *const u8, len: usize) {
    if len == 0 || insn == FlushInsn::None {
        return;
    }
    let start = (ptr as usize) & !(CACHE_LINE_BYTES - 1);
    let end = ptr as usize + len;
    let mut line = start;
    while line < end {
        // SAFETY: the line overlaps the caller's mapped range.
        unsafe { flush_line(insn, line as *const u8) };
        line += CACHE_LINE_BYTES;
    }
    fence();
}

#[cfg(target_arch = "x86_64")]
unsafe fn flush_line(insn: FlushInsn, p: *const u8) {
    use std::arch::asm;
    // SAFETY (all arms): p points into mapped memory (caller's contract); these
    // instructions only write back cache state and never fault on mapped addresses.
    unsafe {
        match insn {
            FlushInsn::Clwb => asm!("clwb [{0}]", in(reg) p, options(nostack, preserves_flags)),
            FlushInsn::Clflushopt => {
                asm!("clflushopt [{0}]", in(reg) p, options(nostack, preserves_flags))
            }
            FlushInsn::Clflush => std::arch::x86_64::_mm_clflush(p),
            FlushInsn::None => {}
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn flush_line(_insn: FlushInsn, _p: *const u8) {}

/// Store fence: orders earlier write-backs before later stores.
pub fn fence() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: sfence has no memory operands.
    unsafe {
        std::arch::x86_64::_mm_sfence()
    };
    #[cfg(not(target_arch = "x86_64"))]
    std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_flush_instruction_runs_on_this_cpu() {
        let insn = detected();
        let buf = [7u8; 3 * CACHE_LINE_BYTES + 5];
        let mut candidates = vec![FlushInsn::Clflush, FlushInsn::None];
        if insn == FlushInsn::Clwb {
            candidates.extend([FlushInsn::Clwb, FlushInsn::Clflushopt]);
        } else if insn == FlushInsn::Clflushopt {
            candidates.push(FlushInsn::Clflushopt);
        }
        for i in candidates {
            // SAFETY: buf is a live allocation of that length; offset 3 keeps it unaligned.
            unsafe { flush_range(i, buf.as_ptr().add(3), buf.len() - 3) };
        }
        assert!(buf.iter().all(|b| *b == 7));
    }
}
