//! Plan use cases.

use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use followup_platform::auth::{PORTAL_AUDIENCE, PortalClaims};
use followup_platform::outbox::enqueue_event;
use followup_proto::followup::common::v1::PortalSection;
use sqlx::PgConnection;
use uuid::Uuid;

use super::{App, events};
use crate::INFO;
use crate::domain::alternatives::{self, BillingLine};
use crate::domain::money::Currency;
use crate::domain::plan::{
    Approval, ApprovalChannel, ConsentEvidence, Image, ImageKind, Item, Plan, Status,
};
use crate::domain::tooth::Tooth;
use crate::error::{PlansError, Result};
use crate::storage::{alternatives as groups_db, catalog as codes_db, plans as db};

/// Who is acting: the staff id (JWT sub) and clinic.
pub struct Actor<'a> {
    pub tenant: &'a str,
    pub staff_id: &'a str,
}

/// The fields of a new plan.
#[derive(Default)]
pub struct NewPlan {
    pub patient_id: String,
    pub title: String,
    pub fee_schedule_id: Option<Uuid>,
    pub owner_staff_id: String,
    pub alternative_group_id: String,
    pub quote_expiry_date: Option<NaiveDate>,
    pub internal_note: String,
    pub patient_note: String,
    pub images: Vec<Image>,
}

/// UpdatePlan's changes: None = unchanged.
#[derive(Default)]
pub struct PlanChanges {
    pub title: Option<String>,
    pub fee_schedule_id: Option<Option<Uuid>>,
    pub owner_staff_id: Option<String>,
    pub alternative_group_id: Option<String>,
    pub quote_expiry_date: Option<Option<NaiveDate>>,
    pub internal_note: Option<String>,
    pub patient_note: Option<String>,
    pub images: Option<Vec<Image>>,
}

/// A price as given: minor units and the currency named by the client (empty = the plan's).
#[derive(Clone, Debug)]
pub struct PriceInput {
    pub minor: i64,
    pub currency: String,
}

/// An item's fields as given by CreatePlanItem (all Some that were sent) or UpdatePlanItem (the mask).
#[derive(Default)]
pub struct ItemChanges {
    pub code: Option<String>,
    pub tooth: Option<Option<Tooth>>,
    pub practitioner_id: Option<String>,
    /// Some(None) clears the price: back to the schedule fee.
    pub price: Option<Option<PriceInput>>,
    pub price_override_reason: Option<String>,
    pub visit: Option<i32>,
    pub depends_on: Option<Vec<Uuid>>,
    pub note: Option<String>,
}

pub struct SendRequest {
    pub sections: Vec<PortalSection>,
    pub link_ttl: Option<Duration>,
    pub delivery_channel: i32,
}

pub struct Sent {
    pub plan: Plan,
    pub portal_url: String,
    pub expire_time: DateTime<Utc>,
}

pub struct ListRequest<'a> {
    pub patient_id: Option<&'a str>,
    pub statuses: Vec<Status>,
    pub alternative_group_id: Option<&'a str>,
    pub before: Option<Uuid>,
    pub page_size: usize,
}

const MAX_LINK_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

impl App {
    async fn locked(&self, conn: &mut PgConnection, tenant: &str, id: Uuid) -> Result<Plan> {
        if db::lock(conn, tenant, id).await?.is_none() {
            return Err(PlansError::not_found("plan", id.to_string()));
        }
        db::load(conn, tenant, id, None)
            .await?
            .ok_or_else(|| PlansError::not_found("plan", id.to_string()))
    }

    /// The schedule a plan prices from: the one named (of this clinic), else the clinic's default; and
    /// the currency that follows.
    async fn schedule_for(
        &self,
        conn: &mut PgConnection,
        tenant: &str,
        requested: Option<Uuid>,
    ) -> Result<(Option<Uuid>, Currency)> {
        let schedule =
            match requested {
                Some(id) => Some(codes_db::get_schedule(conn, tenant, id).await?.ok_or_else(
                    || {
                        PlansError::invalid(
                            "fee_schedule_id",
                            format!("`{id}` is not a fee schedule of this clinic"),
                        )
                    },
                )?),
                None => codes_db::default_schedule(conn, tenant).await?,
            };
        match schedule {
            Some(s) => Ok((
                Some(s.fee_schedule_id),
                Currency::parse(&s.currency)
                    .map_err(|_| PlansError::Internal("stored schedule currency".into()))?,
            )),
            None => Ok((None, self.default_currency)),
        }
    }

