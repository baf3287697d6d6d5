//! Lists of cases: filters, sorts, keyset pages, and the totals of the whole filtered set.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::types::Json;
use sqlx::{PgConnection, Postgres, QueryBuilder};
use uuid::Uuid;

use super::CaseRecord;
use super::counts::{self, Cell, OwnerScope};
use crate::domain::CaseStatus;
use crate::domain::case::CaseState;
use crate::error::Error;

/// What a list shows. Every field narrows the set; empty/None means "any".
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ListFilter {
    pub statuses: Vec<CaseStatus>,
    pub sent_after: Option<DateTime<Utc>>,
    pub sent_before: Option<DateTime<Utc>>,
    pub owners: OwnerScope,
    /// Inclusive value bounds in minor units, of `currency` (which then also filters the currency).
    pub min_value: Option<i64>,
    pub max_value: Option<i64>,
    pub currency: Option<String>,
    pub viewed: Option<bool>,
    /// Folded words that must all appear in the patient's folded name.
    pub patient_words: Vec<String>,
    pub group: Option<String>,
}

impl ListFilter {
    pub fn everything() -> Self {
        Self {
            statuses: Vec::new(),
            sent_after: None,
            sent_before: None,
            owners: OwnerScope::Any,
            min_value: None,
            max_value: None,
            currency: None,
            viewed: None,
            patient_words: Vec::new(),
            group: None,
        }
    }

    /// Only statuses and owners: the counters answer the totals without touching the cases.
    fn counted(&self) -> bool {
        self.sent_after.is_none()
            && self.sent_before.is_none()
            && self.min_value.is_none()
            && self.max_value.is_none()
            && self.currency.is_none()
            && self.viewed.is_none()
            && self.patient_words.is_empty()
            && self.group.is_none()
    }
}

/// The sort of a list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Order {
    /// Last sent, newest first (drafts by creation).
    Sent,
    /// Value, largest first.
    Value,
    /// The follow-up queue's order.
    Priority,
    /// Last activity, most recent first.
    Activity,
}

/// Where the previous page ended: the sort key of its last case.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Cursor {
    Sent(DateTime<Utc>, Uuid),
    Value(i64, Uuid),
    Priority(i16, i64, DateTime<Utc>, Uuid),
    Activity(DateTime<Utc>, Uuid),
}

impl Cursor {
    /// The cursor after `case` in `order`.
    pub fn after(order: Order, case: &CaseState) -> Self {
        let value = case.value.as_ref().map_or(0, |m| m.amount_minor);
        match order {
            Order::Sent => Cursor::Sent(case.last_sent_at.unwrap_or(case.created_at), case.case_id),
            Order::Value => Cursor::Value(value, case.case_id),
            Order::Priority => Cursor::Priority(
                crate::domain::ranking::tier(case),
                -value,
                case.contact_time(),
                case.case_id,
            ),
            Order::Activity => Cursor::Activity(case.last_activity_at, case.case_id),
        }
    }

    fn order(&self) -> Order {
        match self {
            Cursor::Sent(..) => Order::Sent,
            Cursor::Value(..) => Order::Value,
            Cursor::Priority(..) => Order::Priority,
            Cursor::Activity(..) => Order::Activity,
        }
    }
}

fn push_filters(q: &mut QueryBuilder<Postgres>, tenant_id: &str, f: &ListFilter, statuses: bool) {
    q.push(" WHERE c.tenant_id = ")
        .push_bind(tenant_id.to_string());
    if statuses && !f.statuses.is_empty() {
        let numbers: Vec<i16> = f.statuses.iter().map(|s| s.number() as i16).collect();
        q.push(" AND c.status = ANY(").push_bind(numbers).push(")");
    }
    if let Some(after) = f.sent_after {
        q.push(" AND c.last_sent_at >= ").push_bind(after);
    }
    if let Some(before) = f.sent_before {
        q.push(" AND c.last_sent_at < ").push_bind(before);
    }
    match &f.owners {
        OwnerScope::Any => {}
        OwnerScope::Owner(o) => {
            q.push(" AND c.owner_key = ").push_bind(o.clone());
        }
        OwnerScope::Unassigned => {
            q.push(" AND c.owner_key = ''");
        }
        OwnerScope::OwnerOrUnassigned(o) => {
            q.push(" AND c.owner_key IN ('', ")
                .push_bind(o.clone())
                .push(")");
        }
    }
    if let Some(currency) = &f.currency {
        q.push(" AND c.currency = ").push_bind(currency.clone());
    }
    if let Some(min) = f.min_value {
        q.push(" AND c.value_minor >= ").push_bind(min);
    }
    if let Some(max) = f.max_value {
        q.push(" AND c.value_minor <= ").push_bind(max);
    }
    if let Some(viewed) = f.viewed {
        q.push(" AND c.viewed = ").push_bind(viewed);
    }
    for word in &f.patient_words {
        q.push(" AND c.patient_search LIKE ")
            .push_bind(format!("%{word}%"));
    }
    if let Some(group) = &f.group {
        q.push(" AND c.alternative_group_id = ")
            .push_bind(group.clone());
    }
}

