//! Scheduled snapshots: hourly and daily, keeping the newest N of each. The planner is a pure
//! function of the time and the existing snapshots; the node calls `Fs::run_snapshot_policy`
//! periodically (e.g. every minute).

use crate::error::FsError;
use crate::fs::{Fs, SnapInfo};

/// How often a schedule takes a snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Every {
    /// At the start of each hour (UTC).
    Hourly,
    /// At the start of each day (UTC).
    Daily,
}

impl Every {
    fn period_s(self) -> u64 {
        match self {
            Every::Hourly => 3600,
            Every::Daily => 86_400,
        }
    }
    fn prefix(self) -> &'static str {
        match self {
            Every::Hourly => "hourly.",
            Every::Daily => "daily.",
        }
    }
}

/// One schedule: take a snapshot every period, keep the newest `keep`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Schedule {
    /// Period.
    pub every: Every,
    /// Snapshots of this schedule to keep (0 disables it).
    pub keep: u32,
}

/// A snapshot policy (from the node's config).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnapshotPolicy {
    /// Schedules.
    pub schedules: Vec<Schedule>,
}

/// What the policy wants done now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Snapshots to create.
    pub create: Vec<String>,
    /// Snapshots to delete (oldest beyond `keep`).
    pub delete: Vec<String>,
}

/// Civil date (year, month, day) of a day count since 1970-01-01.
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + (m <= 2) as i64;
    (y, m, d)
}

/// Name of the snapshot of the period that contains `now_s`.
pub fn snapshot_name(every: Every, now_s: u64) -> String {
    let start = now_s - now_s % every.period_s();
    let (y, m, d) = civil((start / 86_400) as i64);
    match every {
        Every::Hourly => format!(
            "{}{y:04}-{m:02}-{d:02}_{:02}00",
            every.prefix(),
            (start % 86_400) / 3600
        ),
        Every::Daily => format!("{}{y:04}-{m:02}-{d:02}", every.prefix()),
    }
}

impl SnapshotPolicy {
    /// What to create and delete at `now_s` (seconds since the epoch).
    pub fn plan(&self, now_s: u64, existing: &[SnapInfo]) -> Plan {
        let mut plan = Plan::default();
        for s in &self.schedules {
            if s.keep == 0 {
                continue;
            }
            let name = snapshot_name(s.every, now_s);
            let mut mine: Vec<&SnapInfo> = existing
                .iter()
                .filter(|e| e.name.starts_with(s.every.prefix()))
                .collect();
            mine.sort_by_key(|e| (e.created_ns, e.id));
            let mut count = mine.len();
            if !mine.iter().any(|e| e.name == name) {
                plan.create.push(name);
                count += 1;
            }
            for old in mine.iter().take(count.saturating_sub(s.keep as usize)) {
                plan.delete.push(old.name.clone());
            }
        }
        plan
    }
}

impl Fs {
    /// Applies a snapshot policy now: creates the due snapshots, deletes the expired ones.
    pub fn run_snapshot_policy(
        &self,
        policy: &SnapshotPolicy,
        now_ns: u64,
    ) -> Result<Plan, FsError> {
        let plan = policy.plan(now_ns / 1_000_000_000, &self.snapshot_list());
        for name in &plan.create {
            self.snapshot_create(name, now_ns)?;
        }
        for name in &plan.delete {
            self.snapshot_delete(name)?;
        }
        Ok(plan)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_calendar() {
        // 2025-11-28 01:30:00 UTC
        let t = 1_764_293_400;
        assert_eq!(snapshot_name(Every::Hourly, t), "hourly.2025-11-28_0100");
        assert_eq!(snapshot_name(Every::Daily, t), "daily.2025-11-28");
        assert_eq!(civil(0), (1970, 1, 1));
        assert_eq!(civil(19_723), (2024, 1, 1));
        assert_eq!(civil(-1), (1969, 12, 31));
    }

    #[test]
    fn keeps_the_newest_n() {
        let p = SnapshotPolicy {
            schedules: vec![
                Schedule {
                    every: Every::Hourly,
                    keep: 2,
                },
                Schedule {
                    every: Every::Daily,
                    keep: 1,
                },
            ],
        };
        let mut existing: Vec<SnapInfo> = Vec::new();
        let mut id = 0;
        for h in 0..5u64 {
            let now = 1_700_000_000 + h * 3600;
            let plan = p.plan(now, &existing);
            for c in &plan.create {
                id += 1;
                existing.push(SnapInfo {
                    id,
                    name: c.clone(),
                    gen: id as u64,
                    created_ns: now * 1_000_000_000,
                });
            }
            existing.retain(|e| !plan.delete.contains(&e.name));
            // Running again in the same hour changes nothing.
            assert_eq!(p.plan(now + 60, &existing), Plan::default());
        }
        let hourly = existing
            .iter()
            .filter(|e| e.name.starts_with("hourly."))
            .count();
        let daily = existing
            .iter()
            .filter(|e| e.name.starts_with("daily."))
            .count();
        assert_eq!((hourly, daily), (2, 1));
    }
}
