//! What a node reports about itself (logged at start; the console and tests read it).

use std::fmt;
use std::net::SocketAddr;

use nvlog::MirrorState;

use super::{CpInfo, Listeners, Node};

/// Whether the log is mirrored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    /// No partner: replies wait for local NVRAM durability only.
    Standalone,
    /// Mirrored to the partner.
    Mirrored {
        /// The mirror's state (in sync, syncing, degraded with the reason).
        state: MirrorState,
        /// The partner's mirror listener (our log goes there).
        partner: Option<SocketAddr>,
        /// Our listener for the partner's log.
        listen: Option<SocketAddr>,
        /// Our copy of the partner's log is in sync (we could take over).
        partner_mirror_in_sync: bool,
    },
}

/// A snapshot of the node's state.
#[derive(Clone, Debug)]
pub struct NodeStatus {
    /// Node name.
    pub name: String,
    /// Standalone or mirrored.
    pub mode: Mode,
    /// Aggregate uuid.
    pub aggregate_uuid: uuid::Uuid,
    /// Aggregate state (NORMAL, DEGRADED, …).
    pub aggregate_state: String,
    /// Data disks of the group.
    pub data_disks: usize,
    /// File system generation (last committed CP).
    pub fs_generation: u64,
    /// Highest log sequence applied to the file system.
    pub applied_seq: u64,
    /// Files in use.
    pub files_used: u64,
    /// Free bytes.
    pub free_bytes: u64,
    /// Bytes in the file system.
    pub total_bytes: u64,
    /// How the NVRAM region persists.
    pub nvram_persist: String,
    /// Next log sequence to assign.
    pub log_next_seq: u64,
    /// Records replayed at start.
    pub replayed_records: u64,
    /// The last CP.
    pub last_cp: Option<CpInfo>,
    /// CPs since start.
    pub cp_count: u64,
    /// The last CP failure, if any.
    pub cp_error: Option<String>,
    /// Export paths.
    pub exports: Vec<String>,
    /// Bound listeners (portmap, MOUNT, NFS).
    pub listeners: Vec<SocketAddr>,
}

pub(super) fn collect(node: &Node) -> NodeStatus {
    let log = node.log.status();
    let mode = match &node.config.mirror {
        None => Mode::Standalone,
        Some(m) => Mode::Mirrored {
            state: log.mirror.clone(),
            partner: m.partner,
            listen: node.log.mirror_listen_addr().or(m.listen),
            partner_mirror_in_sync: log.partner_mirror_in_sync,
        },
    };
    let own = node.own_published();
    let mut st = NodeStatus {
        name: node.config.name.clone(),
        mode,
        aggregate_uuid: uuid::Uuid::nil(),
        aggregate_state: "not served by this node now".into(),
        data_disks: 0,
        fs_generation: 0,
        applied_seq: 0,
        files_used: 0,
        free_bytes: 0,
        total_bytes: 0,
        nvram_persist: log.persist_mode,
        log_next_seq: log.next_seq,
        replayed_records: node.start.replayed_records,
        last_cp: None,
        cp_count: 0,
        cp_error: None,
        exports: node.config.exports.iter().map(|e| e.path.clone()).collect(),
        listeners: Vec::new(),
    };
    if let Some(p) = own {
        let g = p.group.status();
        let fs = p.fs.statfs();
        let cp = p.cp_record.lock().unwrap_or_else(|e| e.into_inner());
        st.aggregate_uuid = g.uuid;
        st.aggregate_state = g.state.to_string();
        st.data_disks = g.geometry.data_disks;
        st.fs_generation = p.fs.generation();
        st.applied_seq = p.fs.applied_seq();
        st.files_used = fs.files_used;
        st.free_bytes = fs.free_bytes;
        st.total_bytes = fs.total_bytes;
        st.last_cp = cp.last.clone();
        st.cp_count = cp.count;
        st.cp_error = cp.last_error.clone();
        st.listeners = p.listeners.as_ref().map(listener_list).unwrap_or_default();
    }
    st
}

fn listener_list(l: &Listeners) -> Vec<SocketAddr> {
    let mut v = vec![
        l.portmap_tcp,
        l.portmap_udp,
        l.mount_tcp,
        l.mount_udp,
        l.nfs_tcp,
    ];
    v.extend(l.nfs_udp);
    v
}

impl fmt::Display for NodeStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "node {}", self.name)?;
        match &self.mode {
            Mode::Standalone => writeln!(f, "  mode: standalone (NVRAM log not mirrored)")?,
            Mode::Mirrored {
                state,
                partner,
                listen,
                partner_mirror_in_sync,
            } => writeln!(
                f,
                "  mode: mirrored, mirror {state:?}; partner {}; listening {}; partner's log in sync: {partner_mirror_in_sync}",
                partner.map_or("-".to_string(), |a| a.to_string()),
                listen.map_or("-".to_string(), |a| a.to_string()),
            )?,
        }
        writeln!(
            f,
            "  aggregate {} {} ({} data disks); fs generation {}, applied seq {}, {} files, {} MiB free of {} MiB",
            self.aggregate_uuid,
            self.aggregate_state,
            self.data_disks,
            self.fs_generation,
            self.applied_seq,
            self.files_used,
            self.free_bytes >> 20,
            self.total_bytes >> 20
        )?;
        writeln!(
            f,
            "  nvram {}; next seq {}; replayed {} records at start",
            self.nvram_persist, self.log_next_seq, self.replayed_records
        )?;
        match &self.last_cp {
            Some(cp) => writeln!(
                f,
                "  last CP: generation {}, covered seq {}, {:?}, {} µs ({} CPs since start)",
                cp.generation, cp.covered_seq, cp.reason, cp.duration_us, self.cp_count
            )?,
            None => writeln!(f, "  last CP: none since start")?,
        }
        if let Some(e) = &self.cp_error {
            writeln!(f, "  CP FAILED: {e}")?;
        }
        writeln!(f, "  exports: {}", self.exports.join(", "))?;
        let listeners: Vec<String> = self.listeners.iter().map(|a| a.to_string()).collect();
        write!(f, "  listening: {}", listeners.join(", "))
    }
}
