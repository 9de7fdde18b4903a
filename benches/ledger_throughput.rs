//! Consensus throughput over loopback (being written).
fn main() {}
