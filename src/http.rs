//! HTTP as clients and proxies expect it: the layers around every route (metrics that see timeouts
//! and panics, problem+json for the refusals the framework makes, request size and body-read limits)
//! and the connection loop (hyper with a header-read timeout, so a head that never ends is closed).

use std::future::Future;
use std::sync::{Arc, OnceLock, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{ConnectInfo, DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{header, HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tower::{ServiceBuilder, ServiceExt};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::config::ServeSettings;
use crate::error::{problem_body, problem_response, ApiError};

/// Longest request target answered; longer is 414 URI_TOO_LONG.
pub const MAX_URI_BYTES: usize = 8 * 1024;
/// Largest request head (names and values of all headers) answered; larger is 431.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// Most headers in a request answered; more is 431. Below hyper's own limit (its default, 100), so
/// that our 431 (problem+json) answers first; beyond 100 hyper answers an empty 431 itself. hyper's
/// limit stays at its default on purpose: any other value makes it allocate and fill two arrays of
/// that many headers for every request it parses (about 1,200 instructions and two heap allocations
/// a request, callgrind), where the default keeps them on the stack, unfilled.
pub const MAX_HEADERS: usize = 64;
/// Longest wait for in-flight requests at shutdown.
const DRAIN_LIMIT: Duration = Duration::from_secs(30);

/// Wraps `routes` (state applied, fallback set) in the layers every request goes through. From the
/// outside in: metrics, problem+json for framework refusals, catch-panic, tracing, the request timeout,
/// then size and body-read limits.
///
/// The layers wrap the router as ONE service, not each route (`Router::layer` does that): layered per
/// route, every layer boxed its route again, and each from_fn layer clones its inner service per
/// request, so a request cloned the nested boxes at every level: 64 of a coupon request's 162
/// allocations, a tenth of its instructions and a quarter of /healthz's (callgrind,
/// `CPU_CALLGRIND=1 loadtest/engine_cpu.sh`). Around the router they clone plain structs down to
/// the router's Arc.
pub fn with_http_layers(routes: Router, settings: &ServeSettings) -> Router {
    let limits = RequestLimits {
        body_limit: settings.body_limit_bytes,
        body_read_timeout: Duration::from_millis(settings.body_read_timeout_ms),
    };
    let layered = ServiceBuilder::new()
        .layer(middleware::from_fn(at_the_edge))
        .layer(CatchPanicLayer::custom(|_| {
            ApiError::Internal(anyhow::anyhow!("handler panicked")).into_response()
        }))
        .layer(TraceLayer::new_for_http())
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            Duration::from_millis(settings.request_timeout_ms),
        ))
        .layer(middleware::from_fn_with_state(
            limits,
            enforce_request_limits,
        ))
        .layer(DefaultBodyLimit::max(settings.body_limit_bytes))
        .service(routes.route_layer(RememberRouteLayer));
    Router::new().fallback_service(layered)
}

/// The route template of the request, filled in once routing matched (unset: no route matched).
#[derive(Clone, Default)]
struct RouteSlot(Arc<OnceLock<MatchedPath>>);

/// Fills the request's `RouteSlot` with the route template routing matched. A plain service passing
/// the route's own future through, not `from_fn`: it sits on every route, and `from_fn` would box each
/// request's future and clone the route for it.
#[derive(Clone)]
struct RememberRouteLayer;

impl<S> tower::Layer<S> for RememberRouteLayer {
    type Service = RememberRoute<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RememberRoute(inner)
    }
}

#[derive(Clone)]
struct RememberRoute<S>(S);

impl<S: tower::Service<Request>> tower::Service<Request> for RememberRoute<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let extensions = request.extensions();
        if let (Some(matched), Some(slot)) = (
            extensions.get::<MatchedPath>(),
            extensions.get::<RouteSlot>(),
        ) {
            let _ = slot.0.set(matched.clone());
        }
        self.0.call(request)
    }
}

/// The request counter and latency histogram of one (route, method, status).
#[derive(Clone)]
struct HttpSeries {
    requests: metrics::Counter,
    duration: metrics::Histogram,
}

