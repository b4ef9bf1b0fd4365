//! Disk labels: who a disk is (aggregate, position, generation) and the group's shape.
//! Two copies (blocks 0 and 1), each a whole block with a crc32c in its last 4 bytes.
//! Byte layout: `docs/format.md`, "Label".

use uuid::Uuid;

use crate::layout::{Geometry, BLOCK_SIZE, HEADER_BLOCKS, POSITIONS_MAX};

/// Label magic, bytes 0..8.
pub const LABEL_MAGIC: [u8; 8] = *b"TWF-R4LB";
/// Label format version this code writes and reads.
pub const LABEL_VERSION: u32 = 1;
/// Position value of a spare.
pub const POSITION_SPARE: u32 = u32::MAX;

const OFF_MEMBER_UUIDS: usize = 112;
const OFF_MEMBER_STATES: usize = OFF_MEMBER_UUIDS + 16 * POSITIONS_MAX;
const OFF_CRC: usize = BLOCK_SIZE - 4;

/// What a disk is in its group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Holds data (positions 0..N-1).
    Data,
    /// Holds parity (position N).
    Parity,
    /// A hot spare of the aggregate.
    Spare,
}

impl Role {
    fn code(self) -> u32 {
        match self {
            Role::Data => 1,
            Role::Parity => 2,
            Role::Spare => 3,
        }
    }
    fn from_code(c: u32) -> Option<Role> {
        Some(match c {
            1 => Role::Data,
            2 => Role::Parity,
            3 => Role::Spare,
            _ => return None,
        })
    }
}

/// State of one position in the member table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemberState {
    /// The disk at this position holds valid data.
    Ok,
    /// The position's disk failed; its data come from parity.
    Failed,
    /// A spare is being rebuilt into this position; not valid until the rebuild ends.
    Rebuilding,
}

impl MemberState {
    fn code(self) -> u8 {
        match self {
            MemberState::Ok => 1,
            MemberState::Failed => 2,
            MemberState::Rebuilding => 3,
        }
    }
    fn from_code(c: u8) -> Option<MemberState> {
        Some(match c {
            1 => MemberState::Ok,
            2 => MemberState::Failed,
            3 => MemberState::Rebuilding,
            _ => return None,
        })
    }
}

/// A decoded label.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Label {
    /// The aggregate this disk belongs to.
    pub aggregate: Uuid,
    /// This disk's own identity (detects duplicates: the same disk given twice).
    pub disk: Uuid,
    /// Bumped on every membership change; the highest generation among the disks wins.
    pub generation: u64,
    /// Group number inside the aggregate (always 0: one group per aggregate for now).
    pub group: u32,
    /// Data, parity or spare.
    pub role: Role,
    /// Position in the group, or [`POSITION_SPARE`].
    pub position: u32,
    /// The group's shape.
    pub geometry: Geometry,
    /// When the aggregate was created (unix seconds).
    pub created_unix_s: u64,
    /// When this generation was written (unix seconds).
    pub labelled_unix_s: u64,
    /// Member table: disk uuid and state per position (N + 1 entries).
    pub members: Vec<(Uuid, MemberState)>,
}

/// Result of decoding one label block.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// A valid label.
    Label(Label),
    /// All zeros: never labelled.
    Blank,
    /// Something else, with the reason (foreign data, corruption, newer version).
    Invalid(String),
}

impl Label {
    /// Encodes into one block.
    pub fn encode(&self) -> Vec<u8> {
        let g = &self.geometry;
        assert!(self.members.len() == g.positions() && g.positions() <= POSITIONS_MAX);
        let mut b = vec![0u8; BLOCK_SIZE];
        b[0..8].copy_from_slice(&LABEL_MAGIC);
        put_u32(&mut b, 8, LABEL_VERSION);
        put_u32(&mut b, 12, HEADER_BLOCKS as u32);
        b[16..32].copy_from_slice(self.aggregate.as_bytes());
        b[32..48].copy_from_slice(self.disk.as_bytes());
        put_u64(&mut b, 48, self.generation);
        put_u32(&mut b, 56, self.group);
        put_u32(&mut b, 60, self.role.code());
        put_u32(&mut b, 64, self.position);
        put_u32(&mut b, 68, g.data_disks as u32);
        put_u32(&mut b, 72, BLOCK_SIZE as u32);
        put_u32(&mut b, 76, g.depth as u32);
        put_u64(&mut b, 80, g.stripe_count);
        put_u64(&mut b, 88, self.created_unix_s);
        put_u64(&mut b, 96, self.labelled_unix_s);
        for (i, (u, s)) in self.members.iter().enumerate() {
            let at = OFF_MEMBER_UUIDS + 16 * i;
            b[at..at + 16].copy_from_slice(u.as_bytes());
            b[OFF_MEMBER_STATES + i] = s.code();
        }
        let crc = crate::crc::crc32c(&b[..OFF_CRC]);
        put_u32(&mut b, OFF_CRC, crc);
        b
    }

