//! What every Followup service does, done once.
//!
//! A service crate brings its domain, its storage, its gRPC/HTTP adapters and its migrations; this crate
//! brings the rest, the same way for all five:
//!
//! - [`config`]: figment layering (defaults → optional file → env `FOLLOWUP__*` → env `FOLLOWUP_<SERVICE>__*`),
//!   validated at start with an error that names the key; secrets never printed;
//! - [`telemetry`]: JSON logs, OTLP traces when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, W3C `traceparent` on
//!   NATS headers and gRPC metadata;
//! - [`metrics`] and [`admin`]: `/healthz`, `/readyz`, `/metrics` on the admin port;
//! - [`clock`]: the one source of "now" for timers, a [`clock::ManualClock`] in tests;
//! - [`shutdown`]: SIGTERM/SIGINT → stop intake, finish in-flight work, flush telemetry;
//! - [`db`]: the pool and migrations (the platform's own tables, then the service's);
//! - [`jetstream`]: every stream declared in one place, consumers declared idempotently;
//! - [`nats_auth`]: the NATS users (services, clinic integrations, admin) and what each may publish and
//!   subscribe to;
//! - [`event`], [`outbox`], [`consumer`]: events out through a transactional outbox, events in through an
//!   inbox recorded in the handler's transaction, undecodable events to `deadletter.<stream>`;
//! - [`auth`]: staff/system JWTs on gRPC, portal link tokens;
//! - [`pacing`]: quiet hours (DST-correct local times) and the weekly cap, for notifications and the scheduler;
//! - [`grpc`]: the server every service runs (health, reflection, gRPC-Web, auth, tracing, metrics) and error mapping;
//! - [`asyncapi`]: the event contract (`docs/asyncapi.json`), generated from the subject table and descriptors;
//! - [`service`]: start a service from its parts and run it, with `serve` and `migrate` subcommands;
//! - `testkit` (feature): a private NATS server, a fresh database, tokens for any clinic and role.

pub mod admin;
pub mod asyncapi;
pub mod auth;
pub mod clock;
pub mod config;
pub mod consumer;
pub mod db;
pub mod event;
pub mod grpc;
pub mod jetstream;
pub mod metrics;
pub mod nats_auth;
pub mod outbox;
pub mod pacing;
pub mod service;
pub mod shutdown;
pub mod telemetry;

#[cfg(feature = "local")]
pub mod local;

#[cfg(feature = "testkit")]
pub mod testkit;

pub use config::CommonConfig;
pub use service::{Platform, Running, ServiceInfo};
