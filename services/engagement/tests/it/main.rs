//! Integration tests of the engagement service against real PostgreSQL and NATS (testkit).

mod facts;
mod ingest;
mod support;
