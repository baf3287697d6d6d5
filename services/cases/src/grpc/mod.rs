//! The gRPC edge of the cases service: `followup.cases.v1.CasesService`.
//!
//! Every call is scoped to the caller's clinic (the JWT tenant): a case of another clinic is NOT_FOUND.
//! Everyone may read; owner, admin, dentist and front desk may change cases; owner and admin may change
//! the clinic's settings; the system role only reads.

pub mod convert;
pub mod page;

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use followup_platform::auth::{Authenticator, Role, caller};
use followup_platform::event::from_timestamp;
use followup_platform::grpc::GrpcServices;
use followup_platform::shutdown::Shutdown;
use followup_proto::followup::cases::v1 as pb;
use followup_proto::followup::cases::v1::cases_service_server::{CasesService, CasesServiceServer};
use futures::Stream;
use serde::Serialize;
use sqlx::PgPool;
use tokio::sync::broadcast::error::RecvError;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::domain::CaseStatus;
use crate::domain::case::{CaseEvent, CaseSettings, Input};
use crate::domain::report::{ReportCase, SlotRefill, leakage_report, refill_counts};
use crate::domain::text::query_words;
use crate::domain::timeline::EntryKind;
use crate::domain::validate_settings;
use crate::domain::vocab::{Money, is_currency_code};
use crate::engine::{Command, Engine, Outcome, Target};
use crate::error::Error;
use crate::storage::counts::OwnerScope;
use crate::storage::list::{self, Cursor, ListFilter, Order};
use crate::storage::{self, directory};
use crate::watch::{Change, ChangeKind, WatchHub};
use followup_platform::clock::Clock;

/// Every API of the service, each behind the JWT interceptor.
pub fn services(api: CasesServiceApi, auth: Authenticator) -> GrpcServices {
    GrpcServices::new().with(CasesServiceServer::with_interceptor(api, auth.clone()))
}

/// `followup.cases.v1.CasesService`.
#[derive(Clone)]
pub struct CasesServiceApi {
    pub pool: PgPool,
    pub engine: Engine,
    pub hub: WatchHub,
    pub clock: Arc<dyn Clock>,
    pub shutdown: Shutdown,
}

const DEFAULT_PAGE: i64 = 50;
const MAX_PAGE: i64 = 200;
const MAX_NOTE: usize = 5000;
const MAX_REASON: usize = 500;
const MAX_QUERY: usize = 100;
const MAX_NOTES_SHOWN: i64 = 200;

/// AIP-158: 0 means the default; above the maximum is coerced to it; negative is an error.
fn page_size(field: &str, size: i32) -> Result<i64, Error> {
    match size {
        0 => Ok(DEFAULT_PAGE),
        n if n < 0 => Err(Error::invalid(field, "must not be negative")),
        n => Ok(i64::from(n).min(MAX_PAGE)),
    }
}

fn case_id(field: &str, id: &str) -> Result<Uuid, Error> {
    Uuid::parse_str(id.trim()).map_err(|_| {
        Error::invalid(
            field,
            format!("`{id}` is not a case id (the plan's UUID, e.g. 0190c2a4-…)"),
        )
    })
}

fn status(field: &str, n: i32) -> Result<CaseStatus, Error> {
    CaseStatus::from_number(n).ok_or_else(|| {
        Error::invalid(
            field,
            format!("{n} is not a case status (1 DRAFT_NOT_SENT … 8 SUPERSEDED)"),
        )
    })
}

fn time(field: &str, t: Option<&prost_types::Timestamp>) -> Result<Option<DateTime<Utc>>, Error> {
    t.map(|t| from_timestamp(t).ok_or_else(|| Error::invalid(field, "is not a valid timestamp")))
        .transpose()
}

fn money_bound(
    field: &str,
    m: Option<&followup_proto::followup::common::v1::Money>,
) -> Result<Option<Money>, Error> {
    match m {
        None => Ok(None),
        Some(m) if !is_currency_code(&m.currency) => Err(Error::invalid(
            format!("{field}.currency"),
            format!("`{}` is not an ISO 4217 code such as \"EUR\"", m.currency),
        )),
        Some(m) => Ok(Some(Money::new(m.amount_minor, m.currency.clone()))),
    }
}

