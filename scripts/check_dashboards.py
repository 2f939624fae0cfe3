#!/usr/bin/env python3
"""Check that the Grafana dashboards and Prometheus rules are real.

What it does
  1. Makes sure the engine answers at $ENGINE_URL (default http://127.0.0.1:8080, probed on /readyz).
     If it does not, runs `make up` in the repo root and waits for it (skip with CHECK_DASHBOARDS_NO_START=1).
     The sink's metrics are expected at $SINK_METRICS_URL (default http://127.0.0.1:8081, path /metrics).
     With several engines or sinks (make test TOPOLOGY=cluster: engines behind HAProxy), the load still
     goes to $ENGINE_URL, but every instance is scraped: $ENGINE_METRICS_URLS and $SINK_METRICS_URLS
     (space separated; default ENGINE_URL and SINK_METRICS_URL).
  2. Starts its own `prometheus` on a free port (from $CHECK_DASHBOARDS_PROM_PORT, default 19090) with a
     temporary config that scrapes the engine and the sink every second and loads prometheus/rules/*.yml,
     and a temporary storage dir.
  3. Drives ~20 s of load through the HTTP API (docs/../api-contract): admin creates products and a coupon,
     members sign up, log in, charge points (with replays), issue coupons (some sold out / already issued),
     create, pay and cancel orders, plus requests that must fail with 4xx.
  4. Waits for a few scrapes and rule evaluations, then evaluates through /api/v1/query:
       - every `expr` of every panel target, every templating query (label_values(m, l) is checked as
         `count by (l) (m)`), every annotation query, in grafana/dashboards/*.json, after substituting
         Grafana variables ($__rate_interval -> 1m, $__interval -> 15s, $__range -> 5m, template vars -> .*);
       - every rule of prometheus/rules/*.yml (as loaded by Prometheus).
     An invalid expression fails the check. A panel must also return data (every target at least one
     series), unless its description says it "may be empty" (panels that are legitimately empty in a
     healthy system: 5xx, dead letters, relay errors ...); those only have to parse, and metric names they
     reference that Prometheus has never seen are reported as warnings.
     /api/v1/rules must list every group of the rule files, every rule with health "ok".
  5. Prints `dashboards: N passed, M failed` (and a rules line), stops its Prometheus, exits 0 or 1.

Environment
  ENGINE_URL, SINK_METRICS_URL, ADMIN_API_KEY (default dev-admin-key)
  ENGINE_METRICS_URLS, SINK_METRICS_URLS   every instance to scrape (space separated)
  CHECK_DASHBOARDS_NO_START=1   never run `make up`
  CHECK_DASHBOARDS_NO_LOAD=1    skip the load (e.g. against a fake metrics endpoint)
  CHECK_DASHBOARDS_LOAD_SECS    load duration (default 20)
  CHECK_DASHBOARDS_PROM_PORT    first port tried for the private Prometheus (default 19090)
  CHECK_DASHBOARDS_KEEP=1       keep the temp dir (config, Prometheus log) for debugging
  PROMETHEUS_BIN                prometheus binary (default: `prometheus` on PATH)

Standard library only.
"""

import glob
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Default to where `make up` puts them (it honours LISTEN_ADDR and SINK_LISTEN_ADDR).
ENGINE_URL = os.environ.get("ENGINE_URL", "http://" + os.environ.get("LISTEN_ADDR", "127.0.0.1:8080")).rstrip("/")
SINK_METRICS_URL = os.environ.get(
    "SINK_METRICS_URL", "http://" + os.environ.get("SINK_LISTEN_ADDR", "127.0.0.1:8081")).rstrip("/")
