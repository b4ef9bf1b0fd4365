//! Bounds and switches of the takeover machine. Every bound carries its unit in its name.

/// Configuration of one node's takeover machine. Both nodes of a pair should use the same values.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TakeoverConfig {
    /// Interval between heartbeats on the interconnect and mailbox writes/reads.
    pub heartbeat_interval_ms: u64,
    /// No interconnect heartbeat for this long means "interconnect silent"; the partner's mailbox
    /// must also stay unchanged over as many reads as fit in this bound for "partner dead".
    pub heartbeat_loss_ms: u64,
    /// Default countdown of a graceful takeover (the victim's time to drain and shut down).
    pub countdown_ms: u64,
    /// Largest countdown an operator may ask for; larger requests are clamped.
    pub countdown_ms_max: u64,
    /// Bound on the takeover check and on waiting for the partner's answer to PLEASE_TAKEOVER.
    pub check_ms_max: u64,
    /// Bound on each local step (mount, replay, CP, reservation command, address change).
    pub step_ms_max: u64,
    /// How long the side that has released its disks waits for the address handoff.
    pub address_handoff_ms: u64,
    /// Interval between PLEASE_DIE messages while in takeover.
    pub please_die_interval_ms: u64,
    /// Interval between probes of the partner's disks (part of the takeover check).
    pub disk_probe_interval_ms: u64,
    /// How long a booting node listens for its partner before starting its own identity.
    pub boot_listen_ms: u64,
    /// Bound on a giveback after the taker released the disks, waiting for the victim.
    pub giveback_wait_ms_max: u64,
    /// Give back automatically once the victim waits and is healthy.
    pub auto_giveback: bool,
    /// Delay before an automatic giveback.
    pub auto_giveback_delay_ms: u64,
    /// Takeovers within `pingpong_window_ms` that disable automatic giveback.
    pub pingpong_takeovers_max: u32,
    /// Window of the ping-pong guard.
    pub pingpong_window_ms: u64,
    /// Take over on heartbeat loss (partner dead). Off only for tests of the graceful paths.
    pub hard_takeover_enabled: bool,
    /// Protocol version this node speaks; the partner must speak the same major version.
    pub protocol_version: u16,
}

impl Default for TakeoverConfig {
    fn default() -> Self {
        TakeoverConfig {
            heartbeat_interval_ms: 100,
            heartbeat_loss_ms: 1_000,
            countdown_ms: 30_000,
            countdown_ms_max: 600_000,
            check_ms_max: 5_000,
            step_ms_max: 60_000,
            address_handoff_ms: 2_000,
            please_die_interval_ms: 1_000,
            disk_probe_interval_ms: 5_000,
            boot_listen_ms: 1_500,
            giveback_wait_ms_max: 30_000,
            auto_giveback: false,
            auto_giveback_delay_ms: 600_000,
            pingpong_takeovers_max: 3,
            pingpong_window_ms: 3_600_000,
            hard_takeover_enabled: true,
            protocol_version: crate::wire::WIRE_VERSION as u16,
        }
    }
}

impl TakeoverConfig {
    /// Consecutive unchanged reads of the partner's mailbox that count as "mailbox silent":
    /// as many reads as fit in `heartbeat_loss_ms`, so the decision is counted in reads actually
    /// made, not in clock time (a clock jump cannot fake silence).
    pub fn mailbox_silent_reads_min(&self) -> u32 {
        let reads = self.heartbeat_loss_ms / self.heartbeat_interval_ms.max(1);
        u32::try_from(reads.max(2)).unwrap_or(u32::MAX)
    }

    /// Shortest countdown: two detection bounds (a shorter one is raised to this).
    pub fn countdown_ms_min(&self) -> u64 {
        2 * self.heartbeat_loss_ms
    }

    /// The countdown a takeover asked with `countdown_ms` runs: within
    /// [`Self::countdown_ms_min`] and `countdown_ms_max`. Below two detection bounds an
    /// expiry could not tell a hung victim (take it over by force) from a cut interconnect
    /// (do nothing): the mailbox needs `heartbeat_loss_ms` of unchanged reads to call the
    /// victim silent.
    pub fn clamp_countdown(&self, countdown_ms: u64) -> u64 {
        countdown_ms
            .max(self.countdown_ms_min())
            .min(self.countdown_ms_max)
    }

    /// Checks the relations between bounds; returns what to fix.
    pub fn validate(&self) -> Result<(), String> {
        if self.heartbeat_interval_ms == 0 {
            return Err("heartbeat_interval_ms must be > 0".into());
        }
        if self.heartbeat_loss_ms < 2 * self.heartbeat_interval_ms {
            return Err("heartbeat_loss_ms must be at least 2 heartbeat intervals".into());
        }
        if self.countdown_ms > self.countdown_ms_max {
            return Err("countdown_ms must not exceed countdown_ms_max".into());
        }
        if self.pingpong_takeovers_max == 0 {
            return Err("pingpong_takeovers_max must be > 0".into());
        }
        Ok(())
    }
}
