//! `ScsiReservation` against an in-process model of an SPC-4 persistent-reservation target
//! with two I_T nexuses (two nodes), behaving like tgt: no PREEMPT AND ABORT, and a UNIT
//! ATTENTION (registrations preempted) on the preempted node's next command. The real target
//! runs in the VM lab (`tests/vm/pr-scsi.sh`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use cluster::reserve::scsi::{
    Completion, DataPhase, ScsiReservation, ScsiTransport, OP_PERSISTENT_RESERVE_IN,
    OP_PERSISTENT_RESERVE_OUT, OP_TEST_UNIT_READY, STATUS_CHECK_CONDITION, STATUS_GOOD,
    STATUS_RESERVATION_CONFLICT,
};
use cluster::reserve::{HoldStatus, ReservationKey, Reservations, ReserveError};
use cluster::NodeId;

const OP_WRITE_10: u8 = 0x2a;

#[derive(Default)]
struct Target {
    generation: u32,
    registrations: BTreeMap<u8, u64>,
    reservation: Option<(u8, u8)>,
    unit_attention: BTreeSet<u8>,
}

struct Nexus {
    id: u8,
    target: Arc<Mutex<Target>>,
}

fn sense(key: u8, asc: u8, ascq: u8) -> Completion {
    let mut fixed = [0u8; 18];
    fixed[0] = 0x70;
    fixed[2] = key;
    fixed[12] = asc;
    fixed[13] = ascq;
    Completion {
        status: STATUS_CHECK_CONDITION,
        host_status: 0,
        driver_status: 0,
        sense: cluster::reserve::scsi::Sense::decode(&fixed),
        transferred: 0,
    }
}

fn status(s: u8, transferred: usize) -> Completion {
    Completion {
        status: s,
        host_status: 0,
        driver_status: 0,
        sense: None,
        transferred,
    }
}

impl Target {
    fn key_of(&self, nexus: u8) -> Option<u64> {
        self.registrations.get(&nexus).copied()
    }

    fn prout(&mut self, nexus: u8, action: u8, rtype: u8, p: &[u8]) -> Completion {
        let rk = u64::from_be_bytes(p[0..8].try_into().expect("24-byte list"));
        let sak = u64::from_be_bytes(p[8..16].try_into().expect("24-byte list"));
        let conflict = status(STATUS_RESERVATION_CONFLICT, 0);
        let registered = self.key_of(nexus);
        match action {
            0x00 | 0x06 => {
                if action == 0x00 && registered.unwrap_or(0) != rk {
                    return conflict;
                }
                if sak == 0 && registered.is_none() {
                    // Unregistering an unregistered nexus: GOOD, nothing changes.
                    return status(STATUS_GOOD, 0);
                }
                if sak == 0 {
                    self.registrations.remove(&nexus);
                    if self.reservation.is_some_and(|(h, _)| h == nexus) {
                        self.reservation = None;
                    }
                } else {
                    self.registrations.insert(nexus, sak);
                }
                self.generation += 1;
            }
            0x01 => {
                if registered != Some(rk) {
                    return conflict;
                }
                match self.reservation {
                    Some((h, _)) if h != nexus => return conflict,
                    _ => self.reservation = Some((nexus, rtype)),
                }
            }
            0x02 => {
                if registered != Some(rk) {
                    return conflict;
                }
                if self.reservation.is_some_and(|(h, _)| h == nexus) {
                    self.reservation = None;
                }
            }
            0x04 => {
                if registered != Some(rk) {
                    return conflict;
                }
                let victims: Vec<u8> = self
                    .registrations
                    .iter()
                    .filter(|(_, &k)| k == sak)
                    .map(|(&n, _)| n)
                    .collect();
                for v in &victims {
                    self.registrations.remove(v);
                    self.unit_attention.insert(*v);
                    if self.reservation.is_some_and(|(h, _)| h == *v) {
                        self.reservation = Some((nexus, rtype));
                    }
                }
                self.generation += 1;
            }
            // tgt: PREEMPT AND ABORT unsupported.
            _ => return sense(0x05, 0x24, 0x00),
        }
        status(STATUS_GOOD, 0)
    }

    fn prin(&self, action: u8, out: &mut [u8]) -> Completion {
        let mut v = self.generation.to_be_bytes().to_vec();
        if action == 0 {
            let keys: Vec<u64> = self.registrations.values().copied().collect();
            v.extend_from_slice(&(8 * keys.len() as u32).to_be_bytes());
            keys.iter()
                .for_each(|k| v.extend_from_slice(&k.to_be_bytes()));
        } else if let Some((h, t)) = self.reservation {
            v.extend_from_slice(&16u32.to_be_bytes());
            v.extend_from_slice(&self.registrations[&h].to_be_bytes());
            v.extend_from_slice(&[0, 0, 0, 0, 0, t, 0, 0]);
        } else {
            v.extend_from_slice(&0u32.to_be_bytes());
        }
        let n = v.len().min(out.len());
        out[..n].copy_from_slice(&v[..n]);
        status(STATUS_GOOD, n)
    }
}

