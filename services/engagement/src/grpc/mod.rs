//! The gRPC edge of the engagement service: the facts of one plan, of several, and a plan's page views.

use std::collections::HashMap;

use base64::Engine as _;
use chrono::{DateTime, Utc};
use followup_platform::auth::{Authenticator, Role, caller};
use followup_platform::event::timestamp;
use followup_platform::grpc::GrpcServices;
use followup_proto::followup::engagement::v1::engagement_service_server::{
    EngagementService, EngagementServiceServer,
};
use followup_proto::followup::engagement::v1::{
    BatchGetPlanEngagementsRequest, BatchGetPlanEngagementsResponse, GetPlanEngagementRequest,
    GetPlanEngagementResponse, ListViewSessionsRequest, ListViewSessionsResponse, PlanEngagement,
    ViewSession,
};
use sqlx::PgPool;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::consumers::updates::{duration, section_times};
use crate::domain::Section;
use crate::error::Error;
use crate::storage::{self, PlanFacts};

/// The most plan ids one BatchGetPlanEngagements may ask for.
pub const MAX_BATCH: usize = 500;
const DEFAULT_PAGE: i32 = 50;
const MAX_PAGE: i32 = 500;

/// Every API of the service, each behind the JWT interceptor.
pub fn services(auth: Authenticator, pool: PgPool) -> GrpcServices {
    GrpcServices::new().with(EngagementServiceServer::with_interceptor(
        EngagementServiceApi { pool },
        auth.clone(),
    ))
}

/// `followup.engagement.v1.EngagementService`.
#[derive(Clone)]
pub struct EngagementServiceApi {
    pool: PgPool,
}

fn plan_id(field: &str, value: &str) -> Result<Uuid, Error> {
    if value.is_empty() {
        return Err(Error::invalid(field, "missing: the plan's id (a UUID)"));
    }
    Uuid::parse_str(value).map_err(|_| {
        Error::invalid(
            field,
            format!(
                "`{}` is not a plan id (a UUID such as 0190f1c2-5d1e-7c3a-9b2e-4f6a8d0c1e23)",
                value.chars().take(60).collect::<String>()
            ),
        )
    })
}

fn engagement(plan_id: Uuid, facts: Option<&PlanFacts>) -> PlanEngagement {
    let Some(facts) = facts else {
        return PlanEngagement {
            plan_id: plan_id.to_string(),
            ..Default::default()
        };
    };
    PlanEngagement {
        plan_id: plan_id.to_string(),
        patient_id: facts.patient_id.clone(),
        viewed: facts.view_count > 0,
        first_view_time: Some(timestamp(facts.first_view_at)),
        last_view_time: Some(timestamp(facts.last_view_at)),
        view_count: facts.view_count,
        total_view_time: Some(duration(facts.total_view_ms)),
        section_times: section_times(&facts.section_ms()),
        last_section: facts.last_section().map(Section::number).unwrap_or(0),
        update_time: Some(timestamp(facts.updated_at)),
    }
}

/// Page tokens are opaque to clients: the keyset position of the last session returned.
fn encode_page_token(start: DateTime<Utc>, session_id: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(format!("{}|{session_id}", start.timestamp_micros()))
}

fn decode_page_token(token: &str) -> Result<(DateTime<Utc>, String), Error> {
    let bad = || {
        Error::invalid(
            "page_token",
            "not a token this API returned: pass next_page_token unchanged, or empty for the first page",
        )
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| bad())?;
    let text = String::from_utf8(bytes).map_err(|_| bad())?;
    let (micros, session) = text.split_once('|').ok_or_else(bad)?;
    let at = micros
        .parse::<i64>()
        .ok()
        .and_then(DateTime::from_timestamp_micros)
        .ok_or_else(bad)?;
    Ok((at, session.to_string()))
}