#[derive(sqlx::FromRow)]
struct ListRow {
    state: Json<CaseState>,
    patient_name: String,
    owner_name: Option<String>,
    is_representative: bool,
}

/// The statement of one page (public so the benchmark can time the bare SQL of exactly this query).
pub fn page_query(
    tenant_id: &str,
    filter: &ListFilter,
    order: Order,
    reverse: bool,
    after: Option<&Cursor>,
    limit: i64,
) -> Result<QueryBuilder<Postgres>, Error> {
    let mut q = QueryBuilder::<Postgres>::new(
        "SELECT c.state, c.patient_name, s.display_name AS owner_name, c.is_representative
         FROM cases c
         LEFT JOIN staff s ON s.tenant_id = c.tenant_id AND s.staff_id = c.owner_staff_id",
    );
    push_filters(&mut q, tenant_id, filter, true);
    // Natural direction: Sent/Value/Activity descending, Priority ascending; `reverse` flips it.
    let descending = matches!(order, Order::Sent | Order::Value | Order::Activity) != reverse;
    let (cmp, dir) = if descending {
        ("<", "DESC")
    } else {
        (">", "ASC")
    };
    if let Some(cursor) = after {
        if cursor.order() != order {
            return Err(Error::invalid(
                "page_token",
                "was issued for another sort; start again without a page token",
            ));
        }
        match cursor {
            Cursor::Sent(at, id) => {
                q.push(format!(" AND (c.sent_sort, c.case_id) {cmp} ("))
                    .push_bind(*at)
                    .push(", ")
                    .push_bind(*id)
                    .push(")");
            }
            Cursor::Value(v, id) => {
                q.push(format!(" AND (c.value_minor, c.case_id) {cmp} ("))
                    .push_bind(*v)
                    .push(", ")
                    .push_bind(*id)
                    .push(")");
            }
            Cursor::Priority(tier, neg_value, contact, id) => {
                q.push(format!(
                    " AND (c.priority_tier, (-c.value_minor), c.contact_sort, c.case_id) {cmp} ("
                ))
                .push_bind(*tier)
                .push(", ")
                .push_bind(*neg_value)
                .push(", ")
                .push_bind(*contact)
                .push(", ")
                .push_bind(*id)
                .push(")");
            }
            Cursor::Activity(at, id) => {
                q.push(format!(" AND (c.last_activity_at, c.case_id) {cmp} ("))
                    .push_bind(*at)
                    .push(", ")
                    .push_bind(*id)
                    .push(")");
            }
        }
    }
    let columns = match order {
        Order::Sent => vec!["c.sent_sort", "c.case_id"],
        Order::Value => vec!["c.value_minor", "c.case_id"],
        Order::Priority => vec![
            "c.priority_tier",
            "(-c.value_minor)",
            "c.contact_sort",
            "c.case_id",
        ],
        Order::Activity => vec!["c.last_activity_at", "c.case_id"],
    };
    let order_by: Vec<String> = columns.iter().map(|c| format!("{c} {dir}")).collect();
    q.push(" ORDER BY ")
        .push(order_by.join(", "))
        .push(" LIMIT ")
        .push_bind(limit + 1);
    Ok(q)
}

