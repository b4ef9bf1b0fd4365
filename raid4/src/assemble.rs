//! Creating a group on fresh disks, and assembling one from disks found in a list or a
//! directory, in any order, with a clear message for every disk that does not fit.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use futures::executor::block_on;
use futures::future::join_all;
use uuid::Uuid;

use crate::buf::BufPool;
use crate::disk::Disk;
use crate::engine::{Engine, Segment};
use crate::error::Raid4Error;
use crate::group::{now_unix_s, Group, Member, PerDisk, Spare, State, Tuning};
use crate::label::{best_of, Decoded, Label, MemberState, Role};
use crate::layout::{Geometry, BLOCK_SIZE, DEPTH_DEFAULT, HEADER_BYTES};

/// Slots reserved in the pool beyond the stripes in flight (label writes, probes).
const SLOTS_SPARE_COUNT: usize = 4;

/// How to create a group.
#[derive(Clone, Debug)]
pub struct CreateConfig {
    /// Member disks in position order: data disks first, the last one is the parity disk.
    pub disks: Vec<PathBuf>,
    /// Hot spares.
    pub spares: Vec<PathBuf>,
    /// Blocks per disk per stripe (data rows + 1 checksum block).
    pub depth: usize,
    /// Overwrite disks that already carry a twinfiler label.
    pub force: bool,
    /// Performance bounds.
    pub tuning: Tuning,
}

impl CreateConfig {
    /// Defaults for `disks` (last = parity): no spares, default depth, no force.
    pub fn new(disks: Vec<PathBuf>) -> CreateConfig {
        CreateConfig {
            disks,
            spares: Vec::new(),
            depth: DEPTH_DEFAULT,
            force: false,
            tuning: Tuning::default(),
        }
    }
}

/// Where to look for a group's disks.
#[derive(Clone, Debug)]
pub enum DiskSource {
    /// Exactly these disks; anything that does not belong is an error.
    List(Vec<PathBuf>),
    /// Every file or block device in a directory; unrelated or stale disks are skipped
    /// (and noted in the status).
    Dir(PathBuf),
}

/// How to assemble a group.
#[derive(Clone, Debug)]
pub struct AssembleConfig {
    /// Where the disks are.
    pub source: DiskSource,
    /// Extra spares (blank disks are labelled as spares).
    pub spares: Vec<PathBuf>,
    /// Start DEGRADED when one member is missing instead of refusing.
    pub allow_degraded: bool,
    /// Only this aggregate (needed when a directory holds several).
    pub aggregate: Option<Uuid>,
    /// Performance bounds.
    pub tuning: Tuning,
}

impl AssembleConfig {
    /// Defaults: no extra spares, refuse missing disks, any aggregate.
    pub fn new(source: DiskSource) -> AssembleConfig {
        AssembleConfig {
            source,
            spares: Vec::new(),
            allow_degraded: false,
            aggregate: None,
            tuning: Tuning::default(),
        }
    }
}

struct Probed {
    path: PathBuf,
    disk: Arc<Disk>,
    label: Decoded,
}

/// Identity of the file or device behind a path (catches one disk given under two names).
fn file_identity(path: &Path) -> Option<(u64, u64)> {
    let m = std::fs::metadata(path).ok()?;
    if m.file_type().is_block_device() {
        Some((0, m.rdev()))
    } else {
        Some((m.dev(), m.ino()))
    }
}

