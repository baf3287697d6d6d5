//! The plans service's rules in plain Rust: money, teeth, the item dependency graph, the plan's state
//! machine and totals, the catalogue's codes, CSV import and search. No I/O here.

pub mod alternatives;
pub mod catalog;
pub mod graph;
pub mod master;
pub mod money;
pub mod plan;
pub mod tooth;
