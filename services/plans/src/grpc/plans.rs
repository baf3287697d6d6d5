//! `followup.plans.v1.PlansService`.

use followup_platform::auth::{Caller, Role, caller};
use followup_proto::followup::common::v1::PortalSection;
use followup_proto::followup::plans::v1 as pb;
use followup_proto::followup::plans::v1::plans_service_server::PlansService;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::convert;
use crate::app::plans::{
    Actor, ItemChanges, ListRequest, NewPlan, PlanChanges, PriceInput, SendRequest,
};
use crate::app::{App, parse_id};
use crate::error::PlansError;

/// Owner, admin and dentist edit plans.
const EDIT: &[Role] = &[Role::Owner, Role::Admin, Role::Dentist];
/// Front desk may also send.
const SEND: &[Role] = &[Role::Owner, Role::Admin, Role::Dentist, Role::FrontDesk];
/// Everyone reads, the system role included.
const READ: &[Role] = &Role::ALL;

#[derive(Clone)]
pub struct PlansServiceApi {
    pub app: App,
}

type Reply<T> = Result<Response<T>, Status>;

fn actor(caller: &Caller) -> Actor<'_> {
    Actor {
        tenant: &caller.tenant,
        staff_id: &caller.sub,
    }
}

fn who<T>(request: &Request<T>, allowed: &[Role]) -> Result<Caller, Status> {
    let caller = caller(request)?;
    caller.require(allowed)?;
    Ok(caller)
}

fn version_in(value: i32) -> Result<Option<i32>, PlansError> {
    match value {
        0 => Ok(None),
        v if v < 0 => Err(PlansError::invalid(
            "plan_version",
            "must be positive (0 = current)",
        )),
        v => Ok(Some(v)),
    }
}

fn full(view: i32) -> bool {
    view == pb::PlanView::Full as i32
}

fn item_changes(item: &pb::PlanItem, paths: Option<&[String]>) -> Result<ItemChanges, PlansError> {
    let wants = |path: &str| paths.is_none_or(|p| p.iter().any(|x| x == path));
    let mut changes = ItemChanges::default();
    if wants("code") {
        changes.code = Some(item.code.clone());
    }
    if wants("tooth") {
        changes.tooth =
            Some(convert::tooth_in(item.tooth.as_ref()).map_err(|e| e.in_field("item"))?);
    }
    if wants("practitioner_id") {
        changes.practitioner_id = Some(item.practitioner_id.clone());
    }
    if wants("price") {
        // On creation an unset price means "the schedule fee"; in a mask it clears the override.
        changes.price = match (&item.price, paths) {
            (Some(price), _) => Some(Some(PriceInput {
                minor: price.amount_minor,
                currency: price.currency.trim().to_string(),
            })),
            (None, Some(_)) => Some(None),
            (None, None) => None,
        };
    }
    if wants("price_override_reason") {
        changes.price_override_reason = Some(item.price_override_reason.clone());
    }
    if wants("visit") {
        changes.visit = Some(item.visit);
    }
    if wants("depends_on_item_ids") {
        changes.depends_on = Some(
            item.depends_on_item_ids
                .iter()
                .enumerate()
                .map(|(i, id)| parse_id(&format!("item.depends_on_item_ids[{i}]"), id))
                .collect::<Result<Vec<_>, _>>()?,
        );
    }
    if wants("note") {
        changes.note = Some(item.note.clone());
    }
    Ok(changes)
}

const PLAN_PATHS: &[&str] = &[
    "title",
    "fee_schedule_id",
    "owner_staff_id",
    "alternative_group_id",
    "quote_expiry_date",
    "internal_note",
    "patient_note",
    "images",
];

const ITEM_PATHS: &[&str] = &[
    "code",
    "tooth",
    "practitioner_id",
    "price",
    "price_override_reason",
    "visit",
    "depends_on_item_ids",
    "note",
];

fn optional_id(field: &str, value: &str) -> Result<Option<Uuid>, PlansError> {
    if value.trim().is_empty() {
        Ok(None)
    } else {
        parse_id(field, value).map(Some)
    }
}