/// Reads both label copies of every disk through a small temporary engine.
async fn probe(disks: &[Arc<Disk>]) -> Result<Vec<Decoded>, Raid4Error> {
    let engine = Engine::new(BufPool::new(2 * BLOCK_SIZE, 8), 16).map_err(Raid4Error::Engine)?;
    let reads = disks.iter().map(|d| {
        let engine = &engine;
        async move {
            let slot = engine.pool().acquire(1).await.pop().expect("one slot");
            let seg = [Segment {
                disk_offset: 0,
                slot_offset: 0,
                len: 2 * BLOCK_SIZE,
            }];
            let done = engine.read(d, slot, &seg).await;
            match (done.result, done.slot) {
                (Ok(()), Some(s)) => best_of(
                    Label::decode(&s.bytes()[..BLOCK_SIZE]),
                    Label::decode(&s.bytes()[BLOCK_SIZE..2 * BLOCK_SIZE]),
                ),
                (Err(e), _) => Decoded::Invalid(format!("cannot read the label: {e}")),
                _ => Decoded::Invalid("cannot read the label".into()),
            }
        }
    });
    Ok(join_all(reads).await)
}

fn open_all(paths: &[PathBuf]) -> Result<Vec<Arc<Disk>>, Raid4Error> {
    paths.iter().map(|p| Disk::open(p).map(Arc::new)).collect()
}

impl Group {
    /// Creates a new aggregate on `cfg.disks` (data disks, then parity) and `cfg.spares`.
    /// Every disk gets a zeroed header area and labels at generation 1. Refuses disks that
    /// already carry a label unless `cfg.force`. Blocks the calling thread: call it from
    /// plain threads or `spawn_blocking`; async code can use [`Group::create_async`].
    pub fn create(cfg: CreateConfig) -> Result<Group, Raid4Error> {
        block_on(Self::create_async(cfg))
    }

    /// [`Group::create`] as a future.
    pub async fn create_async(cfg: CreateConfig) -> Result<Group, Raid4Error> {
        let n = cfg.disks.len().saturating_sub(1);
        let all: Vec<PathBuf> = cfg.disks.iter().chain(cfg.spares.iter()).cloned().collect();
        let mut seen: HashMap<(u64, u64), &Path> = HashMap::new();
        for p in &all {
            if let Some(id) = file_identity(p) {
                if let Some(q) = seen.insert(id, p) {
                    return Err(Raid4Error::InvalidArgument(format!(
                        "{} and {} are the same disk; give each disk once",
                        q.display(),
                        p.display()
                    )));
                }
            }
        }
        let disks = open_all(&all)?;
        if !cfg.force {
            for (d, label) in disks.iter().zip(probe(&disks).await?) {
                if let Decoded::Label(l) = label {
                    return Err(Raid4Error::InvalidArgument(format!(
                        "{} already belongs to aggregate {} ({:?} at position {}, generation {}); pass --force to overwrite it",
                        d.path().display(),
                        l.aggregate,
                        l.role,
                        l.position,
                        l.generation
                    )));
                }
            }
        }
        let stripe_count = disks[..cfg.disks.len().min(disks.len())]
            .iter()
            .map(|d| Geometry::stripes_fitting(d.size_bytes(), cfg.depth))
            .min()
            .unwrap_or(0);
        let geo = Geometry {
            data_disks: n,
            depth: cfg.depth,
            stripe_count,
        };
        geo.validate().map_err(Raid4Error::InvalidArgument)?;
        let need = HEADER_BYTES + stripe_count * geo.chunk_bytes() as u64;
        for d in &disks[cfg.disks.len()..] {
            if d.size_bytes() < need {
                return Err(Raid4Error::InvalidArgument(format!(
                    "spare {} has {} bytes, the members need {need}; give a larger spare",
                    d.path().display(),
                    d.size_bytes()
                )));
            }
        }
        let members = disks[..cfg.disks.len()]
            .iter()
            .map(|d| Member {
                disk: Some(d.clone()),
                missing: false,
                uuid: Uuid::new_v4(),
                state: MemberState::Ok,
                reason: None,
            })
            .collect();
        let spares = disks[cfg.disks.len()..]
            .iter()
            .map(|d| Spare {
                disk: d.clone(),
                uuid: Uuid::new_v4(),
            })
            .collect();
        let state = State {
            generation: 1,
            members,
            spares,
            offline: None,
            notes: Vec::new(),
        };
        let group = Group::build(Uuid::new_v4(), geo, now_unix_s(), state, cfg.tuning)?;
        group.zero_headers(&disks).await?;
        group.write_labels().await;
        group.view()?;
        tracing::info!(aggregate = %group.uuid, data_disks = n, depth = cfg.depth, stripe_count, "aggregate created");
        Ok(group)
    }

