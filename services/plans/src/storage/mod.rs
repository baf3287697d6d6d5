//! PostgreSQL: the clinic's catalogue and its plans. Every table has tenant_id; every query filters by it.

pub mod alternatives;
pub mod catalog;
pub mod plans;
