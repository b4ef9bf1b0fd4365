//! The write-anywhere file system on a RAID-4 aggregate.
