//! The twinfiler node.