    /// Decodes one block; never panics on bad bytes.
    pub fn decode(b: &[u8]) -> Decoded {
        if b.len() != BLOCK_SIZE {
            return Decoded::Invalid(format!("label block is {} bytes", b.len()));
        }
        if b.iter().all(|&x| x == 0) {
            return Decoded::Blank;
        }
        if b[0..8] != LABEL_MAGIC {
            return Decoded::Invalid(
                "no twinfiler label magic (foreign or unlabelled disk)".into(),
            );
        }
        if get_u32(b, OFF_CRC) != crate::crc::crc32c(&b[..OFF_CRC]) {
            return Decoded::Invalid("label checksum mismatch (corrupt label)".into());
        }
        let version = get_u32(b, 8);
        if version != LABEL_VERSION {
            return Decoded::Invalid(format!(
                "label format version {version}, this build reads {LABEL_VERSION}; use a matching twinfiler"
            ));
        }
        if get_u32(b, 12) as u64 != HEADER_BLOCKS || get_u32(b, 72) as usize != BLOCK_SIZE {
            return Decoded::Invalid("label with an unsupported header or block size".into());
        }
        let Some(role) = Role::from_code(get_u32(b, 60)) else {
            return Decoded::Invalid("label with an unknown role".into());
        };
        let geometry = Geometry {
            data_disks: get_u32(b, 68) as usize,
            depth: get_u32(b, 76) as usize,
            stripe_count: get_u64(b, 80),
        };
        if let Err(e) = geometry.validate() {
            return Decoded::Invalid(format!("label with a bad geometry: {e}"));
        }
        let position = get_u32(b, 64);
        let role_ok = match role {
            Role::Spare => position == POSITION_SPARE,
            Role::Data => (position as usize) < geometry.data_disks,
            Role::Parity => position as usize == geometry.parity(),
        };
        if !role_ok {
            return Decoded::Invalid(format!("label with role {role:?} at position {position}"));
        }
        let mut members = Vec::with_capacity(geometry.positions());
        for i in 0..geometry.positions() {
            let at = OFF_MEMBER_UUIDS + 16 * i;
            let u = Uuid::from_slice(&b[at..at + 16]).unwrap_or_default();
            let Some(s) = MemberState::from_code(b[OFF_MEMBER_STATES + i]) else {
                return Decoded::Invalid(format!("label with a bad member state at position {i}"));
            };
            members.push((u, s));
        }
        Decoded::Label(Label {
            aggregate: Uuid::from_slice(&b[16..32]).unwrap_or_default(),
            disk: Uuid::from_slice(&b[32..48]).unwrap_or_default(),
            generation: get_u64(b, 48),
            group: get_u32(b, 56),
            role,
            position,
            geometry,
            created_unix_s: get_u64(b, 88),
            labelled_unix_s: get_u64(b, 96),
            members,
        })
    }
}

/// Picks the valid copy with the highest generation of the two label copies.
pub fn best_of(a: Decoded, b: Decoded) -> Decoded {
    match (a, b) {
        (Decoded::Label(x), Decoded::Label(y)) => {
            Decoded::Label(if y.generation > x.generation { y } else { x })
        }
        (Decoded::Label(x), _) | (_, Decoded::Label(x)) => Decoded::Label(x),
        (Decoded::Blank, Decoded::Blank) => Decoded::Blank,
        (Decoded::Invalid(r), _) | (_, Decoded::Invalid(r)) => Decoded::Invalid(r),
    }
}

pub(crate) fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
pub(crate) fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}
pub(crate) fn get_u32(b: &[u8], at: usize) -> u32 {
    let mut x = [0u8; 4];
    x.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(x)
}
pub(crate) fn get_u64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Label {
        Label {
            aggregate: Uuid::new_v4(),
            disk: Uuid::new_v4(),
            generation: 7,
            group: 0,
            role: Role::Parity,
            position: 3,
            geometry: Geometry {
                data_disks: 3,
                depth: 16,
                stripe_count: 99,
            },
            created_unix_s: 1,
            labelled_unix_s: 2,
            members: vec![(Uuid::new_v4(), MemberState::Ok); 4],
        }
    }

    #[test]
    fn roundtrip_and_every_bit_flip_is_rejected() {
        let l = sample();
        let b = l.encode();
        assert_eq!(Label::decode(&b), Decoded::Label(l));
        for bit in (0..BLOCK_SIZE * 8).step_by(61) {
            let mut c = b.clone();
            c[bit / 8] ^= 1 << (bit % 8);
            assert!(
                matches!(Label::decode(&c), Decoded::Invalid(_)),
                "bit {bit}"
            );
        }
        assert_eq!(Label::decode(&[0u8; BLOCK_SIZE]), Decoded::Blank);
        assert!(matches!(Label::decode(&[1u8; 10]), Decoded::Invalid(_)));
    }

    #[test]
    fn best_of_prefers_newer_valid_copy() {
        let mut a = sample();
        let mut b = a.clone();
        b.generation = 8;
        a.generation = 7;
        assert_eq!(
            best_of(Decoded::Label(a.clone()), Decoded::Label(b.clone())),
            Decoded::Label(b)
        );
        assert_eq!(
            best_of(Decoded::Invalid("x".into()), Decoded::Label(a.clone())),
            Decoded::Label(a)
        );
    }
}
