//! Integration tests of the notifications service: the real service against a private NATS, a fresh
//! PostgreSQL database, and real local HTTP and SMTP servers standing in for the providers.

mod api;
mod crash;
mod delivery;
mod edges;
mod once;
mod support;
