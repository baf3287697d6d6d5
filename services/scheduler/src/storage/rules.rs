//! Rules and their versions, play and pause, and the enrollments people look at.
//!
//! Pausing takes the rule row's lock and moves its pending steps to `held` in one transaction: the
//! timer's claim skips or waits for rows the pause holds, and enrolling reads the rule under a share
//! lock, so once PauseRule has answered nothing of the rule fires or starts.

use chrono::{DateTime, Utc};
use followup_proto::followup::common::v1::StopReason;
use followup_proto::followup::scheduler::v1 as pb;
use prost::Message;
use sqlx::PgConnection;
use uuid::Uuid;

use super::enroll::PlayingRule;
use super::stop::{End, end};
use super::{Store, timers, wake_timers};
use crate::domain::enrollment::{Release, release};
use crate::domain::rule::RuleDef;
use crate::error::{Error, Result};

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct RuleRow {
    pub rule_id: Uuid,
    pub name: String,
    pub state: String,
    pub latest_version: i32,
    pub template_id: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub updated_by: String,
}

pub fn state_of(text: &str) -> pb::RuleState {
    match text {
        "draft" => pb::RuleState::Draft,
        "playing" => pb::RuleState::Playing,
        "paused" => pb::RuleState::Paused,
        _ => pb::RuleState::Unspecified,
    }
}

pub fn state_text(state: pb::RuleState) -> &'static str {
    match state {
        pb::RuleState::Draft => "draft",
        pb::RuleState::Playing => "playing",
        pb::RuleState::Paused => "paused",
        pb::RuleState::Unspecified => "",
    }
}

const ROW: &str =
    "rule_id, name, state, latest_version, template_id, created_at, updated_at, updated_by";

fn name_taken(err: sqlx::Error, name: &str) -> Error {
    match &err {
        sqlx::Error::Database(db) if db.code().as_deref() == Some("23505") => {
            if db.constraint() == Some("rules_template") {
                Error::AlreadyExists("that template is already enabled in this clinic".into())
            } else {
                Error::AlreadyExists(format!(
                    "a rule named `{name}` already exists in this clinic; choose another name"
                ))
            }
        }
        _ => Error::Db(err),
    }
}

/// The stored form of a rule: what the client wrote, without output-only fields.
pub fn stored_definition(rule: &pb::Rule) -> Vec<u8> {
    let mut rule = rule.clone();
    rule.rule_id.clear();
    rule.rule_version = 0;
    rule.state = 0;
    rule.template_id.clear();
    rule.active_enrollment_count = 0;
    rule.total_enrollment_count = 0;
    rule.create_time = None;
    rule.update_time = None;
    rule.updated_by_staff_id.clear();
    for (i, step) in rule.steps.iter_mut().enumerate() {
        step.step_index = i as i32;
    }
    rule.encode_to_vec()
}

pub async fn create(
    conn: &mut PgConnection,
    tenant: &str,
    by: &str,
    rule: &pb::Rule,
    def: &RuleDef,
    template_id: &str,
    now: DateTime<Utc>,
) -> Result<RuleRow> {
    let rule_id = super::new_id();
    let row = sqlx::query_as::<sqlx::Postgres, RuleRow>(sqlx::AssertSqlSafe(format!(
        "INSERT INTO rules (tenant_id, rule_id, name, state, latest_version, trigger_type, template_id,
                            created_at, updated_at, updated_by)
         VALUES ($1, $2, $3, 'draft', 1, $4, $5, $6, $6, $7)
         RETURNING {ROW}"
    )))
    .bind(tenant)
    .bind(rule_id)
    .bind(&def.name)
    .bind(def.trigger.kind as i16)
    .bind(template_id)
    .bind(now)
    .bind(by)
    .fetch_one(&mut *conn)
    .await
    .map_err(|e| name_taken(e, &def.name))?;
    sqlx::query(
        "INSERT INTO rule_versions (tenant_id, rule_id, version, definition, created_at, created_by)
         VALUES ($1, $2, 1, $3, $4, $5)",
    )
    .bind(tenant)
    .bind(rule_id)
    .bind(stored_definition(rule))
    .bind(now)
    .bind(by)
    .execute(&mut *conn)
    .await?;
    Ok(row)
}

/// The rule row, locked for a change when `lock`.
pub async fn row(
    conn: &mut PgConnection,
    tenant: &str,
    rule_id: Uuid,
    lock: bool,
) -> Result<RuleRow> {
    let sql = format!(
        "SELECT {ROW} FROM rules WHERE tenant_id = $1 AND rule_id = $2 AND state <> 'deleted'{}",
        if lock { " FOR UPDATE" } else { "" }
    );
    sqlx::query_as::<sqlx::Postgres, RuleRow>(sqlx::AssertSqlSafe(sql))
        .bind(tenant)
        .bind(rule_id)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| Error::not_found("rule", rule_id.to_string()))
}