# Scraped one by one: through a load balancer each scrape would hit another engine's counters.
ENGINE_METRICS_URLS = [u.rstrip("/") for u in os.environ.get("ENGINE_METRICS_URLS", "").split()] or [ENGINE_URL]
SINK_METRICS_URLS = [u.rstrip("/") for u in os.environ.get("SINK_METRICS_URLS", "").split()] or [SINK_METRICS_URL]
ADMIN_KEY = os.environ.get("ADMIN_API_KEY", "dev-admin-key")
LOAD_SECS = float(os.environ.get("CHECK_DASHBOARDS_LOAD_SECS", "20"))
PROM_PORT = int(os.environ.get("CHECK_DASHBOARDS_PROM_PORT", "19090"))
NO_START = os.environ.get("CHECK_DASHBOARDS_NO_START") == "1"
NO_LOAD = os.environ.get("CHECK_DASHBOARDS_NO_LOAD") == "1"
KEEP = os.environ.get("CHECK_DASHBOARDS_KEEP") == "1"

DASHBOARD_GLOB = os.path.join(ROOT, "grafana", "dashboards", "*.json")
RULES_GLOB = os.path.join(ROOT, "prometheus", "rules", "*.yml")

# Grafana built-in variables -> values that make sense for a Prometheus that has scraped for ~a minute.
BUILTINS = {
    "__rate_interval": "1m",
    "__interval": "15s",
    "__interval_ms": "15000",
    "__range": "5m",
    "__range_s": "300",
    "__range_ms": "300000",
    "__auto": "15s",
}
EMPTY_OK_MARK = "may be empty"


def log(msg):
    print(msg, flush=True)


# --------------------------------------------------------------------------------------------------
# HTTP helpers
# --------------------------------------------------------------------------------------------------
def http(method, url, body=None, headers=None, timeout=5.0):
    """Returns (status, parsed JSON or text or None). status 0 = connection failure."""
    data = None
    hdrs = {"Accept": "application/json"}
    if body is not None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        hdrs["Content-Type"] = "application/json"
    hdrs.update(headers or {})
    req = urllib.request.Request(url, data=data, method=method, headers=hdrs)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            status, raw = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    except (urllib.error.URLError, OSError, ValueError) as e:
        return 0, str(e)
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, raw.decode("utf-8", "replace")


def reachable(url, timeout=2.0):
    status, _ = http("GET", url, timeout=timeout)
    return status == 200


