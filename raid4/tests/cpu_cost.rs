//! CPU cost of the write and read paths per stripe, in thread CPU time (insensitive to
//! other load on the machine). Ignored by default: run with `--ignored --nocapture`.

mod common;

use common::*;
use futures::executor::block_on;
use raid4::BLOCK_SIZE;

fn thread_cpu_s() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writes one timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

#[test]
#[ignore]
fn cpu_per_stripe() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let (g, _, _) = new_group(dir.path(), 4, 0, 512, 32);
    let sbytes = g.stripe_data_blocks() * BLOCK_SIZE;
    // A Vec is not 4 KiB-aligned (the rows are copied into the IO slots); an AlignedBuf is
    // (the rows go to the disks as they are).
    let data = pattern(64 * sbytes, 1);
    let mut aligned = raid4::AlignedBuf::zeroed(data.len());
    aligned.copy_from_slice(&data);
    for round in 0..2 {
        for (what, src) in [("copied", &data[..]), ("aligned", &aligned[..])] {
            let c = thread_cpu_s();
            let t = std::time::Instant::now();
            for b in 0..8u64 {
                block_on(g.write_stripes(b * 64, src)).expect("write");
            }
            let (cpu, wall) = (thread_cpu_s() - c, t.elapsed().as_secs_f64());
            eprintln!(
                "round {round}: write ({what}) cpu/stripe {:.1} us, wall/stripe {:.1} us",
                cpu * 1e6 / 512.0,
                wall * 1e6 / 512.0
            );
        }
        let mut buf = vec![0u8; 64 * sbytes];
        let c = thread_cpu_s();
        let t = std::time::Instant::now();
        for b in 0..8u64 {
            block_on(g.read_blocks(b * 64 * g.stripe_data_blocks() as u64, &mut buf))
                .expect("read");
        }
        let (cpu, wall) = (thread_cpu_s() - c, t.elapsed().as_secs_f64());
        eprintln!(
            "round {round}: read cpu/stripe {:.1} us, wall/stripe {:.1} us",
            cpu * 1e6 / 512.0,
            wall * 1e6 / 512.0
        );
    }
}
