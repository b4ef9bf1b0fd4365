//! SCSI-3 persistent reservations (SPC-4 §5.14) over the Linux SG_IO ioctl.
//!
//! The CDBs and parameter lists are `zerocopy` structs with explicit big-endian fields; the
//! responses (READ KEYS, READ RESERVATION, sense data) are decoded with bounds checks and never
//! panic on short or lying buffers. The reservation type is 5, Write Exclusive – Registrants
//! Only: every registered node may write, so fencing a node means removing its registration
//! (PREEMPT), and a node releasing a disk also unregisters.
//!
//! Command outcomes: GOOD; RESERVATION CONFLICT (status 0x18) is the fence working;
//! CHECK CONDITION with UNIT ATTENTION (sense key 6: reset, registrations preempted, ...) is
//! logged and the command retried, at most [`UNIT_ATTENTION_RETRIES_MAX`] times; BUSY is
//! retried the same way.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::Path;

use zerocopy::byteorder::big_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::{HoldStatus, KeyList, ReservationKey, ReservationState, Reservations, ReserveError};

/// PERSISTENT RESERVE IN opcode.
pub const OP_PERSISTENT_RESERVE_IN: u8 = 0x5e;
/// PERSISTENT RESERVE OUT opcode.
pub const OP_PERSISTENT_RESERVE_OUT: u8 = 0x5f;
/// TEST UNIT READY opcode.
pub const OP_TEST_UNIT_READY: u8 = 0x00;
/// SCSI status GOOD.
pub const STATUS_GOOD: u8 = 0x00;
/// SCSI status CHECK CONDITION (sense data follows).
pub const STATUS_CHECK_CONDITION: u8 = 0x02;
/// SCSI status BUSY.
pub const STATUS_BUSY: u8 = 0x08;
/// SCSI status RESERVATION CONFLICT.
pub const STATUS_RESERVATION_CONFLICT: u8 = 0x18;
/// Sense key UNIT ATTENTION.
pub const SENSE_KEY_UNIT_ATTENTION: u8 = 0x6;
/// Sense key ILLEGAL REQUEST (e.g. PREEMPT AND ABORT on tgt).
pub const SENSE_KEY_ILLEGAL_REQUEST: u8 = 0x5;
/// Retries of a command answered with UNIT ATTENTION or BUSY.
pub const UNIT_ATTENTION_RETRIES_MAX: u32 = 3;
/// Registered keys one READ KEYS asks for (the allocation length follows from it).
pub const READ_KEYS_MAX: usize = 32;
/// Timeout of one SCSI command, milliseconds.
pub const COMMAND_TIMEOUT_MS: u32 = 10_000;
/// Sense buffer size.
pub const SENSE_BYTES_MAX: usize = 64;

/// PERSISTENT RESERVE OUT service actions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ProutAction {
    /// Register (or unregister with service action key 0) a key.
    Register = 0x00,
    /// Create a reservation.
    Reserve = 0x01,
    /// Release our reservation.
    Release = 0x02,
    /// Clear every registration and the reservation.
    Clear = 0x03,
    /// Remove another key's registration (and take its reservation).
    Preempt = 0x04,
    /// Preempt and abort the victim's outstanding commands.
    PreemptAndAbort = 0x05,
    /// Register, whatever key is currently registered for this I_T nexus.
    RegisterAndIgnoreExistingKey = 0x06,
}

/// PERSISTENT RESERVE IN service actions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum PrinAction {
    /// Registered keys.
    ReadKeys = 0x00,
    /// The reservation.
    ReadReservation = 0x01,
}

/// Reservation type Write Exclusive – Registrants Only.
pub const TYPE_WRITE_EXCLUSIVE_REGISTRANTS_ONLY: u8 = 5;
/// Scope LU_SCOPE (0), shifted into the scope/type byte.
pub const SCOPE_LU: u8 = 0;

/// PERSISTENT RESERVE OUT CDB (10 bytes).
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct ProutCdb {
    /// 0x5f.
    pub opcode: u8,
    /// Service action (low 5 bits).
    pub service_action: u8,
    /// Scope (high nibble) and type (low nibble).
    pub scope_type: u8,
    /// Reserved.
    pub reserved: [u8; 2],
    /// Parameter list length (24 for the basic list).
    pub parameter_list_length: U32,
    /// Control.
    pub control: u8,
}

