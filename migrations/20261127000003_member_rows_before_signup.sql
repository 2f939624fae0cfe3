-- Issue 12 (two sinks side by side). A member's row is now one commutative upsert: a payment applied
-- before its member's sign-up (the two travel in different Kafka partitions, possibly to different
-- sinks) creates the row with its balance and no identity yet; the sign-up fills the identity in. The
-- sign-up used to sum the member's ledger with a locking read instead, whose gap locks on the ledger's
-- member index deadlocked the other sink's inserts during a burst of sign-ups.
-- A row without an email is such a member whose sign-up is still on its way: rebuild-redis skips it.
-- NULL is not a duplicate in a UNIQUE index (MySQL 8 and MariaDB), so uq_members_email still holds.
ALTER TABLE members
    MODIFY email VARCHAR(254) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
    MODIFY name VARCHAR(100) NULL,
    MODIFY created_at DATETIME(3) NULL;
