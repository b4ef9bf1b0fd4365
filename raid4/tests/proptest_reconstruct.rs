//! Property: for any N in 2..=27 and any failed position, every block reads back correctly.

mod common;

use common::*;
use futures::executor::block_on;
use proptest::prelude::*;
use raid4::Fault;

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, failure_persistence: None, ..ProptestConfig::default() })]
    #[test]
    fn reconstruction_for_random_width_and_failed_position(
        n in 2usize..=27,
        failed_frac in 0.0f64..1.0,
        depth in 2usize..6,
        seed in any::<u64>(),
    ) {
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
        let (g, _, _) = new_group(dir.path(), n, 0, 3, depth);
        let data = fill(&g, seed);
        let failed = ((n + 1) as f64 * failed_frac) as usize;
        g.inject_fault(failed, Fault::All);
        prop_assert_eq!(read_all(&g).expect("degraded read"), data.clone());
        // Reads never touch the parity disk of a healthy group, so only a data disk's
        // failure shows up here; the write below trips over either.
        if failed < n {
            prop_assert_eq!(g.status().state, raid4::GroupState::Degraded);
        }
        // Full-stripe writes keep working degraded and read back.
        let data2 = pattern(data.len(), seed ^ 1);
        // Half the cases write from a 4 KiB-aligned buffer (the zero-copy path).
        let mut aligned = raid4::AlignedBuf::zeroed(data2.len());
        aligned.copy_from_slice(&data2);
        let src: &[u8] = if seed % 2 == 0 { &aligned } else { &data2 };
        block_on(g.write_stripes(0, src)).expect("degraded write");
        prop_assert_eq!(g.status().state, raid4::GroupState::Degraded);
        prop_assert_eq!(read_all(&g).expect("degraded read"), data2);
    }
}
