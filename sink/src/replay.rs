//! `replay-deliveries`: DEAD deliveries back to PENDING with attempts 0, due now.

use sqlx::MySqlPool;

/// Resets one DEAD delivery (`Some(event_id)`) or all of them (`None`); returns how many.
pub async fn replay_dead_deliveries(
    pool: &MySqlPool,
    event_id: Option<&str>,
) -> anyhow::Result<u64> {
    let now = crate::db::now();
    let base = "UPDATE data_platform_deliveries SET status = 'PENDING', attempts = 0, next_attempt_at = ?, \
                last_error = NULL WHERE status = 'DEAD'";
    let res = match event_id {
        Some(id) => {
            sqlx::query(&format!("{base} AND event_id = ?"))
                .bind(now)
                .bind(id)
                .execute(pool)
                .await?
        }
        None => sqlx::query(base).bind(now).execute(pool).await?,
    };
    Ok(res.rows_affected())
}