    /// Assembles an existing aggregate from its disks, in any order. Refuses (with one line
    /// per disk saying what to do) foreign, duplicate, stale and missing disks; see
    /// [`AssembleConfig`] for directory scans and degraded starts. Blocks the calling
    /// thread like [`Group::create`]; async code can use [`Group::assemble_async`].
    pub fn assemble(cfg: AssembleConfig) -> Result<Group, Raid4Error> {
        block_on(Self::assemble_async(cfg))
    }

    /// [`Group::assemble`] as a future.
    pub async fn assemble_async(cfg: AssembleConfig) -> Result<Group, Raid4Error> {
        let strict = matches!(cfg.source, DiskSource::List(_));
        let mut problems: Vec<String> = Vec::new();
        let mut notes: Vec<String> = Vec::new();
        let paths = match &cfg.source {
            DiskSource::List(l) => l.clone(),
            DiskSource::Dir(dir) => scan_dir(dir)?,
        };
        let mut probed = Vec::new();
        let mut opened = Vec::new();
        for p in &paths {
            match Disk::open(p) {
                Ok(d) => opened.push((p.clone(), Arc::new(d))),
                Err(e) if strict => problems.push(e.to_string()),
                Err(e) => notes.push(format!("skipped: {e}")),
            }
        }
        let ds: Vec<Arc<Disk>> = opened.iter().map(|(_, d)| d.clone()).collect();
        for ((path, disk), label) in opened.into_iter().zip(probe(&ds).await?) {
            probed.push(Probed { path, disk, label });
        }
        // Which aggregate.
        let mut counts: BTreeMap<Uuid, usize> = BTreeMap::new();
        for p in &probed {
            if let Decoded::Label(l) = &p.label {
                *counts.entry(l.aggregate).or_default() += 1;
            }
        }
        let chosen =
            match cfg.aggregate {
                Some(u) => u,
                None if counts.len() > 1 && !strict => {
                    let list: Vec<String> = counts
                        .iter()
                        .map(|(u, c)| format!("{u} ({c} disks)"))
                        .collect();
                    return Err(Raid4Error::Assembly {
                        problems: vec![format!(
                        "the directory holds disks of {} aggregates: {}; choose one with --uuid",
                        counts.len(),
                        list.join(", ")
                    )],
                    });
                }
                None => {
                    match counts.iter().max_by_key(|(_, c)| **c) {
                        Some((u, _)) => *u,
                        None => {
                            problems.push(format!(
                        "no twinfiler disk among {} (all blank or foreign); check the paths",
                        paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
                    ));
                            return Err(Raid4Error::Assembly { problems });
                        }
                    }
                }
            };
        let mut mine: Vec<(PathBuf, Arc<Disk>, Label)> = Vec::new();
        for p in probed {
            let msg = match p.label {
                Decoded::Label(l) if l.aggregate == chosen => {
                    mine.push((p.path, p.disk, l));
                    continue;
                }
                Decoded::Label(l) => format!(
                    "{} is foreign: it belongs to aggregate {} (position {}, generation {}), not {chosen}; remove it from the disk list",
                    p.path.display(),
                    l.aggregate,
                    l.position,
                    l.generation
                ),
                Decoded::Blank => format!(
                    "{} carries no twinfiler label (blank disk); remove it from the disk list, or give it as --spare",
                    p.path.display()
                ),
                Decoded::Invalid(why) => format!(
                    "{} is not a twinfiler disk of this aggregate ({why}); remove it from the disk list",
                    p.path.display()
                ),
            };
            if strict {
                problems.push(msg);
            } else {
                notes.push(format!("ignored: {msg}"));
            }
        }
        // Duplicates: the same disk identity under two paths.
        let mut by_uuid: HashMap<Uuid, &Path> = HashMap::new();
        for (path, _, l) in &mine {
            if let Some(first) = by_uuid.insert(l.disk, path) {
                problems.push(format!(
                    "{} and {} are the same disk (disk uuid {}): the same disk given twice, or a copied disk image; give each disk once",
                    first.display(),
                    path.display(),
                    l.disk
                ));
            }
        }
        let Some(auth) = mine
            .iter()
            .filter(|(_, _, l)| l.role != Role::Spare)
            .max_by_key(|(_, _, l)| l.generation)
            .map(|(_, _, l)| l.clone())
        else {
            problems.push(format!(
                "no data or parity disk of aggregate {chosen} found, only spares"
            ));
            return Err(Raid4Error::Assembly { problems });
        };
        let geo = auth.geometry;
        let need = HEADER_BYTES + geo.stripe_count * geo.chunk_bytes() as u64;
        let mut members: Vec<Option<Member>> = (0..geo.positions()).map(|_| None).collect();
        let mut spares: Vec<Spare> = Vec::new();
        let mut relabel = false;
        for (path, disk, l) in &mine {
            if l.role == Role::Spare {
                spares.push(Spare {
                    disk: disk.clone(),
                    uuid: l.disk,
                });
                continue;
            }
            if l.geometry != geo {
                problems.push(format!(
                    "{} has geometry {:?}, the aggregate {:?}; it was relabelled by another tool — remove it",
                    path.display(),
                    l.geometry,
                    geo
                ));
                continue;
            }
            if disk.size_bytes() < need {
                problems.push(format!(
                    "{} (position {}) has {} bytes, the aggregate needs {need}: it was truncated; replace it and rebuild",
                    path.display(),
                    l.position,
                    disk.size_bytes()
                ));
                continue;
            }
            let pos = l.position as usize;
            let (u, s) = auth.members[pos];
            if u == l.disk && s != MemberState::Failed {
                if l.generation < auth.generation {
                    notes.push(format!(
                        "{} (position {pos}) had label generation {}, the aggregate {}; its label was refreshed",
                        path.display(),
                        l.generation,
                        auth.generation
                    ));
                    relabel = true;
                }
                if members[pos].is_none() {
                    members[pos] = Some(Member {
                        disk: Some(disk.clone()),
                        missing: false,
                        uuid: u,
                        state: s,
                        reason: (s == MemberState::Rebuilding)
                            .then(|| "rebuild interrupted".to_string()),
                    });
                }
                continue;
            }
            let how = if u == l.disk {
                "was failed out of the aggregate".to_string()
            } else {
                format!("was replaced by disk {u}")
            };
            let msg = format!(
                "{} is stale: position {pos} {how} (its label generation {}, the aggregate's {}), so its data are out of date; remove it from the disk list, or reuse it as a spare with `twinfiler aggr rebuild --spare {}`",
                path.display(),
                l.generation,
                auth.generation,
                path.display()
            );
            if strict {
                problems.push(msg);
            } else {
                notes.push(format!("ignored: {msg}"));
            }
        }
        // Missing positions.
        let mut missing = Vec::new();
        let members: Vec<Member> = members
            .into_iter()
            .enumerate()
            .map(|(p, m)| {
                m.unwrap_or_else(|| {
                    let (u, s) = auth.members[p];
                    if s == MemberState::Ok {
                        missing.push((p, u));
                    }
                    Member {
                        disk: None,
                        missing: s == MemberState::Ok,
                        uuid: u,
                        state: MemberState::Failed,
                        reason: Some(match s {
                            MemberState::Ok => "missing at assembly".to_string(),
                            _ => "failed before assembly".to_string(),
                        }),
                    }
                })
            })
            .collect();
        let unusable: Vec<usize> = (0..members.len())
            .filter(|&p| members[p].state != MemberState::Ok)
            .collect();
        if unusable.len() >= 2 {
            problems.push(format!(
                "positions {unusable:?} are all missing or failed; RAID-4 survives one: find the missing disks and add them"
            ));
        }
        for (p, u) in &missing {
            if cfg.allow_degraded {
                notes.push(format!(
                    "disk #{p} (disk uuid {u}) missing: running DEGRADED; rebuild onto a spare"
                ));
                relabel = true;
            } else {
                problems.push(format!(
                    "disk #{p} (disk uuid {u}) is missing: add it to the disk list (or the directory), or assemble with --degraded to run without it and then rebuild onto a spare"
                ));
            }
        }
        for sp in &cfg.spares {
            match Self::classify_spare(sp, chosen, &auth).await {
                Ok(s) => {
                    relabel = true;
                    spares.push(s)
                }
                Err(e) => problems.push(e.to_string()),
            }
        }
        if !problems.is_empty() {
            return Err(Raid4Error::Assembly { problems });
        }
        for n in &notes {
            tracing::warn!("assembly: {n}");
        }
        let generation = auth.generation + u64::from(relabel);
        let state = State {
            generation,
            members,
            spares,
            offline: None,
            notes,
        };
        let group = Group::build(chosen, geo, auth.created_unix_s, state, cfg.tuning)?;
        if relabel {
            group.write_labels().await;
        }
        group.view()?;
        tracing::info!(aggregate = %chosen, generation, "aggregate assembled");
        Ok(group)
    }

