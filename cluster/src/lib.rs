//! The HA pair: interconnect, failover monitor, takeover/giveback state machine, reservations.