/// The basic PERSISTENT RESERVE OUT parameter list (24 bytes).
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct ProutParameters {
    /// Our current key (0 when registering for the first time).
    pub reservation_key: U64,
    /// New key (REGISTER) or the victim's key (PREEMPT).
    pub service_action_key: U64,
    /// Obsolete.
    pub scope_specific_address: [u8; 4],
    /// SPEC_I_PT (bit 3), ALL_TG_PT (bit 2), APTPL (bit 0).
    pub flags: u8,
    /// Reserved.
    pub reserved: u8,
    /// Obsolete.
    pub obsolete: [u8; 2],
}

/// PERSISTENT RESERVE IN CDB (10 bytes).
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct PrinCdb {
    /// 0x5e.
    pub opcode: u8,
    /// Service action (low 5 bits).
    pub service_action: u8,
    /// Reserved.
    pub reserved: [u8; 5],
    /// Allocation length.
    pub allocation_length: U16,
    /// Control.
    pub control: u8,
}

/// TEST UNIT READY CDB (6 bytes).
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct TestUnitReadyCdb {
    /// 0x00.
    pub opcode: u8,
    /// Reserved.
    pub reserved: [u8; 4],
    /// Control.
    pub control: u8,
}

/// Header of every PERSISTENT RESERVE IN response.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct PrinHeader {
    /// PRgeneration.
    pub generation: U32,
    /// Bytes that follow (may exceed what the allocation length let through).
    pub additional_length: U32,
}

/// The reservation descriptor of READ RESERVATION (16 bytes).
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct ReservationDescriptor {
    /// The holder's key.
    pub reservation_key: U64,
    /// Obsolete.
    pub obsolete: [u8; 4],
    /// Reserved.
    pub reserved: u8,
    /// Scope (high nibble), type (low nibble).
    pub scope_type: u8,
    /// Obsolete.
    pub obsolete2: [u8; 2],
}

const _: () = assert!(std::mem::size_of::<ProutCdb>() == 10);
const _: () = assert!(std::mem::size_of::<ProutParameters>() == 24);
const _: () = assert!(std::mem::size_of::<PrinCdb>() == 10);
const _: () = assert!(std::mem::size_of::<TestUnitReadyCdb>() == 6);
const _: () = assert!(std::mem::size_of::<PrinHeader>() == 8);
const _: () = assert!(std::mem::size_of::<ReservationDescriptor>() == 16);

/// A PERSISTENT RESERVE OUT command: the CDB and its parameter list.
pub fn prout(
    action: ProutAction,
    reservation_type: u8,
    key: u64,
    service_action_key: u64,
) -> (ProutCdb, ProutParameters) {
    let cdb = ProutCdb {
        opcode: OP_PERSISTENT_RESERVE_OUT,
        service_action: action as u8 & 0x1f,
        scope_type: (SCOPE_LU << 4) | (reservation_type & 0x0f),
        reserved: [0; 2],
        parameter_list_length: U32::new(std::mem::size_of::<ProutParameters>() as u32),
        control: 0,
    };
    let params = ProutParameters {
        reservation_key: U64::new(key),
        service_action_key: U64::new(service_action_key),
        scope_specific_address: [0; 4],
        flags: 0,
        reserved: 0,
        obsolete: [0; 2],
    };
    (cdb, params)
}

/// A PERSISTENT RESERVE IN CDB with this allocation length.
pub fn prin(action: PrinAction, allocation_length: u16) -> PrinCdb {
    PrinCdb {
        opcode: OP_PERSISTENT_RESERVE_IN,
        service_action: action as u8 & 0x1f,
        reserved: [0; 5],
        allocation_length: U16::new(allocation_length),
        control: 0,
    }
}

/// The TEST UNIT READY CDB.
pub fn test_unit_ready() -> TestUnitReadyCdb {
    TestUnitReadyCdb {
        opcode: OP_TEST_UNIT_READY,
        reserved: [0; 4],
        control: 0,
    }
}

/// Allocation length of READ KEYS for [`READ_KEYS_MAX`] keys.
pub const READ_KEYS_ALLOCATION_BYTES: u16 = (8 + 8 * READ_KEYS_MAX) as u16;
/// Allocation length of READ RESERVATION (header + one descriptor).
pub const READ_RESERVATION_ALLOCATION_BYTES: u16 = 8 + 16;

/// Why a response could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// The buffer is shorter than the header, or the length fields disagree.
    #[error("PERSISTENT RESERVE IN response malformed: {0}")]
    Malformed(&'static str),
}

