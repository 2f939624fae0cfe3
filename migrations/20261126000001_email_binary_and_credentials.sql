-- Issue 8 items 1 and 14.
-- 1. Email identity: the engine normalizes an email (NFKC, lower-case) and Redis compares it byte for
--    byte; the unique index must compare the same way, or two addresses Redis tells apart (jose@, josé@)
--    collide here and the second member never reaches MySQL.
-- 14. Credentials: the password hash no longer travels in member.registered (Kafka, DLQ). The engine
--    writes it here itself, keyed by the new member id, before the sign-up script runs; rebuild-redis
--    restores logins from this table. Existing hashes move here; members keeps no copy.

ALTER TABLE members MODIFY email VARCHAR(254) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL;

CREATE TABLE member_credentials (
    member_id     BIGINT       NOT NULL PRIMARY KEY,
    password_hash VARCHAR(255) NOT NULL,
    created_at    DATETIME(3)  NOT NULL
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

INSERT IGNORE INTO member_credentials (member_id, password_hash, created_at)
    SELECT id, password_hash, created_at FROM members;

ALTER TABLE members DROP COLUMN password_hash;
