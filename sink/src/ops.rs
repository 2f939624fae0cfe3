//! The operations HTTP server: `/healthz` and `/metrics`.

use crate::state::SinkState;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::watch;

pub fn router(state: Arc<SinkState>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/metrics",
            get(move || async move {
                (
                    [(
                        header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    crate::telemetry::render(&state),
                )
                    .into_response()
            }),
        )
}

/// Binds `addr` and serves until shutdown; returns the bound address.
pub async fn serve(
    addr: SocketAddr,
    state: Arc<SinkState>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let res = axum::serve(listener, router(state))
            .with_graceful_shutdown(async move {
                let _ = shutdown.wait_for(|s| *s).await;
            })
            .await;
        if let Err(e) = res {
            tracing::error!(error = %e, "ops server failed");
        }
    });
    tracing::info!(%bound, "ops server listening (/healthz, /metrics)");
    Ok((bound, task))
}
