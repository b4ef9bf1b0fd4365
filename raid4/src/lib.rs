//! Disks on io_uring and RAID-4 groups.