#[tonic::async_trait]
impl EngagementService for EngagementServiceApi {
    async fn get_plan_engagement(
        &self,
        request: Request<GetPlanEngagementRequest>,
    ) -> Result<Response<GetPlanEngagementResponse>, Status> {
        let caller = caller(&request)?;
        caller.require(&Role::ALL)?;
        let id = plan_id("plan_id", &request.get_ref().plan_id)?;
        let facts = storage::plan_facts(&self.pool, &caller.tenant, &[id])
            .await
            .map_err(Error::from)?;
        Ok(Response::new(GetPlanEngagementResponse {
            engagement: Some(engagement(id, facts.first())),
        }))
    }

    async fn batch_get_plan_engagements(
        &self,
        request: Request<BatchGetPlanEngagementsRequest>,
    ) -> Result<Response<BatchGetPlanEngagementsResponse>, Status> {
        let caller = caller(&request)?;
        caller.require(&Role::ALL)?;
        let ids = &request.get_ref().plan_ids;
        if ids.is_empty() || ids.len() > MAX_BATCH {
            return Err(Error::invalid(
                "plan_ids",
                format!("ask for 1 to {MAX_BATCH} plans at once, not {}", ids.len()),
            )
            .into());
        }
        let ids = ids
            .iter()
            .enumerate()
            .map(|(i, id)| plan_id(&format!("plan_ids[{i}]"), id))
            .collect::<Result<Vec<_>, _>>()?;
        let facts = storage::plan_facts(&self.pool, &caller.tenant, &ids)
            .await
            .map_err(Error::from)?;
        let by_id: HashMap<Uuid, &PlanFacts> = facts.iter().map(|f| (f.plan_id, f)).collect();
        Ok(Response::new(BatchGetPlanEngagementsResponse {
            engagements: ids
                .iter()
                .map(|id| engagement(*id, by_id.get(id).copied()))
                .collect(),
        }))
    }

    async fn list_view_sessions(
        &self,
        request: Request<ListViewSessionsRequest>,
    ) -> Result<Response<ListViewSessionsResponse>, Status> {
        let caller = caller(&request)?;
        caller.require(&Role::ALL)?;
        let message = request.get_ref();
        let id = plan_id("plan_id", &message.plan_id)?;
        let page_size = match message.page_size {
            0 => DEFAULT_PAGE,
            n if n < 0 => {
                return Err(Error::invalid("page_size", "must not be negative").into());
            }
            n => n.min(MAX_PAGE),
        };
        let after = if message.page_token.is_empty() {
            None
        } else {
            Some(decode_page_token(&message.page_token)?)
        };
        // One more than the page tells whether another page follows.
        let mut rows = storage::list_sessions(
            &self.pool,
            &caller.tenant,
            id,
            after,
            i64::from(page_size) + 1,
        )
        .await
        .map_err(Error::from)?;
        let next_page_token = if rows.len() > page_size as usize {
            rows.truncate(page_size as usize);
            rows.last()
                .map(|r| encode_page_token(r.start_at, &r.session_id))
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(ListViewSessionsResponse {
            sessions: rows
                .iter()
                .map(|r| ViewSession {
                    session_id: r.session_id.clone(),
                    plan_version: r.plan_version,
                    start_time: Some(timestamp(r.start_at)),
                    end_time: Some(timestamp(r.end_at)),
                    view_time: Some(duration(r.view_ms)),
                    section_times: section_times(&r.section_ms()),
                    event_count: r.event_count,
                    closed: r.closed,
                })
                .collect(),
            next_page_token,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_round_trip_and_garbage_is_refused() {
        let at = DateTime::from_timestamp_micros(1_795_000_000_123_456).expect("valid");
        let token = encode_page_token(at, "s.1");
        assert_eq!(
            decode_page_token(&token).expect("decodes"),
            (at, "s.1".into())
        );
        assert!(decode_page_token("%%%").is_err());
        assert!(decode_page_token("bm9waXBl").is_err());
    }
}