/// Decodes a READ KEYS response (`data` = the bytes the device transferred). Keys past the
/// allocation length are not seen; the result says so with `truncated`.
pub fn decode_read_keys(data: &[u8]) -> Result<(KeyList, bool), DecodeError> {
    let (header, rest) =
        PrinHeader::read_from_prefix(data).map_err(|_| DecodeError::Malformed("short header"))?;
    let declared = header.additional_length.get() as usize;
    if !declared.is_multiple_of(8) {
        return Err(DecodeError::Malformed(
            "key list length not a multiple of 8",
        ));
    }
    let available = declared.min(rest.len() - rest.len() % 8);
    let keys = rest[..available]
        .chunks_exact(8)
        .filter_map(|c| <[u8; 8]>::try_from(c).ok())
        .map(|b| ReservationKey(u64::from_be_bytes(b)))
        .collect();
    Ok((
        KeyList {
            generation: u64::from(header.generation.get()),
            keys,
        },
        available < declared,
    ))
}

/// A decoded READ RESERVATION response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadReservation {
    /// PRgeneration.
    pub generation: u64,
    /// `(holder key, type)` when reserved.
    pub reservation: Option<(ReservationKey, u8)>,
}

/// Decodes a READ RESERVATION response.
pub fn decode_read_reservation(data: &[u8]) -> Result<ReadReservation, DecodeError> {
    let (header, rest) =
        PrinHeader::read_from_prefix(data).map_err(|_| DecodeError::Malformed("short header"))?;
    let generation = u64::from(header.generation.get());
    match header.additional_length.get() {
        0 => Ok(ReadReservation {
            generation,
            reservation: None,
        }),
        0x10 => {
            let (d, _) = ReservationDescriptor::read_from_prefix(rest)
                .map_err(|_| DecodeError::Malformed("short reservation descriptor"))?;
            Ok(ReadReservation {
                generation,
                reservation: Some((ReservationKey(d.reservation_key.get()), d.scope_type & 0x0f)),
            })
        }
        _ => Err(DecodeError::Malformed("reservation descriptor length")),
    }
}

/// Decoded sense data (fixed or descriptor format).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sense {
    /// Sense key.
    pub key: u8,
    /// Additional sense code.
    pub asc: u8,
    /// Additional sense code qualifier.
    pub ascq: u8,
}

impl Sense {
    /// Decodes sense bytes; `None` when too short or of an unknown response code.
    pub fn decode(sense: &[u8]) -> Option<Sense> {
        let code = sense.first()? & 0x7f;
        match code {
            // Fixed format: key in byte 2, ASC/ASCQ in bytes 12/13 (absent when the
            // additional length is short: report them as 0).
            0x70 | 0x71 => Some(Sense {
                key: sense.get(2)? & 0x0f,
                asc: sense.get(12).copied().unwrap_or(0),
                ascq: sense.get(13).copied().unwrap_or(0),
            }),
            0x72 | 0x73 => Some(Sense {
                key: sense.get(1)? & 0x0f,
                asc: sense.get(2).copied().unwrap_or(0),
                ascq: sense.get(3).copied().unwrap_or(0),
            }),
            _ => None,
        }
    }

    /// A short description of the common reservation-related conditions.
    pub fn describe(&self) -> &'static str {
        match (self.key, self.asc, self.ascq) {
            (0x6, 0x29, _) => "power on or reset",
            (0x6, 0x2a, 0x03) => "reservations released",
            (0x6, 0x2a, 0x04) => "reservations preempted",
            (0x6, 0x2a, 0x05) => "registrations preempted",
            (0x6, _, _) => "unit attention",
            (0x5, 0x20, 0x00) => "invalid command operation code",
            (0x5, 0x24, 0x00) => "invalid field in CDB",
            (0x5, 0x26, _) => "invalid field in parameter list",
            (0x5, _, _) => "illegal request",
            (0x2, _, _) => "not ready",
            (0x3, _, _) => "medium error",
            (0x4, _, _) => "hardware error",
            _ => "other",
        }
    }
}

