//! The one error enum of the cases service, and how it becomes a gRPC status (once, here).

use followup_platform::grpc::{failed_precondition, internal, invalid_argument, not_found};

use crate::domain::case::DomainError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request field is wrong; the reason says how to fix it.
    #[error("{field}: {reason}")]
    InvalidArgument { field: String, reason: String },
    /// No such case in the caller's clinic.
    #[error("case `{0}` not found")]
    CaseNotFound(String),
    /// AssignOwner named a staff id the service has not heard of (staff.upserted).
    #[error("staff `{0}` is not known to the cases service")]
    UnknownStaff(String),
    /// A staff action the case's state refuses.
    #[error(transparent)]
    Domain(#[from] DomainError),
    /// A stored case could not be read back: a bug or a hand-edited row.
    #[error("stored case {case_id} is unreadable: {reason}")]
    Corrupt { case_id: String, reason: String },
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("outbox: {0}")]
    Outbox(#[from] followup_platform::outbox::OutboxError),
    #[error("event: {0}")]
    Event(#[from] followup_platform::event::EventError),
}

impl Error {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(err: Error) -> Self {
        match err {
            Error::InvalidArgument { field, reason } => invalid_argument(&field, reason),
            Error::CaseNotFound(id) => not_found("case", &id),
            Error::UnknownStaff(id) => invalid_argument(
                "owner_staff_id",
                format!(
                    "staff `{id}` is not known to the cases service; it learns staff from \
                     clinic.<tenant>.staff.upserted events"
                ),
            ),
            Error::Domain(domain) => match domain {
                DomainError::StatusNotSettable(_) | DomainError::ReopenWithoutReason => {
                    let field = if matches!(domain, DomainError::ReopenWithoutReason) {
                        "reason"
                    } else {
                        "status"
                    };
                    invalid_argument(field, domain.to_string())
                }
                DomainError::StatusChanged { .. } => {
                    failed_precondition("STATUS_CHANGED", "expected_status", domain.to_string())
                }
            },
            other @ (Error::Corrupt { .. } | Error::Db(_) | Error::Outbox(_) | Error::Event(_)) => {
                internal(&other)
            }
        }
    }
}
