//! The plans service, started for real (port 0) against a fresh database and a private nats-server.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod alternatives;
mod catalog;
mod events;
mod grpc_web;
mod plans;
mod portal;
mod support;
