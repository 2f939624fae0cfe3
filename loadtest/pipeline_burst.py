#!/usr/bin/env python3
"""One burst for loadtest/pipeline_bench.sh: seeds members through the admin path (2 events each), then
reserves and pays orders with their tokens (2 events each), 32 requests in flight. Standard library only."""
import argparse
import json
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor


def call(url, body=None, headers=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    req.add_header("content-type", "application/json")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read() or b"null")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--api", required=True)
    p.add_argument("--admin-key", required=True)
    p.add_argument("--members", type=int, required=True)
    p.add_argument("--orders", type=int, required=True)
    p.add_argument("--label", required=True)
    a = p.parse_args()
    admin = {"X-Admin-Key": a.admin_key}
    tokens = []
    left = a.members
    while left > 0:
        n = min(left, 5000)
        r = call(f"{a.api}/api/v1/admin/seed/members", {"count": n, "balance": 100000,
                                                         "email_prefix": f"{a.label}-{left}"}, admin)
        tokens += [m["access_token"] for m in r["members"]]
        left -= n
    product = call(f"{a.api}/api/v1/admin/products", {"name": "burst", "price": 1000, "stock": a.orders}, admin)["id"]

    def order_and_pay(i):
        auth = {"Authorization": "Bearer " + tokens[i % len(tokens)]}
        order = call(f"{a.api}/api/v1/orders", {"items": [{"product_id": product, "quantity": 1}]},
                     {**auth, "Idempotency-Key": str(uuid.uuid4())})
        call(f"{a.api}/api/v1/orders/{order['id']}/pay", {}, {**auth, "Idempotency-Key": str(uuid.uuid4())})

    with ThreadPoolExecutor(32) as pool:
        list(pool.map(order_and_pay, range(a.orders)))


if __name__ == "__main__":
    main()
