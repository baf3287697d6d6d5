//! The scheduler's load generator (written with the benchmark stage).

fn main() {}