/// A failed SCSI command.
#[derive(Debug, thiserror::Error)]
pub enum ScsiError {
    /// The ioctl itself failed (not a SCSI device, no permission).
    #[error("SG_IO failed: {0} (is this a SCSI device with SCSI generic support?)")]
    Ioctl(#[source] std::io::Error),
    /// The command reached no device (host or driver error).
    #[error("transport error (host status {host:#x}, driver status {driver:#x})")]
    Transport {
        /// `host_status` of the SG_IO header.
        host: u16,
        /// `driver_status` of the SG_IO header.
        driver: u16,
    },
    /// The device refused: another node holds the reservation and we are not registered.
    #[error("RESERVATION CONFLICT")]
    ReservationConflict,
    /// CHECK CONDITION that retrying did not clear.
    #[error("CHECK CONDITION: sense key {:#x} asc {:#04x} ascq {:#04x} ({})", .0.key, .0.asc, .0.ascq, .0.describe())]
    CheckCondition(Sense),
    /// CHECK CONDITION without decodable sense data, or another status.
    #[error("SCSI status {0:#04x}")]
    Status(u8),
    /// A response could not be decoded.
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

/// The data phase of one command.
pub enum DataPhase<'a> {
    /// No data.
    None,
    /// Data to the device.
    ToDevice(&'a [u8]),
    /// Data from the device; the transport returns how many bytes arrived.
    FromDevice(&'a mut [u8]),
}

/// What a device answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completion {
    /// SCSI status byte.
    pub status: u8,
    /// Host adapter status (0 = ok).
    pub host_status: u16,
    /// Driver status, without the "sense valid" bit.
    pub driver_status: u16,
    /// Sense data, if the device returned some.
    pub sense: Option<Sense>,
    /// Bytes transferred from the device.
    pub transferred: usize,
}

/// Something that executes SCSI commands: SG_IO on a device, or a model target in tests.
pub trait ScsiTransport: Send {
    /// Executes one command.
    fn execute(&mut self, cdb: &[u8], data: DataPhase<'_>) -> Result<Completion, std::io::Error>;
}

/// The `sg_io_hdr` of `<scsi/sg.h>`.
#[repr(C)]
struct SgIoHdr {
    interface_id: libc::c_int,
    dxfer_direction: libc::c_int,
    cmd_len: libc::c_uchar,
    mx_sb_len: libc::c_uchar,
    iovec_count: libc::c_ushort,
    dxfer_len: libc::c_uint,
    dxferp: *mut libc::c_void,
    cmdp: *const libc::c_uchar,
    sbp: *mut libc::c_uchar,
    timeout: libc::c_uint,
    flags: libc::c_uint,
    pack_id: libc::c_int,
    usr_ptr: *mut libc::c_void,
    status: libc::c_uchar,
    masked_status: libc::c_uchar,
    msg_status: libc::c_uchar,
    sb_len_wr: libc::c_uchar,
    host_status: libc::c_ushort,
    driver_status: libc::c_ushort,
    resid: libc::c_int,
    duration: libc::c_uint,
    info: libc::c_uint,
}

const SG_IO: libc::c_ulong = 0x2285;
const SG_DXFER_NONE: libc::c_int = -1;
const SG_DXFER_TO_DEV: libc::c_int = -2;
const SG_DXFER_FROM_DEV: libc::c_int = -3;
/// The "sense buffer valid" bit of `driver_status`.
const DRIVER_SENSE: u16 = 0x08;

nix::ioctl_readwrite_bad!(
    /// The SG_IO ioctl: one synchronous SCSI command.
    sg_io_ioctl,
    SG_IO,
    SgIoHdr
);

/// SG_IO on an open SCSI device (`/dev/sdX` or `/dev/sgN`).
pub struct SgDevice {
    file: File,
}

impl SgDevice {
    /// Opens the device read-write (SG_IO with data-out needs write access).
    pub fn open(path: &Path) -> std::io::Result<SgDevice> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags_nonblock()
            .open(path)?;
        Ok(SgDevice { file })
    }
}

/// `O_NONBLOCK` on open: a reserved or not-ready device must not block the open.
trait NonBlockOpen {
    fn custom_flags_nonblock(&mut self) -> &mut Self;
}

impl NonBlockOpen for OpenOptions {
    fn custom_flags_nonblock(&mut self) -> &mut Self {
        std::os::unix::fs::OpenOptionsExt::custom_flags(self, libc::O_NONBLOCK)
    }
}

impl ScsiTransport for SgDevice {
    fn execute(&mut self, cdb: &[u8], data: DataPhase<'_>) -> Result<Completion, std::io::Error> {
        let mut sense = [0u8; SENSE_BYTES_MAX];
        let (direction, ptr, len) = match data {
            DataPhase::None => (SG_DXFER_NONE, std::ptr::null_mut(), 0usize),
            DataPhase::ToDevice(d) => (SG_DXFER_TO_DEV, d.as_ptr() as *mut libc::c_void, d.len()),
            DataPhase::FromDevice(d) => (SG_DXFER_FROM_DEV, d.as_mut_ptr().cast(), d.len()),
        };
        let mut hdr = SgIoHdr {
            interface_id: libc::c_int::from(b'S'),
            dxfer_direction: direction,
            cmd_len: u8::try_from(cdb.len()).map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::InvalidInput, "CDB too long")
            })?,
            mx_sb_len: SENSE_BYTES_MAX as u8,
            iovec_count: 0,
            dxfer_len: u32::try_from(len).map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::InvalidInput, "transfer too long")
            })?,
            dxferp: ptr,
            cmdp: cdb.as_ptr(),
            sbp: sense.as_mut_ptr(),
            timeout: COMMAND_TIMEOUT_MS,
            flags: 0,
            pack_id: 0,
            usr_ptr: std::ptr::null_mut(),
            status: 0,
            masked_status: 0,
            msg_status: 0,
            sb_len_wr: 0,
            host_status: 0,
            driver_status: 0,
            resid: 0,
            duration: 0,
            info: 0,
        };
        // SAFETY: every pointer in hdr refers to a live buffer of the stated length for the
        // duration of the (synchronous) ioctl.
        unsafe { sg_io_ioctl(self.file.as_raw_fd(), &mut hdr) }.map_err(std::io::Error::from)?;
        let sense_len = usize::from(hdr.sb_len_wr).min(SENSE_BYTES_MAX);
        let resid = usize::try_from(hdr.resid.max(0)).unwrap_or(0);
        Ok(Completion {
            status: hdr.status,
            host_status: hdr.host_status,
            driver_status: hdr.driver_status & !DRIVER_SENSE,
            sense: Sense::decode(&sense[..sense_len]),
            transferred: len.saturating_sub(resid),
        })
    }
}

