//! The scheduler's rules, conditions, facts and schedules as plain Rust: no database, no network. Most of
//! the unit tests live here.

pub mod backtest;
pub mod condition;
pub mod enrollment;
pub mod facts;
pub mod pacing;
pub mod preview;
pub mod rule;
pub mod schedule;
pub mod waitlist;

use std::fmt;

/// A problem with one field of a request, by its path in the request (`condition.all[1].comparison`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    pub path: String,
    pub message: String,
}

impl FieldError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }

    /// The same error, one level deeper in a request (`rule` + `name` = `rule.name`).
    pub fn within(self, prefix: &str) -> Self {
        if prefix.is_empty() {
            self
        } else {
            Self {
                path: format!("{prefix}.{}", self.path),
                message: self.message,
            }
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

impl std::error::Error for FieldError {}
