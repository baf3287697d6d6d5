//! The cases service against real PostgreSQL and NATS: a fresh database and a private nats-server per
//! test, events published as their producers publish them, every RPC called over gRPC.
#![allow(clippy::unwrap_used)]

mod flow;
mod rpc;
mod support;
mod timers;
