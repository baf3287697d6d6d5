//! Whole-system tests: the five services in-process (`followup_e2e::Stack`), one real NATS, a real
//! PostgreSQL database per service. One binary, so the services are linked once.
#![allow(clippy::unwrap_used)]

mod isolation;
mod journey;
