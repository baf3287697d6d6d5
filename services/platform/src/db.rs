//! The service's PostgreSQL pool and migrations.
//!
//! Two migration sets run against every service database: the platform's (outbox, inbox), tracked in
//! `_followup_platform_migrations`, then the service's own, tracked in sqlx's default table. Keeping the
//! tracking tables apart lets each set evolve without the other reporting "missing" migrations.

use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgPool};

use crate::config::CommonConfig;

const PLATFORM_MIGRATIONS_TABLE: &str = "_followup_platform_migrations";

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database unreachable after {waited:?}: {source}")]
    Unreachable {
        waited: Duration,
        source: sqlx::Error,
    },
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("database: {0}")]
    Sqlx(#[from] sqlx::Error),
}

/// Connects, retrying while the database is not yet reachable (a pod starting before its database).
pub async fn connect(config: &CommonConfig) -> Result<PgPool, DbError> {
    let options: PgConnectOptions = config
        .database_url
        .expose()
        .parse::<PgConnectOptions>()?
        // Statement logging would print parameters, which can be patient data.
        .disable_statement_logging();
    let pool_options = PgPoolOptions::new()
        .max_connections(config.database_max_connections)
        .min_connections(1)
        .acquire_timeout(Duration::from_secs(5));
    let started = tokio::time::Instant::now();
    let mut delay = Duration::from_millis(100);
    loop {
        match pool_options.clone().connect_with(options.clone()).await {
            Ok(pool) => return Ok(pool),
            Err(err) if started.elapsed() < config.startup_timeout() => {
                tracing::warn!(error = %err, "database not reachable yet, retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            Err(source) => {
                return Err(DbError::Unreachable {
                    waited: started.elapsed(),
                    source,
                });
            }
        }
    }
}

/// Applies the platform's migrations, then the service's.
pub async fn migrate(pool: &PgPool, service: &Migrator) -> Result<(), DbError> {
    let mut platform = sqlx::migrate!("./migrations");
    platform.dangerous_set_table_name(PLATFORM_MIGRATIONS_TABLE);
    platform.run(pool).await?;
    service.run(pool).await?;
    Ok(())
}

/// Creates a database when it does not exist (the dev stack, the test kit). Names are ours, not users'.
pub async fn create_database_if_missing(admin_url: &str, name: &str) -> Result<(), DbError> {
    let mut conn = admin_url.parse::<PgConnectOptions>()?.connect().await?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(name)
            .fetch_one(&mut conn)
            .await?;
    if !exists {
        let sql = format!("CREATE DATABASE \"{}\"", name.replace('"', ""));
        match sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&mut conn)
            .await
        {
            Ok(_) => {}
            // Two creators raced; the database exists, which is all we wanted.
            Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("42P04") => {}
            Err(err) => return Err(err.into()),
        }
    }
    Ok(())
}

/// Is this error worth retrying (connection lost, serialization failure, deadlock), rather than a
/// statement or data problem that will fail again the same way?
pub fn is_transient(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            // 40: transaction rollback (serialization, deadlock); 53: resources; 57: operator
            // intervention (admin shutdown, pg_terminate_backend); 08: connection exceptions.
            ["40", "53", "57", "08"]
                .iter()
                .any(|class| code.starts_with(class))
        }
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_)
        | sqlx::Error::Tls(_) => true,
        _ => false,
    }
}

/// Takes a transaction-scoped advisory lock on each key (`hashtextextended(key, 0)`), all in one sorted
/// order, so that transactions locking overlapping sets of keys queue instead of deadlocking. Taking a key
/// again later in the same transaction, with the same hash, returns at once.
pub async fn lock_keys(conn: &mut sqlx::PgConnection, keys: &[String]) -> Result<(), sqlx::Error> {
    if keys.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "SELECT pg_advisory_xact_lock(k) FROM (
             SELECT DISTINCT hashtextextended(key, 0) AS k FROM UNNEST($1::text[]) AS key ORDER BY k
         ) AS sorted",
    )
    .bind(keys)
    .execute(conn)
    .await?;
    Ok(())
}
