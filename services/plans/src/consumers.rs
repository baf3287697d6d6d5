//! What plans consumes: the cases service's word on how an alternative group was settled. Cases sees
//! what plans cannot (a booking of one option); when it supersedes an option it publishes
//! `case_status_changed` to SUPERSEDED, and plans records it so the option can no longer be approved and
//! its money stops counting.

use followup_platform::consumer::{Handler, HandlerError};
use followup_platform::event::Envelope;
use followup_platform::jetstream::{ConsumerSpec, FOLLOWUP};
use followup_proto::followup::common::v1::CaseStatus;
use followup_proto::followup::events::v1 as ev;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::domain::alternatives;
use crate::error::PlansError;
use crate::storage::alternatives as groups_db;

pub fn spec() -> ConsumerSpec {
    ConsumerSpec::new(
        FOLLOWUP,
        "plans-cases",
        "followup.*.cases.case_status_changed",
    )
}

pub struct CaseOutcomes;

impl Handler for CaseOutcomes {
    async fn handle(&self, conn: &mut PgConnection, e: &Envelope) -> Result<(), HandlerError> {
        if e.event_type() != "cases.case_status_changed" {
            return Ok(());
        }
        let change: ev::CaseStatusChanged = e.decode()?;
        let superseded = CaseStatus::Superseded as i32;
        let verdict = if change.to_status == superseded {
            true
        } else if change.from_status == superseded {
            // Staff reopened a superseded option: it is in play again.
            false
        } else {
            return Ok(());
        };
        let plan = Uuid::parse_str(change.case_id.trim()).map_err(|_| {
            HandlerError::Invalid(format!("case_id `{}` is not a UUID", change.case_id))
        })?;
        let by = alternatives::accepted_by(&change.cause, &change.cause_event_id);
        groups_db::record_from_cases(conn, &e.tenant_id, plan, verdict, by, e.occurred_at)
            .await
            .map_err(handler_error)?;
        tracing::info!(tenant = %e.tenant_id, plan_id = %plan, superseded = verdict, "alternative group outcome from cases");
        Ok(())
    }
}

fn handler_error(err: PlansError) -> HandlerError {
    match err {
        PlansError::Storage(db) => db.into(),
        other => HandlerError::Transient(other.to_string()),
    }
}