/// Runs a command with the retry policy; returns the bytes transferred from the device.
pub fn run(
    transport: &mut dyn ScsiTransport,
    cdb: &[u8],
    mut data: DataPhase<'_>,
) -> Result<usize, ScsiError> {
    let mut attempt = 0;
    loop {
        let phase = match &mut data {
            DataPhase::None => DataPhase::None,
            DataPhase::ToDevice(d) => DataPhase::ToDevice(d),
            DataPhase::FromDevice(d) => DataPhase::FromDevice(d),
        };
        let c = transport.execute(cdb, phase).map_err(ScsiError::Ioctl)?;
        if c.host_status != 0 || c.driver_status != 0 {
            return Err(ScsiError::Transport {
                host: c.host_status,
                driver: c.driver_status,
            });
        }
        let retry = match (c.status, c.sense) {
            (STATUS_GOOD, _) => return Ok(c.transferred),
            (STATUS_RESERVATION_CONFLICT, _) => return Err(ScsiError::ReservationConflict),
            (STATUS_CHECK_CONDITION, Some(s)) if s.key == SENSE_KEY_UNIT_ATTENTION => {
                tracing::info!(
                    opcode = cdb.first().copied().unwrap_or(0),
                    asc = s.asc,
                    ascq = s.ascq,
                    what = s.describe(),
                    "unit attention; retrying"
                );
                ScsiError::CheckCondition(s)
            }
            (STATUS_CHECK_CONDITION, Some(s)) => return Err(ScsiError::CheckCondition(s)),
            (STATUS_BUSY, _) => ScsiError::Status(STATUS_BUSY),
            (status, _) => return Err(ScsiError::Status(status)),
        };
        attempt += 1;
        if attempt > UNIT_ATTENTION_RETRIES_MAX {
            return Err(retry);
        }
    }
}

/// SCSI-3 persistent reservations of one device, as one node uses them.
pub struct ScsiReservation {
    transport: Box<dyn ScsiTransport>,
    path: String,
    key: ReservationKey,
    /// Try PREEMPT AND ABORT first (falls back to PREEMPT on ILLEGAL REQUEST: tgt lacks it).
    preempt_abort: bool,
    held_generation: Option<u64>,
}

impl ScsiReservation {
    /// Opens `path` (a SCSI disk or its sg node) with SG_IO.
    pub fn open(path: &Path, key: ReservationKey) -> Result<ScsiReservation, ReserveError> {
        let shown = path.display().to_string();
        let dev = SgDevice::open(path).map_err(|source| ReserveError::Io {
            path: shown.clone(),
            source,
        })?;
        Ok(ScsiReservation::with_transport(Box::new(dev), shown, key))
    }

    /// Uses any transport (a model target in tests).
    pub fn with_transport(
        transport: Box<dyn ScsiTransport>,
        path: String,
        key: ReservationKey,
    ) -> ScsiReservation {
        assert!(key.0 != 0, "key 0 is reserved");
        ScsiReservation {
            transport,
            path,
            key,
            preempt_abort: true,
            held_generation: None,
        }
    }

    fn err(&self, source: ScsiError) -> ReserveError {
        ReserveError::Scsi {
            path: self.path.clone(),
            source,
        }
    }