    /// Checks that `path` may become a spare of `aggregate`: blank, already its spare, or a
    /// stale former member of it.
    async fn classify_spare(
        path: &Path,
        aggregate: Uuid,
        auth: &Label,
    ) -> Result<Spare, Raid4Error> {
        let disk = Arc::new(Disk::open(path)?);
        let label = probe(std::slice::from_ref(&disk))
            .await?
            .pop()
            .unwrap_or(Decoded::Blank);
        let need = HEADER_BYTES + auth.geometry.stripe_count * auth.geometry.chunk_bytes() as u64;
        if disk.size_bytes() < need {
            return Err(Raid4Error::InvalidArgument(format!(
                "spare {} has {} bytes, the aggregate needs {need}; give a larger disk",
                path.display(),
                disk.size_bytes()
            )));
        }
        let current_member = |u: Uuid| {
            auth.members
                .iter()
                .any(|(m, s)| *m == u && *s != MemberState::Failed)
        };
        match label {
            Decoded::Blank => Ok(Spare { disk, uuid: Uuid::new_v4() }),
            Decoded::Label(l) if l.aggregate == aggregate && l.role == Role::Spare => Ok(Spare { disk, uuid: l.disk }),
            Decoded::Label(l) if l.aggregate == aggregate && !current_member(l.disk) => {
                Ok(Spare { disk, uuid: Uuid::new_v4() })
            }
            Decoded::Label(l) if l.aggregate == aggregate => Err(Raid4Error::InvalidArgument(format!(
                "{} is a current member (position {}) of the aggregate and cannot be a spare",
                path.display(),
                l.position
            ))),
            Decoded::Label(l) => Err(Raid4Error::InvalidArgument(format!(
                "{} belongs to aggregate {}; refusing to use it as a spare — wipe its first MiB if it is really free",
                path.display(),
                l.aggregate
            ))),
            Decoded::Invalid(why) => Err(Raid4Error::InvalidArgument(format!(
                "{} holds unknown data ({why}); refusing to use it as a spare — wipe its first MiB if it is really free",
                path.display()
            ))),
        }
    }

