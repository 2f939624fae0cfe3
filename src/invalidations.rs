//! The invalidation channel: every engine subscribes and drops what its local caches say about an
//! item that changed on any engine.
//!
//! Messages (plain text on `<prefix>:invalidations`, classic pub/sub, which reaches every node of a
//! cluster):
//! - `product:ID`: the product's sale rules changed (published by the engine that changed them), or
//!   units came back (published by the script that gave them back: stock add, a hold released, a
//!   paid order's stock returned). Drops its cached sale window (src/sale_windows.rs) and its
//!   sold-out marker (src/sold_out.rs).
//! - `coupon:ID`: coupons were added (published by coupon_quantity_add.lua). Drops its marker.
//!
//! After a reconnect or a lagging receiver messages may have been missed: everything is dropped.
//! Whatever is lost anyway is bounded by each cache's TTL.

use std::sync::Arc;
use std::time::Duration;

use fred::prelude::*;
use tokio::sync::watch;

use crate::sale_windows::SaleWindows;
use crate::sold_out::{Item, SoldOutMarkers};

/// How often expired entries are dropped from both caches.
const PRUNE_EVERY: Duration = Duration::from_secs(5);

/// The message that says a product changed (rules or units).
pub fn product_message(product_id: i64) -> String {
    format!("product:{product_id}")
}

fn parse_message(text: &str) -> Option<Item> {
    if let Some(id) = text.strip_prefix("product:") {
        return id.parse().ok().map(Item::Product);
    }
    text.strip_prefix("coupon:")?.parse().ok().map(Item::Coupon)
}

/// The engine's caches that the channel keeps honest.
#[derive(Clone)]
pub struct LocalCaches {
    pub windows: Arc<SaleWindows>,
    pub sold_out: Arc<SoldOutMarkers>,
}

impl LocalCaches {
    pub fn forget(&self, item: Item) {
        if let Item::Product(id) = item {
            self.windows.forget(id);
        }
        self.sold_out.forget(item);
    }

    fn forget_all(&self) {
        self.windows.forget_all();
        self.sold_out.forget_all();
    }

    fn prune(&self) {
        self.windows.prune();
        self.sold_out.prune();
    }
}

/// Tells every engine (this one included) that a product's rules changed. A lost message leaves
/// other engines' windows stale for their TTL at most.
pub async fn publish_product_changed(redis: &Pool, channel: &str, product_id: i64) {
    let sent: Result<i64, _> = redis
        .next()
        .publish(channel, product_message(product_id))
        .await;
    if let Err(e) = sent {
        tracing::warn!(error = %e, product_id, "publishing a product change failed; other engines' caches expire within their TTL");
    }
}

/// Subscribes to the invalidation channel until `stop`, dropping cache entries as messages say.
pub async fn run(
    redis_url: String,
    channel: String,
    caches: LocalCaches,
    mut stop: watch::Receiver<bool>,
) {
    let subscriber = match Config::from_url(&redis_url).and_then(|config| {
        Builder::from_config(config)
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2))
            .build_subscriber_client()
    }) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "invalidations: bad Redis configuration");
            return;
        }
    };
    let mut messages = subscriber.message_rx();
    let mut reconnects = subscriber.reconnect_rx();
    let resubscribe = subscriber.manage_subscriptions();
    let mut prune = tokio::time::interval(PRUNE_EVERY);
    // Connect and subscribe, retrying: the engine serves meanwhile (entries then only expire).
    loop {
        let ready = async {
            subscriber.init().await?;
            subscriber.subscribe(channel.as_str()).await
        };
        tokio::select! {
            result = ready => match result {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "invalidations: subscribing failed; retrying");
                    let _ = subscriber.quit().await;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            },
            _ = stop.changed() => return,
        }
    }
    loop {
        tokio::select! {
            message = messages.recv() => match message {
                Ok(message) => {
                    if let Some(item) = message.value.as_str().as_deref().and_then(parse_message) {
                        caches.forget(item);
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => caches.forget_all(),
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            },
            _ = reconnects.recv() => caches.forget_all(),
            _ = prune.tick() => caches.prune(),
            _ = stop.changed() => break,
        }
    }
    resubscribe.abort();
    let _ = subscriber.quit().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_a_product_or_a_coupon() {
        assert_eq!(parse_message(&product_message(42)), Some(Item::Product(42)));
        assert_eq!(parse_message("coupon:1"), Some(Item::Coupon(1)));
        assert_eq!(parse_message("member:1"), None);
        assert_eq!(parse_message("coupon:x"), None);
    }
}
