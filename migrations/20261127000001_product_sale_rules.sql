-- Issue 11: product sale rules. A product may open and close its sale at given instants and cap the
-- units one member holds in live orders (RESERVED or PAID). NULL = no such rule. The engine enforces
-- them in Redis (product hash fields sale_starts_ms, sale_ends_ms, per_member_limit); these columns are
-- their durable record, set by product.created and by product.rules_changed (the whole rule set after a
-- change), and restored by rebuild-redis.
--
-- product_rule_changes keeps every product.rules_changed, one row per event: the history of a
-- product's rules, and what a products row created after a change starts from (ROW_CREATION_LOCKS in
-- sink/src/apply.rs). The products columns always hold the change with the latest changed_at (ties: the
-- one recorded last), so an old change applied late never overwrites a newer one.
-- Portable between MySQL 8 and MariaDB 10.11.

ALTER TABLE products
    ADD COLUMN sale_starts_at   DATETIME(3) NULL,
    ADD COLUMN sale_ends_at     DATETIME(3) NULL,
    ADD COLUMN per_member_limit INT         NULL;

CREATE TABLE product_rule_changes (
    id               BIGINT      NOT NULL AUTO_INCREMENT PRIMARY KEY,
    event_id         CHAR(36)    NOT NULL,
    product_id       BIGINT      NOT NULL,
    sale_starts_at   DATETIME(3) NULL,
    sale_ends_at     DATETIME(3) NULL,
    per_member_limit INT         NULL,
    changed_at       DATETIME(3) NOT NULL,
    UNIQUE KEY uq_product_rule_changes_event (event_id),
    KEY ix_product_rule_changes_product (product_id, changed_at, id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;