#[tonic::async_trait]
impl PlansService for PlansServiceApi {
    async fn create_plan(
        &self,
        request: Request<pb::CreatePlanRequest>,
    ) -> Reply<pb::CreatePlanResponse> {
        let caller = who(&request, EDIT)?;
        let plan = request
            .into_inner()
            .plan
            .ok_or_else(|| PlansError::invalid("plan", "required"))?;
        let input = NewPlan {
            patient_id: plan.patient_id.clone(),
            title: plan.title.clone(),
            fee_schedule_id: optional_id("plan.fee_schedule_id", &plan.fee_schedule_id)?,
            owner_staff_id: plan.owner_staff_id.clone(),
            alternative_group_id: plan.alternative_group_id.clone(),
            quote_expiry_date: convert::date_in("plan.quote_expiry_date", &plan.quote_expiry_date)?,
            internal_note: plan.internal_note.clone(),
            patient_note: plan.patient_note.clone(),
            images: plan.images.iter().map(convert::image_in).collect(),
        };
        let created = self
            .app
            .create_plan(&actor(&caller), input)
            .await
            .map_err(|e| e.in_field("plan"))?;
        Ok(Response::new(pb::CreatePlanResponse {
            plan: Some(convert::plan(&created, true)),
        }))
    }

    async fn get_plan(&self, request: Request<pb::GetPlanRequest>) -> Reply<pb::GetPlanResponse> {
        let caller = who(&request, READ)?;
        let r = request.into_inner();
        let id = parse_id("plan_id", &r.plan_id)?;
        let plan = self
            .app
            .get_plan(&caller.tenant, id, version_in(r.plan_version)?)
            .await?;
        Ok(Response::new(pb::GetPlanResponse {
            plan: Some(convert::plan(&plan, true)),
        }))
    }

