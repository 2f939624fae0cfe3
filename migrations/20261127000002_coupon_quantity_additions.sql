-- Issue 10: an admin may release more of a coupon (POST /api/v1/admin/coupons/{id}/quantity). Each
-- coupon.quantity_added event is one row here, and adds to coupons.total_quantity and remaining; a
-- coupons row created after an addition (ROW_CREATION_LOCKS in sink/src/apply.rs) starts from the
-- additions recorded before it, so total_quantity = created quantity + SUM(added) and
-- remaining = total_quantity - issued, whatever the order the events were applied in.
-- Portable between MySQL 8 and MariaDB 10.11.

CREATE TABLE coupon_quantity_additions (
    event_id  CHAR(36)    NOT NULL PRIMARY KEY,
    coupon_id BIGINT      NOT NULL,
    added     BIGINT      NOT NULL,
    added_at  DATETIME(3) NOT NULL,
    KEY ix_coupon_quantity_additions_coupon (coupon_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;
