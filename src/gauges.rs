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
            // Every 5 s: a round reads each of the 64 partitions (about 400 commands).
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            _ = stop.changed() => {}
        }
    }
}

async fn sample(state: &AppState) -> anyhow::Result<()> {
    let client = state.redis.next();
    let (length, unforwarded) = crate::pipeline::relay::outbox_backlog(client, &state.keys).await?;
    metrics::gauge!("flashsale_outbox_stream_length").set(length as f64);
    metrics::gauge!("flashsale_outbox_pending").set(unforwarded as f64);
    crate::pipeline::relay::sample_dead_letters(client, &state.keys).await;
    let reservations = futures::future::try_join_all(
        crate::partition::Partition::all()
            .map(|p| client.zcard::<i64, _>(state.keys.reservations(p))),
    )
    .await?;
    metrics::gauge!("flashsale_reservations_active").set(reservations.iter().sum::<i64>() as f64);

    // The most recent products and coupons, by the catalog indexes (ids grow with time).
    let products: Vec<i64> = client
        .zrevrange(state.keys.products(), 0, RECENT - 1, false)
        .await?;
    for id in products {
        let stock: Option<i64> = client.hget(state.keys.product(id), "stock").await?;
        // None: an index entry whose create never ran (src/routes/products.rs): skipped.
        if let Some(stock) = stock {
            metrics::gauge!("flashsale_product_stock", "product_id" => id.to_string())
                .set(stock as f64);
        }
    }
    let coupons: Vec<i64> = client
        .zrevrange(state.keys.coupons(), 0, RECENT - 1, false)
        .await?;
    for id in coupons {
        let remaining: Option<i64> = client.hget(state.keys.coupon(id), "remaining").await?;
        if let Some(remaining) = remaining {
            metrics::gauge!("flashsale_coupon_remaining", "coupon_id" => id.to_string())
                .set(remaining as f64);
        }
    }
    Ok(())
}