    async fn list_plans(
        &self,
        request: Request<pb::ListPlansRequest>,
    ) -> Reply<pb::ListPlansResponse> {
        let caller = who(&request, READ)?;
        let r = request.into_inner();
        let page_size = convert::page_size(r.page_size, 50, 500)?;
        let before =
            match convert::page_position(&r.page_token)? {
                Some(position) => Some(Uuid::parse_str(&position).map_err(|_| {
                    PlansError::invalid("page_token", "not a token this API returned")
                })?),
                None => None,
            };
        let statuses = r
            .statuses
            .iter()
            .map(|s| convert::status_in(*s))
            .collect::<Result<Vec<_>, _>>()?;
        let (plans, more) = self
            .app
            .list_plans(
                &caller.tenant,
                ListRequest {
                    patient_id: Some(r.patient_id.trim()).filter(|s| !s.is_empty()),
                    statuses,
                    alternative_group_id: Some(r.alternative_group_id.trim())
                        .filter(|s| !s.is_empty()),
                    before,
                    page_size,
                },
            )
            .await?;
        let next_page_token = match (more, plans.last()) {
            (true, Some(last)) => convert::page_token(&last.id.to_string()),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListPlansResponse {
            plans: plans
                .iter()
                .map(|p| convert::plan(p, full(r.view)))
                .collect(),
            next_page_token,
        }))
    }

    async fn list_plan_versions(
        &self,
        request: Request<pb::ListPlanVersionsRequest>,
    ) -> Reply<pb::ListPlanVersionsResponse> {
        let caller = who(&request, READ)?;
        let r = request.into_inner();
        let id = parse_id("plan_id", &r.plan_id)?;
        let plans = self.app.list_versions(&caller.tenant, id).await?;
        Ok(Response::new(pb::ListPlanVersionsResponse {
            plans: plans
                .iter()
                .map(|p| convert::plan(p, full(r.view)))
                .collect(),
        }))
    }

    async fn update_plan(
        &self,
        request: Request<pb::UpdatePlanRequest>,
    ) -> Reply<pb::UpdatePlanResponse> {
        let caller = who(&request, EDIT)?;
        let r = request.into_inner();
        let plan = r
            .plan
            .ok_or_else(|| PlansError::invalid("plan", "required"))?;
        let id = parse_id("plan.plan_id", &plan.plan_id)?;
        let paths = convert::mask_paths(r.update_mask.as_ref(), PLAN_PATHS)?;
        let mut changes = PlanChanges::default();
        for path in &paths {
            match path.as_str() {
                "title" => changes.title = Some(plan.title.clone()),
                "fee_schedule_id" => {
                    changes.fee_schedule_id =
                        Some(optional_id("plan.fee_schedule_id", &plan.fee_schedule_id)?)
                }
                "owner_staff_id" => changes.owner_staff_id = Some(plan.owner_staff_id.clone()),
                "alternative_group_id" => {
                    changes.alternative_group_id = Some(plan.alternative_group_id.clone())
                }
                "quote_expiry_date" => {
                    changes.quote_expiry_date = Some(convert::date_in(
                        "plan.quote_expiry_date",
                        &plan.quote_expiry_date,
                    )?)
                }
                "internal_note" => changes.internal_note = Some(plan.internal_note.clone()),
                "patient_note" => changes.patient_note = Some(plan.patient_note.clone()),
                "images" => {
                    changes.images = Some(plan.images.iter().map(convert::image_in).collect())
                }
                _ => {}
            }
        }
        let updated = self
            .app
            .update_plan(&actor(&caller), id, changes)
            .await
            .map_err(|e| e.in_field("plan"))?;
        Ok(Response::new(pb::UpdatePlanResponse {
            plan: Some(convert::plan(&updated, true)),
        }))
    }

    async fn delete_plan(
        &self,
        request: Request<pb::DeletePlanRequest>,
    ) -> Reply<pb::DeletePlanResponse> {
        let caller = who(&request, EDIT)?;
        let id = parse_id("plan_id", &request.get_ref().plan_id)?;
        self.app.delete_plan(&actor(&caller), id).await?;
        Ok(Response::new(pb::DeletePlanResponse {}))
    }

    async fn create_plan_item(
        &self,
        request: Request<pb::CreatePlanItemRequest>,
    ) -> Reply<pb::CreatePlanItemResponse> {
        let caller = who(&request, EDIT)?;
        let r = request.into_inner();
        let plan_id = parse_id("plan_id", &r.plan_id)?;
        let item = r
            .item
            .ok_or_else(|| PlansError::invalid("item", "required"))?;
        if item.code.trim().is_empty() {
            return Err(PlansError::invalid(
                "item.code",
                "required, e.g. D6010 (SearchCodes finds it)",
            )
            .into());
        }
        let changes = item_changes(&item, None)?;
        let (plan, item_id) = self
            .app
            .create_item(&actor(&caller), plan_id, changes)
            .await
            .map_err(|e| e.in_field("item"))?;
        let item = plan
            .item(item_id)
            .map(|i| convert::item(&plan, i))
            .ok_or_else(|| PlansError::Internal("created item missing".into()))?;
        Ok(Response::new(pb::CreatePlanItemResponse {
            item: Some(item),
            totals: Some(convert::totals(&plan.totals())),
        }))
    }

    async fn update_plan_item(
        &self,
        request: Request<pb::UpdatePlanItemRequest>,
    ) -> Reply<pb::UpdatePlanItemResponse> {
        let caller = who(&request, EDIT)?;
        let r = request.into_inner();
        let plan_id = parse_id("plan_id", &r.plan_id)?;
        let item = r
            .item
            .ok_or_else(|| PlansError::invalid("item", "required"))?;
        let item_id = parse_id("item.item_id", &item.item_id)?;
        let paths = convert::mask_paths(r.update_mask.as_ref(), ITEM_PATHS)?;
        let changes = item_changes(&item, Some(&paths))?;
        let plan = self
            .app
            .update_item(&actor(&caller), plan_id, item_id, changes)
            .await
            .map_err(|e| e.in_field("item"))?;
        let item = plan
            .item(item_id)
            .map(|i| convert::item(&plan, i))
            .ok_or_else(|| PlansError::Internal("updated item missing".into()))?;
        Ok(Response::new(pb::UpdatePlanItemResponse {
            item: Some(item),
            totals: Some(convert::totals(&plan.totals())),
        }))
    }

    async fn delete_plan_item(
        &self,
        request: Request<pb::DeletePlanItemRequest>,
    ) -> Reply<pb::DeletePlanItemResponse> {
        let caller = who(&request, EDIT)?;
        let r = request.into_inner();
        let plan_id = parse_id("plan_id", &r.plan_id)?;
        let item_id = parse_id("item_id", &r.item_id)?;
        let plan = self
            .app
            .delete_item(&actor(&caller), plan_id, item_id, r.remove_dependencies)
            .await?;
        Ok(Response::new(pb::DeletePlanItemResponse {
            totals: Some(convert::totals(&plan.totals())),
        }))
    }

    async fn send_plan(
        &self,
        request: Request<pb::SendPlanRequest>,
    ) -> Reply<pb::SendPlanResponse> {
        let caller = who(&request, SEND)?;
        let r = request.into_inner();
        let plan_id = parse_id("plan_id", &r.plan_id)?;
        let sections = r
            .sections
            .iter()
            .map(|s| {
                PortalSection::try_from(*s).map_err(|_| {
                    PlansError::invalid("sections", format!("{s} is not a portal section"))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let link_ttl = match r.link_ttl {
            None => None,
            Some(d) if d.seconds < 0 || d.nanos < 0 => {
                return Err(PlansError::invalid("link_ttl", "must be positive").into());
            }
            Some(d) => Some(std::time::Duration::new(d.seconds as u64, d.nanos as u32)),
        };
        let sent = self
            .app
            .send_plan(
                &actor(&caller),
                plan_id,
                SendRequest {
                    sections,
                    link_ttl,
                    delivery_channel: r.delivery_channel,
                },
            )
            .await?;
        Ok(Response::new(pb::SendPlanResponse {
            plan: Some(convert::plan(&sent.plan, true)),
            portal_url: sent.portal_url,
            portal_link_expire_time: Some(followup_platform::event::timestamp(sent.expire_time)),
        }))
    }

    async fn approve_plan(
        &self,
        request: Request<pb::ApprovePlanRequest>,
    ) -> Reply<pb::ApprovePlanResponse> {
        let caller = who(&request, EDIT)?;
        let r = request.into_inner();
        let plan_id = parse_id("plan_id", &r.plan_id)?;
        let plan = self
            .app
            .approve_by_staff(&actor(&caller), plan_id, version_in(r.plan_version)?)
            .await?;
        Ok(Response::new(pb::ApprovePlanResponse {
            plan: Some(convert::plan(&plan, true)),
        }))
    }

    async fn complete_plan_item(
        &self,
        request: Request<pb::CompletePlanItemRequest>,
    ) -> Reply<pb::CompletePlanItemResponse> {
        let caller = who(&request, EDIT)?;
        let r = request.into_inner();
        let plan_id = parse_id("plan_id", &r.plan_id)?;
        let item_id = parse_id("item_id", &r.item_id)?;
        let at = convert::time_in("complete_time", r.complete_time.as_ref())?;
        let plan = self
            .app
            .complete_item(&actor(&caller), plan_id, item_id, at)
            .await?;
        let item = plan
            .item(item_id)
            .map(|i| convert::item(&plan, i))
            .ok_or_else(|| PlansError::Internal("completed item missing".into()))?;
        Ok(Response::new(pb::CompletePlanItemResponse {
            item: Some(item),
            plan: Some(convert::plan(&plan, true)),
        }))
    }

    async fn cancel_plan(
        &self,
        request: Request<pb::CancelPlanRequest>,
    ) -> Reply<pb::CancelPlanResponse> {
        let caller = who(&request, EDIT)?;
        let r = request.into_inner();
        let plan_id = parse_id("plan_id", &r.plan_id)?;
        let plan = self
            .app
            .cancel_plan(&actor(&caller), plan_id, &r.reason)
            .await?;
        Ok(Response::new(pb::CancelPlanResponse {
            plan: Some(convert::plan(&plan, true)),
        }))
    }

    async fn revise_plan(
        &self,
        request: Request<pb::RevisePlanRequest>,
    ) -> Reply<pb::RevisePlanResponse> {
        let caller = who(&request, EDIT)?;
        let r = request.into_inner();
        let plan_id = parse_id("plan_id", &r.plan_id)?;
        let plan = self
            .app
            .revise_plan(&actor(&caller), plan_id, &r.reason)
            .await?;
        Ok(Response::new(pb::RevisePlanResponse {
            plan: Some(convert::plan(&plan, true)),
        }))
    }

    async fn get_patient_billing_summary(
        &self,
        request: Request<pb::GetPatientBillingSummaryRequest>,
    ) -> Reply<pb::GetPatientBillingSummaryResponse> {
        let caller = who(&request, READ)?;
        let patient_id = request.get_ref().patient_id.trim().to_string();
        if patient_id.is_empty() {
            return Err(PlansError::invalid("patient_id", "required").into());
        }
        let rows = self.app.billing(&caller.tenant, &patient_id).await?;
        let money = |amount: i64, currency: &str| {
            Some(followup_proto::followup::common::v1::Money {
                amount_minor: amount,
                currency: currency.to_string(),
            })
        };
        Ok(Response::new(pb::GetPatientBillingSummaryResponse {
            patient_id,
            lines: rows
                .iter()
                .map(|r| pb::BillingSummaryLine {
                    currency: r.currency.clone(),
                    planned: money(r.planned, &r.currency),
                    approved: money(r.approved, &r.currency),
                    completed: money(r.completed, &r.currency),
                    remaining: money(r.remaining, &r.currency),
                    plan_count: r.plan_count as i32,
                })
                .collect(),
        }))
    }
}
