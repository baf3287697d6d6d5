//! The platform's integration tests: real PostgreSQL (a fresh database per test) and a private
//! `nats-server` per test.
#![allow(clippy::unwrap_used)]

mod auth;
mod browser;
mod consumer;
mod nats_auth;
mod outbox;
mod serve;
mod support;