/// A rule version with its output fields filled.
pub async fn view(
    conn: &mut PgConnection,
    tenant: &str,
    row: &RuleRow,
    version: i32,
) -> Result<pb::Rule> {
    let version = if version == 0 {
        row.latest_version
    } else {
        version
    };
    if version < 1 || version > row.latest_version {
        return Err(Error::not_found(
            "rule version",
            format!("{}@{version}", row.rule_id),
        ));
    }
    let (mut rule, _) = super::load_version(conn, tenant, row.rule_id, version).await?;
    let (active, total): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE state = 'active'), count(*) FROM enrollments
         WHERE tenant_id = $1 AND rule_id = $2",
    )
    .bind(tenant)
    .bind(row.rule_id)
    .fetch_one(&mut *conn)
    .await?;
    fill(&mut rule, row, version, active, total);
    Ok(rule)
}

fn fill(rule: &mut pb::Rule, row: &RuleRow, version: i32, active: i64, total: i64) {
    rule.rule_id = row.rule_id.to_string();
    rule.rule_version = version;
    rule.state = state_of(&row.state) as i32;
    rule.template_id = row.template_id.clone();
    rule.active_enrollment_count = i32::try_from(active).unwrap_or(i32::MAX);
    rule.total_enrollment_count = i32::try_from(total).unwrap_or(i32::MAX);
    rule.create_time = Some(crate::convert::timestamp(row.created_at));
    rule.update_time = Some(crate::convert::timestamp(row.updated_at));
    rule.updated_by_staff_id = row.updated_by.clone();
}

#[derive(sqlx::FromRow)]
struct ListRow {
    #[sqlx(flatten)]
    rule: RuleRow,
    definition: Vec<u8>,
    active: i64,
    total: i64,
}

/// Rules by name (case-insensitive), after the (name, id) of `after`.
pub async fn list(
    conn: &mut PgConnection,
    tenant: &str,
    states: &[pb::RuleState],
    trigger: pb::TriggerType,
    limit: i64,
    after: Option<(String, Uuid)>,
) -> Result<Vec<pb::Rule>> {
    let states: Vec<&str> = states.iter().map(|s| state_text(*s)).collect();
    let (after_name, after_id) = after.unwrap_or_default();
    let rows = sqlx::query_as::<sqlx::Postgres, ListRow>(
        "SELECT r.rule_id, r.name, r.state, r.latest_version, r.template_id, r.created_at, r.updated_at,
                r.updated_by, v.definition,
                (SELECT count(*) FROM enrollments e WHERE e.tenant_id = r.tenant_id AND e.rule_id = r.rule_id
                     AND e.state = 'active') AS active,
                (SELECT count(*) FROM enrollments e WHERE e.tenant_id = r.tenant_id AND e.rule_id = r.rule_id) AS total
         FROM rules r
         JOIN rule_versions v ON v.tenant_id = r.tenant_id AND v.rule_id = r.rule_id AND v.version = r.latest_version
         WHERE r.tenant_id = $1 AND r.state <> 'deleted'
           AND (cardinality($2::text[]) = 0 OR r.state = ANY($2))
           AND ($3 = 0 OR r.trigger_type = $3)
           AND ($4 = '' OR (lower(r.name), r.rule_id) > ($4, $5))
         ORDER BY lower(r.name), r.rule_id
         LIMIT $6",
    )
    .bind(tenant)
    .bind(&states)
    .bind(trigger as i16)
    .bind(&after_name)
    .bind(after_id)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    rows.into_iter()
        .map(|row| {
            let mut rule = pb::Rule::decode(row.definition.as_slice())
                .map_err(|e| Error::Corrupt(format!("rule {}: {e}", row.rule.rule_id)))?;
            fill(
                &mut rule,
                &row.rule,
                row.rule.latest_version,
                row.active,
                row.total,
            );
            Ok(rule)
        })
        .collect()
}

