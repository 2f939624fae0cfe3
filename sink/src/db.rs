//! Database connection, migrations and error classification.

use sqlx::mysql::{MySqlConnectOptions, MySqlPool, MySqlPoolOptions};
use sqlx::ConnectOptions;
use std::str::FromStr;
use std::time::Duration;
use tokio::sync::watch;

/// Database errors that mean "the database is unavailable or not ready", not "this event is bad":
/// retried forever, never dead-lettered.
const TRANSIENT_CODES: &[u16] = &[
    1040, // too many connections
    1044, 1045, // access denied
    1049, // unknown database
    1053, // server shutdown in progress
    1054, // unknown column (schema not migrated yet): stall rather than dead-letter everything
    1064, // syntax error (same reasoning: a bug or schema mismatch is not the event's fault)
    1142, // command denied
    1146, // table doesn't exist
    1158, 1159, 1160, 1161, // network read/write errors
    1205, // lock wait timeout
    1213, // deadlock
    1290, 1836, // read-only server
    1317, // query interrupted
    1927, // (MariaDB) connection killed
    2002, 2003, 2006, 2013, // client side connection lost
    3098, // (MySQL) table doesn't comply with an external plugin
    4031, // idle connection closed by the server
];

/// True when retrying later may succeed: connection problems, pool exhaustion, deadlocks, lock waits.
pub fn is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(_) => match mysql_error_number(e) {
            Some(c) => TRANSIENT_CODES.contains(&c),
            None => true,
        },
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        _ => false,
    }
}

/// True when the transaction lost a lock conflict with another sink's (deadlock victim, lock wait
/// timeout): the other transaction goes on and commits within milliseconds, so this one is worth
/// retrying at once, unlike an unavailable database.
pub fn is_lock_conflict(e: &sqlx::Error) -> bool {
    matches!(mysql_error_number(e), Some(1205 | 1213))
}

/// How long to wait before retrying after a transient error: a few jittered milliseconds after a lost
/// lock conflict (counted in `flashsale_sink_lock_conflicts_total`), the doubling backoff up to 10 s
/// otherwise (counted in `flashsale_sink_errors_total`). One policy for the batch and the one-by-one
/// paths.
pub fn transient_retry_wait(e: &sqlx::Error, attempt: u32) -> Duration {
    if is_lock_conflict(e) {
        metrics::counter!(crate::telemetry::SINK_LOCK_CONFLICTS).increment(1);
        crate::backoff::delay(
            attempt,
            Duration::from_millis(10),
            Duration::from_millis(500),
        )
    } else {
        metrics::counter!(crate::telemetry::SINK_ERRORS).increment(1);
        crate::backoff::simple(attempt, Duration::from_secs(10))
    }
}

/// The server's error number of a MySQL/MariaDB error.
fn mysql_error_number(e: &sqlx::Error) -> Option<u16> {
    match e {
        sqlx::Error::Database(db) => db
            .try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
            .map(|m| m.number()),
        _ => None,
    }
}

/// True for an integrity-constraint violation (SQLSTATE class 23: duplicate key, foreign key, NOT NULL,
/// CHECK). For an event the engine accepted this is a disagreement between the stores, not a bad event:
/// the sink stalls its partition and retries it rather than dead-lettering it.
pub fn is_constraint_violation(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => db.code().is_some_and(|state| state.starts_with("23")),
        _ => false,
    }
}

/// Opens a pool, creating the database if it does not exist, retrying (with backoff) while the server
/// is unreachable. Returns `None` when shut down first.
pub async fn connect(
    url: &str,
    max_connections: u32,
    shutdown: &mut watch::Receiver<bool>,
) -> anyhow::Result<Option<MySqlPool>> {
    let opts = MySqlConnectOptions::from_str(url)?;
    let mut attempt = 0u32;
    loop {
        let result = async {
            // IF NOT EXISTS, not exists-then-create: the engine starting at the same moment creates
            // it too (seen: the sink died on "database exists").
            if let Some(database) = opts.get_database() {
                let mut conn = opts.clone().database("").connect().await?;
                sqlx::query(&format!(
                    "CREATE DATABASE IF NOT EXISTS `{}`",
                    database.replace('`', "")
                ))
                .execute(&mut conn)
                .await?;
            }
            MySqlPoolOptions::new()
                .max_connections(max_connections)
                .acquire_timeout(Duration::from_secs(5))
                .connect_with(opts.clone())
                .await
        }
        .await;
        match result {
            Ok(pool) => return Ok(Some(pool)),
            Err(e) if is_transient(&e) => {
                attempt += 1;
                let wait = crate::backoff::simple(attempt, Duration::from_secs(5));
                tracing::warn!(error = %e, ?wait, "database unavailable, retrying");
                if crate::sink::sleep_or_shutdown(wait, shutdown).await {
                    return Ok(None);
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Runs the project's migrations (shared with the engine) under a named lock: MariaDB does not honour
/// sqlx's own migration lock, so the engine and the sink starting together would both apply them.
/// Migrations applied by a newer engine that this binary does not know are tolerated.
pub async fn migrate(pool: &MySqlPool, shutdown: &mut watch::Receiver<bool>) -> anyhow::Result<()> {
    let mut attempt = 0u32;
    loop {
        match migrate_once(pool).await {
            Ok(()) => return Ok(()),
            Err(e) if attempt < 10 => {
                attempt += 1;
                let wait = crate::backoff::simple(attempt, Duration::from_secs(5));
                tracing::warn!(error = %e, ?wait, "migration failed, retrying");
                if crate::sink::sleep_or_shutdown(wait, shutdown).await {
                    return Ok(());
                }
            }
            Err(e) => return Err(e),
        }
    }
}

async fn migrate_once(pool: &MySqlPool) -> anyhow::Result<()> {
    let mut conn = pool.acquire().await?;
    let locked: Option<i64> =
        sqlx::query_scalar("SELECT GET_LOCK(CONCAT('flashsale_migrate_', DATABASE()), 120)")
            .fetch_one(&mut *conn)
            .await?;
    anyhow::ensure!(
        locked == Some(1),
        "timed out waiting for the migration lock"
    );
    let mut migrator = sqlx::migrate!("../migrations");
    migrator.set_locking(false);
    migrator.set_ignore_missing(true);
    let result = migrator.run_direct(&mut *conn).await;
    let _ = sqlx::query("SELECT RELEASE_LOCK(CONCAT('flashsale_migrate_', DATABASE()))")
        .execute(&mut *conn)
        .await;
    Ok(result?)
}

/// Current UTC time truncated to milliseconds (what DATETIME(3) keeps).
pub fn now() -> chrono::NaiveDateTime {
    let t = chrono::Utc::now().naive_utc();
    let ms = t.and_utc().timestamp_millis();
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|d| d.naive_utc())
        .unwrap_or(t)
}
