//! The scheduler's one error type, in the domain's words; the gRPC edge maps it to a status once.

use followup_platform::grpc::{failed_precondition, internal, invalid_argument, not_found};

use crate::domain::FieldError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request field is wrong; the path names it.
    #[error("{0}")]
    Invalid(#[from] FieldError),
    #[error("{what} `{id}` not found")]
    NotFound { what: &'static str, id: String },
    #[error("{0}")]
    AlreadyExists(String),
    /// The request is fine but the resource's state forbids it (e.g. deleting a playing rule).
    #[error("{message}")]
    FailedPrecondition {
        kind: &'static str,
        subject: String,
        message: String,
    },
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("outbox: {0}")]
    Outbox(#[from] followup_platform::outbox::OutboxError),
    /// Stored data the service cannot read (a bug or a hand-edited row).
    #[error("corrupt stored data: {0}")]
    Corrupt(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn not_found(what: &'static str, id: impl Into<String>) -> Self {
        Self::NotFound {
            what,
            id: id.into(),
        }
    }

    pub fn precondition(
        kind: &'static str,
        subject: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self::FailedPrecondition {
            kind,
            subject: subject.into(),
            message: message.into(),
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(err: Error) -> Self {
        match err {
            Error::Invalid(field) => invalid_argument(&field.path, field.message),
            Error::NotFound { what, id } => not_found(what, &id),
            Error::AlreadyExists(message) => tonic::Status::already_exists(message),
            Error::FailedPrecondition {
                kind,
                subject,
                message,
            } => failed_precondition(kind, &subject, message),
            // A lost connection or a pool timeout is worth retrying; everything else is ours to fix.
            Error::Db(db) if followup_platform::db::is_transient(&db) => {
                tonic::Status::unavailable("the database is unavailable; retry shortly")
            }
            other => internal(&other),
        }
    }
}

impl From<Error> for followup_platform::consumer::HandlerError {
    fn from(err: Error) -> Self {
        use followup_platform::consumer::HandlerError;
        match err {
            Error::Db(db) => db.into(),
            Error::Outbox(outbox) => outbox.into(),
            Error::Invalid(field) => HandlerError::Invalid(field.to_string()),
            // Stored data that cannot be read will not heal by itself; neither will a missing rule.
            other => HandlerError::Transient(other.to_string()),
        }
    }
}