fn staff_id(field: &str, id: &str) -> Result<String, Error> {
    let id = id.trim();
    if id.len() > 200 {
        return Err(Error::invalid(field, "is longer than 200 characters"));
    }
    Ok(id.to_string())
}

fn list_filter(req: &pb::ListCasesRequest) -> Result<ListFilter, Error> {
    let statuses = req
        .statuses
        .iter()
        .map(|s| status("statuses", *s))
        .collect::<Result<Vec<_>, _>>()?;
    let sent_after = time("sent_after", req.sent_after.as_ref())?;
    let sent_before = time("sent_before", req.sent_before.as_ref())?;
    if let (Some(a), Some(b)) = (sent_after, sent_before)
        && a >= b
    {
        return Err(Error::invalid(
            "sent_before",
            "must be after sent_after (the range is [sent_after, sent_before))",
        ));
    }
    let owner = staff_id("owner_staff_id", &req.owner_staff_id)?;
    let owners = match (owner.is_empty(), req.unassigned) {
        (false, true) => {
            return Err(Error::invalid(
                "unassigned",
                "cannot be combined with owner_staff_id",
            ));
        }
        (true, true) => OwnerScope::Unassigned,
        (false, false) => OwnerScope::Owner(owner),
        (true, false) => OwnerScope::Any,
    };
    let min = money_bound("min_value", req.min_value.as_ref())?;
    let max = money_bound("max_value", req.max_value.as_ref())?;
    if let (Some(a), Some(b)) = (&min, &max) {
        if a.currency != b.currency {
            return Err(Error::invalid(
                "max_value.currency",
                "must be the currency of min_value",
            ));
        }
        if a.amount_minor > b.amount_minor {
            return Err(Error::invalid("max_value", "must not be below min_value"));
        }
    }
    if req.patient_query.chars().count() > MAX_QUERY {
        return Err(Error::invalid(
            "patient_query",
            format!("is longer than {MAX_QUERY} characters"),
        ));
    }
    let group = req.alternative_group_id.trim();
    Ok(ListFilter {
        statuses,
        sent_after,
        sent_before,
        owners,
        currency: min.as_ref().or(max.as_ref()).map(|m| m.currency.clone()),
        min_value: min.map(|m| m.amount_minor),
        max_value: max.map(|m| m.amount_minor),
        viewed: req.viewed,
        patient_words: query_words(&req.patient_query),
        group: (!group.is_empty()).then(|| group.to_string()),
    })
}

fn order(n: i32) -> Result<Order, Error> {
    match pb::CaseOrder::try_from(n) {
        Ok(pb::CaseOrder::Unspecified | pb::CaseOrder::SentTime) => Ok(Order::Sent),
        Ok(pb::CaseOrder::Value) => Ok(Order::Value),
        Ok(pb::CaseOrder::Priority) => Ok(Order::Priority),
        Ok(pb::CaseOrder::LastActivity) => Ok(Order::Activity),
        Err(_) => Err(Error::invalid(
            "order_by",
            format!("{n} is not a CaseOrder"),
        )),
    }
}

#[derive(Serialize)]
struct ListFingerprint<'a> {
    filter: &'a ListFilter,
    order: Order,
    reverse: bool,
}

type Tenant = String;

impl CasesServiceApi {
    fn reader<T>(request: &Request<T>) -> Result<(Tenant, String), Status> {
        let caller = caller(request)?;
        caller.require(&Role::ALL)?;
        Ok((caller.tenant, caller.sub))
    }

    fn writer<T>(request: &Request<T>) -> Result<(Tenant, String), Status> {
        let caller = caller(request)?;
        caller.require(&Role::STAFF)?;
        Ok((caller.tenant, caller.sub))
    }

