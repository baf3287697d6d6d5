//! Plans, their versions, items and sends. Every query filters by tenant_id.

use chrono::{DateTime, NaiveDate, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::domain::money::Currency;
use crate::domain::plan::{
    Approval, ApprovalChannel, ConsentEvidence, Image, Item, ItemStatus, Plan, Status,
};
use crate::domain::tooth::{Numbering, Tooth};
use crate::error::{PlansError, Result};

#[derive(sqlx::FromRow)]
struct VersionRow {
    tenant_id: String,
    plan_id: Uuid,
    version: i32,
    patient_id: String,
    title: String,
    status: String,
    fee_schedule_id: Option<Uuid>,
    currency: String,
    owner_staff_id: String,
    alternative_group_id: String,
    quote_expiry_date: Option<NaiveDate>,
    internal_note: String,
    patient_note: String,
    images: sqlx::types::Json<Vec<Image>>,
    created_by: String,
    create_time: DateTime<Utc>,
    update_time: DateTime<Utc>,
    last_send_time: Option<DateTime<Utc>>,
    send_count: i32,
    approval_channel: Option<String>,
    approved_by_staff_id: String,
    approve_time: Option<DateTime<Utc>>,
    consent_evidence: Option<sqlx::types::Json<ConsentEvidence>>,
    complete_time: Option<DateTime<Utc>>,
    cancel_time: Option<DateTime<Utc>>,
    cancel_reason: String,
    cancelled_by: String,
    revision_reason: String,
}

#[derive(sqlx::FromRow)]
struct ItemRow {
    plan_id: Uuid,
    version: i32,
    item_id: Uuid,
    position: i32,
    code: String,
    code_name: String,
    tooth_numbering: Option<i16>,
    tooth_number: Option<String>,
    tooth_surfaces: Option<String>,
    practitioner_id: String,
    schedule_fee_minor: Option<i64>,
    price_override_minor: Option<i64>,
    price_override_reason: String,
    visit: i32,
    depends_on: Vec<Uuid>,
    note: String,
    completed: bool,
    complete_time: Option<DateTime<Utc>>,
    completed_by: String,
}

const VERSION_COLUMNS: &str = "tenant_id, plan_id, version, patient_id, title, status, fee_schedule_id, \
    currency, owner_staff_id, alternative_group_id, quote_expiry_date, internal_note, patient_note, images, \
    created_by, create_time, update_time, last_send_time, send_count, approval_channel, \
    approved_by_staff_id, approve_time, consent_evidence, complete_time, cancel_time, cancel_reason, \
    cancelled_by, revision_reason";

const ITEM_COLUMNS: &str = "plan_id, version, item_id, position, code, code_name, tooth_numbering, \
    tooth_number, tooth_surfaces, practitioner_id, schedule_fee_minor, price_override_minor, \
    price_override_reason, visit, depends_on, note, completed, complete_time, completed_by";

fn corrupt(what: impl Into<String>) -> PlansError {
    PlansError::Internal(format!("stored plan is inconsistent: {}", what.into()))
}

impl VersionRow {
    fn into_plan(self, items: Vec<Item>) -> Result<Plan> {
        let status = Status::parse(&self.status)
            .ok_or_else(|| corrupt(format!("status {}", self.status)))?;
        let currency = Currency::parse(&self.currency).map_err(|_| corrupt("currency"))?;
        let approval = match (self.approval_channel, self.approve_time) {
            (Some(channel), Some(at)) => Some(Approval {
                channel: ApprovalChannel::parse(&channel)
                    .ok_or_else(|| corrupt("approval channel"))?,
                staff_id: self.approved_by_staff_id,
                at,
                evidence: self.consent_evidence.map(|e| e.0),
            }),
            _ => None,
        };
        Ok(Plan {
            tenant_id: self.tenant_id,
            id: self.plan_id,
            version: self.version,
            patient_id: self.patient_id,
            title: self.title,
            status,
            fee_schedule_id: self.fee_schedule_id,
            currency,
            owner_staff_id: self.owner_staff_id,
            alternative_group_id: self.alternative_group_id,
            quote_expiry_date: self.quote_expiry_date,
            internal_note: self.internal_note,
            patient_note: self.patient_note,
            images: self.images.0,
            items,
            created_by: self.created_by,
            create_time: self.create_time,
            update_time: self.update_time,
            last_send_time: self.last_send_time,
            send_count: self.send_count,
            approval,
            complete_time: self.complete_time,
            cancel_time: self.cancel_time,
            cancel_reason: self.cancel_reason,
            cancelled_by: self.cancelled_by,
            revision_reason: self.revision_reason,
            superseded: None,
        })
    }
}

impl ItemRow {
    fn into_item(self) -> Result<Item> {
        let tooth = match (self.tooth_numbering, self.tooth_number) {
            (Some(numbering), Some(number)) => Some(Tooth {
                numbering: Numbering::from_i16(numbering)
                    .ok_or_else(|| corrupt("tooth numbering"))?,
                number,
                surfaces: self.tooth_surfaces.unwrap_or_default(),
            }),
            _ => None,
        };
        Ok(Item {
            id: self.item_id,
            position: self.position,
            code: self.code,
            code_name: self.code_name,
            tooth,
            practitioner_id: self.practitioner_id,
            schedule_fee: self.schedule_fee_minor,
            price_override: self.price_override_minor,
            price_override_reason: self.price_override_reason,
            visit: self.visit,
            depends_on: self.depends_on,
            note: self.note,
            status: if self.completed {
                ItemStatus::Completed
            } else {
                ItemStatus::Planned
            },
            complete_time: self.complete_time,
            completed_by: self.completed_by,
        })
    }
}

/// Locks a plan for a change (every change of a plan takes this lock first) and returns its current
/// version number; None when the clinic has no such plan.
pub async fn lock(conn: &mut PgConnection, tenant: &str, plan_id: Uuid) -> Result<Option<i32>> {
    Ok(sqlx::query_scalar(
        "SELECT current_version FROM plans WHERE tenant_id = $1 AND plan_id = $2 FOR UPDATE",
    )
    .bind(tenant)
    .bind(plan_id)
    .fetch_optional(&mut *conn)
    .await?)
}

async fn load_items(
    conn: &mut PgConnection,
    tenant: &str,
    keys: &[(Uuid, i32)],
) -> Result<Vec<ItemRow>> {
    let ids: Vec<Uuid> = keys.iter().map(|(id, _)| *id).collect();
    let versions: Vec<i32> = keys.iter().map(|(_, v)| *v).collect();
    let sql = format!(
        "SELECT {ITEM_COLUMNS} FROM plan_items
         WHERE tenant_id = $1 AND (plan_id, version) IN (SELECT * FROM UNNEST($2::uuid[], $3::int[]))"
    );
    Ok(
        sqlx::query_as::<sqlx::Postgres, ItemRow>(sqlx::AssertSqlSafe(sql))
            .bind(tenant)
            .bind(&ids)
            .bind(&versions)
            .fetch_all(&mut *conn)
            .await?,
    )
}

async fn assemble(
    conn: &mut PgConnection,
    tenant: &str,
    rows: Vec<VersionRow>,
) -> Result<Vec<Plan>> {
    let keys: Vec<(Uuid, i32)> = rows.iter().map(|r| (r.plan_id, r.version)).collect();
    let mut items = load_items(conn, tenant, &keys).await?;
    let ids: Vec<Uuid> = keys.iter().map(|(id, _)| *id).collect();
    let superseded = super::alternatives::of_plans(conn, tenant, &ids).await?;
    let mut plans = Vec::with_capacity(rows.len());
    for row in rows {
        let (mine, rest): (Vec<ItemRow>, Vec<ItemRow>) = items
            .into_iter()
            .partition(|i| i.plan_id == row.plan_id && i.version == row.version);
        items = rest;
        let mine = mine
            .into_iter()
            .map(ItemRow::into_item)
            .collect::<Result<Vec<_>>>()?;
        let id = row.plan_id;
        let mut plan = row.into_plan(mine)?;
        plan.superseded = superseded.get(&id).cloned();
        plans.push(plan);
    }
    Ok(plans)
}

/// One version of a plan with its items; `version` None = the current one.
pub async fn load(
    conn: &mut PgConnection,
    tenant: &str,
    plan_id: Uuid,
    version: Option<i32>,
) -> Result<Option<Plan>> {
    let sql = format!(
        "SELECT {VERSION_COLUMNS} FROM plan_versions
         WHERE tenant_id = $1 AND plan_id = $2 AND (CASE WHEN $3::int IS NULL THEN is_current ELSE version = $3 END)"
    );
    let row = sqlx::query_as::<sqlx::Postgres, VersionRow>(sqlx::AssertSqlSafe(sql))
        .bind(tenant)
        .bind(plan_id)
        .bind(version)
        .fetch_optional(&mut *conn)
        .await?;
    match row {
        Some(row) => Ok(assemble(conn, tenant, vec![row]).await?.pop()),
        None => Ok(None),
    }
}

/// What ListPlans filters on.
pub struct ListFilter<'a> {
    pub patient_id: Option<&'a str>,
    pub statuses: Vec<&'static str>,
    pub alternative_group_id: Option<&'a str>,
    /// Plans created before this id (ids are UUIDv7, so id order is creation order).
    pub before: Option<Uuid>,
    pub limit: i64,
}

