//! Gauges sampled every few seconds for the dashboards: outbox backlog, live reservations, and the
//! stock and remaining coupons of the most recent products and coupons (the ones a sale is about).

use std::time::Duration;

use fred::prelude::*;
use tokio::sync::watch;

use crate::state::AppState;

const RECENT: i64 = 20;

pub async fn run(state: AppState, mut stop: watch::Receiver<bool>) {
    while !*stop.borrow() {
        if let Err(e) = sample(&state).await {
            tracing::debug!(error = %e, "sampling gauges failed");
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            _ = stop.changed() => {}
        }
    }
}

async fn sample(state: &AppState) -> anyhow::Result<()> {
    let client = state.redis.next();
    let (length, unforwarded) = crate::relay::outbox_backlog(client, &state.keys).await?;
    metrics::gauge!("flashsale_outbox_stream_length").set(length as f64);
    metrics::gauge!("flashsale_outbox_pending").set(unforwarded as f64);
    crate::relay::sample_dead_letters(client, &state.keys).await;
    let reservations: i64 = client.zcard(state.keys.reservations()).await?;
    metrics::gauge!("flashsale_reservations_active").set(reservations as f64);

    // Ids are sparse (time-ordered): the newest products come from the listing index, the newest
    // coupons from MySQL (a coupon created a moment ago appears once the sink has it).
    let products: Vec<i64> = client
        .zrange(
            state.keys.products(),
            0,
            RECENT - 1,
            None,
            true,
            None,
            false,
        )
        .await?;
    for id in products {
        let stock: Option<i64> = client.hget(state.keys.product(id), "stock").await?;
        if let Some(stock) = stock {
            metrics::gauge!("flashsale_product_stock", "product_id" => id.to_string())
                .set(stock as f64);
        }
    }
    let recent = sqlx::query_scalar("SELECT id FROM coupons ORDER BY id DESC LIMIT ?")
        .bind(RECENT)
        .fetch_all(&state.db);
    // Bounded: MySQL being down must not hold up the other gauges.
    let coupons: Vec<i64> = tokio::time::timeout(Duration::from_secs(1), recent).await??;
    for id in coupons {
        let remaining: Option<i64> = client.hget(state.keys.coupon(id), "remaining").await?;
        if let Some(remaining) = remaining {
            metrics::gauge!("flashsale_coupon_remaining", "coupon_id" => id.to_string())
                .set(remaining as f64);
        }
    }
    Ok(())
}