    /// Runs one staff command and returns the case after it.
    async fn staff_command(
        &self,
        tenant: &str,
        case: Uuid,
        event: CaseEvent,
    ) -> Result<storage::CaseRecord, Error> {
        let mut tx = self.pool.begin().await?;
        let command = Command {
            tenant_id: tenant.to_string(),
            target: Target::Case(case),
            input: Input {
                event,
                at: self.clock.now(),
                event_id: Uuid::now_v7().to_string(),
                cause: "staff".into(),
            },
            create: false,
        };
        let outcome = self
            .engine
            .apply(&mut tx, std::slice::from_ref(&command))
            .await?
            .pop();
        match outcome {
            Some(Outcome::Applied(_)) => {}
            Some(Outcome::Rejected(err)) => return Err(err.into()),
            Some(Outcome::NotFound) | None => return Err(Error::CaseNotFound(case.to_string())),
        }
        let record = storage::get_case(&mut tx, tenant, case)
            .await?
            .ok_or_else(|| Error::CaseNotFound(case.to_string()))?;
        tx.commit().await?;
        Ok(record)
    }

    async fn list(
        &self,
        tenant: &str,
        filter: &ListFilter,
        order: Order,
        reverse: bool,
        token: &str,
        limit: i64,
    ) -> Result<(Vec<storage::CaseRecord>, String, list::Totals, i64), Error> {
        let fingerprint = page::fingerprint(&ListFingerprint {
            filter,
            order,
            reverse,
        });
        let (cursor, before) = if token.is_empty() {
            (None, 0)
        } else {
            let (cursor, before) = page::decode::<Cursor>(token, &fingerprint)?;
            (Some(cursor), before)
        };
        // The page and the totals are independent: ask for both at once, on two connections.
        let page_query = async {
            let mut conn = self.pool.acquire().await?;
            list::page(
                &mut conn,
                tenant,
                filter,
                order,
                reverse,
                cursor.as_ref(),
                limit,
            )
            .await
        };
        let totals_query = async {
            let mut conn = self.pool.acquire().await?;
            list::cells(&mut conn, tenant, filter).await
        };
        let ((records, more), cells) = tokio::try_join!(page_query, totals_query)?;
        let next = match (more, records.last()) {
            (true, Some(last)) => page::encode(
                &fingerprint,
                &Cursor::after(order, &last.state),
                before + records.len() as i64,
            ),
            _ => String::new(),
        };
        Ok((
            records,
            next,
            list::totals(&cells, &filter.statuses),
            before,
        ))
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchCasesResponse, Status>> + Send>>;

#[tonic::async_trait]
impl CasesService for CasesServiceApi {
    async fn list_cases(
        &self,
        request: Request<pb::ListCasesRequest>,
    ) -> Result<Response<pb::ListCasesResponse>, Status> {
        let (tenant, _) = Self::reader(&request)?;
        let req = request.into_inner();
        let filter = list_filter(&req)?;
        let order = order(req.order_by)?;
        let limit = page_size("page_size", req.page_size)?;
        let (records, next_page_token, totals, _) = self
            .list(&tenant, &filter, order, req.reverse, &req.page_token, limit)
            .await?;
        let now = self.clock.now();
        Ok(Response::new(pb::ListCasesResponse {
            cases: records.iter().map(|r| convert::case(r, now)).collect(),
            next_page_token,
            total_count: i32::try_from(totals.count).unwrap_or(i32::MAX),
            total_value: totals
                .value
                .iter()
                .map(|(currency, amount)| crate::engine::money(&Money::new(*amount, currency)))
                .collect(),
            status_counts: totals
                .by_status
                .iter()
                .map(|(status, count)| pb::StatusCount {
                    status: status.number(),
                    count: i32::try_from(*count).unwrap_or(i32::MAX),
                })
                .collect(),
        }))
    }

    async fn list_follow_up_queue(
        &self,
        request: Request<pb::ListFollowUpQueueRequest>,
    ) -> Result<Response<pb::ListFollowUpQueueResponse>, Status> {
        let (tenant, _) = Self::reader(&request)?;
        let req = request.into_inner();
        let owner = staff_id("owner_staff_id", &req.owner_staff_id)?;
        let owners = match (owner.is_empty(), req.include_unassigned) {
            (true, _) => OwnerScope::Any,
            (false, false) => OwnerScope::Owner(owner),
            (false, true) => OwnerScope::OwnerOrUnassigned(owner),
        };
        let filter = ListFilter {
            statuses: vec![
                CaseStatus::SentNotViewed,
                CaseStatus::SentViewed,
                CaseStatus::WaitingForResponse,
            ],
            owners,
            ..ListFilter::everything()
        };
        let limit = page_size("page_size", req.page_size)?;
        let (records, next_page_token, totals, before) = self
            .list(
                &tenant,
                &filter,
                Order::Priority,
                false,
                &req.page_token,
                limit,
            )
            .await?;
        let now = self.clock.now();
        Ok(Response::new(pb::ListFollowUpQueueResponse {
            entries: records
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    let case = convert::case(r, now);
                    pb::QueueEntry {
                        rank: i32::try_from(before + i as i64 + 1).unwrap_or(i32::MAX),
                        reason: case.reason.clone(),
                        case: Some(case),
                    }
                })
                .collect(),
            next_page_token,
            total_count: i32::try_from(totals.count).unwrap_or(i32::MAX),
        }))
    }