    fn out(&mut self, action: ProutAction, key: u64, sa_key: u64) -> Result<(), ScsiError> {
        let (cdb, params) = prout(action, TYPE_WRITE_EXCLUSIVE_REGISTRANTS_ONLY, key, sa_key);
        run(
            self.transport.as_mut(),
            cdb.as_bytes(),
            DataPhase::ToDevice(params.as_bytes()),
        )
        .map(drop)
    }

    /// TEST UNIT READY (also consumes a pending unit attention).
    pub fn test_unit_ready(&mut self) -> Result<(), ReserveError> {
        let cdb = test_unit_ready();
        run(self.transport.as_mut(), cdb.as_bytes(), DataPhase::None)
            .map(drop)
            .map_err(|e| self.err(e))
    }

    fn read_reservation_raw(&mut self) -> Result<ReadReservation, ReserveError> {
        let cdb = prin(
            PrinAction::ReadReservation,
            READ_RESERVATION_ALLOCATION_BYTES,
        );
        let mut buf = [0u8; READ_RESERVATION_ALLOCATION_BYTES as usize];
        let n = run(
            self.transport.as_mut(),
            cdb.as_bytes(),
            DataPhase::FromDevice(&mut buf),
        )
        .map_err(|e| self.err(e))?;
        decode_read_reservation(&buf[..n.min(buf.len())]).map_err(|e| self.err(e.into()))
    }

    fn conflict(&mut self) -> ReserveError {
        match self.read_reservation_raw() {
            Ok(ReadReservation {
                reservation: Some((holder, _)),
                ..
            }) => ReserveError::Conflict {
                path: self.path.clone(),
                holder,
            },
            Ok(_) => self.err(ScsiError::ReservationConflict),
            Err(e) => e,
        }
    }

    fn hold_generation(&mut self) -> Result<u64, ReserveError> {
        let g = self.read_keys()?.generation;
        self.held_generation = Some(g);
        Ok(g)
    }
}

impl Reservations for ScsiReservation {
    fn path(&self) -> &str {
        &self.path
    }

    fn key(&self) -> ReservationKey {
        self.key
    }

    fn register(&mut self) -> Result<(), ReserveError> {
        self.out(ProutAction::RegisterAndIgnoreExistingKey, 0, self.key.0)
            .map_err(|e| self.err(e))
    }

    fn reserve(&mut self) -> Result<u64, ReserveError> {
        if let ReadReservation {
            reservation: Some((holder, _)),
            ..
        } = self.read_reservation_raw()?
        {
            if holder != self.key {
                return Err(ReserveError::Conflict {
                    path: self.path.clone(),
                    holder,
                });
            }
        }
        self.register()?;
        match self.out(ProutAction::Reserve, self.key.0, 0) {
            Ok(()) => self.hold_generation(),
            Err(ScsiError::ReservationConflict) => Err(self.conflict()),
            Err(e) => Err(self.err(e)),
        }
    }

    fn read_keys(&mut self) -> Result<KeyList, ReserveError> {
        let cdb = prin(PrinAction::ReadKeys, READ_KEYS_ALLOCATION_BYTES);
        let mut buf = [0u8; READ_KEYS_ALLOCATION_BYTES as usize];
        let n = run(
            self.transport.as_mut(),
            cdb.as_bytes(),
            DataPhase::FromDevice(&mut buf),
        )
        .map_err(|e| self.err(e))?;
        let (keys, truncated) =
            decode_read_keys(&buf[..n.min(buf.len())]).map_err(|e| self.err(e.into()))?;
        if truncated {
            tracing::warn!(path = %self.path, "more than {READ_KEYS_MAX} registered keys; list truncated");
        }
        Ok(keys)
    }

    fn read_reservation(&mut self) -> Result<ReservationState, ReserveError> {
        let r = self.read_reservation_raw()?;
        Ok(ReservationState {
            generation: r.generation,
            holder: r.reservation.map(|(k, _)| k),
        })
    }

