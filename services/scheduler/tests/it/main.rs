//! The scheduler against real NATS and PostgreSQL, with a clock the tests move.

mod api;
mod crash;
mod dryrun;
mod stops;
mod support;
mod timer;
mod triggers;
mod waitlist;
