//! The OpenAPI document, generated from the handlers and types.

use utoipa::openapi::header::Header;
use utoipa::openapi::path::{Parameter, ParameterIn};
use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, Schema, SchemaFormat, Type};
use utoipa::openapi::security::{
    ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
};
use utoipa::openapi::{Content, Ref, RefOr, Response, ResponseBuilder};
use utoipa::{Modify, OpenApi};

use crate::domain::*;
use crate::error::{Problem, ProblemExtensions};
use crate::routes::{coupons, members, ops, orders, points, products};

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        if let Some(components) = openapi.components.as_mut() {
            components.add_security_scheme(
                "bearer",
                SecurityScheme::Http(
                    HttpBuilder::new()
                        .scheme(HttpAuthScheme::Bearer)
                        .bearer_format("JWT")
                        .build(),
                ),
            );
        }
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "flashsale", description = "Redis-first flash-sale engine. Errors are application/problem+json with a stable `code`. The prose contract is docs/api.md; this document is generated from the code."),
    paths(
        members::signup, members::login, members::seed_members,
        points::balance, points::charge, points::history,
        products::create, products::set_rules, products::add_stock, products::list, products::get, products::popular,
        coupons::create, coupons::add_quantity, coupons::get, coupons::issue, coupons::mine,
        orders::create, orders::pay, orders::cancel, orders::get,
        ops::healthz, ops::readyz, ops::metrics, ops::reconcile,
    ),
    components(schemas(
        Problem, SignupRequest, MemberView, LoginRequest, TokenView, SeedMembersRequest, SeededMember, SeededMembers,
        ChargeRequest, BalanceView, PointsHistoryEntry, CreateProductRequest, PatchProductRequest, AddStockRequest, ProductView, ProblemExtensions,
        ProductPage, PopularProduct, CreateCouponRequest, AddCouponQuantityRequest, CouponView, IssuedCouponView, MyCouponView,
        OrderItemRequest, CreateOrderRequest, PayOrderRequest, OrderItemView, OrderView, Drift, ReconcileReport, ReconcilePage,
        WholeNumber, DiscountType,
    )),
    modifiers(&BearerAuth, &AdminKey, &CommonResponses),
    tags(
        (name = "members"), (name = "points"), (name = "products"), (name = "coupons"), (name = "orders"),
        (name = "admin", description = "X-Admin-Key"), (name = "operations"),
    )
)]
pub struct ApiDoc;

/// The admin endpoints' `X-Admin-Key`, as a security scheme rather than a plain header parameter, so
/// clients and fuzzers know it is a credential (and that leaving it out is a 401).
struct AdminKey;

pub const ADMIN_KEY_SCHEME: &str = "admin_key";

impl Modify for AdminKey {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        if let Some(components) = openapi.components.as_mut() {
            components.add_security_scheme(
                ADMIN_KEY_SCHEME,
                SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                    "X-Admin-Key",
                    "the configured ADMIN_API_KEY",
                ))),
            );
        }
        for operation in operations(openapi) {
            let Some(parameters) = operation.parameters.as_mut() else {
                continue;
            };
            let before = parameters.len();
            parameters.retain(|p| !p.name.eq_ignore_ascii_case("x-admin-key"));
            if parameters.len() != before {
                operation.security = Some(vec![SecurityRequirement::new(
                    ADMIN_KEY_SCHEME,
                    Vec::<String>::new(),
                )]);
            }
        }
    }
}

/// The answers every operation of a kind can give, added in one place so no handler can forget them:
/// they come from the layers around the handlers (body limit, timeout, auth, path parsing), not from
/// the handler's own logic.
struct CommonResponses;