/// Current versions, newest first.
pub async fn list(
    conn: &mut PgConnection,
    tenant: &str,
    filter: &ListFilter<'_>,
) -> Result<Vec<Plan>> {
    let sql = format!(
        "SELECT {VERSION_COLUMNS} FROM plan_versions
         WHERE tenant_id = $1 AND is_current
           AND ($2::text IS NULL OR patient_id = $2)
           AND (cardinality($3::text[]) = 0 OR status = ANY($3))
           AND ($4::text IS NULL OR alternative_group_id = $4)
           AND ($5::uuid IS NULL OR plan_id < $5)
         ORDER BY plan_id DESC
         LIMIT $6"
    );
    let rows = sqlx::query_as::<sqlx::Postgres, VersionRow>(sqlx::AssertSqlSafe(sql))
        .bind(tenant)
        .bind(filter.patient_id)
        .bind(&filter.statuses)
        .bind(filter.alternative_group_id)
        .bind(filter.before)
        .bind(filter.limit)
        .fetch_all(&mut *conn)
        .await?;
    assemble(conn, tenant, rows).await
}

/// Every version of a plan, newest first.
pub async fn versions(conn: &mut PgConnection, tenant: &str, plan_id: Uuid) -> Result<Vec<Plan>> {
    let sql = format!(
        "SELECT {VERSION_COLUMNS} FROM plan_versions WHERE tenant_id = $1 AND plan_id = $2 ORDER BY version DESC"
    );
    let rows = sqlx::query_as::<sqlx::Postgres, VersionRow>(sqlx::AssertSqlSafe(sql))
        .bind(tenant)
        .bind(plan_id)
        .fetch_all(&mut *conn)
        .await?;
    assemble(conn, tenant, rows).await
}