impl ScsiTransport for Nexus {
    fn execute(&mut self, cdb: &[u8], data: DataPhase<'_>) -> Result<Completion, std::io::Error> {
        let mut t = self.target.lock().expect("model lock");
        if t.unit_attention.remove(&self.id) {
            return Ok(sense(0x06, 0x2a, 0x05));
        }
        Ok(match (cdb[0], data) {
            (OP_TEST_UNIT_READY, _) => status(STATUS_GOOD, 0),
            (OP_PERSISTENT_RESERVE_OUT, DataPhase::ToDevice(p)) => {
                t.prout(self.id, cdb[1] & 0x1f, cdb[2] & 0x0f, p)
            }
            (OP_PERSISTENT_RESERVE_IN, DataPhase::FromDevice(out)) => t.prin(cdb[1] & 0x1f, out),
            (OP_WRITE_10, _) => {
                // Write Exclusive – Registrants Only: registrants may write.
                let fenced = t.reservation.is_some() && t.key_of(self.id).is_none();
                status(
                    if fenced {
                        STATUS_RESERVATION_CONFLICT
                    } else {
                        STATUS_GOOD
                    },
                    0,
                )
            }
            _ => sense(0x05, 0x20, 0x00),
        })
    }
}

fn pair() -> (ScsiReservation, ScsiReservation, Arc<Mutex<Target>>) {
    let target = Arc::new(Mutex::new(Target::default()));
    let node = |id: u8| {
        ScsiReservation::with_transport(
            Box::new(Nexus {
                id,
                target: target.clone(),
            }),
            format!("model-lun/nexus{id}"),
            ReservationKey::for_node(NodeId(id)),
        )
    };
    let (a, b) = (node(0), node(1));
    (a, b, target)
}

fn may_write(target: &Arc<Mutex<Target>>, nexus: u8) -> bool {
    let mut n = Nexus {
        id: nexus,
        target: target.clone(),
    };
    let c = n
        .execute(&[OP_WRITE_10, 0, 0, 0, 0, 0, 0, 0, 1, 0], DataPhase::None)
        .expect("model");
    c.status == STATUS_GOOD
}

#[test]
fn reserve_conflict_preempt_and_fencing() {
    let (mut a, mut b, target) = pair();
    let ga = a.reserve().expect("a reserves");
    assert_eq!(
        a.check_held().expect("check"),
        HoldStatus::Held { generation: ga }
    );
    assert_eq!(b.read_reservation().expect("read").holder, Some(a.key()));
    match b.reserve() {
        Err(ReserveError::Conflict { holder, .. }) => assert_eq!(holder, a.key()),
        other => panic!("b must conflict: {other:?}"),
    }
    assert!(may_write(&target, 0) && !may_write(&target, 1));
    let gb = b
        .preempt(a.key())
        .expect("b preempts (PREEMPT AND ABORT falls back to PREEMPT)");
    assert!(gb > ga);
    assert!(may_write(&target, 1));
    // a's next command meets the unit attention (retried), then sees the loss.
    assert_eq!(
        a.check_held().expect("check after preemption"),
        HoldStatus::Lost {
            holder: Some(b.key())
        }
    );
    assert!(!may_write(&target, 0), "the preempted node is fenced");
    assert!(matches!(a.reserve(), Err(ReserveError::Conflict { .. })));
    a.release().expect("release by a fenced node is a no-op");
    assert_eq!(
        b.check_held().expect("check"),
        HoldStatus::Held { generation: gb }
    );
    b.release().expect("release");
    let keys = a.read_keys().expect("keys");
    assert!(keys.keys.is_empty(), "release unregisters: {keys:?}");
    assert_eq!(a.read_reservation().expect("read").holder, None);
}

#[test]
fn a_later_registration_breaks_the_hold_generation() {
    // Under Write Exclusive – Registrants Only a new registrant can write: our hold's
    // generation must no longer verify.
    let (mut a, mut b, _target) = pair();
    a.reserve().expect("a reserves");
    b.register().expect("b registers");
    assert!(matches!(a.check_held(), Ok(HoldStatus::Lost { .. })));
}

#[test]
fn preempting_an_unreserved_disk_reserves_it() {
    let (mut a, mut b, _target) = pair();
    a.register()
        .expect("a registers only (crashed before reserving)");
    let g = b.preempt(a.key()).expect("preempt");
    assert_eq!(
        b.check_held().expect("check"),
        HoldStatus::Held { generation: g }
    );
    assert_eq!(a.read_keys().expect("keys").keys, vec![b.key()]);
}

#[test]
fn the_hold_monitor_reports_a_scsi_preemption() {
    use cluster::reserve::{HoldLoss, HoldMonitor, ReservationSet};
    let (mut a, mut b, _target) = pair();
    a.reserve().expect("a reserves");
    let (tx, rx) = std::sync::mpsc::channel();
    let monitor = HoldMonitor::start(ReservationSet::new(vec![Box::new(a)]), 10, move |loss| {
        let _ = tx.send(loss);
    });
    assert!(monitor.is_held());
    b.preempt(ReservationKey::for_node(NodeId(0)))
        .expect("b preempts");
    let loss = rx
        .recv_timeout(std::time::Duration::from_secs(2))
        .expect("loss reported");
    assert_eq!(
        loss,
        HoldLoss::Preempted {
            holder: Some(b.key())
        }
    );
    assert!(!monitor.is_held());
    let mut set = monitor.stop();
    set.release_all()
        .expect("release after preemption is a no-op");
    assert!(matches!(b.check_held(), Ok(HoldStatus::Held { .. })));
}
