//! SQL. Every query names the tenant; the only cross-tenant query is the delivery workers' claim of
//! due messages, which then works row by row under each row's own tenant.

pub mod contacts;
pub mod messages;
pub mod settings;
pub mod templates;
pub mod webhooks;

/// The channel that wakes delivery workers of every replica when a message becomes due (NOTIFY is
/// delivered at commit).
pub const DUE_CHANNEL: &str = "followup_notifications_due";

pub async fn notify_due(conn: &mut sqlx::PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(DUE_CHANNEL)
        .execute(conn)
        .await?;
    Ok(())
}

/// Page tokens are offsets (opaque to callers, as AIP-158 asks).
pub fn page(page_size: i32, token: &str, default: i64) -> Result<(i64, i64), crate::error::Error> {
    let size = match page_size {
        0 => default,
        n if n < 0 => {
            return Err(crate::error::Error::invalid(
                "page_size",
                "must not be negative",
            ));
        }
        n => i64::from(n).min(500),
    };
    let offset = if token.is_empty() {
        0
    } else {
        token
            .strip_prefix("o")
            .and_then(|n| n.parse::<i64>().ok())
            .filter(|n| *n >= 0)
            .ok_or_else(|| {
                crate::error::Error::invalid("page_token", "not a token this service issued")
            })?
    };
    Ok((size, offset))
}

pub fn next_token(returned: usize, size: i64, offset: i64) -> String {
    if returned as i64 >= size {
        format!("o{}", offset + size)
    } else {
        String::new()
    }
}
