//! The NVRAM log: region, records, group-committed append, mirror to the partner, replay.