    async fn get_case(
        &self,
        request: Request<pb::GetCaseRequest>,
    ) -> Result<Response<pb::GetCaseResponse>, Status> {
        let (tenant, _) = Self::reader(&request)?;
        let req = request.into_inner();
        let id = case_id("case_id", &req.case_id)?;
        let limit = page_size("timeline_page_size", req.timeline_page_size)?;
        // One snapshot for the case, its timeline and its notes, so they agree with each other.
        let mut conn = self.pool.begin().await.map_err(Error::from)?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *conn)
            .await
            .map_err(Error::from)?;
        let record = storage::get_case(&mut conn, &tenant, id)
            .await?
            .ok_or_else(|| Error::CaseNotFound(id.to_string()))?;
        let mut timeline =
            storage::timeline::page(&mut conn, &tenant, id, None, limit + 1, None).await?;
        let more = timeline.len() as i64 > limit;
        timeline.truncate(limit as usize);
        let notes = storage::timeline::page(
            &mut conn,
            &tenant,
            id,
            None,
            MAX_NOTES_SHOWN,
            Some(EntryKind::Note),
        )
        .await?;
        conn.commit().await.map_err(Error::from)?;
        let timeline_next_page_token = match (more, timeline.last()) {
            (true, Some(last)) => page::encode(&id.to_string(), &(last.at, last.entry_id), limit),
            _ => String::new(),
        };
        Ok(Response::new(pb::GetCaseResponse {
            case: Some(convert::case(&record, self.clock.now())),
            timeline: timeline.iter().map(convert::entry).collect(),
            timeline_next_page_token,
            notes: notes.iter().filter_map(convert::note).collect(),
        }))
    }

    async fn list_timeline_entries(
        &self,
        request: Request<pb::ListTimelineEntriesRequest>,
    ) -> Result<Response<pb::ListTimelineEntriesResponse>, Status> {
        let (tenant, _) = Self::reader(&request)?;
        let req = request.into_inner();
        let id = case_id("case_id", &req.case_id)?;
        let limit = page_size("page_size", req.page_size)?;
        let after = if req.page_token.is_empty() {
            None
        } else {
            Some(page::decode::<(DateTime<Utc>, Uuid)>(&req.page_token, &id.to_string())?.0)
        };
        let mut conn = self.pool.acquire().await.map_err(Error::from)?;
        let exists = storage::get_cases(&mut conn, &[(tenant.clone(), id)]).await?;
        if exists.is_empty() {
            return Err(Error::CaseNotFound(id.to_string()).into());
        }
        let mut entries =
            storage::timeline::page(&mut conn, &tenant, id, after, limit + 1, None).await?;
        let more = entries.len() as i64 > limit;
        entries.truncate(limit as usize);
        let next_page_token = match (more, entries.last()) {
            (true, Some(last)) => page::encode(&id.to_string(), &(last.at, last.entry_id), 0),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListTimelineEntriesResponse {
            entries: entries.iter().map(convert::entry).collect(),
            next_page_token,
        }))
    }

    async fn update_case_status(
        &self,
        request: Request<pb::UpdateCaseStatusRequest>,
    ) -> Result<Response<pb::UpdateCaseStatusResponse>, Status> {
        let (tenant, sub) = Self::writer(&request)?;
        let req = request.into_inner();
        let id = case_id("case_id", &req.case_id)?;
        let target = status("status", req.status)?;
        let expected = match req.expected_status {
            0 => None,
            n => Some(status("expected_status", n)?),
        };
        if req.reason.chars().count() > MAX_REASON {
            return Err(Error::invalid(
                "reason",
                format!("is longer than {MAX_REASON} characters"),
            )
            .into());
        }
        let record = self
            .staff_command(
                &tenant,
                id,
                CaseEvent::StaffStatus {
                    staff_id: sub,
                    status: target,
                    reason: req.reason,
                    expected,
                },
            )
            .await?;
        Ok(Response::new(pb::UpdateCaseStatusResponse {
            case: Some(convert::case(&record, self.clock.now())),
        }))
    }

    async fn add_note(
        &self,
        request: Request<pb::AddNoteRequest>,
    ) -> Result<Response<pb::AddNoteResponse>, Status> {
        let (tenant, sub) = Self::writer(&request)?;
        let req = request.into_inner();
        let id = case_id("case_id", &req.case_id)?;
        let text = req.text.trim().to_string();
        if text.is_empty() {
            return Err(Error::invalid("text", "is required").into());
        }
        if text.chars().count() > MAX_NOTE {
            return Err(
                Error::invalid("text", format!("is longer than {MAX_NOTE} characters")).into(),
            );
        }
        let note_id = Uuid::now_v7();
        let at = self.clock.now();
        self.staff_command(
            &tenant,
            id,
            CaseEvent::StaffNote {
                staff_id: sub.clone(),
                note_id,
                text: text.clone(),
            },
        )
        .await?;
        Ok(Response::new(pb::AddNoteResponse {
            note: Some(pb::Note {
                note_id: note_id.to_string(),
                text,
                author_staff_id: sub,
                create_time: Some(followup_platform::event::timestamp(at)),
            }),
        }))
    }

    async fn assign_owner(
        &self,
        request: Request<pb::AssignOwnerRequest>,
    ) -> Result<Response<pb::AssignOwnerResponse>, Status> {
        let (tenant, sub) = Self::writer(&request)?;
        let req = request.into_inner();
        let id = case_id("case_id", &req.case_id)?;
        let owner = staff_id("owner_staff_id", &req.owner_staff_id)?;
        let owner = if owner.is_empty() {
            None
        } else {
            let mut conn = self.pool.acquire().await.map_err(Error::from)?;
            match directory::staff(&mut conn, &tenant, &owner).await? {
                None => return Err(Error::UnknownStaff(owner).into()),
                Some((_, false)) => {
                    return Err(followup_platform::grpc::failed_precondition(
                        "STAFF_INACTIVE",
                        "owner_staff_id",
                        format!("staff `{owner}` has left the clinic; choose an active colleague"),
                    ));
                }
                Some((_, true)) => Some(owner),
            }
        };
        let record = self
            .staff_command(
                &tenant,
                id,
                CaseEvent::StaffOwner {
                    staff_id: sub,
                    owner_staff_id: owner,
                },
            )
            .await?;
        Ok(Response::new(pb::AssignOwnerResponse {
            case: Some(convert::case(&record, self.clock.now())),
        }))
    }

    async fn watch_cases(
        &self,
        request: Request<pb::WatchCasesRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        let (tenant, _) = Self::reader(&request)?;
        let req = request.into_inner();
        let owner = staff_id("owner_staff_id", &req.owner_staff_id)?;
        let statuses = req
            .statuses
            .iter()
            .map(|s| status("statuses", *s))
            .collect::<Result<Vec<_>, _>>()?;
        let mut changes = self.hub.subscribe();
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<pb::WatchCasesResponse, Status>>(64);
        let (pool, clock, shutdown) =
            (self.pool.clone(), self.clock.clone(), self.shutdown.clone());
        tokio::spawn(async move {
            loop {
                let change = tokio::select! {
                    () = shutdown.triggered() => {
                        let _ = tx.send(Err(Status::unavailable("the server is shutting down; reconnect and re-list"))).await;
                        return;
                    }
                    () = tx.closed() => return,
                    change = changes.recv() => change,
                };
                let (case_id, kind, entry_id) = match change {
                    Ok(Change::Case {
                        tenant_id,
                        case_id,
                        kind,
                        entry_id,
                    }) if tenant_id == tenant => (case_id, kind, entry_id),
                    Ok(Change::Case { .. }) => continue,
                    Ok(Change::Lost) => {
                        let _ = tx
                            .send(Err(Status::unavailable(
                                "changes may have been missed; reconnect and re-list",
                            )))
                            .await;
                        return;
                    }
                    Err(RecvError::Lagged(missed)) => {
                        let _ = tx
                            .send(Err(Status::resource_exhausted(format!(
                                "this stream fell {missed} changes behind; reconnect and re-list"
                            ))))
                            .await;
                        return;
                    }
                    Err(RecvError::Closed) => return,
                };
                let message =
                    match load_change(&pool, &tenant, case_id, kind, entry_id, clock.now()).await {
                        Ok(Some(message)) => message,
                        Ok(None) => continue,
                        Err(err) => {
                            let _ = tx.send(Err(err.into())).await;
                            return;
                        }
                    };
                let case = message.case.as_ref();
                if !owner.is_empty() && case.is_none_or(|c| c.owner_staff_id != owner) {
                    continue;
                }
                if !statuses.is_empty()
                    && case.is_none_or(|c| !statuses.iter().any(|s| s.number() == c.status))
                {
                    continue;
                }
                if tx.send(Ok(message)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn get_leakage_report(
        &self,
        request: Request<pb::GetLeakageReportRequest>,
    ) -> Result<Response<pb::GetLeakageReportResponse>, Status> {
        let (tenant, _) = Self::reader(&request)?;
        let req = request.into_inner();
        let start = time("start_time", req.start_time.as_ref())?
            .ok_or_else(|| Error::invalid("start_time", "is required"))?;
        let end = time("end_time", req.end_time.as_ref())?
            .ok_or_else(|| Error::invalid("end_time", "is required"))?;
        if end <= start {
            return Err(Error::invalid("end_time", "must be after start_time").into());
        }
        if end - start > Duration::days(3 * 366) {
            return Err(
                Error::invalid("end_time", "must be at most 3 years after start_time").into(),
            );
        }
        let owner = staff_id("owner_staff_id", &req.owner_staff_id)?;
        let owner = (!owner.is_empty()).then_some(owner);
        let mut conn = self.pool.acquire().await.map_err(Error::from)?;
        let cases = storage::report_cases(&mut conn, &tenant, start, end, owner.as_deref()).await?;
        let slots = storage::report_slots(&mut conn, &tenant, start, end, owner.as_deref()).await?;
        let report_cases: Vec<ReportCase> = cases
            .into_iter()
            .filter_map(|(s, representative)| {
                Some(ReportCase {
                    status: s.status,
                    value: s.value.clone()?,
                    owner_staff_id: s.owner_staff_id.clone(),
                    representative,
                    first_sent_at: s.first_sent_at?,
                    approved_at: s.approved_at,
                    booked_at: s.booked_at,
                    first_follow_up_at: s.first_follow_up_at,
                })
            })
            .collect();
        let slots: Vec<SlotRefill> = slots
            .into_iter()
            .map(|(amount, currency, owner)| SlotRefill {
                value: (!currency.is_empty()).then(|| Money::new(amount, currency)),
                owner_staff_id: owner,
            })
            .collect();
        let refills = refill_counts(&slots);
        let lines = leakage_report(&report_cases, &slots);
        let owners: Vec<String> = lines
            .iter()
            .flat_map(|l| l.by_owner.iter().filter_map(|o| o.owner_staff_id.clone()))
            .collect();
        let names: HashMap<String, String> =
            directory::staff_names(&mut conn, &tenant, &owners).await?;
        let settings = self.engine.settings.get(&mut conn, &tenant).await?;
        Ok(Response::new(pb::GetLeakageReportResponse {
            lines: lines
                .iter()
                .map(|l| convert::report_line(l, &names))
                .collect(),
            time_zone: settings.time_zone,
            slots_refilled_count: refills.count,
            slots_refilled_without_value_count: refills.without_value,
        }))
    }

    async fn get_case_settings(
        &self,
        request: Request<pb::GetCaseSettingsRequest>,
    ) -> Result<Response<pb::GetCaseSettingsResponse>, Status> {
        let (tenant, _) = Self::reader(&request)?;
        let mut conn = self.pool.acquire().await.map_err(Error::from)?;
        self.engine.settings.invalidate(&tenant);
        let settings = self.engine.settings.get(&mut conn, &tenant).await?;
        Ok(Response::new(pb::GetCaseSettingsResponse {
            settings: Some(convert::settings(&settings)),
        }))
    }

    async fn update_case_settings(
        &self,
        request: Request<pb::UpdateCaseSettingsRequest>,
    ) -> Result<Response<pb::UpdateCaseSettingsResponse>, Status> {
        let caller = caller(&request)?;
        caller.require(&[Role::Owner, Role::Admin])?;
        let tenant = caller.tenant;
        let req = request.into_inner();
        let given = req
            .settings
            .ok_or_else(|| Error::invalid("settings", "is required"))?;
        let paths = req
            .update_mask
            .map(|m| m.paths)
            .filter(|p| !p.is_empty())
            .ok_or_else(|| {
                Error::invalid(
                    "update_mask",
                    "is required: list the fields to change among response_window, digest_hour, time_zone",
                )
            })?;
        let mut tx = self.pool.begin().await.map_err(Error::from)?;
        self.engine.settings.invalidate(&tenant);
        let mut settings: CaseSettings = self.engine.settings.get(&mut tx, &tenant).await?;
        for path in &paths {
            match path.as_str() {
                "response_window" => {
                    let window = given.response_window.as_ref().ok_or_else(|| {
                        Error::invalid("settings.response_window", "is required by the mask")
                    })?;
                    settings.response_window_secs = window.seconds;
                }
                "digest_hour" => {
                    settings.digest_hour = u32::try_from(given.digest_hour)
                        .map_err(|_| Error::invalid("settings.digest_hour", "must be 0-23"))?;
                }
                "time_zone" => settings.time_zone = given.time_zone.trim().to_string(),
                other => {
                    return Err(Error::invalid(
                        "update_mask",
                        format!(
                            "`{other}` is not a settings field (response_window, digest_hour, time_zone)"
                        ),
                    )
                    .into());
                }
            }
        }
        validate_settings(&settings)
            .map_err(|(field, reason)| Error::invalid(format!("settings.{field}"), reason))?;
        self.engine
            .settings
            .update(&mut tx, &tenant, &settings)
            .await?;
        // Running windows follow the new length.
        crate::storage::reschedule_windows(&mut tx, &tenant, &settings).await?;
        tx.commit().await.map_err(Error::from)?;
        Ok(Response::new(pb::UpdateCaseSettingsResponse {
            settings: Some(convert::settings(&settings)),
        }))
    }
}

/// The message of one change, or None when the case is gone.
async fn load_change(
    pool: &PgPool,
    tenant: &str,
    case_id: Uuid,
    kind: ChangeKind,
    entry_id: Option<Uuid>,
    now: DateTime<Utc>,
) -> Result<Option<pb::WatchCasesResponse>, Error> {
    let mut conn = pool.acquire().await?;
    let mut cases = storage::get_cases(&mut conn, &[(tenant.to_string(), case_id)]).await?;
    let Some(record) = cases.remove(&(tenant.to_string(), case_id)) else {
        return Ok(None);
    };
    let entry = match entry_id {
        Some(id) => storage::timeline::entries_by_id(&mut conn, tenant, &[id])
            .await?
            .remove(&id),
        None => None,
    };
    Ok(Some(pb::WatchCasesResponse {
        kind: match kind {
            ChangeKind::Created => pb::CaseChangeKind::Created,
            ChangeKind::Updated => pb::CaseChangeKind::Updated,
            ChangeKind::Activity => pb::CaseChangeKind::Activity,
        } as i32,
        case: Some(convert::case(&record, now)),
        entry: entry.as_ref().map(convert::entry),
    }))
}
