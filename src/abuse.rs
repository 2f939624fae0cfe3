//! Guards of sign-up and login against abuse: rate limits per client address and per account, the
//! client address taken from `X-Forwarded-For` only when a trusted proxy sent it, and a bound on the
//! argon2 hashes computed at once (each takes 19 MiB and a core for tens of milliseconds).

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use governor::clock::{Clock, DefaultClock};
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use ipnet::IpNet;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

use crate::config::ServeSettings;
use crate::error::ApiError;

type KeyedLimiter<K> = RateLimiter<K, DefaultKeyedStateStore<K>, DefaultClock>;

/// How often the limiters forget clients whose quota is full again.
pub const PRUNE_INTERVAL: Duration = Duration::from_secs(60);

/// Longest account key kept by the limiter: longer input is not an email anyway.
const MAX_ACCOUNT_KEY_LEN: usize = 320;

pub struct AuthGuard {
    clock: DefaultClock,
    by_client: KeyedLimiter<IpAddr>,
    by_account: KeyedLimiter<String>,
    trusted_proxies: Vec<IpNet>,
    /// Hashes running at once.
    hashing: Arc<Semaphore>,
    /// Hashes running or waiting: when none is left, the request is turned away rather than queued.
    admitted: Arc<Semaphore>,
}

/// Leave to compute one password hash; dropping it frees the slot.
pub struct HashPermit {
    _running: OwnedSemaphorePermit,
    _admitted: OwnedSemaphorePermit,
}

fn non_zero(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN)
}

impl AuthGuard {
    pub fn new(settings: &ServeSettings) -> Self {
        let clock = DefaultClock::default();
        let hashing = settings.hash_concurrency.max(1);
        Self {
            by_client: RateLimiter::dashmap_with_clock(
                Quota::per_second(non_zero(settings.auth_rate_per_sec)),
                clock.clone(),
            ),
            by_account: RateLimiter::dashmap_with_clock(
                Quota::per_minute(non_zero(settings.auth_account_rate_per_min)),
                clock.clone(),
            ),
            clock,
            trusted_proxies: settings.trusted_proxies.clone(),
            hashing: Arc::new(Semaphore::new(hashing)),
            admitted: Arc::new(Semaphore::new(hashing + settings.hash_queue)),
        }
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|net| net.contains(&ip))
    }

    /// The client's address: the peer, unless the peer is a trusted proxy; then the right-most
    /// `X-Forwarded-For` hop that is not itself a trusted proxy (hops further left are client-written
    /// and could be forged).
    pub fn client_ip(&self, peer: SocketAddr, headers: &HeaderMap) -> IpAddr {
        let mut client = peer.ip().to_canonical();
        if !self.is_trusted(client) {
            return client;
        }
        let hops: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect();
        for hop in hops.iter().rev() {
            let Ok(ip) = hop.parse::<IpAddr>() else {
                // Garbage from here on leftwards: the last hop we trust is the best we know.
                break;
            };
            client = ip.to_canonical();
            if !self.is_trusted(client) {
                break;
            }
        }
        client
    }

    /// Counts one sign-up or login attempt from `client`.
    pub fn check_client(&self, client: IpAddr) -> Result<(), ApiError> {
        self.by_client.check_key(&client).map_err(|not_until| {
            self.throttled("client", not_until.wait_time_from(self.clock.now()))
        })
    }

    /// Counts one sign-up or login attempt on the account `email` (already normalized).
    pub fn check_account(&self, email: &str) -> Result<(), ApiError> {
        let key: String = email.chars().take(MAX_ACCOUNT_KEY_LEN).collect();
        self.by_account.check_key(&key).map_err(|not_until| {
            self.throttled("account", not_until.wait_time_from(self.clock.now()))
        })
    }

    fn throttled(&self, scope: &'static str, wait: Duration) -> ApiError {
        metrics::counter!("flashsale_auth_throttled_total", "scope" => scope).increment(1);
        ApiError::retry_later(
            StatusCode::TOO_MANY_REQUESTS,
            "RATE_LIMITED",
            "too many attempts, slow down",
            wait,
        )
    }

    /// Waits for a hashing slot, or refuses at once (503 + Retry-After) when the queue is full.
    pub async fn hash_permit(&self) -> Result<HashPermit, ApiError> {
        let busy = || {
            metrics::counter!("flashsale_auth_throttled_total", "scope" => "hashing").increment(1);
            ApiError::retry_later(
                StatusCode::SERVICE_UNAVAILABLE,
                "BUSY",
                "too many sign-ups and logins at once, retry shortly",
                Duration::from_secs(1),
            )
        };
        let admitted = self
            .admitted
            .clone()
            .try_acquire_owned()
            .map_err(|_| busy())?;
        let running = self
            .hashing
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| busy())?;
        Ok(HashPermit {
            _running: running,
            _admitted: admitted,
        })
    }

    /// Forgets clients and accounts whose quota is full again, so the limiters do not grow forever.
    pub fn prune(&self) {
        self.by_client.retain_recent();
        self.by_client.shrink_to_fit();
        self.by_account.retain_recent();
        self.by_account.shrink_to_fit();
    }

    /// Clients and accounts the limiters currently remember.
    pub fn tracked(&self) -> usize {
        self.by_client.len() + self.by_account.len()
    }
}

/// Prunes the limiters every `PRUNE_INTERVAL` until `stop`.
pub async fn prune_periodically(state: crate::state::AppState, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(PRUNE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                state.auth_guard.prune();
                metrics::gauge!("flashsale_auth_limiter_keys").set(state.auth_guard.tracked() as f64);
            }
            _ = stop.changed() => return,
        }
    }
}

/// Parses one `TRUSTED_PROXIES` entry: a CIDR block or a single address.
pub fn parse_proxy(text: &str) -> Result<IpNet, String> {
    let text = text.trim();
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{text:?} is neither a CIDR block nor an IP address"))
}
