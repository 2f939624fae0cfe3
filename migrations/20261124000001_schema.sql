-- The durable record. Redis holds the live state of a sale; every change it makes arrives here through
-- the outbox -> Kafka -> sink pipeline, applied once per event id (processed_events).
-- No foreign keys on purpose: events of different aggregates may arrive out of order across partitions,
-- and the sink must be able to apply them as they come (each row is keyed so a replay changes nothing).
-- Portable between MySQL 8 and MariaDB 10.11.

CREATE TABLE members (
    id            BIGINT       NOT NULL PRIMARY KEY,
    email         VARCHAR(254) NOT NULL,
    name          VARCHAR(100) NOT NULL,
    password_hash VARCHAR(255) NOT NULL,
    balance       BIGINT       NOT NULL DEFAULT 0,
    created_at    DATETIME(3)  NOT NULL,
    UNIQUE KEY uq_members_email (email)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

CREATE TABLE products (
    id         BIGINT       NOT NULL PRIMARY KEY,
    name       VARCHAR(200) NOT NULL,
    price      BIGINT       NOT NULL,
    stock      BIGINT       NOT NULL,
    created_at DATETIME(3)  NOT NULL
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

-- Every change of stock with its cause; SUM(delta) per product equals products.stock.
CREATE TABLE stock_movements (
    id         BIGINT      NOT NULL AUTO_INCREMENT PRIMARY KEY,
    event_id   CHAR(36)    NOT NULL,
    product_id BIGINT      NOT NULL,
    delta      BIGINT      NOT NULL,
    reason     VARCHAR(20) NOT NULL, -- CREATED, RESTOCK, RESERVE, RELEASE
    order_id   BIGINT      NULL,
    at         DATETIME(3) NOT NULL,
    UNIQUE KEY uq_stock_movements_event (event_id, product_id),
    KEY ix_stock_movements_product (product_id, at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

CREATE TABLE coupons (
    id             BIGINT       NOT NULL PRIMARY KEY,
    name           VARCHAR(200) NOT NULL,
    discount_type  VARCHAR(10)  NOT NULL, -- FIXED, PERCENT
    discount_value BIGINT       NOT NULL,
    total_quantity BIGINT       NOT NULL,
    remaining      BIGINT       NOT NULL,
    valid_from     DATETIME(3)  NOT NULL,
    valid_until    DATETIME(3)  NOT NULL,
    created_at     DATETIME(3)  NOT NULL
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

CREATE TABLE issued_coupons (
    coupon_id     BIGINT      NOT NULL,
    member_id     BIGINT      NOT NULL,
    issued_at     DATETIME(3) NOT NULL,
    used_order_id BIGINT      NULL, -- set while a paid order uses it
    PRIMARY KEY (coupon_id, member_id),
    KEY ix_issued_coupons_member (member_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

CREATE TABLE orders (
    id              BIGINT      NOT NULL PRIMARY KEY,
    member_id       BIGINT      NOT NULL,
    status          VARCHAR(10) NOT NULL, -- RESERVED, PAID, CANCELLED, EXPIRED
    status_rank     TINYINT     NOT NULL, -- 1 reserved, 2 paid, 3 final: a late event never moves it back
    total_amount    BIGINT      NOT NULL,
    discount_amount BIGINT      NOT NULL DEFAULT 0,
    paid_amount     BIGINT      NOT NULL DEFAULT 0,
    coupon_id       BIGINT      NULL,
    expires_at      DATETIME(3) NOT NULL,
    created_at      DATETIME(3) NOT NULL,
    paid_at         DATETIME(3) NULL,
    closed_at       DATETIME(3) NULL, -- cancelled or expired
    KEY ix_orders_member (member_id, created_at),
    KEY ix_orders_status (status, paid_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

CREATE TABLE order_items (
    order_id   BIGINT NOT NULL,
    product_id BIGINT NOT NULL,
    quantity   INT    NOT NULL,
    unit_price BIGINT NOT NULL,
    PRIMARY KEY (order_id, product_id),
    KEY ix_order_items_product (product_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

CREATE TABLE payments (
    order_id        BIGINT      NOT NULL PRIMARY KEY,
    member_id       BIGINT      NOT NULL,
    amount          BIGINT      NOT NULL,
    discount_amount BIGINT      NOT NULL,
    coupon_id       BIGINT      NULL,
    status          VARCHAR(10) NOT NULL, -- PAID, REFUNDED
    paid_at         DATETIME(3) NOT NULL,
    refunded_at     DATETIME(3) NULL,
    KEY ix_payments_member (member_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

CREATE TABLE points_ledger (
    id            BIGINT      NOT NULL AUTO_INCREMENT PRIMARY KEY,
    event_id      CHAR(36)    NOT NULL,
    member_id     BIGINT      NOT NULL,
    type          VARCHAR(10) NOT NULL, -- CHARGE, USE, REFUND
    amount        BIGINT      NOT NULL,
    balance_after BIGINT      NOT NULL,
    order_id      BIGINT      NULL,
    at            DATETIME(3) NOT NULL,
    UNIQUE KEY uq_points_ledger_event (event_id),
    KEY ix_points_ledger_member (member_id, at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

CREATE TABLE processed_events (
    event_id     CHAR(36)     NOT NULL PRIMARY KEY,
    event_type   VARCHAR(40)  NOT NULL,
    aggregate    VARCHAR(64)  NOT NULL,
    kafka_partition INT       NOT NULL,
    kafka_offset BIGINT       NOT NULL,
    processed_at DATETIME(3)  NOT NULL
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

-- One row per paid order to send to the external data platform; the sink's delivery worker drives it.
CREATE TABLE data_platform_deliveries (
    event_id        CHAR(36)     NOT NULL PRIMARY KEY,
    order_id        BIGINT       NOT NULL,
    payload         MEDIUMTEXT   NOT NULL,
    status          VARCHAR(10)  NOT NULL, -- PENDING, DELIVERED, DEAD
    attempts        INT          NOT NULL DEFAULT 0,
    next_attempt_at DATETIME(3)  NOT NULL,
    last_error      VARCHAR(500) NULL,
    created_at      DATETIME(3)  NOT NULL,
    delivered_at    DATETIME(3)  NULL,
    KEY ix_deliveries_due (status, next_attempt_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;