def wait_for(pred, timeout, interval=1.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return True
        time.sleep(interval)
    return pred()


# --------------------------------------------------------------------------------------------------
# 1. the stack
# --------------------------------------------------------------------------------------------------
def ensure_stack():
    if reachable(ENGINE_URL + "/readyz"):
        log(f"engine ready at {ENGINE_URL}")
    elif NO_START:
        log(f"engine not ready at {ENGINE_URL}/readyz and CHECK_DASHBOARDS_NO_START=1: not starting it")
        if not reachable(ENGINE_URL + "/metrics"):
            raise SystemExit(f"FAIL: engine metrics not reachable at {ENGINE_URL}/metrics")
    else:
        if not os.path.exists(os.path.join(ROOT, "Makefile")):
            raise SystemExit("FAIL: engine not running and no Makefile to `make up` with")
        log(f"engine not ready at {ENGINE_URL}; running `make up` ...")
        rc = subprocess.call(["make", "up"], cwd=ROOT)
        if rc != 0:
            raise SystemExit(f"FAIL: `make up` exited {rc}")
        if not wait_for(lambda: reachable(ENGINE_URL + "/readyz"), 180, 2):
            raise SystemExit(f"FAIL: engine still not ready at {ENGINE_URL}/readyz after `make up`")
        log("engine ready")
    for url in SINK_METRICS_URLS:
        if reachable(url + "/metrics"):
            log(f"sink metrics at {url}/metrics")
        else:
            log(f"WARNING: sink metrics not reachable at {url}/metrics: sink panels will be empty")


# --------------------------------------------------------------------------------------------------
# 2. private Prometheus
# --------------------------------------------------------------------------------------------------
def free_port(start):
    for port in range(start, start + 100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue
    raise SystemExit(f"FAIL: no free port in {start}..{start + 99}")


def scrape_target(url):
    u = urllib.parse.urlsplit(url)
    path = u.path.rstrip("/")
    if not path.endswith("/metrics"):
        path += "/metrics"
    return u.scheme or "http", u.netloc, path


def start_prometheus(tmp):
    binary = os.environ.get("PROMETHEUS_BIN") or shutil.which("prometheus")
    if not binary:
        raise SystemExit(
            "FAIL: `prometheus` not found on PATH. Install it with scripts/services.sh "
            "(apt-get install prometheus) or set PROMETHEUS_BIN.")
    port = free_port(PROM_PORT)
    rule_files = sorted(glob.glob(RULES_GLOB))
    jobs = []
    for job, urls in (("flashsale-engine", ENGINE_METRICS_URLS), ("flashsale-sink", SINK_METRICS_URLS)):
        targets = [scrape_target(url) for url in urls]
        scheme, _, path = targets[0]
        if any((t[0], t[2]) != (scheme, path) for t in targets):
            raise SystemExit(f"FAIL: the {job} metrics URLs differ in scheme or path: {' '.join(urls)}")
        jobs.append(f"""  - job_name: {json.dumps(job)}
    scheme: {scheme}
    metrics_path: {json.dumps(path)}
    static_configs:
      - targets: [{", ".join(json.dumps(t[1]) for t in targets)}]
""")
    cfg = ("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n"
           "rule_files:\n" + "".join(f"  - {json.dumps(f)}\n" for f in rule_files) +
           "scrape_configs:\n" + "".join(jobs))
    cfg_path = os.path.join(tmp, "prometheus.yml")
    with open(cfg_path, "w") as f:
        f.write(cfg)
    logf = open(os.path.join(tmp, "prometheus.log"), "w")
    cmd = [binary, f"--config.file={cfg_path}", f"--storage.tsdb.path={os.path.join(tmp, 'data')}",
           f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=1h"]
    proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    if not wait_for(lambda: proc.poll() is not None or reachable(base + "/-/ready"), 30, 0.5) \
            or proc.poll() is not None:
        logf.flush()
        text = open(os.path.join(tmp, "prometheus.log")).read()
        errors = [ln for ln in text.splitlines() if "level=error" in ln or "level=warn" in ln]
        tail = "\n".join(errors[-10:]) or text[-3000:]
        stop_prometheus(proc)
        raise SystemExit(f"FAIL: prometheus did not become ready on {base}:\n{tail}")
    log(f"prometheus {base} (pid {proc.pid}), {len(rule_files)} rule file(s), config {cfg_path}")
    return proc, base


def stop_prometheus(proc):
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


# --------------------------------------------------------------------------------------------------
# 3. load
# --------------------------------------------------------------------------------------------------
class Load:
    def __init__(self):
        self.lock = threading.Lock()
        self.counts = {}
        self.run = uuid.uuid4().hex[:8]

    def req(self, method, path, body=None, token=None, idem=None, admin=False, headers=None, label=None):
        h = dict(headers or {})
        if token:
            h["Authorization"] = f"Bearer {token}"
        if idem:
            h["Idempotency-Key"] = idem
        if admin:
            h["X-Admin-Key"] = ADMIN_KEY
        status, data = http(method, ENGINE_URL + path, body, h)
        key = f"{label or method + ' ' + re.sub(r'/[0-9]+', '/{id}', path)} -> {status}"
        with self.lock:
            self.counts[key] = self.counts.get(key, 0) + 1
        return status, data

    @staticmethod
    def field(data, name):
        return data.get(name) if isinstance(data, dict) else None

    def member(self, i):
        email = f"check-{self.run}-{i}@example.com"
        pw = "correct-horse-battery-staple"
        self.req("POST", "/api/v1/members", {"email": email, "password": pw, "name": f"checker {i}"})
        st, data = self.req("POST", "/api/v1/auth/login", {"email": email, "password": pw})
        return self.field(data, "access_token") if st == 200 else None

    def setup(self):
        st, big = self.req("POST", "/api/v1/admin/products",
                           {"name": f"check {self.run} big", "price": 1000, "stock": 100000}, admin=True)
        st2, small = self.req("POST", "/api/v1/admin/products",
                              {"name": f"check {self.run} small", "price": 500, "stock": 3}, admin=True)
        now = time.time()
        fmt = lambda t: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))
        st3, coupon = self.req("POST", "/api/v1/admin/coupons", {
            "name": f"check {self.run}", "discount_type": "FIXED", "discount_value": 100,
            "total_quantity": 4, "valid_from": fmt(now - 60), "valid_until": fmt(now + 86400)}, admin=True)
        # Sale rules: one product whose sale opens in a day, one limited to 1 unit per member.
        _, later = self.req("POST", "/api/v1/admin/products", {
            "name": f"check {self.run} later", "price": 100, "stock": 100,
            "sale_starts_at": fmt(now + 86400)}, admin=True)
        _, limited = self.req("POST", "/api/v1/admin/products", {
            "name": f"check {self.run} limited", "price": 100, "stock": 100, "per_member_limit": 2},
            admin=True)
        self.rules = (self.field(later, "id"), self.field(limited, "id"))
        if self.rules[1] is not None:
            self.req("PATCH", f"/api/v1/admin/products/{self.rules[1]}", {"per_member_limit": 1}, admin=True)
        if st == 201 or st2 == 201:
            pid = self.field(big, "id")
            if pid is not None:
                self.req("POST", f"/api/v1/admin/products/{pid}/stock", {"add": 10}, admin=True)
        # 4xx on admin: wrong key, validation
        self.req("POST", "/api/v1/admin/products", {"name": "x", "price": 1, "stock": 1},
                 headers={"X-Admin-Key": "wrong"})
        self.req("POST", "/api/v1/admin/products", {"name": "x", "price": -1, "stock": 1}, admin=True)
        return self.field(big, "id"), self.field(small, "id"), self.field(coupon, "id")

    def worker(self, i, big, small, coupon, deadline):
        token = self.member(i)
        if not token:
            return
        key = f"charge-{self.run}-{i}"
        self.req("POST", "/api/v1/me/points/charge", {"amount": 1_000_000}, token, idem=key)
        self.req("POST", "/api/v1/me/points/charge", {"amount": 1_000_000}, token, idem=key)   # replay
        self.req("POST", "/api/v1/me/points/charge", {"amount": 5}, token, idem=key)           # 422 reused
        self.req("POST", "/api/v1/me/points/charge", {"amount": 10}, token)                    # 400 no key
        self.req("GET", "/api/v1/me/points", token=token)
        if coupon is not None:
            self.req("POST", f"/api/v1/coupons/{coupon}/issue", token=token)   # 4 of N succeed: sold out
            self.req("POST", f"/api/v1/coupons/{coupon}/issue", token=token)   # already issued / sold out
            self.req("GET", f"/api/v1/coupons/{coupon}")
        self.req("GET", "/api/v1/me/coupons", token=token)
        coupon_unused = True
        n = 0
        while time.time() < deadline:
            n += 1
            self.req("GET", "/api/v1/products?limit=10")
            if big is not None:
                self.req("GET", f"/api/v1/products/{big}")
            st, order = self.req("POST", "/api/v1/orders",
                                 {"items": [{"product_id": big, "quantity": 1 + n % 3}]}, token,
                                 idem=f"o-{self.run}-{i}-{n}")
            oid = self.field(order, "id") if st == 201 else None
            if oid is not None:
                self.req("GET", f"/api/v1/orders/{oid}", token=token)
                if n % 5 == 0:
                    self.req("POST", f"/api/v1/orders/{oid}/cancel", {}, token, idem=f"c-{self.run}-{i}-{n}")
                else:
                    body = {"coupon_id": coupon} if (coupon_unused and coupon is not None) else {}
                    st, _ = self.req("POST", f"/api/v1/orders/{oid}/pay", body, token,
                                     idem=f"p-{self.run}-{i}-{n}")
                    if st == 409 and body:   # COUPON_NOT_USABLE (not issued to us): pay without it
                        st, _ = self.req("POST", f"/api/v1/orders/{oid}/pay", {}, token,
                                         idem=f"p2-{self.run}-{i}-{n}")
                    coupon_unused = False
                    if n % 7 == 0:   # cancel a paid order (refund), then cancel again -> 409
                        self.req("POST", f"/api/v1/orders/{oid}/cancel", {}, token, idem=f"c-{self.run}-{i}-{n}")
                        self.req("POST", f"/api/v1/orders/{oid}/cancel", {}, token, idem=f"c2-{self.run}-{i}-{n}")
                    # replay of the pay: same key, same body
                    if n % 4 == 0:
                        self.req("POST", f"/api/v1/orders/{oid}/pay", body, token, idem=f"p-{self.run}-{i}-{n}")
            # 4xx on purpose
            later, limited = getattr(self, "rules", (None, None))
            if later is not None and n % 3 == 1:                   # SALE_NOT_STARTED (mostly the engine's)
                self.req("POST", "/api/v1/orders", {"items": [{"product_id": later, "quantity": 1}]}, token,
                         idem=f"l-{self.run}-{i}-{n}")
            if limited is not None and n % 3 == 2:                 # 1 unit, then PURCHASE_LIMIT_EXCEEDED
                self.req("POST", "/api/v1/orders", {"items": [{"product_id": limited, "quantity": 1}]}, token,
                         idem=f"m-{self.run}-{i}-{n}")
            if small is not None and n % 3 == 0:
                self.req("POST", "/api/v1/orders", {"items": [{"product_id": small, "quantity": 2}]}, token,
                         idem=f"s-{self.run}-{i}-{n}")            # OUT_OF_STOCK after the first two
            if n % 4 == 0:
                self.req("GET", "/api/v1/products/987654321")                                  # 404
                self.req("GET", "/api/v1/me/points", token="not-a-token")                       # 401
                self.req("POST", "/api/v1/orders", b"{not json", token, idem=f"b-{self.run}-{i}-{n}")  # 400
                self.req("POST", "/api/v1/orders", {"items": [{"product_id": big, "quantity": 1}]}, token)  # 400
            time.sleep(random.uniform(0.02, 0.08))

    def drive(self, seconds):
        log(f"driving load for {seconds:.0f}s against {ENGINE_URL} ...")
        big, small, coupon = self.setup()
        if big is None:
            log("WARNING: could not create a product as admin (check ADMIN_API_KEY); load will be thin")
        deadline = time.time() + seconds
        with ThreadPoolExecutor(max_workers=6) as ex:
            futs = [ex.submit(self.worker, i, big, small, coupon, deadline) for i in range(6)]
            for f in futs:
                try:
                    f.result()
                except Exception as e:  # noqa: BLE001 - load must never kill the check
                    log(f"WARNING: load worker failed: {e!r}")
        total = sum(self.counts.values())
        by_class = {}
        for k, v in self.counts.items():
            cls = k.rsplit("-> ", 1)[1]
            cls = "conn-error" if cls == "0" else cls[0] + "xx"
            by_class[cls] = by_class.get(cls, 0) + v
        log(f"load done: {total} requests, " + ", ".join(f"{k}: {v}" for k, v in sorted(by_class.items())))
        if by_class.get("2xx", 0) == 0:
            log("WARNING: no request succeeded; panels fed by the load will be empty")


# --------------------------------------------------------------------------------------------------
# 4. expressions
# --------------------------------------------------------------------------------------------------
VAR_RE = re.compile(r"\$\{(\w+)(?::[^}]*)?\}|\[\[(\w+)(?::[^\]]*)?\]\]|\$(\w+)")


def substitute(expr, template_vars):
    """Replace Grafana variables. Returns (expr, unknown variable names)."""
    unknown = []

    def repl(m):
        name = m.group(1) or m.group(2) or m.group(3)
        if name in BUILTINS:
            return BUILTINS[name]
        if name in template_vars:
            return template_vars[name]
        unknown.append(name)
        return m.group(0)

    return VAR_RE.sub(repl, expr), unknown


def template_values(dash):
    vals = {}
    for v in (dash.get("templating") or {}).get("list", []):
        name = v.get("name")
        if not name:
            continue
        t = v.get("type")
        if t in ("constant", "textbox"):
            q = v.get("query")
            vals[name] = q if isinstance(q, str) and q else ".*"
        elif t == "interval":
            vals[name] = "1m"
        elif t == "datasource":
            vals[name] = "prometheus"
        else:
            vals[name] = ".*"
    return vals


def label_values_to_promql(q):
    """label_values(metric{sel}, label) -> count by (label) (metric{sel}); other Grafana var queries too."""
    q = q.strip()
    m = re.fullmatch(r"label_values\((.*),\s*(\w+)\s*\)", q, re.S)
    if m:
        return f"count by ({m.group(2)}) ({m.group(1)})"
    m = re.fullmatch(r"label_values\(\s*(\w+)\s*\)", q)
    if m:
        return f"count by ({m.group(1)}) ({{{m.group(1)}!=\"\"}})"
    m = re.fullmatch(r"query_result\((.*)\)", q, re.S)
    if m:
        return m.group(1)
    m = re.fullmatch(r"metrics\((.*)\)", q, re.S)
    if m:
        return None
    return q


def walk_panels(panels):
    for p in panels or []:
        yield p
        yield from walk_panels(p.get("panels"))


def dashboard_checks():
    """Yields dicts: dashboard, item, exprs [(refId, raw, substituted, unknown_vars)], need_data."""
    checks = []
    files = sorted(glob.glob(DASHBOARD_GLOB))
    if not files:
        raise SystemExit(f"FAIL: no dashboards matched {DASHBOARD_GLOB}")
    for path in files:
        name = os.path.basename(path)
        try:
            dash = json.load(open(path))
        except ValueError as e:
            checks.append({"dashboard": name, "item": "(file)", "exprs": [], "need_data": False,
                           "error": f"invalid JSON: {e}"})
            continue
        tv = template_values(dash)
        for v in (dash.get("templating") or {}).get("list", []):
            if v.get("type") != "query":
                continue
            q = v.get("query")
            q = q.get("query") if isinstance(q, dict) else q
            if not q:
                continue
            pq = label_values_to_promql(q)
            if pq is None:
                continue
            sub, unknown = substitute(pq, tv)
            checks.append({"dashboard": name, "item": f"variable ${v.get('name')}", "need_data": True,
                           "exprs": [("query", q, sub, unknown)]})
        for a in (dash.get("annotations") or {}).get("list", []):
            if a.get("expr"):
                sub, unknown = substitute(a["expr"], tv)
                checks.append({"dashboard": name, "item": f"annotation {a.get('name')!r}", "need_data": False,
                               "exprs": [("expr", a["expr"], sub, unknown)]})
        for p in walk_panels(dash.get("panels")):
            targets = [t for t in p.get("targets") or [] if t.get("expr") and not t.get("hide")]
            if not targets:
                continue
            exprs = []
            for t in targets:
                sub, unknown = substitute(t["expr"], tv)
                exprs.append((t.get("refId", "?"), t["expr"], sub, unknown))
            need = EMPTY_OK_MARK not in (p.get("description") or "").lower()
            checks.append({"dashboard": name, "item": f"panel {p.get('title')!r}", "need_data": need,
                           "exprs": exprs})
    return checks


class Prom:
    def __init__(self, base):
        self.base = base
        self._names = None

    def get(self, path, **params):
        url = self.base + path + ("?" + urllib.parse.urlencode(params) if params else "")
        status, data = http("GET", url, timeout=30)
        return status, data

    def query(self, expr):
        """Returns (ok, n_series, error)."""
        status, data = self.get("/api/v1/query", query=expr)
        if not isinstance(data, dict):
            return False, 0, f"HTTP {status}: {str(data)[:200]}"
        if data.get("status") != "success":
            return False, 0, f"{data.get('errorType')}: {data.get('error')}"
        res = data["data"]
        if res["resultType"] in ("scalar", "string"):
            return True, 1, None
        return True, len(res["result"]), None

    def metric_names(self):
        if self._names is None:
            _, data = self.get("/api/v1/label/__name__/values")
            self._names = set(data.get("data", [])) if isinstance(data, dict) else set()
        return self._names


METRIC_RE = re.compile(r"(?<![\w:])((?:flashsale|process)_[a-zA-Z0-9_]*)")


def wait_for_data(prom):
    """Wait until both targets were scraped a few times and every rule was evaluated."""
    def targets_seen():
        _, data = prom.get("/api/v1/targets")
        if not isinstance(data, dict):
            return False
        act = data.get("data", {}).get("activeTargets", [])
        return act and all(t.get("lastScrape", "").startswith("20") for t in act)
    wait_for(targets_seen, 15, 0.5)
    _, data = prom.get("/api/v1/targets")
    for t in (data or {}).get("data", {}).get("activeTargets", []) if isinstance(data, dict) else []:
        log(f"  target {t.get('labels', {}).get('job')} {t.get('scrapeUrl')}: {t.get('health')}"
            + (f" ({t.get('lastError')})" if t.get("lastError") else ""))


def rules_loaded(prom):
    _, data = prom.get("/api/v1/rules")
    groups = data.get("data", {}).get("groups", []) if isinstance(data, dict) else []
    return groups


def precheck_rules():
    """promtool check rules before starting Prometheus: a broken file would only make it refuse to start."""
    files = sorted(glob.glob(RULES_GLOB))
    if not files:
        raise SystemExit(f"FAIL: no rule files matched {RULES_GLOB}")
    promtool = shutil.which("promtool")
    if not promtool:
        log("WARNING: promtool not on PATH, skipping `promtool check rules` (prometheus will still load them)")
        return
    for path in files:
        r = subprocess.run([promtool, "check", "rules", path], capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit(f"FAIL: promtool check rules {os.path.relpath(path, ROOT)}:\n{r.stdout}{r.stderr}")
    log(f"promtool check rules: {len(files)} file(s) ok")


def runbook_anchors():
    path = os.path.join(ROOT, "docs", "runbook.md")
    if not os.path.exists(path):
        return set()
    anchors = set()
    for line in open(path):
        m = re.match(r"#{1,6}\s+(.*?)\s*$", line)
        if m:   # GitHub-style anchor: lower case, drop punctuation, spaces -> dashes
            anchors.add(re.sub(r"[^\w\- ]", "", m.group(1).lower()).replace(" ", "-"))
    return anchors


def alert_metadata_problems(rule):
    """Every alert: severity label, summary/description/runbook_url, runbook anchor that exists."""
    problems = []
    labels, ann = rule.get("labels") or {}, rule.get("annotations") or {}
    if labels.get("severity") not in ("critical", "warning", "info"):
        problems.append(f"severity label {labels.get('severity')!r} (want critical/warning/info)")
    for k in ("summary", "description", "runbook_url"):
        if not ann.get(k):
            problems.append(f"missing annotation {k}")
    url = ann.get("runbook_url", "")
    if url:
        m = re.search(r"runbook\.md#([\w-]+)$", url)
        if not m:
            problems.append(f"runbook_url {url!r} does not point to docs/runbook.md#<anchor>")
        elif m.group(1) not in runbook_anchors():
            problems.append(f"runbook_url anchor #{m.group(1)} has no heading in docs/runbook.md")
    return problems


def check_rules(prom, failures):
    """Rule groups loaded, every rule evaluated with health ok, every rule expr valid."""
    expected = {}
    for path in sorted(glob.glob(RULES_GLOB)):
        text = open(path).read()
        for g in re.findall(r"^\s*-\s*name:\s*['\"]?([^'\"#\n]+?)['\"]?\s*$", text, re.M):
            expected[g] = os.path.basename(path)
    # wait until every rule has been evaluated once (health leaves "unknown")
    def all_evaluated():
        gs = rules_loaded(prom)
        rs = [r for g in gs for r in g.get("rules", [])]
        return gs and all(r.get("health") != "unknown" for r in rs)
    wait_for(all_evaluated, 20, 1)
    groups = rules_loaded(prom)
    got = {g["name"]: g for g in groups}
    passed = failed = 0
    for name, fname in expected.items():
        if name not in got:
            failures.append(f"rules: group {name!r} from {fname} not loaded by prometheus")
            failed += 1
    for g in groups:
        for r in g.get("rules", []):
            rname = r.get("name")
            what = f"rules: {g['name']}/{rname}"
            ok = True
            if r.get("health") != "ok":
                failures.append(f"{what}: health {r.get('health')!r} {r.get('lastError', '')}")
                ok = False
            if r.get("type") == "alerting":
                for problem in alert_metadata_problems(r):
                    failures.append(f"{what}: {problem}")
                    ok = False
            valid, n, err = prom.query(r.get("query", ""))
            if not valid:
                failures.append(f"{what}: invalid expression: {err}")
                ok = False
            passed += ok
            failed += not ok
            if r.get("type") == "alerting" and r.get("state") == "firing":
                log(f"  note: alert {rname} is firing")
    return passed, failed


def main():
    tmp = tempfile.mkdtemp(prefix="check-dashboards-")
    proc = None
    failures = []
    try:
        precheck_rules()
        ensure_stack()
        proc, base = start_prometheus(tmp)
        prom = Prom(base)
        t0 = time.time()
        if NO_LOAD:
            log("CHECK_DASHBOARDS_NO_LOAD=1: no load")
        else:
            Load().drive(LOAD_SECS)
        # rate()/histogram_quantile over $__rate_interval (1m) need >= 2 samples; deriv too.
        time.sleep(max(0.0, 8 - (time.time() - t0)) + 4)
        wait_for_data(prom)

        r_passed, r_failed = check_rules(prom, failures)

        d_passed = d_failed = 0
        warnings = []
        for c in dashboard_checks():
            where = f"{c['dashboard']}: {c['item']}"
            problems = []
            if c.get("error"):
                problems.append(c["error"])
            for ref, raw, sub, unknown in c["exprs"]:
                if unknown:
                    problems.append(f"[{ref}] unknown variable(s) {', '.join('$' + u for u in unknown)}")
                    continue
                ok, n, err = prom.query(sub)
                if not ok:
                    problems.append(f"[{ref}] invalid: {err}\n        expr: {sub}")
                elif n == 0 and c["need_data"]:
                    problems.append(f"[{ref}] no data\n        expr: {sub}")
                elif n == 0:
                    missing = sorted({m for m in METRIC_RE.findall(sub)} - prom.metric_names())
                    if missing:
                        warnings.append(f"{where} [{ref}]: empty; metric(s) never seen: {', '.join(missing)}")
            if problems:
                d_failed += 1
                failures.append(f"{where}:\n      " + "\n      ".join(problems))
            else:
                d_passed += 1
        for w in warnings:
            log(f"WARNING: {w}")
        if failures:
            log("\nFAILURES:")
            for f in failures:
                log(f"  - {f}")
        log(f"rules: {r_passed} passed, {r_failed} failed")
        log(f"dashboards: {d_passed} passed, {d_failed} failed")
        return 1 if failures else 0
    finally:
        stop_prometheus(proc)
        if KEEP:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
