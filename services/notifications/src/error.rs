//! The one error type of the service, in the domain's words, mapped to a gRPC status once.

use followup_platform::grpc::{failed_precondition, internal, invalid_argument, not_found};
use tonic::Status;

use crate::domain::templates::TemplateError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{field}: {reason}")]
    InvalidArgument { field: String, reason: String },
    #[error("{kind} `{id}` not found")]
    NotFound { kind: &'static str, id: String },
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{reason}")]
    FailedPrecondition {
        violation: &'static str,
        subject: String,
        reason: String,
    },
    #[error("template: {0}")]
    Template(#[from] TemplateError),
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("outbox: {0}")]
    Outbox(#[from] followup_platform::outbox::OutboxError),
    #[error("{0}")]
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }

    pub fn not_found(kind: &'static str, id: impl Into<String>) -> Self {
        Self::NotFound {
            kind,
            id: id.into(),
        }
    }
}

impl From<Error> for Status {
    fn from(err: Error) -> Self {
        match err {
            Error::InvalidArgument { field, reason } => invalid_argument(&field, reason),
            Error::NotFound { kind, id } => not_found(kind, &id),
            Error::AlreadyExists(message) => Status::already_exists(message),
            Error::FailedPrecondition {
                violation,
                subject,
                reason,
            } => failed_precondition(violation, &subject, reason),
            Error::Template(template) => {
                let field = match &template {
                    TemplateError::UnknownVariable { field, .. }
                    | TemplateError::Syntax { field, .. }
                    | TemplateError::Render { field, .. } => *field,
                };
                invalid_argument(&format!("template.{field}"), template.to_string())
            }
            Error::Db(db) => internal(&db),
            Error::Outbox(e) => internal(&e),
            Error::Internal(e) => internal(&e),
        }
    }
}
