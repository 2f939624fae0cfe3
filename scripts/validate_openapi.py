#!/usr/bin/env python3
"""Validates the engine's OpenAPI document (read from stdin) as OpenAPI 3 with openapi-spec-validator,
and checks that every path of the contract is in it. Prints 'openapi: N passed, M failed'."""
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
for f in failed:
    print("openapi:", f)
print(f"openapi: {1 + len(CONTRACT) - len(failed)} passed, {len(failed)} failed")
sys.exit(1 if failed else 0)
