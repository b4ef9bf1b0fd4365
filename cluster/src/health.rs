//! The failover monitor: health of each module of a node, carried in every heartbeat.
//!
//! Each module reports its own health; the monitor keeps the latest report per module. The
//! node persists it with its state (NVRAM) and the heartbeat carries it to the partner, which
//! shows it in status and uses it in the takeover check.

/// A monitored module of a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Module {
    /// The NFS/SMB front-ends.
    FileService,
    /// The NVRAM log and its mirror to the partner.
    Nvlog,
    /// The RAID groups of the node's aggregate.
    Raid,
    /// The cluster interconnect.
    Interconnect,
}

impl Module {
    /// All modules, in encoding order.
    pub const ALL: [Module; 4] = [
        Module::FileService,
        Module::Nvlog,
        Module::Raid,
        Module::Interconnect,
    ];

    fn shift(self) -> u32 {
        match self {
            Module::FileService => 0,
            Module::Nvlog => 2,
            Module::Raid => 4,
            Module::Interconnect => 6,
        }
    }
}

/// Health of one module.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ModuleHealth {
    /// Works.
    Ok = 0,
    /// Works with reduced redundancy or speed (e.g. a degraded RAID group).
    Degraded = 1,
    /// Does not work.
    Failed = 2,
}

/// Health of all modules of a node, two bits each in one byte on the wire.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Health(u8);

impl Health {
    /// Every module healthy.
    pub const ALL_OK: Health = Health(0);

    /// The health of `module`.
    pub fn get(self, module: Module) -> ModuleHealth {
        match (self.0 >> module.shift()) & 0b11 {
            0 => ModuleHealth::Ok,
            1 => ModuleHealth::Degraded,
            _ => ModuleHealth::Failed,
        }
    }

    /// This health with `module` set to `health`.
    pub fn with(self, module: Module, health: ModuleHealth) -> Health {
        let cleared = self.0 & !(0b11 << module.shift());
        Health(cleared | ((health as u8) << module.shift()))
    }

    /// The first failed module, if any: a node with a failed module must not take over.
    pub fn first_failed(self) -> Option<Module> {
        Module::ALL
            .into_iter()
            .find(|m| self.get(*m) == ModuleHealth::Failed)
    }

    /// The wire byte.
    pub fn to_byte(self) -> u8 {
        self.0
    }

    /// Decodes the wire byte; the code 3 is not defined and is rejected.
    pub fn from_byte(byte: u8) -> Option<Health> {
        let valid = Module::ALL
            .into_iter()
            .all(|m| (byte >> m.shift()) & 0b11 != 0b11);
        valid.then_some(Health(byte))
    }
}

/// Collects module reports into a [`Health`]; the node feeds changes to the takeover machine.
#[derive(Clone, Debug, Default)]
pub struct FailoverMonitor {
    health: Health,
}

impl FailoverMonitor {
    /// A monitor with every module healthy.
    pub fn new() -> FailoverMonitor {
        FailoverMonitor::default()
    }

    /// Records a module's report; returns the new health if it changed.
    pub fn report(&mut self, module: Module, health: ModuleHealth) -> Option<Health> {
        let next = self.health.with(module, health);
        if next == self.health {
            return None;
        }
        self.health = next;
        Some(next)
    }

    /// The current health.
    pub fn health(&self) -> Health {
        self.health
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_roundtrips_and_rejects_undefined_code() {
        let h = Health::ALL_OK
            .with(Module::Raid, ModuleHealth::Degraded)
            .with(Module::Interconnect, ModuleHealth::Failed);
        assert_eq!(h.get(Module::Raid), ModuleHealth::Degraded);
        assert_eq!(h.first_failed(), Some(Module::Interconnect));
        assert_eq!(Health::from_byte(h.to_byte()), Some(h));
        assert_eq!(Health::from_byte(0b0000_1100), None);
        let mut monitor = FailoverMonitor::new();
        assert!(monitor.report(Module::Nvlog, ModuleHealth::Ok).is_none());
        assert!(monitor
            .report(Module::Nvlog, ModuleHealth::Failed)
            .is_some());
        assert_eq!(monitor.health().first_failed(), Some(Module::Nvlog));
    }
}