    pub async fn create_plan(&self, actor: &Actor<'_>, input: NewPlan) -> Result<Plan> {
        let mut tx = self.pool.begin().await?;
        let (schedule, currency) = self
            .schedule_for(&mut tx, actor.tenant, input.fee_schedule_id)
            .await?;
        let now = Utc::now();
        let mut plan = Plan::new(
            actor.tenant.to_string(),
            Uuid::now_v7(),
            input.patient_id.trim().to_string(),
            input.title.trim().to_string(),
            currency,
            schedule,
            actor.staff_id.to_string(),
            now,
        );
        plan.owner_staff_id = input.owner_staff_id.trim().to_string();
        plan.alternative_group_id = input.alternative_group_id.trim().to_string();
        plan.quote_expiry_date = input.quote_expiry_date;
        plan.internal_note = input.internal_note;
        plan.patient_note = input.patient_note;
        plan.images = input.images;
        plan.validate_fields()?;
        db::insert(&mut tx, &plan).await?;
        enqueue_event(&mut tx, INFO.name, &events::created(&plan)).await?;
        tx.commit().await?;
        tracing::info!(tenant = %plan.tenant_id, plan_id = %plan.id, "plan created");
        Ok(plan)
    }

    pub async fn get_plan(&self, tenant: &str, id: Uuid, version: Option<i32>) -> Result<Plan> {
        let mut conn = self.conn().await?;
        db::load(&mut conn, tenant, id, version)
            .await?
            .ok_or_else(|| match version {
                Some(v) => PlansError::not_found("plan version", format!("{id} v{v}")),
                None => PlansError::not_found("plan", id.to_string()),
            })
    }

    /// A page of plans and whether more follow.
    pub async fn list_plans(
        &self,
        tenant: &str,
        request: ListRequest<'_>,
    ) -> Result<(Vec<Plan>, bool)> {
        let mut conn = self.conn().await?;
        let filter = db::ListFilter {
            patient_id: request.patient_id,
            statuses: request.statuses.iter().map(|s| s.as_str()).collect(),
            alternative_group_id: request.alternative_group_id,
            before: request.before,
            limit: request.page_size as i64 + 1,
        };
        let mut plans = db::list(&mut conn, tenant, &filter).await?;
        let more = plans.len() > request.page_size;
        plans.truncate(request.page_size);
        Ok((plans, more))
    }

    pub async fn list_versions(&self, tenant: &str, id: Uuid) -> Result<Vec<Plan>> {
        let mut conn = self.conn().await?;
        let plans = db::versions(&mut conn, tenant, id).await?;
        if plans.is_empty() {
            return Err(PlansError::not_found("plan", id.to_string()));
        }
        Ok(plans)
    }

    pub async fn update_plan(
        &self,
        actor: &Actor<'_>,
        id: Uuid,
        changes: PlanChanges,
    ) -> Result<Plan> {
        let mut tx = self.pool.begin().await?;
        let mut plan = self.locked(&mut tx, actor.tenant, id).await?;
        plan.ensure_draft()?;
        if let Some(title) = changes.title {
            plan.title = title.trim().to_string();
        }
        if let Some(owner) = changes.owner_staff_id {
            plan.owner_staff_id = owner.trim().to_string();
        }
        if let Some(group) = changes.alternative_group_id {
            plan.alternative_group_id = group.trim().to_string();
        }
        if let Some(date) = changes.quote_expiry_date {
            plan.quote_expiry_date = date;
        }
        if let Some(note) = changes.internal_note {
            plan.internal_note = note;
        }
        if let Some(note) = changes.patient_note {
            plan.patient_note = note;
        }
        if let Some(images) = changes.images {
            plan.images = images;
        }
        plan.validate_fields()?;
        if let Some(requested) = changes.fee_schedule_id {
            let (schedule, currency) = self.schedule_for(&mut tx, actor.tenant, requested).await?;
            let fees = match schedule {
                Some(s) => codes_db::fees_of(&mut tx, actor.tenant, s, None).await?,
                None => Default::default(),
            };
            plan.reprice(schedule, currency, &fees)?;
        }
        plan.update_time = Utc::now();
        db::save(&mut tx, &plan).await?;
        tx.commit().await?;
        Ok(plan)
    }