    /// Adds a hot spare (blank, or a stale former member) and labels it.
    pub async fn add_spare(&self, path: &Path) -> Result<(), Raid4Error> {
        let auth = {
            let st = self.state.lock().expect("state");
            self.label_for(&st, Role::Spare, crate::label::POSITION_SPARE, Uuid::nil())
        };
        let spare = Self::classify_spare(path, self.uuid, &auth).await?;
        {
            let mut st = self.state.lock().expect("state");
            if st.spares.iter().any(|s| s.disk.path() == path)
                || st
                    .members
                    .iter()
                    .any(|m| m.disk.as_ref().is_some_and(|d| d.path() == path))
            {
                return Err(Raid4Error::InvalidArgument(format!(
                    "{} is already in the group",
                    path.display()
                )));
            }
            st.spares.push(spare);
            st.generation += 1;
        }
        self.write_labels().await;
        Ok(())
    }

    pub(crate) fn build(
        uuid: Uuid,
        geo: Geometry,
        created_unix_s: u64,
        state: State,
        tuning: Tuning,
    ) -> Result<Group, Raid4Error> {
        let slots = tuning.stripes_window(&geo) * geo.positions() + SLOTS_SPARE_COUNT;
        let engine = Engine::new(
            BufPool::new(geo.chunk_bytes(), slots),
            tuning.inflight_sqes_max,
        )
        .map_err(Raid4Error::Engine)?;
        Ok(Group {
            uuid,
            geo,
            created_unix_s,
            tuning,
            engine,
            state: Mutex::new(state),
            label_lock: futures::lock::Mutex::new(()),
            write_gate: Mutex::new(Vec::new()),
            stripes: Default::default(),
            // Write stamps only need to differ between successive writes of one stripe; a
            // random start per assembly keeps them from repeating across restarts.
            stamp: AtomicU64::new(Uuid::new_v4().as_u64_pair().0 >> 1),
            counters: Default::default(),
            per_disk: (0..geo.positions()).map(|_| PerDisk::default()).collect(),
            rebuild_progress: Mutex::new(None),
            scrub_progress: Mutex::new(None),
            last_scrub: Mutex::new(None),
            last_rebuild: Mutex::new(None),
        })
    }

