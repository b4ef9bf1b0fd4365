//! The cluster's areas in each disk's header are raid4's: our copies of the block numbers must
//! match `raid4/src/layout.rs`. Read from its source rather than through a dependency: cluster
//! does not depend on raid4 (and a dev-dependency would drag raid4 into the static musl build
//! of `pr-tool`, where raid4 does not compile today).

use cluster::direct_io::BLOCK_BYTES;
use cluster::mailbox_io::{HEARTBEAT_MAILBOX_BLOCK, HEARTBEAT_MAILBOX_BLOCKS};
use cluster::reserve::disk_block::{RESERVATION_AREA_BLOCK, RESERVATION_RECORD_BYTES};

const RAID4_LAYOUT: &str = include_str!("../../raid4/src/layout.rs");

/// The value of `pub const NAME: TYPE = VALUE;` in raid4's layout.
fn raid4_const(name: &str) -> u64 {
    let prefix = format!("pub const {name}: ");
    let line = RAID4_LAYOUT
        .lines()
        .find(|l| l.trim_start().starts_with(&prefix))
        .unwrap_or_else(|| panic!("{name} not in raid4/src/layout.rs"));
    let value = line
        .split('=')
        .nth(1)
        .and_then(|v| v.trim().strip_suffix(';'))
        .unwrap_or_else(|| panic!("cannot read {line:?}"));
    value
        .replace('_', "")
        .parse()
        .unwrap_or_else(|_| panic!("{name} = {value} is not a plain number"))
}

#[test]
fn header_areas_match_raid4_layout() {
    assert_eq!(BLOCK_BYTES as u64, raid4_const("BLOCK_SIZE"));
    assert_eq!(
        RESERVATION_AREA_BLOCK,
        raid4_const("RESERVATION_AREA_BLOCK")
    );
    assert_eq!(
        HEARTBEAT_MAILBOX_BLOCK,
        raid4_const("HEARTBEAT_MAILBOX_BLOCK")
    );
    assert_eq!(
        HEARTBEAT_MAILBOX_BLOCKS,
        raid4_const("HEARTBEAT_MAILBOX_BLOCKS")
    );
    const { assert!(RESERVATION_RECORD_BYTES <= BLOCK_BYTES) };
}
