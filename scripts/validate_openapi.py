#!/usr/bin/env python3
"""Validates the engine's OpenAPI document (read from stdin) as OpenAPI 3 with openapi-spec-validator,
checks that every path of the contract is in it, and that the rules are stated as schema (issue 8 item
16): every status the layers around the handlers can answer, credentials as security schemes, ranges,
lengths, the discount enum, maxItems, integer query parameters and the Idempotency-Key format.
Prints 'openapi: N passed, M failed'."""
import json
import subprocess
import sys

try:
    from openapi_spec_validator import validate
except ImportError:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check",
                    "openapi-spec-validator"], check=True)
    from openapi_spec_validator import validate

CONTRACT = [
    ("post", "/api/v1/members"), ("post", "/api/v1/auth/login"), ("get", "/api/v1/me/points"),
    ("post", "/api/v1/me/points/charge"), ("get", "/api/v1/me/points/history"),
    ("post", "/api/v1/admin/products"), ("post", "/api/v1/admin/products/{id}/stock"),
    ("get", "/api/v1/products"), ("get", "/api/v1/products/{id}"), ("get", "/api/v1/products/popular"),
    ("post", "/api/v1/admin/coupons"), ("get", "/api/v1/coupons/{id}"), ("post", "/api/v1/coupons/{id}/issue"),
    ("get", "/api/v1/me/coupons"), ("post", "/api/v1/orders"), ("post", "/api/v1/orders/{id}/pay"),
    ("post", "/api/v1/orders/{id}/cancel"), ("get", "/api/v1/orders/{id}"), ("get", "/healthz"),
    ("get", "/readyz"), ("get", "/metrics"), ("get", "/api/v1/admin/reconcile"),
]

doc = json.load(sys.stdin)
failed = []
try:
    validate(doc)
except Exception as e:  # the validator raises one of several error types
    failed.append(f"not a valid OpenAPI 3 document: {e}")
for method, path in CONTRACT:
    if method not in doc.get("paths", {}).get(path, {}):
        failed.append(f"{method.upper()} {path} missing")

def resolve(node):
    while isinstance(node, dict) and "$ref" in node:
        node = doc["components"]["schemas"][node["$ref"].rsplit("/", 1)[-1]]
    return node


def prop(schema_name, field):
    return resolve(doc["components"]["schemas"][schema_name]["properties"][field])


rules = 0


def rule(ok, message):
    global rules
    rules += 1
    if not ok:
        failed.append(message)


schemes = doc.get("components", {}).get("securitySchemes", {})
rule(schemes.get("admin_key", {}).get("in") == "header" and schemes["admin_key"].get("name") == "X-Admin-Key",
     "the admin key is not an apiKey security scheme in the X-Admin-Key header")
for path, item in doc.get("paths", {}).items():
    for method, op in item.items():
        statuses = set(op.get("responses", {}))
        params = op.get("parameters", [])
        secured = bool(op.get("security"))
        where = f"{method.upper()} {path}"
        if path.startswith("/api/"):
            rule("503" in statuses, f"{where}: no 503 (Redis down, request timeout)")
        if method == "post" or any(p["in"] in ("path", "query") for p in params):
            rule("400" in statuses, f"{where}: no 400 (malformed id, body or query)")
        if method == "post":
            rule("413" in statuses, f"{where}: no 413 (body too large)")
        if secured:
            rule("401" in statuses, f"{where}: no 401")
        if path.startswith("/api/v1/admin/"):
            rule(op.get("security") == [{"admin_key": []}], f"{where}: not secured by admin_key")
            rule(not any(p["name"].lower() == "x-admin-key" for p in params),
                 f"{where}: X-Admin-Key as a plain parameter")
        if path in ("/api/v1/members", "/api/v1/auth/login"):
            rule("429" in statuses and "Retry-After" in op["responses"]["429"].get("headers", {}),
                 f"{where}: no 429 with Retry-After")
        for p in params:
            schema = resolve(p.get("schema", {}))
            if p["in"] == "path":
                rule(schema.get("type") == "integer", f"{where}: path {p['name']} is not an integer")
            # The admin reconcile's cursor is an opaque `entity:id` string (checked by its pattern below).
            if path == "/api/v1/admin/reconcile" and p["in"] == "query" and p["name"] == "cursor":
                rule(schema.get("type") in ("string", ["string", "null"]) and "pattern" in schema,
                     f"{where}: query cursor has no pattern")
            elif p["in"] == "query" and p["name"] in ("limit", "days", "cursor"):
                rule(schema.get("type") in ("integer", ["integer", "null"]) and "minimum" in schema,
                     f"{where}: query {p['name']} is not a bounded integer")
            if p["name"].lower() == "idempotency-key":
                rule(schema.get("minLength") == 1 and schema.get("maxLength") == 255 and "pattern" in schema,
                     f"{where}: Idempotency-Key without its length and pattern")
if "components" in doc:
    for schema_name, field, keys in [
        ("ChargeRequest", "amount", {"minimum": 1, "maximum": 100_000_000}),
        ("CreateProductRequest", "price", {"minimum": 1, "maximum": 100_000_000}),
        ("CreateProductRequest", "stock", {"minimum": 0, "maximum": 1_000_000_000}),
        ("CreateProductRequest", "name", {"minLength": 1, "maxLength": 200}),
        ("AddStockRequest", "add", {"minimum": 1, "maximum": 1_000_000_000}),
        ("CreateCouponRequest", "total_quantity", {"minimum": 1, "maximum": 10_000_000}),
        ("CreateCouponRequest", "discount_value", {"minimum": 1}),
        ("CreateOrderRequest", "items", {"minItems": 1, "maxItems": 20}),
        ("OrderItemRequest", "quantity", {"minimum": 1, "maximum": 100}),
        ("SignupRequest", "password", {"minLength": 8, "maxLength": 128}),
        ("SignupRequest", "name", {"minLength": 1, "maxLength": 100}),
        ("SeedMembersRequest", "count", {"minimum": 1, "maximum": 5000}),
    ]:
        try:
            got = prop(schema_name, field)
        except KeyError:
            got = {}
        rule(all(got.get(k) == v for k, v in keys.items()), f"{schema_name}.{field}: want {keys}, got {got}")
    try:
        discount = prop("CreateCouponRequest", "discount_type")
    except KeyError:
        discount = {}
    rule(sorted(discount.get("enum", [])) == ["FIXED", "PERCENT"], "discount_type is not the FIXED/PERCENT enum")

for f in failed:
    print("openapi:", f)
print(f"openapi: {1 + len(CONTRACT) + rules - len(failed)} passed, {len(failed)} failed")
sys.exit(1 if failed else 0)
