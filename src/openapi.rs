//! The OpenAPI document, generated from the handlers and types.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::domain::*;
use crate::error::Problem;
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
    info(title = "flashsale", description = "Redis-first flash-sale engine. Errors are application/problem+json with a stable `code`."),
    paths(
        members::signup, members::login, members::seed_members,
        points::balance, points::charge, points::history,
        products::create, products::add_stock, products::list, products::get, products::popular,
        coupons::create, coupons::get, coupons::issue, coupons::mine,
        orders::create, orders::pay, orders::cancel, orders::get,
        ops::healthz, ops::readyz, ops::metrics, ops::reconcile,
    ),
    components(schemas(
        Problem, SignupRequest, MemberView, LoginRequest, TokenView, SeedMembersRequest, SeededMember, SeededMembers,
        ChargeRequest, BalanceView, PointsHistoryEntry, CreateProductRequest, AddStockRequest, ProductView,
        ProductPage, PopularProduct, CreateCouponRequest, CouponView, IssuedCouponView, MyCouponView,
        OrderItemRequest, CreateOrderRequest, PayOrderRequest, OrderItemView, OrderView, Drift, ReconcileReport, ReconcilePage,
        WholeNumber,
    )),
    modifiers(&BearerAuth),
    tags(
        (name = "members"), (name = "points"), (name = "products"), (name = "coupons"), (name = "orders"),
        (name = "admin", description = "X-Admin-Key"), (name = "operations"),
    )
)]
pub struct ApiDoc;