impl Modify for CommonResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let paths: Vec<String> = openapi.paths.paths.keys().cloned().collect();
        for path in paths {
            let Some(item) = openapi.paths.paths.get_mut(&path) else {
                continue;
            };
            let api = path.starts_with("/api/");
            let auth_route = path == "/api/v1/members" || path == "/api/v1/auth/login";
            // `has_body`: POST and PATCH carry a body (400 for a malformed one, 413 for a large one).
            for (is_post, operation) in [
                (false, item.get.as_mut()),
                (true, item.post.as_mut()),
                (true, item.patch.as_mut()),
            ]
            .into_iter()
            .filter_map(|(post, op)| op.map(|op| (post, op)))
            {
                let parameters = operation.parameters.as_deref().unwrap_or_default();
                let has_path_or_query = parameters
                    .iter()
                    .any(|p| matches!(p.parameter_in, ParameterIn::Path | ParameterIn::Query));
                let has_idempotency_key = parameters
                    .iter()
                    .any(|p| p.name.eq_ignore_ascii_case("idempotency-key"));
                let secured = operation.security.as_ref().is_some_and(|s| !s.is_empty());
                let responses = &mut operation.responses.responses;
                if is_post || has_path_or_query || has_idempotency_key {
                    add(
                        responses,
                        "400",
                        "INVALID_REQUEST: malformed JSON, a missing body, wrong types, an id that is not a whole number, a bad header",
                    );
                }
                if secured {
                    add(
                        responses,
                        "401",
                        "UNAUTHORIZED: missing or invalid credentials",
                    );
                }
                if is_post {
                    add(
                        responses,
                        "413",
                        "PAYLOAD_TOO_LARGE: the body is over the configured limit",
                    );
                }
                if auth_route {
                    add(
                        responses,
                        "429",
                        "RATE_LIMITED: too many attempts from this client or for this account; see Retry-After",
                    );
                }
                if api {
                    add(
                        responses,
                        "503",
                        "SERVICE_UNAVAILABLE: Redis does not answer, the request timed out, (sign-up, login) the password-hashing queue is full, or (creating a member, product, coupon or order) the engine holds no id lease; see Retry-After when present",
                    );
                }
                for (status, response) in responses.iter_mut() {
                    if status == "429" || status == "503" {
                        if let RefOr::T(response) = response {
                            response
                                .headers
                                .entry("Retry-After".to_string())
                                .or_insert_with(retry_after);
                        }
                    }
                }
                if let Some(parameters) = operation.parameters.as_mut() {
                    for parameter in parameters {
                        constrain_parameter(parameter);
                    }
                }
            }
        }
    }
}

fn retry_after() -> Header {
    let mut header = Header::new(
        ObjectBuilder::new()
            .schema_type(Type::Integer)
            .minimum(Some(0))
            .build(),
    );
    header.description = Some("seconds to wait before retrying".into());
    header
}

fn add(
    responses: &mut std::collections::BTreeMap<String, RefOr<Response>>,
    status: &str,
    description: &str,
) {
    responses.entry(status.to_string()).or_insert_with(|| {
        RefOr::T(
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/problem+json",
                    Content::new(Some(Ref::from_schema_name("Problem"))),
                )
                .build(),
        )
    });
}

/// Path ids are whole numbers (anything else is 400); an Idempotency-Key is 1..255 visible ASCII
/// characters (anything else is 400).
fn constrain_parameter(parameter: &mut Parameter) {
    if matches!(parameter.parameter_in, ParameterIn::Path) && parameter.name == "id" {
        parameter.schema = Some(RefOr::T(Schema::Object(
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
                .build(),
        )));
    }
    if parameter.name.eq_ignore_ascii_case("idempotency-key") {
        parameter.schema = Some(RefOr::T(Schema::Object(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .min_length(Some(1))
                .max_length(Some(255))
                .pattern(Some(IDEMPOTENCY_KEY_PATTERN))
                .build(),
        )));
    }
}

/// Visible ASCII, inner spaces allowed (HTTP strips a header value's outer whitespace).
pub const IDEMPOTENCY_KEY_PATTERN: &str = "^[!-~]([ -~]*[!-~])?$";

fn operations(
    openapi: &mut utoipa::openapi::OpenApi,
) -> impl Iterator<Item = &mut utoipa::openapi::path::Operation> {
    openapi.paths.paths.values_mut().flat_map(|item| {
        [
            item.get.as_mut(),
            item.post.as_mut(),
            item.put.as_mut(),
            item.delete.as_mut(),
            item.patch.as_mut(),
        ]
        .into_iter()
        .flatten()
    })
}