/// Replaces a draft's definition in place, or adds a version to a playing or paused rule.
#[allow(clippy::too_many_arguments)]
pub async fn update(
    store: &Store,
    conn: &mut PgConnection,
    tenant: &str,
    by: &str,
    rule_id: Uuid,
    rule: &pb::Rule,
    def: &RuleDef,
    now: DateTime<Utc>,
) -> Result<RuleRow> {
    let current = row(conn, tenant, rule_id, true).await?;
    let version = if current.state == "draft" {
        sqlx::query(
            "UPDATE rule_versions SET definition = $4, created_at = $5, created_by = $6
             WHERE tenant_id = $1 AND rule_id = $2 AND version = $3",
        )
        .bind(tenant)
        .bind(rule_id)
        .bind(current.latest_version)
        .bind(stored_definition(rule))
        .bind(now)
        .bind(by)
        .execute(&mut *conn)
        .await?;
        store.rules.forget(tenant, rule_id, current.latest_version);
        current.latest_version
    } else {
        let next = current.latest_version + 1;
        sqlx::query(
            "INSERT INTO rule_versions (tenant_id, rule_id, version, definition, created_at, created_by)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(tenant)
        .bind(rule_id)
        .bind(next)
        .bind(stored_definition(rule))
        .bind(now)
        .bind(by)
        .execute(&mut *conn)
        .await?;
        next
    };
    sqlx::query_as::<sqlx::Postgres, RuleRow>(sqlx::AssertSqlSafe(format!(
        "UPDATE rules SET name = $3, latest_version = $4, trigger_type = $5, updated_at = $6, updated_by = $7
         WHERE tenant_id = $1 AND rule_id = $2 RETURNING {ROW}"
    )))
    .bind(tenant)
    .bind(rule_id)
    .bind(&def.name)
    .bind(version)
    .bind(def.trigger.kind as i16)
    .bind(now)
    .bind(by)
    .fetch_one(&mut *conn)
    .await
    .map_err(|e| name_taken(e, &def.name))
}

/// Deletes a rule that is not playing; its running enrollments stop with RULE_DELETED.
pub async fn delete(
    store: &Store,
    conn: &mut PgConnection,
    tenant: &str,
    by: &str,
    rule_id: Uuid,
) -> Result<()> {
    let current = row(conn, tenant, rule_id, true).await?;
    if current.state == "playing" {
        return Err(Error::precondition(
            "RULE_PLAYING",
            format!("rules/{rule_id}"),
            "the rule is playing: pause it before deleting it",
        ));
    }
    let running: Vec<Uuid> = sqlx::query_scalar(
        "SELECT enrollment_id FROM enrollments WHERE tenant_id = $1 AND rule_id = $2 AND state = 'active'",
    )
    .bind(tenant)
    .bind(rule_id)
    .fetch_all(&mut *conn)
    .await?;
    let now = store.now();
    end(
        conn,
        tenant,
        &running,
        End {
            state: "stopped",
            reason: StopReason::RuleDeleted,
            detail: "the rule was deleted",
            cause_event_id: "",
            by_staff: by,
            now,
        },
    )
    .await?;
    timers::disarm_rule(conn, tenant, rule_id).await?;
    sqlx::query("UPDATE rules SET state = 'deleted', updated_at = $3, updated_by = $4 WHERE tenant_id = $1 AND rule_id = $2")
        .bind(tenant)
        .bind(rule_id)
        .bind(now)
        .bind(by)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// What PlayRule did.
pub struct Played {
    pub row: RuleRow,
    pub released: i64,
    pub skipped: i64,
}

pub async fn play(
    store: &Store,
    conn: &mut PgConnection,
    tenant: &str,
    by: &str,
    rule_id: Uuid,
) -> Result<Played> {
    let current = row(conn, tenant, rule_id, true).await?;
    if current.state == "playing" {
        return Ok(Played {
            row: current,
            released: 0,
            skipped: 0,
        });
    }
    let now = store.now();
    let def = store
        .rules
        .get(conn, tenant, rule_id, current.latest_version)
        .await?;
    let held: Vec<(Uuid, i32, DateTime<Utc>)> = sqlx::query_as(
        "SELECT enrollment_id, step_index, due_at FROM step_runs
         WHERE tenant_id = $1 AND rule_id = $2 AND state = 'held' FOR UPDATE",
    )
    .bind(tenant)
    .bind(rule_id)
    .fetch_all(&mut *conn)
    .await?;
    // Each held step follows the limit of the version its enrollment runs; versions share the rule's
    // play, so the latest version's limit is the one the clinic set last.
    let limit = def.skip_missed_older_than;
    let (mut skip_ids, mut skip_steps) = (Vec::new(), Vec::new());
    for (enrollment, step, due) in &held {
        if release(*due, now, limit) == Release::Skip {
            skip_ids.push(*enrollment);
            skip_steps.push(*step);
        }
    }
    // Released: the held steps that fell due while paused and now fire (later ones just wait again).
    let released: i64 = sqlx::query_scalar(
        "WITH released AS (
             UPDATE step_runs SET state = 'pending' WHERE tenant_id = $1 AND rule_id = $2 AND state = 'held'
                 AND NOT ((enrollment_id, step_index) IN (SELECT * FROM UNNEST($3::uuid[], $4::int4[])))
             RETURNING due_at)
         SELECT count(*) FILTER (WHERE due_at <= $5) FROM released",
    )
    .bind(tenant)
    .bind(rule_id)
    .bind(&skip_ids)
    .bind(&skip_steps)
    .bind(now)
    .fetch_one(&mut *conn)
    .await?;
    if !skip_ids.is_empty() {
        sqlx::query(
            "UPDATE step_runs s SET state = 'skipped', reason = 'held while paused past the rule''s limit'
             FROM UNNEST($2::uuid[], $3::int4[]) AS t(enrollment_id, step_index)
             WHERE s.tenant_id = $1 AND s.enrollment_id = t.enrollment_id AND s.step_index = t.step_index",
        )
        .bind(tenant)
        .bind(&skip_ids)
        .bind(&skip_steps)
        .execute(&mut *conn)
        .await?;
        // Enrollments left with nothing to run are finished.
        let done: Vec<Uuid> = sqlx::query_scalar(
            "SELECT DISTINCT e.enrollment_id FROM enrollments e
             WHERE e.tenant_id = $1 AND e.enrollment_id = ANY($2) AND e.state = 'active'
               AND NOT EXISTS (SELECT 1 FROM step_runs s WHERE s.tenant_id = e.tenant_id
                   AND s.enrollment_id = e.enrollment_id AND s.state IN ('pending', 'held'))",
        )
        .bind(tenant)
        .bind(&skip_ids)
        .fetch_all(&mut *conn)
        .await?;
        end(
            conn,
            tenant,
            &done,
            End {
                state: "finished",
                reason: StopReason::SequenceFinished,
                detail: "every step ran or was skipped",
                cause_event_id: "",
                by_staff: "",
                now,
            },
        )
        .await?;
    }
    let row = sqlx::query_as::<sqlx::Postgres, RuleRow>(sqlx::AssertSqlSafe(format!(
        "UPDATE rules SET state = 'playing', updated_at = $3, updated_by = $4
         WHERE tenant_id = $1 AND rule_id = $2 RETURNING {ROW}"
    )))
    .bind(tenant)
    .bind(rule_id)
    .bind(now)
    .bind(by)
    .fetch_one(&mut *conn)
    .await?;
    let playing = PlayingRule {
        rule_id,
        version: row.latest_version,
        def,
    };
    timers::arm_existing(conn, tenant, &playing, now).await?;
    wake_timers(conn).await?;
    Ok(Played {
        row,
        released,
        skipped: skip_ids.len() as i64,
    })
}

pub async fn pause(
    store: &Store,
    conn: &mut PgConnection,
    tenant: &str,
    by: &str,
    rule_id: Uuid,
) -> Result<RuleRow> {
    let current = row(conn, tenant, rule_id, true).await?;
    match current.state.as_str() {
        "paused" => return Ok(current),
        "draft" => {
            return Err(Error::precondition(
                "RULE_DRAFT",
                format!("rules/{rule_id}"),
                "the rule is a draft: it has never played, so there is nothing to pause",
            ));
        }
        _ => {}
    }
    let now = store.now();
    let row = sqlx::query_as::<sqlx::Postgres, RuleRow>(sqlx::AssertSqlSafe(format!(
        "UPDATE rules SET state = 'paused', updated_at = $3, updated_by = $4
         WHERE tenant_id = $1 AND rule_id = $2 RETURNING {ROW}"
    )))
    .bind(tenant)
    .bind(rule_id)
    .bind(now)
    .bind(by)
    .fetch_one(&mut *conn)
    .await?;
    // Steps the timer holds right now are waited for (and then fired: they were claimed before the
    // pause); every other pending step of the rule is held.
    sqlx::query(
        "UPDATE step_runs SET state = 'held' WHERE tenant_id = $1 AND rule_id = $2 AND state = 'pending'",
    )
    .bind(tenant)
    .bind(rule_id)
    .execute(&mut *conn)
    .await?;
    Ok(row)
}

/// The clinic's rules made from templates: template id → rule id.
pub async fn enabled_templates(
    conn: &mut PgConnection,
    tenant: &str,
) -> Result<Vec<(String, Uuid)>> {
    Ok(sqlx::query_as(
        "SELECT template_id, rule_id FROM rules WHERE tenant_id = $1 AND template_id <> '' AND state <> 'deleted'",
    )
    .bind(tenant)
    .fetch_all(&mut *conn)
    .await?)
}
