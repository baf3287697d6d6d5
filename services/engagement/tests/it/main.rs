//! Integration tests of the engagement service against real PostgreSQL and NATS (testkit).

mod browser;
mod crash;
mod facts;
mod ingest;
mod support;
