//! `pr-tool`: drives `cluster::reserve::scsi` against real SCSI devices.
//!
//! ```text
//! pr-tool scenario DEV_A DEV_B     two paths (two initiators) to the same LUN: the fencing
//!                                  sequence of a takeover, every step checked
//! pr-tool show DEV                 registered keys and the reservation
//! pr-tool clear DEV KEY            remove every registration (cleanup after a failed run)
//! ```
//!
//! Built static (musl) by `tests/vm/pr-scsi.sh` and run inside the test guest. Exit code 0
//! when every check passed, 1 otherwise. Uses std only for arguments: it is a test tool.

use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use cluster::reserve::scsi::{self, DataPhase, ProutAction, ScsiError, ScsiReservation, SgDevice};
use cluster::reserve::{HoldStatus, ReservationKey, Reservations, ReserveError};
use cluster::NodeId;

/// WRITE(10) of one 512-byte block at LBA 0 through SG_IO: succeeds or meets the fence.
fn write_block(dev: &str) -> Result<(), ScsiError> {
    let mut sg = SgDevice::open(Path::new(dev)).map_err(ScsiError::Ioctl)?;
    let cdb = [0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0];
    let data = [0x5au8; 512];
    scsi::run(&mut sg, &cdb, DataPhase::ToDevice(&data)).map(drop)
}

/// Prints how long an operation took (in the guest: TCG-inflated, an upper bound).
fn timing(op: &str, since: Instant) {
    println!("scsi.{op}_us {}", since.elapsed().as_micros());
}

struct Checks {
    failed: u32,
}

impl Checks {
    fn check(&mut self, ok: bool, what: &str, detail: impl std::fmt::Debug) {
        if ok {
            println!("CHECK OK: {what}");
        } else {
            println!("CHECK FAIL: {what}: {detail:?}");
            self.failed += 1;
        }
    }
}

fn open(dev: &str, node: u8) -> Result<ScsiReservation, ReserveError> {
    ScsiReservation::open(Path::new(dev), ReservationKey::for_node(NodeId(node)))
}

fn scenario(dev_a: &str, dev_b: &str) -> Result<u32, ReserveError> {
    let mut c = Checks { failed: 0 };
    let mut a = open(dev_a, 0)?;
    let mut b = open(dev_b, 1)?;
    // Start clean: a previous run may have left registrations behind.
    let _ = a.test_unit_ready();
    let _ = b.test_unit_ready();
    let _ = a.release();
    let _ = b.release();

    let t = Instant::now();
    let ga = a.reserve();
    timing("reserve", t);
    c.check(
        ga.is_ok(),
        "A reserves (Write Exclusive - Registrants Only)",
        &ga,
    );
    let t = Instant::now();
    let held = a.check_held();
    timing("check_held", t);
    c.check(
        matches!(held, Ok(HoldStatus::Held { .. })),
        "A holds",
        &held,
    );
    let r = b.reserve();
    c.check(
        matches!(&r, Err(ReserveError::Conflict { holder, .. }) if *holder == a.key()),
        "B's reserve conflicts, holder A",
        &r,
    );
    let w = write_block(dev_a);
    c.check(w.is_ok(), "write via A (holder) succeeds", &w);
    let w = write_block(dev_b);
    c.check(
        matches!(w, Err(ScsiError::ReservationConflict)),
        "write via B (unregistered) -> RESERVATION CONFLICT",
        &w,
    );
    let keys = b.read_keys();
    c.check(
        keys.as_ref().is_ok_and(|k| k.keys == vec![a.key()]),
        "READ KEYS shows A's key only",
        &keys,
    );

    let t = Instant::now();
    let gb = b.preempt(a.key());
    timing("preempt", t);
    c.check(
        gb.is_ok(),
        "B preempts A (falls back to PREEMPT where PREEMPT AND ABORT is missing)",
        &gb,
    );
    let held = a.check_held();
    c.check(
        matches!(held, Ok(HoldStatus::Lost { holder: Some(h) }) if h == b.key()),
        "A sees the hold lost to B (after the unit attention)",
        &held,
    );
    let w = write_block(dev_a);
    c.check(
        matches!(w, Err(ScsiError::ReservationConflict)),
        "write via A after preemption -> RESERVATION CONFLICT",
        &w,
    );
    let w = write_block(dev_b);
    c.check(w.is_ok(), "write via B after preemption succeeds", &w);
    let r = a.reserve();
    c.check(
        matches!(r, Err(ReserveError::Conflict { .. })),
        "A cannot reserve back",
        &r,
    );
    let held = b.check_held();
    c.check(
        matches!(held, Ok(HoldStatus::Held { .. })),
        "B holds",
        &held,
    );

    let rel = a.release();
    c.check(rel.is_ok(), "release by the fenced A is a no-op", &rel);
    let held = b.check_held();
    c.check(
        matches!(held, Ok(HoldStatus::Held { .. })),
        "B still holds after A's release",
        &held,
    );
    let t = Instant::now();
    let rel = b.release();
    timing("release", t);
    c.check(rel.is_ok(), "B releases", &rel);
    let keys = a.read_keys();
    c.check(
        keys.as_ref().is_ok_and(|k| k.keys.is_empty()),
        "no keys left",
        &keys,
    );
    let res = a.read_reservation();
    c.check(
        res.as_ref().is_ok_and(|r| r.holder.is_none()),
        "no reservation left",
        &res,
    );
    let ga = a.reserve();
    c.check(ga.is_ok(), "A reserves again after B's release", &ga);
    let _ = a.release();
    Ok(c.failed)
}

fn show(dev: &str) -> Result<(), ReserveError> {
    let mut r = open(dev, 0)?;
    let _ = r.test_unit_ready();
    println!("keys: {:?}", r.read_keys()?);
    println!("reservation: {:?}", r.read_reservation()?);
    Ok(())
}

fn clear(dev: &str, key: &str) -> Result<(), String> {
    let key = u64::from_str_radix(key.trim_start_matches("0x"), 16).map_err(|e| e.to_string())?;
    let mut sg = SgDevice::open(Path::new(dev)).map_err(|e| e.to_string())?;
    let (cdb, params) = scsi::prout(ProutAction::Clear, 5, key, 0);
    use zerocopy::IntoBytes;
    scsi::run(
        &mut sg,
        cdb.as_bytes(),
        DataPhase::ToDevice(params.as_bytes()),
    )
    .map(drop)
    .map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let result = match args.iter().map(String::as_str).collect::<Vec<_>>()[1..] {
        ["scenario", a, b] => match scenario(a, b) {
            Ok(0) => {
                println!("pr-tool: all checks passed");
                Ok(())
            }
            Ok(n) => Err(format!("{n} checks failed")),
            Err(e) => Err(e.to_string()),
        },
        ["show", dev] => show(dev).map_err(|e| e.to_string()),
        ["clear", dev, key] => clear(dev, key),
        _ => Err("usage: pr-tool scenario DEV_A DEV_B | show DEV | clear DEV KEY".into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pr-tool: {e}");
            ExitCode::FAILURE
        }
    }
}
