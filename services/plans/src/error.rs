//! The plans service's one error enum, in the domain's words. The gRPC edge maps it to a status once
//! (here); the portal maps it to an HTTP status with a JSON body (`http::portal`).

use followup_platform::grpc::{
    already_exists, failed_precondition, internal, invalid_arguments, not_found,
};

#[derive(Debug, thiserror::Error)]
pub enum PlansError {
    /// One or more fields of a request are wrong: (field, what is wrong).
    #[error("{}", describe(.0))]
    Invalid(Vec<(String, String)>),
    /// An item dependency would close a cycle; the path names the items, first repeated last.
    #[error("depends_on_item_ids: dependency cycle {}", .path.join(" -> "))]
    Cycle { path: Vec<String> },
    /// No such resource in the caller's clinic (another clinic's resource is not found either).
    #[error("{kind} `{name}` not found")]
    NotFound { kind: &'static str, name: String },
    /// What the request would create (or rename to) already exists in the caller's clinic.
    #[error("{description}")]
    AlreadyExists {
        kind: &'static str,
        name: String,
        description: String,
    },
    /// The request is valid but the resource's state forbids it. `kind` is a machine-readable type
    /// (AIP-193 PreconditionFailure), `subject` what it is about.
    #[error("{description}")]
    Precondition {
        kind: &'static str,
        subject: String,
        description: String,
    },
    /// Approve refused: each required field still empty, as "item 3 (D6010): practitioner_id is empty".
    #[error("the plan cannot be approved: {}", .0.join("; "))]
    MissingFields(Vec<String>),
    /// Approve refused: another option of the plan's alternative group was chosen.
    #[error(
        "plan {plan_id} is superseded: {} of its alternative group was chosen on {}; only the chosen option can be approved (to offer this treatment again, create a new plan)",
        .by.chosen(),
        .by.at.format("%Y-%m-%d %H:%M UTC")
    )]
    Superseded {
        plan_id: uuid::Uuid,
        by: crate::domain::alternatives::Supersession,
    },
    /// Two writers raced on the same row.
    #[error("{0}")]
    Conflict(String),
    #[error("storage: {0}")]
    Storage(#[from] sqlx::Error),
    #[error("outbox: {0}")]
    Outbox(#[from] followup_platform::outbox::OutboxError),
    #[error("{0}")]
    Internal(String),
}

fn describe(violations: &[(String, String)]) -> String {
    violations
        .iter()
        .map(|(field, reason)| format!("{field}: {reason}"))
        .collect::<Vec<_>>()
        .join("; ")
}

impl PlansError {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Invalid(vec![(field.into(), reason.into())])
    }

    pub fn not_found(kind: &'static str, name: impl Into<String>) -> Self {
        Self::NotFound {
            kind,
            name: name.into(),
        }
    }

    pub fn already_exists(kind: &'static str, name: impl Into<String>) -> Self {
        let name = name.into();
        Self::AlreadyExists {
            kind,
            description: format!("the clinic already has a {kind} named `{name}`"),
            name,
        }
    }

    pub fn precondition(
        kind: &'static str,
        subject: impl Into<String>,
        description: impl Into<String>,
    ) -> Self {
        Self::Precondition {
            kind,
            subject: subject.into(),
            description: description.into(),
        }
    }

    /// Prefixes every field of an `Invalid` error, e.g. `tooth` → `item.tooth`.
    pub fn in_field(self, prefix: &str) -> Self {
        match self {
            Self::Invalid(violations) => Self::Invalid(
                violations
                    .into_iter()
                    .map(|(field, reason)| (format!("{prefix}.{field}"), reason))
                    .collect(),
            ),
            other => other,
        }
    }
}

pub type Result<T, E = PlansError> = std::result::Result<T, E>;

impl From<PlansError> for tonic::Status {
    fn from(err: PlansError) -> Self {
        match err {
            PlansError::Invalid(violations) => invalid_arguments(violations),
            PlansError::Cycle { .. } => invalid_arguments(vec![(
                "depends_on_item_ids".into(),
                err.to_string()
                    .trim_start_matches("depends_on_item_ids: ")
                    .to_string(),
            )]),
            PlansError::NotFound { kind, name } => not_found(kind, &name),
            PlansError::AlreadyExists {
                kind,
                name,
                description,
            } => already_exists(kind, &name, description),
            PlansError::Precondition {
                kind,
                subject,
                description,
            } => failed_precondition(kind, &subject, description),
            PlansError::MissingFields(_) => {
                failed_precondition("MISSING_REQUIRED_FIELDS", "plan", err.to_string())
            }
            PlansError::Superseded { plan_id, .. } => {
                failed_precondition("PLAN_SUPERSEDED", &plan_id.to_string(), err.to_string())
            }
            PlansError::Conflict(message) => tonic::Status::aborted(message),
            // A unique index caught two requests racing (a schedule name, the one default schedule).
            PlansError::Storage(sqlx::Error::Database(ref db))
                if db.code().as_deref() == Some("23505") =>
            {
                tonic::Status::aborted(
                    "a concurrent request changed the same thing; read it again and retry",
                )
            }
            PlansError::Storage(ref cause) if followup_platform::db::is_transient(cause) => {
                tracing::warn!(error = %cause, "transient storage error");
                tonic::Status::unavailable("the database is briefly unavailable; retry")
            }
            PlansError::Storage(_) | PlansError::Outbox(_) | PlansError::Internal(_) => {
                internal(&err)
            }
        }
    }
}
