//! HTTP as clients and proxies expect it (issue 8 items 11-13): every refusal is problem+json with a
//! code (the framework's too), slow clients are cut off, metric labels stay bounded and see timeouts and
//! panics, and sign-up/login resist a brute-force burst.

use crate::common;

use std::net::SocketAddr;
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::IntoResponse;
use common::{spawn_app, spawn_app_with, unique};
use futures::StreamExt;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A response read off a raw socket.
struct RawReply {
    status: u16,
    head: String,
    body: String,
}

impl RawReply {
    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

fn addr_of(app: &common::TestApp) -> SocketAddr {
    app.base
        .trim_start_matches("http://")
        .parse()
        .expect("test app address")
}

/// Reads until the server closes the connection (or `deadline` passes: then `None`).
async fn read_until_closed(
    stream: &mut tokio::net::TcpStream,
    deadline: Duration,
) -> Option<Vec<u8>> {
    let mut received = Vec::new();
    let read = tokio::time::timeout(deadline, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    read.ok().map(|_| received)
}

/// Sends raw bytes (a client library would refuse to send them) and reads the answer.
async fn raw_request(addr: SocketAddr, bytes: &[u8]) -> RawReply {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.write_all(bytes).await.expect("write");
    let received = read_until_closed(&mut stream, Duration::from_secs(30))
        .await
        .expect("the server answers and closes");
    parse_raw(&received)
}

fn parse_raw(received: &[u8]) -> RawReply {
    let text = String::from_utf8_lossy(received).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    RawReply {
        status,
        head: head.to_string(),
        body: body.to_string(),
    }
}

fn assert_problem(
    what: &str,
    status: u16,
    content_type: Option<&str>,
    body: &Value,
    want: (u16, &str),
) {
    assert_eq!(
        (status, body["code"].as_str().unwrap_or_default()),
        want,
        "{what}: {body}"
    );
    assert_eq!(content_type, Some("application/problem+json"), "{what}");
    for field in ["type", "title", "status", "detail", "code"] {
        assert!(!body[field].is_null(), "{what} lacks {field}: {body}");
    }
}

/// `assert_problem` on a response sent outside the app's own request helpers.
async fn assert_problem_response(
    what: &str,
    response: reqwest::Response,
    want: (u16, &'static str),
) {
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body: Value = response.json().await.unwrap_or(Value::Null);
    assert_problem(what, status, content_type.as_deref(), &body, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refusal_is_problem_json_with_a_code() {
    let app = spawn_app().await;
    let (_, token) = app.member(0).await;
    let client = &app.http;
    let check = |what: &'static str, r: &common::Reply, want: (u16, &'static str)| {
        assert_problem(
            what,
            r.status,
            r.headers.get("content-type").and_then(|v| v.to_str().ok()),
            &r.json(),
            want,
        );
    };

    // 405 with Allow (axum answers an empty body on its own).
    let r = app
        .request(
            reqwest::Method::DELETE,
            "/api/v1/products",
            None,
            None,
            None,
        )
        .await;
    check("405", &r, (405, "METHOD_NOT_ALLOWED"));
    let allow = r
        .headers
        .get("allow")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    assert!(allow.contains("GET"), "Allow: {allow:?}");

    // 413 announced by Content-Length, and 413 streamed without one.
    let huge = "x".repeat(64 * 1024);
    let r = app
        .request(
            reqwest::Method::POST,
            "/api/v1/me/points/charge",
            Some(&token),
            Some(&unique("k")),
            Some(huge.clone()),
        )
        .await;
    check("413 content-length", &r, (413, "PAYLOAD_TOO_LARGE"));
    let addr = addr_of(&app);
    let chunk = "x".repeat(8 * 1024);
    let mut chunked = String::from(
        "POST /api/v1/admin/products HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n\
         X-Admin-Key: test-admin-key\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
    );
    for _ in 0..4 {
        chunked.push_str(&format!("{:x}\r\n{chunk}\r\n", chunk.len()));
    }
    chunked.push_str("0\r\n\r\n");
    let raw = raw_request(addr, chunked.as_bytes()).await;
    assert_problem(
        "413 chunked",
        raw.status,
        raw.header("content-type").as_deref(),
        &raw.json(),
        (413, "PAYLOAD_TOO_LARGE"),
    );

    // 414: a request target longer than 8 KiB.
    let r = app
        .get(
            &format!("/api/v1/products?pad={}", "a".repeat(10_000)),
            None,
        )
        .await;
    check("414", &r, (414, "URI_TOO_LONG"));

    // 431: 20 KiB of headers.
    let r = client
        .get(format!("{}/api/v1/products", app.base))
        .header("x-padding", "p".repeat(20_000))
        .send()
        .await
        .expect("sent");
    assert_problem_response("431", r, (431, "HEADERS_TOO_LARGE")).await;

    // 431 by count: more headers than we answer, fewer than hyper's own limit (100, which would
    // answer an empty 431 itself).
    let mut crowded = client.get(format!("{}/api/v1/products", app.base));
    for i in 0..80 {
        crowded = crowded.header(format!("x-extra-{i}"), "1");
    }
    let r = crowded.send().await.expect("sent");
    assert_problem_response("431 by count", r, (431, "HEADERS_TOO_LARGE")).await;

    // A number beyond any numeric type is out of range like any other: 422, not 400.
    let digits = "9".repeat(400);
    for amount in ["1e400", "-1e400", digits.as_str()] {
        let r = app
            .request(
                reqwest::Method::POST,
                "/api/v1/me/points/charge",
                Some(&token),
                Some(&unique("k")),
                Some(format!(r#"{{"amount":{amount}}}"#)),
            )
            .await;
        check("number out of range", &r, (422, "VALIDATION_FAILED"));
    }
    let r = app
        .post(
            "/api/v1/admin/products",
            None,
            None,
            json!({"name": "x", "price": 1, "stock": 1}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let r = app
        .request(
            reqwest::Method::POST,
            "/api/v1/admin/products",
            None,
            None,
            Some(r#"{"name":"x","price":1e400,"stock":1}"#.into()),
        )
        .await;
    check("admin number out of range", &r, (422, "VALIDATION_FAILED"));

    // Unknown routes stay 404 problem+json.
    let r = app.get("/no/such/route", None).await;
    check("404", &r, (404, "NOT_FOUND"));

    // A malformed chunked body: 400 problem+json (hyper's decoder fails mid-body).
    let raw = raw_request(
        addr,
        b"POST /api/v1/admin/products HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n\
          X-Admin-Key: test-admin-key\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
          zz\r\n{}\r\n0\r\n\r\n",
    )
    .await;
    assert_problem(
        "malformed chunked",
        raw.status,
        raw.header("content-type").as_deref(),
        &raw.json(),
        (400, "INVALID_REQUEST"),
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_body_gets_408_and_an_unfinished_head_is_closed() {
    let app = spawn_app_with(|s| {
        s.body_read_timeout_ms = 300;
        s.header_read_timeout_ms = 500;
    })
    .await;
    let addr = addr_of(&app);

    // The body announces 100 bytes and sends 10, then waits: 408 REQUEST_TIMEOUT, not 503.
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(
            b"POST /api/v1/admin/products HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n\
              X-Admin-Key: test-admin-key\r\nContent-Length: 100\r\n\r\n{\"name\":\"",
        )
        .await
        .expect("write");
    let received = read_until_closed(&mut stream, Duration::from_secs(30))
        .await
        .expect("the server answers the stalled body and closes");
    let reply = parse_raw(&received);
    assert_problem(
        "stalled body",
        reply.status,
        reply.header("content-type").as_deref(),
        &reply.json(),
        (408, "REQUEST_TIMEOUT"),
    );

    // A head that never ends: the server closes the connection (no answer is owed). The old server
    // kept it open for at least 60 s; the deadline here is far above the configured 0.5 s.
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(b"GET /api/v1/products HTTP/1.1\r\nHost: t\r\nX-Slow: ")
        .await
        .expect("write");
    let closed = read_until_closed(&mut stream, Duration::from_secs(30)).await;
    assert!(
        closed.is_some(),
        "an unfinished request head is still open after 30 s"
    );

    // The server still serves everyone else.
    assert_eq!(app.get("/healthz", None).await.status, 200);
    app.stop().await;
}

fn request_series(metrics: &str) -> Vec<&str> {
    metrics
        .lines()
        .filter(|l| l.starts_with("flashsale_http_requests_total{"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invented_methods_and_paths_fold_into_one_label() {
    let app = spawn_app().await;
    let marker = unique("zz");
    for i in 0..20 {
        let method =
            reqwest::Method::from_bytes(format!("{}{i}", marker.to_uppercase()).as_bytes())
                .expect("a valid token");
        let r = app
            .request(method.clone(), "/api/v1/products", None, None, None)
            .await;
        assert_eq!(r.status, 405, "{}", r.text);
        let r = app
            .request(method, &format!("/{marker}/{i}"), None, None, None)
            .await;
        assert_eq!(r.status, 404, "{}", r.text);
        assert_eq!(
            app.get(&format!("/{marker}/path/{i}"), None).await.status,
            404
        );
    }
    let metrics = app.get("/metrics", None).await.text;
    let series = request_series(&metrics);
    let lower = marker.to_lowercase();
    assert!(
        !series.iter().any(|l| l.to_lowercase().contains(&lower)),
        "an invented method or path became a label: {:?}",
        series
            .iter()
            .filter(|l| l.to_lowercase().contains(&lower))
            .collect::<Vec<_>>()
    );
    assert!(
        series.iter().any(|l| l.contains(r#"method="OTHER""#)
            && l.contains(r#"route="/api/v1/products""#)
            && l.contains(r#"status="405""#)),
        "{series:#?}"
    );
    assert!(
        series.iter().any(|l| l.contains(r#"route="unmatched""#)
            && l.contains(r#"method="GET""#)
            && l.contains(r#"status="404""#)),
        "{series:#?}"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_and_panics_are_counted_with_their_status() {
    // The engine's own layer stack around two test routes: one never answers, one panics.
    let mut settings = common::serve_settings(common::isolated_connections());
    settings.request_timeout_ms = 200;
    let routes = axum::Router::new()
        .route(
            "/test/never-answers",
            axum::routing::get(|| async {
                std::future::pending::<()>().await;
                "unreachable"
            }),
        )
        .route(
            "/test/panics",
            axum::routing::get(|| async {
                if true {
                    panic!("handler panics on purpose");
                }
                "unreachable"
            }),
        );
    let router = flashsale::http::with_http_layers(routes, &settings);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(flashsale::http::serve(
        listener,
        router,
        Duration::from_secs(10),
        async move {
            let _ = stop_rx.await;
        },
    ));
    flashsale::telemetry::metrics_handle();
    let client = reqwest::Client::new();
    for (path, want) in [
        ("/test/never-answers", (503, "SERVICE_UNAVAILABLE")),
        ("/test/panics", (500, "INTERNAL")),
    ] {
        let r = client
            .get(format!("http://{addr}{path}"))
            .send()
            .await
            .expect("sent");
        let status = r.status().as_u16();
        let content_type = r
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body: Value = r.json().await.unwrap_or(Value::Null);
        assert_problem(path, status, content_type.as_deref(), &body, want);
    }
    let metrics = flashsale::telemetry::render_metrics();
    let series = request_series(&metrics);
    for (route, status) in [("/test/never-answers", "503"), ("/test/panics", "500")] {
        assert!(
            series
                .iter()
                .any(|l| l.contains(&format!(r#"route="{route}""#))
                    && l.contains(&format!(r#"status="{status}""#))
                    && l.ends_with(" 1")),
            "{route} {status} not counted: {series:#?}"
        );
    }
    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(20), server).await;
}

/// Signs a member up from `client_ip` (through the trusted proxy) and returns the email.
async fn signup_via_proxy(app: &common::TestApp, client_ip: &str, password: &str) -> String {
    let email = format!("{}@example.com", unique("u"));
    let r = app
        .http
        .post(format!("{}/api/v1/members", app.base))
        .header("x-forwarded-for", client_ip)
        .json(&json!({"email": email, "password": password, "name": "Honest"}))
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap_or_default());
    email
}

async fn login_via_proxy(
    http: &reqwest::Client,
    base: &str,
    forwarded_for: &str,
    email: &str,
    password: &str,
) -> (u16, Option<String>, Value) {
    let r = http
        .post(format!("{base}/api/v1/auth/login"))
        .header("x-forwarded-for", forwarded_for)
        .json(&json!({"email": email, "password": password}))
        .send()
        .await
        .expect("sent");
    let status = r.status().as_u16();
    let retry_after = r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    (status, retry_after, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_burst_is_throttled_while_honest_clients_keep_logging_in() {
    let app = spawn_app_with(|s| {
        s.trusted_proxies = vec!["127.0.0.0/8".parse().expect("cidr")];
        s.auth_rate_per_sec = 10;
        s.auth_account_rate_per_min = 20;
        s.hash_concurrency = 2;
        s.hash_queue = 64;
    })
    .await;
    let honest_ip = "198.51.100.7";
    let attacker_ip = "203.0.113.66";
    let honest = signup_via_proxy(&app, honest_ip, "honest-password").await;
    let victim = signup_via_proxy(&app, "198.51.100.8", "victim-password").await;

    // 300 wrong-password logins from one client (a forged left-most hop changes nothing: only the hop
    // the trusted proxy appended counts), 16 at a time.
    let forwarded = format!("10.9.8.7, {attacker_ip}");
    let burst = futures::stream::iter(0..300)
        .map(|_| login_via_proxy(&app.http, &app.base, &forwarded, &victim, "wrong-password"))
        .buffer_unordered(16)
        .collect::<Vec<_>>();
    // The honest client logs in meanwhile, and after.
    let honest_logins = async {
        let mut statuses = Vec::new();
        for _ in 0..5 {
            let (status, _, body) =
                login_via_proxy(&app.http, &app.base, honest_ip, &honest, "honest-password").await;
            assert!(body["access_token"].is_string() || status != 200, "{body}");
            statuses.push(status);
        }
        statuses
    };
    let (burst, honest_statuses) = tokio::join!(burst, honest_logins);
    let (status, _, _) =
        login_via_proxy(&app.http, &app.base, honest_ip, &honest, "honest-password").await;
    assert_eq!(honest_statuses, vec![200; 5]);
    assert_eq!(status, 200);

    let mut throttled = 0;
    for (status, retry_after, body) in &burst {
        match status {
            401 => assert_eq!(body["code"], "INVALID_CREDENTIALS"),
            429 => {
                throttled += 1;
                assert_eq!(body["code"], "RATE_LIMITED", "{body}");
                let secs: u64 = retry_after
                    .as_deref()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| {
                        panic!("429 without a Retry-After in seconds: {retry_after:?}")
                    });
                assert!(secs >= 1);
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert!(throttled >= 250, "only {throttled} of 300 throttled");
    app.stop().await;
}

fn guard_settings(
    configure: impl FnOnce(&mut flashsale::config::ServeSettings),
) -> flashsale::config::ServeSettings {
    let mut settings = common::serve_settings(common::isolated_connections());
    configure(&mut settings);
    settings
}

#[test]
fn x_forwarded_for_counts_only_from_trusted_proxies() {
    let guard = flashsale::abuse::AuthGuard::new(&guard_settings(|s| {
        s.trusted_proxies = vec![
            flashsale::abuse::parse_proxy("10.0.0.0/8").expect("cidr"),
            flashsale::abuse::parse_proxy("192.0.2.1").expect("address"),
        ];
    }));
    let mut headers = axum::http::HeaderMap::new();
    headers.insert(
        "x-forwarded-for",
        "1.1.1.1, 203.0.113.9, 10.1.1.1".parse().expect("header"),
    );
    let from = |peer: &str| {
        guard
            .client_ip(peer.parse().expect("peer"), &headers)
            .to_string()
    };
    // From a trusted proxy: the right-most hop that is not a proxy of ours.
    assert_eq!(from("10.2.3.4:5000"), "203.0.113.9");
    assert_eq!(from("192.0.2.1:5000"), "203.0.113.9");
    // From anyone else the header is the client's word: ignored.
    assert_eq!(from("198.51.100.1:5000"), "198.51.100.1");
    assert_eq!(from("[::ffff:198.51.100.1]:5000"), "198.51.100.1");
    assert!(flashsale::abuse::parse_proxy("not-a-network").is_err());
}

#[tokio::test]
async fn a_full_hashing_queue_is_503_with_retry_after() {
    let guard = flashsale::abuse::AuthGuard::new(&guard_settings(|s| {
        s.hash_concurrency = 1;
        s.hash_queue = 1;
    }));
    let running = guard.hash_permit().await.expect("a free slot");
    // The second waits in the queue; the third finds the queue full and is turned away at once.
    let waiting = guard.hash_permit();
    tokio::pin!(waiting);
    assert!(futures::poll!(&mut waiting).is_pending());
    let refused = match guard.hash_permit().await {
        Ok(_) => panic!("the queue is full, yet a third hash was admitted"),
        Err(e) => e.into_response(),
    };
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        refused
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );
    drop(running);
    let _next = waiting
        .await
        .expect("the queued hash runs once the slot frees");
}

#[tokio::test]
async fn the_limiters_forget_clients_whose_quota_refilled() {
    let guard = flashsale::abuse::AuthGuard::new(&guard_settings(|s| {
        s.auth_rate_per_sec = 1_000;
        s.auth_account_rate_per_min = 60_000;
    }));
    for i in 0..100u8 {
        guard
            .check_client(std::net::IpAddr::from([10, 0, 0, i]))
            .expect("within quota");
        guard
            .check_account(&format!("{i}@example.com"))
            .expect("within quota");
    }
    assert_eq!(guard.tracked(), 200);
    // Quotas refill within milliseconds here; poll until pruning forgets everyone.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        guard.prune();
        if guard.tracked() == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still tracking {}",
            guard.tracked()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A request's `X-Request-Id` comes back on its answer, whatever the answer (a route's, a refusal by
/// the framework or by auth), so clients and load generators can pair requests with answers; a
/// request without one gets none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_id_is_echoed_on_every_answer() {
    let app = spawn_app().await;
    for (i, (method, path, want)) in [
        (reqwest::Method::GET, "/healthz", 200),
        (reqwest::Method::GET, "/no/such/path", 404),
        (reqwest::Method::GET, "/api/v1/me/points", 401),
        (reqwest::Method::POST, "/api/v1/coupons/1/issue", 401),
    ]
    .into_iter()
    .enumerate()
    {
        let id = format!("{}-{i}", unique("rid"));
        let response = app
            .http
            .request(method.clone(), format!("{}{path}", app.base))
            .header("X-Request-Id", &id)
            .send()
            .await
            .expect("request sent");
        assert_eq!(response.status().as_u16(), want, "{method} {path}");
        assert_eq!(
            response
                .headers()
                .get("x-request-id")
                .and_then(|v| v.to_str().ok()),
            Some(id.as_str()),
            "{method} {path}"
        );
        let plain = app
            .http
            .request(method.clone(), format!("{}{path}", app.base))
            .send()
            .await
            .expect("request sent");
        assert!(
            plain.headers().get("x-request-id").is_none(),
            "{method} {path}"
        );
    }
    app.stop().await;
}