/// One page: at most `limit` cases after `after`, and whether more follow.
pub async fn page(
    conn: &mut PgConnection,
    tenant_id: &str,
    filter: &ListFilter,
    order: Order,
    reverse: bool,
    after: Option<&Cursor>,
    limit: i64,
) -> Result<(Vec<CaseRecord>, bool), Error> {
    let mut q = page_query(tenant_id, filter, order, reverse, after, limit)?;
    let mut rows = q.build_query_as::<ListRow>().fetch_all(&mut *conn).await?;
    let more = rows.len() as i64 > limit;
    rows.truncate(limit.max(0) as usize);
    Ok((
        rows.into_iter()
            .map(|r| CaseRecord {
                state: r.state.0,
                patient_name: r.patient_name,
                owner_name: r.owner_name.unwrap_or_default(),
                representative: r.is_representative,
                presentation: None,
            })
            .collect(),
        more,
    ))
}

/// The statement behind [`cells`] when the counters cannot answer (public for the benchmark).
pub fn cells_query(tenant_id: &str, filter: &ListFilter) -> QueryBuilder<Postgres> {
    let mut q = QueryBuilder::<Postgres>::new(
        "SELECT c.status, c.currency, count(*)::int8 AS count,
                coalesce(sum(c.value_minor) FILTER (WHERE c.is_representative), 0)::int8 AS value
         FROM cases c",
    );
    push_filters(&mut q, tenant_id, filter, false);
    q.push(" GROUP BY c.status, c.currency");
    q
}

/// Whether the counters answer this filter's totals.
pub fn counted(filter: &ListFilter) -> bool {
    filter.counted()
}

/// The (status, currency) cells of the filtered set, ignoring the status filter: from the counters when
/// the filter is only statuses and owners, else aggregated over the matching cases.
pub async fn cells(
    conn: &mut PgConnection,
    tenant_id: &str,
    filter: &ListFilter,
) -> Result<Vec<Cell>, Error> {
    if filter.counted() {
        return counts::cells(conn, tenant_id, &filter.owners).await;
    }
    let mut q = cells_query(tenant_id, filter);
    Ok(q.build_query_as::<Cell>().fetch_all(&mut *conn).await?)
}

/// Totals of a filtered set, from its cells.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub count: i64,
    /// Per currency, alphabetical; currencies with no value are left out.
    pub value: Vec<(String, i64)>,
    /// Per status (ignoring the status filter), in status order.
    pub by_status: Vec<(CaseStatus, i64)>,
}

pub fn totals(cells: &[Cell], statuses: &[CaseStatus]) -> Totals {
    let selected =
        |status: i16| statuses.is_empty() || statuses.iter().any(|s| s.number() as i16 == status);
    let mut totals = Totals::default();
    let mut value: std::collections::BTreeMap<String, i64> = Default::default();
    let mut by_status: std::collections::BTreeMap<i16, i64> = Default::default();
    for cell in cells {
        *by_status.entry(cell.status).or_default() += cell.count;
        if selected(cell.status) {
            totals.count += cell.count;
            if !cell.currency.is_empty() {
                *value.entry(cell.currency.clone()).or_default() += cell.value;
            }
        }
    }
    totals.value = value.into_iter().filter(|(_, v)| *v != 0).collect();
    totals.by_status = by_status
        .into_iter()
        .filter(|(_, n)| *n != 0)
        .filter_map(|(s, n)| CaseStatus::from_number(i32::from(s)).map(|s| (s, n)))
        .collect();
    totals
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_count_the_selected_statuses_and_every_status_for_the_tabs() {
        let cells = vec![
            Cell {
                status: 2,
                currency: "EUR".into(),
                count: 3,
                value: 300,
            },
            Cell {
                status: 3,
                currency: "EUR".into(),
                count: 2,
                value: 50,
            },
            Cell {
                status: 3,
                currency: "USD".into(),
                count: 1,
                value: 70,
            },
            Cell {
                status: 1,
                currency: String::new(),
                count: 4,
                value: 0,
            },
        ];
        let t = totals(&cells, &[CaseStatus::SentViewed]);
        assert_eq!(t.count, 3);
        assert_eq!(t.value, vec![("EUR".into(), 50), ("USD".into(), 70)]);
        assert_eq!(
            t.by_status,
            vec![
                (CaseStatus::DraftNotSent, 4),
                (CaseStatus::SentNotViewed, 3),
                (CaseStatus::SentViewed, 3)
            ]
        );
        let all = totals(&cells, &[]);
        assert_eq!(all.count, 10);
        assert_eq!(all.value, vec![("EUR".into(), 350), ("USD".into(), 70)]);
    }
}
