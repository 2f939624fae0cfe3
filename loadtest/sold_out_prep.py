#!/usr/bin/env python3
"""Helpers of loadtest/sold_out.sh, over the HTTP API (standard library only).

  members URL COUNT PREFIX FILE      seed COUNT members (admin seed path, 5,000 per call); FILE gets
                                     `member_id access_token` lines
  coupon URL QUANTITY                create a coupon; prints its id
  product URL STOCK                  create a product; prints its id
  check-coupon URL ID QUANTITY ANSWERS   the coupon rush's invariants: remaining 0, issued = QUANTITY,
                                     the 201 answers = QUANTITY (exit 1 when not)
  check-stock URL ID STOCK ANSWERS   the stock rush's: stock 0, the 201 answers = STOCK
  restock-latency URL_A URL_B FILE ROUNDS OUT
                                     items sold out through engine A, restocked one unit through engine
                                     B, then asked for on A until granted: per round the ms from the
                                     restock's answer to the first 201 on A and the requests it took;
                                     coupons (quantity add) and products (stock add). OUT gets
                                     `kind ms attempts` lines.

ADMIN_API_KEY is read from the environment (default dev-admin-key).
"""

import http.client
import json
import os
import sys
import time
import urllib.parse
import uuid

ADMIN = os.environ.get("ADMIN_API_KEY", "dev-admin-key")


class Api:
    """One keep-alive connection to one engine."""

    def __init__(self, base):
        u = urllib.parse.urlparse(base)
        self.conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=30)

    def call(self, method, path, body=None, token=None, key=None, admin=False):
        headers = {"content-type": "application/json"}
        if token:
            headers["authorization"] = f"Bearer {token}"
        if key:
            headers["idempotency-key"] = key
        if admin:
            headers["x-admin-key"] = ADMIN
        data = json.dumps(body) if body is not None else ""
        for attempt in range(3):
            try:
                self.conn.request(method, path, body=data, headers=headers)
                r = self.conn.getresponse()
                text = r.read()
                break
            except (http.client.HTTPException, OSError):
                self.conn.close()
                if attempt == 2:
                    raise
        try:
            doc = json.loads(text) if text else None
        except ValueError:
            doc = None
        return r.status, doc


def fail(msg):
    print(msg, file=sys.stderr)
    sys.exit(1)


def seed(url, count, prefix, path):
    api = Api(url)
    lines = []
    done = 0
    while done < count:
        n = min(5000, count - done)
        status, doc = api.call("POST", "/api/v1/admin/seed/members",
                               {"count": n, "balance": 1_000_000_000, "email_prefix": f"{prefix}-{done}"},
                               admin=True)
        if status != 201:
            fail(f"seed: {status} {doc}")
        lines += [f"{m['id']} {m['access_token']}" for m in doc["members"]]
        done += n
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def create_coupon(api, quantity):
    status, doc = api.call("POST", "/api/v1/admin/coupons",
                           {"name": "sold-out bench", "discount_type": "FIXED", "discount_value": 100,
                            "total_quantity": quantity, "valid_until": "2099-01-01T00:00:00Z"}, admin=True)
    if status != 201:
        fail(f"coupon: {status} {doc}")
    return doc["id"]


def create_product(api, stock):
    status, doc = api.call("POST", "/api/v1/admin/products",
                           {"name": "sold-out bench", "price": 100, "stock": stock}, admin=True)
    if status != 201:
        fail(f"product: {status} {doc}")
    return doc["id"]


def count_answers(path):
    counts = {}
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) == 3:
                counts[parts[2]] = counts.get(parts[2], 0) + 1
    return counts


def check_coupon(url, coupon, quantity, answers):
    status, doc = Api(url).call("GET", f"/api/v1/coupons/{coupon}")
    counts = count_answers(answers)
    ok = status == 200 and doc["remaining"] == 0 and doc["total_quantity"] == quantity \
        and counts.get("201", 0) == quantity
    print(json.dumps({"remaining": doc and doc.get("remaining"), "granted": counts.get("201", 0),
                      "quantity": quantity, "answers": counts, "ok": ok}))
    sys.exit(0 if ok else 1)


def check_stock(url, product, stock, answers):
    status, doc = Api(url).call("GET", f"/api/v1/products/{product}")
    counts = count_answers(answers)
    ok = status == 200 and doc["stock"] == 0 and counts.get("201", 0) == stock
    print(json.dumps({"stock_left": doc and doc.get("stock"), "granted": counts.get("201", 0),
                      "stock": stock, "answers": counts, "ok": ok}))
    sys.exit(0 if ok else 1)


def restock_latency(url_a, url_b, members_file, rounds, out):
    tokens = [line.split()[1] for line in open(members_file) if line.strip()]
    a, b = Api(url_a), Api(url_b)
    next_member = iter(range(10**9))

    def token():
        return tokens[next(next_member) % len(tokens)]

    def rounds_of(kind, ask, restock):
        """`ask()` is A's request for the item (status); `restock()` B's answer (status)."""
        rows = []
        for _ in range(rounds):
            status = ask()
            if status != 409:
                fail(f"restock-latency: {kind}: expected a sold-out 409, got {status}")
            status = restock()
            if status != 200:
                fail(f"restock-latency: {kind}: the restock answered {status}")
            restocked = time.monotonic()
            attempts = 0
            while True:
                attempts += 1
                status = ask()
                if status == 201:
                    break
                if status != 409 or time.monotonic() - restocked > 30:
                    fail(f"restock-latency: {kind}: not granted again ({status})")
            rows.append((kind, (time.monotonic() - restocked) * 1000, attempts))
        return rows

    # Coupons: one member per request (one coupon per member), so the pool must last.
    coupon = create_coupon(a, 1)
    issue = lambda: a.call("POST", f"/api/v1/coupons/{coupon}/issue", token=token())[0]  # noqa: E731
    if issue() != 201:
        fail("restock-latency: the first coupon was not granted")
    rows = rounds_of("coupon", issue, lambda: b.call(
        "POST", f"/api/v1/admin/coupons/{coupon}/quantity", {"add": 1}, admin=True)[0])
    product = create_product(a, 1)
    order = lambda: a.call("POST", "/api/v1/orders", {"items": [{"product_id": product, "quantity": 1}]},  # noqa: E731
                           token=token(), key=str(uuid.uuid4()))[0]
    if order() != 201:
        fail("restock-latency: the first unit was not sold")
    rows += rounds_of("product", order, lambda: b.call(
        "POST", f"/api/v1/admin/products/{product}/stock", {"add": 1}, admin=True)[0])
    with open(out, "w") as f:
        for kind, ms, attempts in rows:
            f.write(f"{kind} {ms:.3f} {attempts}\n")


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "members":
        seed(args[0], int(args[1]), args[2], args[3])
    elif cmd == "coupon":
        print(create_coupon(Api(args[0]), int(args[1])))
    elif cmd == "product":
        print(create_product(Api(args[0]), int(args[1])))
    elif cmd == "check-coupon":
        check_coupon(args[0], int(args[1]), int(args[2]), args[3])
    elif cmd == "check-stock":
        check_stock(args[0], int(args[1]), int(args[2]), args[3])
    elif cmd == "restock-latency":
        restock_latency(args[0], args[1], args[2], int(args[3]), args[4])
    else:
        fail(__doc__)


if __name__ == "__main__":
    main()
