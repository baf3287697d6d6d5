//! Whole-system tests live in `tests/tests/`.

/// The five service binaries as child processes, with kill -9 and restart (fault and load runs).
pub mod procs;