/// Series by route template, then (method, status), registered once each. The registry lookup builds
/// its key from owned label strings; on the hot path that was three allocations and a hash of them per
/// request. Bounded like the labels: routes are the router's templates, methods are folded, statuses
/// < 1000.
type SeriesByRoute = foldhash::HashMap<String, foldhash::HashMap<(&'static str, u16), HttpSeries>>;
static HTTP_SERIES: OnceLock<RwLock<SeriesByRoute>> = OnceLock::new();

fn http_series(route: &str, method: &'static str, status: u16) -> HttpSeries {
    let cache = HTTP_SERIES.get_or_init(Default::default);
    if let Some(series) = cache
        .read()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .get(route)
        .and_then(|by_outcome| by_outcome.get(&(method, status)))
    {
        return series.clone();
    }
    let labels = [
        ("route", route.to_string()),
        ("method", method.to_string()),
        ("status", status.to_string()),
    ];
    let series = HttpSeries {
        requests: metrics::counter!("flashsale_http_requests_total", &labels),
        duration: metrics::histogram!("flashsale_http_request_duration_seconds", &labels),
    };
    cache
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .entry(route.to_string())
        .or_default()
        .insert((method, status), series.clone());
    series
}

/// Methods a client may invent are folded into one label so they cannot grow the series.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

/// A client's (or proxy's) id for a request, echoed on its response so that the two can be paired in
/// logs and by load generators that keep several requests in flight on one thread.
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The outermost layer, one `from_fn` for three jobs (each `from_fn` boxes every request's future):
/// the framework's refusals rewritten as problems (`problem_for_framework_refusals`), the request's
/// `X-Request-Id` echoed, then the request counted (`track_http`). All sit outside the timeout and
/// catch-panic layers, so 503s and 500s are rewritten, echoed and counted.
async fn at_the_edge(mut request: Request, next: Next) -> Response {
    let started = Instant::now();
    let slot = RouteSlot::default();
    request.extensions_mut().insert(slot.clone());
    let method = method_label(request.method());
    let request_id = request.headers().get(X_REQUEST_ID).cloned();
    let mut response = problem_for_framework_refusals(next.run(request).await);
    if let Some(request_id) = request_id {
        response.headers_mut().insert(X_REQUEST_ID, request_id);
    }
    track_http(&slot, method, started, &response);
    response
}

/// Request count and latency by route template, method and status; unmatched paths share the route
/// "unmatched".
fn track_http(slot: &RouteSlot, method: &'static str, started: Instant, response: &Response) {
    let route = slot.0.get().map_or("unmatched", |matched| matched.as_str());
    let series = http_series(route, method, response.status().as_u16());
    series.requests.increment(1);
    series.duration.record(started.elapsed().as_secs_f64());
}

/// Marks a refusal sent before the request body was read to its end: the connection cannot carry
/// another request, so say so (`Connection: close`) rather than let the client reuse it and meet a
/// broken pipe.
fn closing(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// The stable code of a refusal the framework (not a handler) made.
fn framework_code(status: StatusCode) -> (&'static str, &'static str) {
    match status {
        StatusCode::BAD_REQUEST => ("INVALID_REQUEST", "the request is malformed"),
        StatusCode::NOT_FOUND => ("NOT_FOUND", "no such route"),
        StatusCode::METHOD_NOT_ALLOWED => (
            "METHOD_NOT_ALLOWED",
            "the route does not take this method; see Allow",
        ),
        StatusCode::REQUEST_TIMEOUT => {
            ("REQUEST_TIMEOUT", "the request body did not arrive in time")
        }
        StatusCode::PAYLOAD_TOO_LARGE => {
            ("PAYLOAD_TOO_LARGE", "request body is larger than the limit")
        }
        StatusCode::URI_TOO_LONG => ("URI_TOO_LONG", "the request target is too long"),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => {
            ("UNSUPPORTED_MEDIA_TYPE", "unsupported content type")
        }
        StatusCode::TOO_MANY_REQUESTS => ("RATE_LIMITED", "too many requests, slow down"),
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => {
            ("HEADERS_TOO_LARGE", "the request headers are too large")
        }
        StatusCode::INTERNAL_SERVER_ERROR => ("INTERNAL", "an internal error occurred"),
        StatusCode::SERVICE_UNAVAILABLE => (
            "SERVICE_UNAVAILABLE",
            "the request did not complete in time",
        ),
        _ if status.is_client_error() => ("INVALID_REQUEST", "the request was refused"),
        _ => ("INTERNAL", "an internal error occurred"),
    }
}

/// Every refusal is problem+json with a code: the framework's own (405 with an empty body, 503 from the
/// timeout, text/plain rejections) are rewritten, keeping their headers (`Allow`). A 429 or 503 without
/// `Retry-After` gets one.
fn problem_for_framework_refusals(response: Response) -> Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let framework_made = content_type.is_empty() || content_type.starts_with("text/plain");
    let mut response = if framework_made {
        let (code, detail) = framework_code(status);
        parts.headers.remove(header::CONTENT_TYPE);
        parts.headers.remove(header::CONTENT_LENGTH);
        let mut rewritten = problem_response(status, problem_body(status, code, detail, None));
        for (name, value) in parts.headers.iter() {
            rewritten.headers_mut().append(name.clone(), value.clone());
        }
        *rewritten.extensions_mut() = parts.extensions;
        rewritten
    } else {
        Response::from_parts(parts, body)
    };
    if matches!(
        status,
        StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
    ) && !response.headers().contains_key(header::RETRY_AFTER)
    {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

#[derive(Clone)]
struct RequestLimits {
    body_limit: usize,
    body_read_timeout: Duration,
}

/// Refuses oversized targets and heads (414, 431), then reads the whole body up front: over the limit
/// is 413, a body that stalls is 408 REQUEST_TIMEOUT, a malformed one (bad chunking) is 400. Handlers
/// then get the body already buffered.
async fn enforce_request_limits(
    State(limits): State<RequestLimits>,
    request: Request,
    next: Next,
) -> Response {
    let target_len = request
        .uri()
        .path_and_query()
        .map_or(0, |pq| pq.as_str().len());
    if target_len > MAX_URI_BYTES {
        return ApiError::problem(
            StatusCode::URI_TOO_LONG,
            "URI_TOO_LONG",
            format!("the request target is longer than {MAX_URI_BYTES} bytes"),
        )
        .into_response();
    }
    let headers = request.headers();
    let head_bytes: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    if headers.len() > MAX_HEADERS || head_bytes > MAX_HEADER_BYTES {
        return ApiError::problem(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "HEADERS_TOO_LARGE",
            format!("at most {MAX_HEADERS} headers and {MAX_HEADER_BYTES} bytes of them"),
        )
        .into_response();
    }
    let declared_len = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared_len.is_some_and(|n| n > limits.body_limit as u64) {
        return closing(ApiError::PayloadTooLarge.into_response());
    }
    // A body already complete (none, or Content-Length: 0) has nothing to wait for: no timer.
    if axum::body::HttpBody::is_end_stream(request.body()) {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    let read = tokio::time::timeout(
        limits.body_read_timeout,
        axum::body::to_bytes(body, limits.body_limit),
    )
    .await;
    let bytes = match read {
        Err(_) => {
            return closing(
                ApiError::problem(
                    StatusCode::REQUEST_TIMEOUT,
                    "REQUEST_TIMEOUT",
                    "the request body did not arrive in time",
                )
                .into_response(),
            )
        }
        Ok(Err(e)) => {
            let too_large = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            return if too_large {
                closing(ApiError::PayloadTooLarge.into_response())
            } else {
                ApiError::InvalidRequest(format!("could not read the request body: {e}"))
                    .into_response()
            };
        }
        Ok(Ok(bytes)) => bytes,
    };
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

/// Serves `router` on `listener` until `shutdown` resolves, then lets in-flight requests finish (up to
/// `DRAIN_LIMIT`). Like `axum::serve` (HTTP/1.1, `ConnectInfo<SocketAddr>`), plus a header-read
/// timeout: a request head not complete in time closes the connection (slowloris). The timeout also
/// closes a keep-alive connection idle that long.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    header_read_timeout: Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let service =
            hyper::service::service_fn(move |mut request: Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(ConnectInfo(peer));
                router.clone().oneshot(request.map(Body::new))
            });
        let connection = builder.serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, %peer, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_LIMIT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the drain limit; closing them");
    }
    Ok(())
}