    fn preempt(&mut self, victim: ReservationKey) -> Result<u64, ReserveError> {
        assert!(victim != self.key, "a node never preempts itself");
        self.register()?;
        let mut result = Err(ScsiError::Status(0xff));
        if self.preempt_abort {
            result = self.out(ProutAction::PreemptAndAbort, self.key.0, victim.0);
            if let Err(ScsiError::CheckCondition(s)) = &result {
                if s.key == SENSE_KEY_ILLEGAL_REQUEST {
                    tracing::info!(path = %self.path, "PREEMPT AND ABORT unsupported; using PREEMPT");
                    self.preempt_abort = false;
                }
            }
        }
        if !self.preempt_abort {
            result = self.out(ProutAction::Preempt, self.key.0, victim.0);
        }
        result.map_err(|e| self.err(e))?;
        // A victim that held no reservation (or had no registration) leaves the disk
        // unreserved after the preempt: reserve it ourselves.
        match self.read_reservation_raw()?.reservation {
            Some((holder, _)) if holder == self.key => {}
            Some((holder, _)) => {
                return Err(ReserveError::Conflict {
                    path: self.path.clone(),
                    holder,
                })
            }
            None => self
                .out(ProutAction::Reserve, self.key.0, 0)
                .map_err(|e| self.err(e))?,
        }
        self.hold_generation()
    }

    fn release(&mut self) -> Result<(), ReserveError> {
        self.held_generation = None;
        if !self.read_keys()?.keys.contains(&self.key) {
            // Preempted or never registered: nothing of ours to release, and an unregister
            // would only bump the holder's PRgeneration on some targets.
            return Ok(());
        }
        match self.out(ProutAction::Release, self.key.0, 0) {
            // Not registered (preempted, never registered): nothing of ours to release.
            Ok(()) | Err(ScsiError::ReservationConflict) => {}
            Err(e) => return Err(self.err(e)),
        }
        // Unregister: under Write Exclusive – Registrants Only a registration is write access.
        self.out(ProutAction::RegisterAndIgnoreExistingKey, 0, 0)
            .map_err(|e| self.err(e))
    }