    /// Zeroes the header area (labels and the reserved areas) of `disks`.
    async fn zero_headers(&self, disks: &[Arc<Disk>]) -> Result<(), Raid4Error> {
        let piece = self.geo.chunk_bytes();
        let ios =
            disks.iter().map(|d| async move {
                let mut at = 0u64;
                while at < HEADER_BYTES {
                    let mut slot = self.engine.pool().acquire(1).await.pop().expect("one slot");
                    slot.bytes_mut().fill(0);
                    let len = piece.min((HEADER_BYTES - at) as usize);
                    let seg = [Segment {
                        disk_offset: at,
                        slot_offset: 0,
                        len,
                    }];
                    self.engine.write(d, slot, &seg).await.result.map_err(|e| {
                        Raid4Error::DiskIo {
                            disk: crate::error::DiskRef {
                                position: None,
                                path: d.path().to_path_buf(),
                            },
                            op: "header write",
                            source: e,
                        }
                    })?;
                    at += len as u64;
                }
                Ok::<(), Raid4Error>(())
            });
        for r in join_all(ios).await {
            r?;
        }
        Ok(())
    }
}

/// The disks in `dir` (regular files and block devices), sorted by path: what
/// [`DiskSource::Dir`] assembles from.
pub fn scan_dir(dir: &Path) -> Result<Vec<PathBuf>, Raid4Error> {
    let rd = std::fs::read_dir(dir).map_err(|e| Raid4Error::open(dir, e))?;
    let mut out: Vec<PathBuf> = rd
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            std::fs::metadata(p)
                .map(|m| m.is_file() || m.file_type().is_block_device())
                .unwrap_or(false)
        })
        .collect();
    out.sort();
    Ok(out)
}