    pub async fn delete_plan(&self, actor: &Actor<'_>, id: Uuid) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        let plan = self.locked(&mut tx, actor.tenant, id).await?;
        if plan.status != Status::Draft || plan.version != 1 || plan.send_count > 0 {
            return Err(PlansError::precondition(
                "PLAN_WAS_SENT",
                id.to_string(),
                format!(
                    "plan {id} is {} (version {}, sent {} times): only a DRAFT that was never sent is deleted; cancel it instead (CancelPlan)",
                    plan.status.as_str(),
                    plan.version,
                    plan.send_count
                ),
            ));
        }
        db::delete(&mut tx, actor.tenant, id).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The clinic's code (active) and the plan's schedule fee for it.
    async fn resolve_code(
        &self,
        conn: &mut PgConnection,
        plan: &Plan,
        code: &str,
    ) -> Result<(String, String, Option<i64>)> {
        let normalized = crate::domain::catalog::normalize_code(code)
            .map_err(|e| PlansError::invalid("code", e))?;
        let row = codes_db::get_code(conn, &plan.tenant_id, &normalized)
            .await?
            .ok_or_else(|| {
                PlansError::invalid(
                    "code",
                    format!(
                        "`{normalized}` is not in the clinic's code list: copy it from the master list (CopyMasterCodes) or import it (ImportCodes)"
                    ),
                )
            })?;
        if !row.active {
            return Err(PlansError::invalid(
                "code",
                format!("`{normalized}` is inactive in the clinic's code list"),
            ));
        }
        let fee = match plan.fee_schedule_id {
            Some(schedule) => codes_db::fees_of(
                conn,
                &plan.tenant_id,
                schedule,
                Some(std::slice::from_ref(&normalized)),
            )
            .await?
            .get(&normalized)
            .copied(),
            None => None,
        };
        Ok((normalized, row.name, fee))
    }

    fn apply_changes(plan: &Plan, item: &mut Item, changes: ItemChanges) -> Result<()> {
        if let Some(tooth) = changes.tooth {
            item.tooth = tooth;
        }
        if let Some(practitioner) = changes.practitioner_id {
            item.practitioner_id = practitioner.trim().to_string();
        }
        if let Some(price) = changes.price {
            item.price_override = match price {
                None => None,
                Some(price) => {
                    if !price.currency.is_empty() && price.currency != plan.currency.as_str() {
                        return Err(PlansError::invalid(
                            "price.currency",
                            format!(
                                "`{}` is not the plan's currency ({})",
                                price.currency, plan.currency
                            ),
                        ));
                    }
                    Some(price.minor)
                }
            };
        }
        if let Some(reason) = changes.price_override_reason {
            item.price_override_reason = reason.trim().to_string();
        }
        if let Some(visit) = changes.visit {
            item.visit = visit;
        }
        if let Some(deps) = changes.depends_on {
            item.depends_on = deps;
        }
        if let Some(note) = changes.note {
            item.note = note;
        }
        Ok(())
    }

    pub async fn create_item(
        &self,
        actor: &Actor<'_>,
        plan_id: Uuid,
        mut changes: ItemChanges,
    ) -> Result<(Plan, Uuid)> {
        let mut tx = self.pool.begin().await?;
        let mut plan = self.locked(&mut tx, actor.tenant, plan_id).await?;
        plan.ensure_draft()?;
        let code = changes.code.take().unwrap_or_default();
        let (code, name, fee) = self.resolve_code(&mut tx, &plan, &code).await?;
        let mut item = Item::new(Uuid::now_v7(), code, name);
        item.schedule_fee = fee;
        Self::apply_changes(&plan, &mut item, changes)?;
        let id = item.id;
        plan.add_item(item, Utc::now())?;
        db::save(&mut tx, &plan).await?;
        tx.commit().await?;
        Ok((plan, id))
    }

    pub async fn update_item(
        &self,
        actor: &Actor<'_>,
        plan_id: Uuid,
        item_id: Uuid,
        mut changes: ItemChanges,
    ) -> Result<Plan> {
        let mut tx = self.pool.begin().await?;
        let mut plan = self.locked(&mut tx, actor.tenant, plan_id).await?;
        plan.ensure_draft()?;
        let mut item = plan
            .item(item_id)
            .cloned()
            .ok_or_else(|| PlansError::not_found("plan item", item_id.to_string()))?;
        if let Some(code) = changes.code.take() {
            let (code, name, fee) = self.resolve_code(&mut tx, &plan, &code).await?;
            item.code = code;
            item.code_name = name;
            item.schedule_fee = fee;
        }
        Self::apply_changes(&plan, &mut item, changes)?;
        plan.replace_item(item, Utc::now())?;
        db::save(&mut tx, &plan).await?;
        tx.commit().await?;
        Ok(plan)
    }

    pub async fn delete_item(
        &self,
        actor: &Actor<'_>,
        plan_id: Uuid,
        item_id: Uuid,
        remove_dependencies: bool,
    ) -> Result<Plan> {
        let mut tx = self.pool.begin().await?;
        let mut plan = self.locked(&mut tx, actor.tenant, plan_id).await?;
        plan.remove_item(item_id, remove_dependencies, Utc::now())?;
        db::save(&mut tx, &plan).await?;
        tx.commit().await?;
        Ok(plan)
    }

    pub async fn send_plan(
        &self,
        actor: &Actor<'_>,
        id: Uuid,
        request: SendRequest,
    ) -> Result<Sent> {
        let ttl = match request.link_ttl {
            None => Duration::from_secs(u64::from(self.settings.portal_link_ttl_days) * 24 * 3600),
            Some(ttl) if ttl.is_zero() => {
                return Err(PlansError::invalid("link_ttl", "must be positive"));
            }
            Some(ttl) if ttl > MAX_LINK_TTL => {
                return Err(PlansError::invalid("link_ttl", "at most 365 days"));
            }
            Some(ttl) => ttl,
        };
        let mut sections = request.sections;
        if sections.contains(&PortalSection::Unspecified) {
            return Err(PlansError::invalid(
                "sections",
                "PORTAL_SECTION_UNSPECIFIED is not a section",
            ));
        }
        let mut seen = std::collections::HashSet::new();
        if !sections.iter().all(|s| seen.insert(*s)) {
            return Err(PlansError::invalid("sections", "a section is listed twice"));
        }
        let mut tx = self.pool.begin().await?;
        let mut plan = self.locked(&mut tx, actor.tenant, id).await?;
        if sections.is_empty() {
            sections = vec![PortalSection::Cover, PortalSection::TreatmentDetails];
            if plan.images.iter().any(|i| i.kind != ImageKind::Model3d) {
                sections.push(PortalSection::Images);
            }
            if plan.images.iter().any(|i| i.kind == ImageKind::Model3d) {
                sections.push(PortalSection::PortalSection3dModels);
            }
        }
        let now = Utc::now();
        plan.send(now)?;
        let expire_time = now
            + chrono::Duration::from_std(ttl)
                .map_err(|_| PlansError::invalid("link_ttl", "too long"))?;
        let link_id = Uuid::now_v7().to_string();
        let token = self
            .signer
            .sign(&PortalClaims {
                tenant: plan.tenant_id.clone(),
                plan_id: plan.id.to_string(),
                // Engagement tags the link's beacons with the version the patient was sent.
                plan_version: plan.version,
                patient_id: plan.patient_id.clone(),
                jti: link_id.clone(),
                aud: PORTAL_AUDIENCE.to_string(),
                iat: now.timestamp().max(0) as u64,
                exp: expire_time.timestamp().max(0) as u64,
            })
            .map_err(|e| PlansError::Internal(format!("signing a portal link: {e}")))?;
        let portal_url = format!("{}/p/{token}", self.portal_base());
        db::save(&mut tx, &plan).await?;
        db::insert_send(
            &mut tx,
            &db::Send {
                tenant_id: plan.tenant_id.clone(),
                link_id: link_id.clone(),
                plan_id: plan.id,
                version: plan.version,
                patient_id: plan.patient_id.clone(),
                sent_by: actor.staff_id.to_string(),
                send_time: now,
                expire_time,
                sections: sections
                    .iter()
                    .map(|s| section_name(*s).to_string())
                    .collect(),
                delivery_channel: request.delivery_channel,
            },
        )
        .await?;
        let event = events::sent(
            &plan,
            events::SendFacts {
                by: actor.staff_id,
                at: now,
                sections,
                portal_url: portal_url.clone(),
                expire: expire_time,
                delivery_channel: request.delivery_channel,
            },
        );
        enqueue_event(&mut tx, INFO.name, &event).await?;
        tx.commit().await?;
        tracing::info!(tenant = %plan.tenant_id, plan_id = %plan.id, link_id = %link_id, "plan sent");
        Ok(Sent {
            plan,
            portal_url,
            expire_time,
        })
    }

    pub async fn approve_by_staff(
        &self,
        actor: &Actor<'_>,
        id: Uuid,
        version: Option<i32>,
    ) -> Result<Plan> {
        let mut tx = self.pool.begin().await?;
        let mut plan = self.locked(&mut tx, actor.tenant, id).await?;
        if let Some(version) = version
            && version != plan.version
        {
            return Err(PlansError::precondition(
                "STALE_VERSION",
                id.to_string(),
                format!(
                    "version {version} is not the current version of plan {id} (it is {}): review the current version before approving it",
                    plan.version
                ),
            ));
        }
        self.settle_group_lock(&mut tx, &mut plan).await?;
        plan.approve(Approval {
            channel: ApprovalChannel::Staff,
            staff_id: actor.staff_id.to_string(),
            at: Utc::now(),
            evidence: None,
        })?;
        db::save(&mut tx, &plan).await?;
        self.supersede_siblings(&mut tx, &plan).await?;
        enqueue_event(&mut tx, INFO.name, &events::approved(&plan)).await?;
        if plan.status == Status::Completed {
            enqueue_event(&mut tx, INFO.name, &events::completed(&plan)).await?;
        }
        tx.commit().await?;
        Ok(plan)
    }

    pub async fn complete_item(
        &self,
        actor: &Actor<'_>,
        plan_id: Uuid,
        item_id: Uuid,
        at: Option<DateTime<Utc>>,
    ) -> Result<Plan> {
        let now = Utc::now();
        let at = at.unwrap_or(now);
        // Clocks of the clinic's machines drift a little; a minute is not "in the future".
        if at > now + chrono::Duration::seconds(60) {
            return Err(PlansError::invalid(
                "complete_time",
                "must not be in the future",
            ));
        }
        let mut tx = self.pool.begin().await?;
        let mut plan = self.locked(&mut tx, actor.tenant, plan_id).await?;
        let outcome = plan.complete_item(item_id, actor.staff_id, at, now)?;
        db::save(&mut tx, &plan).await?;
        enqueue_event(
            &mut tx,
            INFO.name,
            &events::item_completed(&plan, item_id, now),
        )
        .await?;
        if outcome.plan_completed {
            enqueue_event(&mut tx, INFO.name, &events::completed(&plan)).await?;
        }
        tx.commit().await?;
        Ok(plan)
    }

    pub async fn cancel_plan(&self, actor: &Actor<'_>, id: Uuid, reason: &str) -> Result<Plan> {
        let mut tx = self.pool.begin().await?;
        let mut plan = self.locked(&mut tx, actor.tenant, id).await?;
        let previous = plan.cancel(reason, actor.staff_id, Utc::now())?;
        db::save(&mut tx, &plan).await?;
        enqueue_event(&mut tx, INFO.name, &events::cancelled(&plan, previous)).await?;
        tx.commit().await?;
        Ok(plan)
    }

    pub async fn revise_plan(&self, actor: &Actor<'_>, id: Uuid, reason: &str) -> Result<Plan> {
        let mut tx = self.pool.begin().await?;
        let plan = self.locked(&mut tx, actor.tenant, id).await?;
        let next = plan.revise(reason, actor.staff_id, Utc::now())?;
        db::insert_revision(&mut tx, &next).await?;
        enqueue_event(&mut tx, INFO.name, &events::revised(&next, actor.staff_id)).await?;
        tx.commit().await?;
        Ok(next)
    }

    /// The patient's billing summary: an alternative group counts once (`alternatives::billing`).
    pub async fn billing(&self, tenant: &str, patient_id: &str) -> Result<Vec<BillingLine>> {
        let mut conn = self.conn().await?;
        let plans = groups_db::billing_plans(&mut conn, tenant, patient_id).await?;
        Ok(alternatives::billing(&plans))
    }

    /// Before approving an option of an alternative group: takes the group's lock (two options approved
    /// at once: the second sees the first's choice) and reads the plan's supersession again under it.
    async fn settle_group_lock(&self, conn: &mut PgConnection, plan: &mut Plan) -> Result<()> {
        if plan.alternative_group_id.is_empty() {
            return Ok(());
        }
        groups_db::lock_group(conn, &plan.tenant_id, &plan.alternative_group_id).await?;
        plan.superseded = groups_db::of_plans(conn, &plan.tenant_id, &[plan.id])
            .await?
            .remove(&plan.id);
        Ok(())
    }

    /// After approving an option: the group's other options offered so far are superseded by it.
    async fn supersede_siblings(&self, conn: &mut PgConnection, plan: &Plan) -> Result<()> {
        let Some(approval) = &plan.approval else {
            return Ok(());
        };
        if plan.alternative_group_id.is_empty() {
            return Ok(());
        }
        let superseded = groups_db::supersede_siblings(
            conn,
            &plan.tenant_id,
            &plan.alternative_group_id,
            plan.id,
            approval.at,
        )
        .await?;
        if superseded > 0 {
            tracing::info!(tenant = %plan.tenant_id, plan_id = %plan.id, superseded, "alternative group settled by an approval");
        }
        Ok(())
    }

    /// The plan and the send behind a verified portal token; None when the link is not one this
    /// service issued for that plan and patient.
    pub async fn portal_plan(&self, claims: &PortalClaims) -> Result<Option<(Plan, db::Send)>> {
        let mut conn = self.conn().await?;
        let Some(send) = db::find_send(&mut conn, &claims.tenant, &claims.jti).await? else {
            return Ok(None);
        };
        if send.plan_id.to_string() != claims.plan_id || send.patient_id != claims.patient_id {
            return Ok(None);
        }
        let plan = db::load(&mut conn, &claims.tenant, send.plan_id, None).await?;
        Ok(plan
            .filter(|p| p.patient_id == claims.patient_id)
            .map(|p| (p, send)))
    }

    /// The patient approves the plan through the portal: `version` is the version their link was sent
    /// for (and the page showed). Approving twice is not an error: the second answer is the plan as
    /// approved, and publishes nothing.
    pub async fn approve_by_patient(
        &self,
        claims: &PortalClaims,
        version: i32,
        evidence: ConsentEvidence,
    ) -> Result<(Plan, bool)> {
        let id = Uuid::parse_str(&claims.plan_id)
            .map_err(|_| PlansError::not_found("plan", claims.plan_id.clone()))?;
        let mut tx = self.pool.begin().await?;
        let mut plan = self.locked(&mut tx, &claims.tenant, id).await?;
        if plan.patient_id != claims.patient_id {
            return Err(PlansError::not_found("plan", claims.plan_id.clone()));
        }
        // Checked under the row lock: a revision or a new send that commits between the page being
        // shown and this approval cannot slip a version the patient never saw under their consent.
        if plan.version != version {
            return Err(PlansError::precondition(
                SUPERSEDED,
                id.to_string(),
                format!(
                    "the link is for version {version} of plan {id}, which is now at version {}",
                    plan.version
                ),
            ));
        }
        if matches!(plan.status, Status::Approved | Status::Completed) {
            return Ok((plan, false));
        }
        self.settle_group_lock(&mut tx, &mut plan).await?;
        plan.approve(Approval {
            channel: ApprovalChannel::PatientPortal,
            staff_id: String::new(),
            at: Utc::now(),
            evidence: Some(evidence),
        })?;
        db::save(&mut tx, &plan).await?;
        self.supersede_siblings(&mut tx, &plan).await?;
        enqueue_event(&mut tx, INFO.name, &events::approved(&plan)).await?;
        if plan.status == Status::Completed {
            enqueue_event(&mut tx, INFO.name, &events::completed(&plan)).await?;
        }
        tx.commit().await?;
        tracing::info!(tenant = %plan.tenant_id, plan_id = %plan.id, "plan approved by the patient");
        Ok((plan, true))
    }
}

/// The precondition type of a patient approval whose link is for an older version of the plan.
pub const SUPERSEDED: &str = "SUPERSEDED";

/// The `data-followup-section` name of a portal section.
pub fn section_name(section: PortalSection) -> &'static str {
    match section {
        PortalSection::Cover => "cover",
        PortalSection::TreatmentDetails => "treatment_details",
        PortalSection::Images => "images",
        PortalSection::PortalSection3dModels => "3d_models",
        PortalSection::Unspecified => "unspecified",
    }
}

pub fn section_from_name(name: &str) -> Option<PortalSection> {
    match name {
        "cover" => Some(PortalSection::Cover),
        "treatment_details" => Some(PortalSection::TreatmentDetails),
        "images" => Some(PortalSection::Images),
        "3d_models" => Some(PortalSection::PortalSection3dModels),
        _ => None,
    }
}