    fn check_held(&mut self) -> Result<HoldStatus, ReserveError> {
        let keys = self.read_keys()?;
        let r = self.read_reservation_raw()?;
        let holder = r.reservation.map(|(k, _)| k);
        let held = self.held_generation == Some(keys.generation)
            && keys.keys.contains(&self.key)
            && r.reservation == Some((self.key, TYPE_WRITE_EXCLUSIVE_REGISTRANTS_ONLY));
        Ok(if held {
            HoldStatus::Held {
                generation: keys.generation,
            }
        } else {
            HoldStatus::Lost { holder }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prout_cdb_and_parameter_list_bytes() {
        let (cdb, params) = prout(
            ProutAction::Preempt,
            TYPE_WRITE_EXCLUSIVE_REGISTRANTS_ONLY,
            0x0102_0304_0506_0708,
            0xa1,
        );
        assert_eq!(cdb.as_bytes(), &[0x5f, 0x04, 0x05, 0, 0, 0, 0, 0, 24, 0]);
        let p = params.as_bytes();
        assert_eq!(p.len(), 24);
        assert_eq!(&p[..8], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(&p[8..16], &[0, 0, 0, 0, 0, 0, 0, 0xa1]);
        assert!(p[16..].iter().all(|&b| b == 0));
        let (cdb, _) = prout(ProutAction::RegisterAndIgnoreExistingKey, 5, 0, 1);
        assert_eq!(cdb.as_bytes()[1], 0x06);
        let (cdb, _) = prout(ProutAction::PreemptAndAbort, 5, 1, 2);
        assert_eq!(cdb.as_bytes()[1], 0x05);
    }

    #[test]
    fn prin_and_tur_cdb_bytes() {
        assert_eq!(
            prin(PrinAction::ReadKeys, 0x0108).as_bytes(),
            &[0x5e, 0x00, 0, 0, 0, 0, 0, 0x01, 0x08, 0]
        );
        assert_eq!(
            prin(PrinAction::ReadReservation, 24).as_bytes(),
            &[0x5e, 0x01, 0, 0, 0, 0, 0, 0, 24, 0]
        );
        assert_eq!(test_unit_ready().as_bytes(), &[0u8; 6]);
    }

    fn read_keys_response(generation: u32, keys: &[u64], declared: Option<u32>) -> Vec<u8> {
        let mut v = generation.to_be_bytes().to_vec();
        let len = declared.unwrap_or(8 * keys.len() as u32);
        v.extend_from_slice(&len.to_be_bytes());
        for k in keys {
            v.extend_from_slice(&k.to_be_bytes());
        }
        v
    }

    #[test]
    fn read_keys_decodes_and_survives_short_and_lying_buffers() {
        let data = read_keys_response(9, &[0xaa, 0xbb], None);
        let (keys, truncated) = decode_read_keys(&data).expect("decode");
        assert_eq!(keys.generation, 9);
        assert_eq!(keys.keys, vec![ReservationKey(0xaa), ReservationKey(0xbb)]);
        assert!(!truncated);
        // The device declares more keys than the allocation length let through.
        let data = read_keys_response(9, &[0xaa], Some(8 * 100));
        let (keys, truncated) = decode_read_keys(&data).expect("decode");
        assert_eq!(keys.keys.len(), 1);
        assert!(truncated);
        assert!(decode_read_keys(&read_keys_response(1, &[], Some(7))).is_err());
        for len in 0..data.len() {
            let _ = decode_read_keys(&data[..len]);
        }
        assert!(decode_read_keys(&[0u8; 7]).is_err());
    }

    #[test]
    fn read_reservation_decodes_and_survives_short_buffers() {
        let mut data = 3u32.to_be_bytes().to_vec();
        data.extend_from_slice(&0x10u32.to_be_bytes());
        data.extend_from_slice(&0xa1u64.to_be_bytes());
        data.extend_from_slice(&[0, 0, 0, 0, 0, 0x05, 0, 0]);
        assert_eq!(
            decode_read_reservation(&data),
            Ok(ReadReservation {
                generation: 3,
                reservation: Some((ReservationKey(0xa1), 5)),
            })
        );
        for len in 0..data.len() {
            assert!(decode_read_reservation(&data[..len]).is_err(), "len {len}");
        }
        let none = [0, 0, 0, 4, 0, 0, 0, 0];
        assert_eq!(
            decode_read_reservation(&none),
            Ok(ReadReservation {
                generation: 4,
                reservation: None
            })
        );
        let mut odd = none;
        odd[7] = 3;
        assert!(decode_read_reservation(&odd).is_err());
    }

    #[test]
    fn sense_fixed_and_descriptor_formats() {
        let mut fixed = [0u8; 18];
        fixed[0] = 0x70;
        fixed[2] = 0x06;
        fixed[7] = 10;
        fixed[12] = 0x2a;
        fixed[13] = 0x05;
        let s = Sense::decode(&fixed).expect("fixed");
        assert_eq!((s.key, s.asc, s.ascq), (6, 0x2a, 5));
        assert_eq!(s.describe(), "registrations preempted");
        let desc = [0x72, 0x05, 0x24, 0x00, 0, 0, 0, 0];
        let s = Sense::decode(&desc).expect("descriptor");
        assert_eq!((s.key, s.asc, s.ascq), (5, 0x24, 0));
        assert_eq!(Sense::decode(&[]), None);
        assert_eq!(Sense::decode(&[0x70, 0]), None);
        assert_eq!(Sense::decode(&[0x7f; 3]), None);
        // Short fixed sense: key present, ASC/ASCQ absent.
        assert_eq!(
            Sense::decode(&[0xf0, 0, 0x06]),
            Some(Sense {
                key: 6,
                asc: 0,
                ascq: 0
            })
        );
        for len in 0..fixed.len() {
            let _ = Sense::decode(&fixed[..len]);
        }
    }

    /// Answers a fixed sequence of completions.
    struct Scripted(Vec<Completion>);

    impl ScsiTransport for Scripted {
        fn execute(&mut self, _: &[u8], _: DataPhase<'_>) -> Result<Completion, std::io::Error> {
            Ok(self.0.remove(0))
        }
    }

    fn completion(status: u8, sense: Option<Sense>) -> Completion {
        Completion {
            status,
            host_status: 0,
            driver_status: 0,
            sense,
            transferred: 0,
        }
    }

    #[test]
    fn unit_attention_is_retried_a_bounded_number_of_times() {
        let ua = Some(Sense {
            key: SENSE_KEY_UNIT_ATTENTION,
            asc: 0x2a,
            ascq: 0x05,
        });
        let mut t = Scripted(vec![
            completion(STATUS_CHECK_CONDITION, ua),
            completion(STATUS_RESERVATION_CONFLICT, None),
        ]);
        assert!(matches!(
            run(&mut t, &[0; 6], DataPhase::None),
            Err(ScsiError::ReservationConflict)
        ));
        let mut t = Scripted(vec![completion(STATUS_CHECK_CONDITION, ua); 10]);
        assert!(matches!(
            run(&mut t, &[0; 6], DataPhase::None),
            Err(ScsiError::CheckCondition(_))
        ));
        assert_eq!(t.0.len(), 10 - 1 - UNIT_ATTENTION_RETRIES_MAX as usize);
        let mut t = Scripted(vec![Completion {
            host_status: 0x01,
            ..completion(STATUS_GOOD, None)
        }]);
        assert!(matches!(
            run(&mut t, &[0; 6], DataPhase::None),
            Err(ScsiError::Transport { host: 1, .. })
        ));
    }
}