/// A new plan: its identity row and version 1.
pub async fn insert(conn: &mut PgConnection, plan: &Plan) -> Result<()> {
    sqlx::query(
        "INSERT INTO plans (tenant_id, plan_id, patient_id, current_version, create_time) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(&plan.tenant_id)
    .bind(plan.id)
    .bind(&plan.patient_id)
    .bind(plan.version)
    .bind(plan.create_time)
    .execute(&mut *conn)
    .await?;
    insert_version(conn, plan).await
}

async fn insert_version(conn: &mut PgConnection, plan: &Plan) -> Result<()> {
    sqlx::query(
        "INSERT INTO plan_versions (tenant_id, plan_id, version, is_current, patient_id, title, status, currency, created_by, create_time, update_time)
         VALUES ($1, $2, $3, true, $4, $5, $6, $7, $8, $9, $9)",
    )
    .bind(&plan.tenant_id)
    .bind(plan.id)
    .bind(plan.version)
    .bind(&plan.patient_id)
    .bind(&plan.title)
    .bind(plan.status.as_str())
    .bind(plan.currency.as_str())
    .bind(&plan.created_by)
    .bind(plan.create_time)
    .execute(&mut *conn)
    .await?;
    save(conn, plan).await
}

/// A revision: the previous version stays on record, this one becomes current.
pub async fn insert_revision(conn: &mut PgConnection, plan: &Plan) -> Result<()> {
    sqlx::query("UPDATE plan_versions SET is_current = false WHERE tenant_id = $1 AND plan_id = $2 AND is_current")
        .bind(&plan.tenant_id)
        .bind(plan.id)
        .execute(&mut *conn)
        .await?;
    sqlx::query("UPDATE plans SET current_version = $3 WHERE tenant_id = $1 AND plan_id = $2")
        .bind(&plan.tenant_id)
        .bind(plan.id)
        .bind(plan.version)
        .execute(&mut *conn)
        .await?;
    insert_version(conn, plan).await
}

/// Writes a version's fields and replaces its items (a plan has few; rewriting them keeps one code
/// path for every change).
pub async fn save(conn: &mut PgConnection, plan: &Plan) -> Result<()> {
    let totals = plan.totals();
    let approval = plan.approval.as_ref();
    sqlx::query(
        "UPDATE plan_versions SET
            title = $4, status = $5, fee_schedule_id = $6, currency = $7, owner_staff_id = $8,
            alternative_group_id = $9, quote_expiry_date = $10, internal_note = $11, patient_note = $12,
            images = $13, update_time = $14, last_send_time = $15, send_count = $16,
            approval_channel = $17, approved_by_staff_id = $18, approve_time = $19, consent_evidence = $20,
            complete_time = $21, cancel_time = $22, cancel_reason = $23, cancelled_by = $24,
            revision_reason = $25, total_minor = $26, completed_minor = $27
         WHERE tenant_id = $1 AND plan_id = $2 AND version = $3",
    )
    .bind(&plan.tenant_id)
    .bind(plan.id)
    .bind(plan.version)
    .bind(&plan.title)
    .bind(plan.status.as_str())
    .bind(plan.fee_schedule_id)
    .bind(plan.currency.as_str())
    .bind(&plan.owner_staff_id)
    .bind(&plan.alternative_group_id)
    .bind(plan.quote_expiry_date)
    .bind(&plan.internal_note)
    .bind(&plan.patient_note)
    .bind(sqlx::types::Json(&plan.images))
    .bind(plan.update_time)
    .bind(plan.last_send_time)
    .bind(plan.send_count)
    .bind(approval.map(|a| a.channel.as_str()))
    .bind(approval.map(|a| a.staff_id.clone()).unwrap_or_default())
    .bind(approval.map(|a| a.at))
    .bind(approval.and_then(|a| a.evidence.as_ref()).map(sqlx::types::Json))
    .bind(plan.complete_time)
    .bind(plan.cancel_time)
    .bind(&plan.cancel_reason)
    .bind(&plan.cancelled_by)
    .bind(&plan.revision_reason)
    .bind(totals.total.minor)
    .bind(totals.completed.minor)
    .execute(&mut *conn)
    .await?;

    sqlx::query("DELETE FROM plan_items WHERE tenant_id = $1 AND plan_id = $2 AND version = $3")
        .bind(&plan.tenant_id)
        .bind(plan.id)
        .bind(plan.version)
        .execute(&mut *conn)
        .await?;
    if plan.items.is_empty() {
        return Ok(());
    }
    // One statement for every item. UNNEST cannot take an array of arrays, so each item's
    // dependencies travel as one comma-separated text.
    let items = &plan.items;
    let column = |f: &dyn Fn(&Item) -> String| items.iter().map(f).collect::<Vec<String>>();
    sqlx::query(
        "INSERT INTO plan_items (tenant_id, plan_id, version, item_id, position, code, code_name,
            tooth_numbering, tooth_number, tooth_surfaces, practitioner_id, schedule_fee_minor,
            price_override_minor, price_override_reason, visit, depends_on, note, completed,
            complete_time, completed_by)
         SELECT $1, $2, $3, u.item_id, u.position, u.code, u.code_name, u.tooth_numbering, u.tooth_number,
                u.tooth_surfaces, u.practitioner_id, u.schedule_fee_minor, u.price_override_minor,
                u.price_override_reason, u.visit, COALESCE(string_to_array(u.depends_on, ','), '{}')::uuid[],
                u.note, u.completed, u.complete_time, u.completed_by
         FROM UNNEST($4::uuid[], $5::int[], $6::text[], $7::text[], $8::smallint[], $9::text[], $10::text[],
                     $11::text[], $12::bigint[], $13::bigint[], $14::text[], $15::int[], $16::text[],
                     $17::text[], $18::bool[], $19::timestamptz[], $20::text[])
           AS u(item_id, position, code, code_name, tooth_numbering, tooth_number, tooth_surfaces,
                practitioner_id, schedule_fee_minor, price_override_minor, price_override_reason, visit,
                depends_on, note, completed, complete_time, completed_by)",
    )
    .bind(&plan.tenant_id)
    .bind(plan.id)
    .bind(plan.version)
    .bind(items.iter().map(|i| i.id).collect::<Vec<_>>())
    .bind(items.iter().map(|i| i.position).collect::<Vec<_>>())
    .bind(column(&|i| i.code.clone()))
    .bind(column(&|i| i.code_name.clone()))
    .bind(items.iter().map(|i| i.tooth.as_ref().map(|t| t.numbering.as_i16())).collect::<Vec<_>>())
    .bind(items.iter().map(|i| i.tooth.as_ref().map(|t| t.number.clone())).collect::<Vec<_>>())
    .bind(items.iter().map(|i| i.tooth.as_ref().map(|t| t.surfaces.clone())).collect::<Vec<_>>())
    .bind(column(&|i| i.practitioner_id.clone()))
    .bind(items.iter().map(|i| i.schedule_fee).collect::<Vec<_>>())
    .bind(items.iter().map(|i| i.price_override).collect::<Vec<_>>())
    .bind(column(&|i| i.price_override_reason.clone()))
    .bind(items.iter().map(|i| i.visit).collect::<Vec<_>>())
    .bind(column(&|i| {
        i.depends_on
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join(",")
    }))
    .bind(column(&|i| i.note.clone()))
    .bind(items.iter().map(Item::is_completed).collect::<Vec<_>>())
    .bind(items.iter().map(|i| i.complete_time).collect::<Vec<_>>())
    .bind(column(&|i| i.completed_by.clone()))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

pub async fn delete(conn: &mut PgConnection, tenant: &str, plan_id: Uuid) -> Result<()> {
    sqlx::query("DELETE FROM plans WHERE tenant_id = $1 AND plan_id = $2")
        .bind(tenant)
        .bind(plan_id)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// A portal link as issued.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct Send {
    pub tenant_id: String,
    pub link_id: String,
    pub plan_id: Uuid,
    pub version: i32,
    pub patient_id: String,
    pub sent_by: String,
    pub send_time: DateTime<Utc>,
    pub expire_time: DateTime<Utc>,
    pub sections: Vec<String>,
    pub delivery_channel: i32,
}

pub async fn insert_send(conn: &mut PgConnection, send: &Send) -> Result<()> {
    sqlx::query(
        "INSERT INTO plan_sends (tenant_id, link_id, plan_id, version, patient_id, sent_by, send_time, expire_time, sections, delivery_channel)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(&send.tenant_id)
    .bind(&send.link_id)
    .bind(send.plan_id)
    .bind(send.version)
    .bind(&send.patient_id)
    .bind(&send.sent_by)
    .bind(send.send_time)
    .bind(send.expire_time)
    .bind(&send.sections)
    .bind(send.delivery_channel)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

pub async fn find_send(
    conn: &mut PgConnection,
    tenant: &str,
    link_id: &str,
) -> Result<Option<Send>> {
    Ok(sqlx::query_as::<sqlx::Postgres, Send>(
        "SELECT tenant_id, link_id, plan_id, version, patient_id, sent_by, send_time, expire_time, sections, delivery_channel
         FROM plan_sends WHERE tenant_id = $1 AND link_id = $2",
    )
    .bind(tenant)
    .bind(link_id)
    .fetch_optional(&mut *conn)
    .await?)
}

/// Whether a DRAFT plan of the clinic prices from this schedule.
pub async fn draft_uses_schedule(
    conn: &mut PgConnection,
    tenant: &str,
    fee_schedule_id: Uuid,
) -> Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM plan_versions WHERE tenant_id = $1 AND fee_schedule_id = $2 AND is_current AND status = 'DRAFT'",
    )
    .bind(tenant)
    .bind(fee_schedule_id)
    .fetch_one(&mut *conn)
    .await?)
}
