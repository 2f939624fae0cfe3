-- Issue 9 item 4: ids are minted by the engines (src/ids.rs), time-ordered, under a node id each engine
-- leases here. MySQL is the durable record of the lease: an InnoDB commit survives what a Redis failover
-- or a lost AOF second loses, so no two engines ever mint under one node in the same millisecond.
--
-- One row per node (64 = 6 bits of the id). A node is free when lease_until (the database clock, NOW(3))
-- has passed. holder names the engine instance that holds it ('' = never held). high_water_ms (Unix ms)
-- is the highest millisecond the holder may have minted in: the engine records it before it mints in it,
-- and whoever takes the node next starts above it. A clean shutdown releases the lease (lease_until =
-- NOW(3)) and lowers high_water_ms to the last millisecond it actually used.
-- Portable between MySQL 8 and MariaDB 10.11.

CREATE TABLE engine_id_leases (
    node_id       SMALLINT    NOT NULL PRIMARY KEY,
    holder        VARCHAR(64) NOT NULL,
    lease_until   DATETIME(3) NOT NULL,
    high_water_ms BIGINT      NOT NULL,
    KEY ix_engine_id_leases_until (lease_until)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

INSERT INTO engine_id_leases (node_id, holder, lease_until, high_water_ms) VALUES
    (0, '', '1970-01-01', 0), (1, '', '1970-01-01', 0), (2, '', '1970-01-01', 0), (3, '', '1970-01-01', 0),
    (4, '', '1970-01-01', 0), (5, '', '1970-01-01', 0), (6, '', '1970-01-01', 0), (7, '', '1970-01-01', 0),
    (8, '', '1970-01-01', 0), (9, '', '1970-01-01', 0), (10, '', '1970-01-01', 0), (11, '', '1970-01-01', 0),
    (12, '', '1970-01-01', 0), (13, '', '1970-01-01', 0), (14, '', '1970-01-01', 0), (15, '', '1970-01-01', 0),
    (16, '', '1970-01-01', 0), (17, '', '1970-01-01', 0), (18, '', '1970-01-01', 0), (19, '', '1970-01-01', 0),
    (20, '', '1970-01-01', 0), (21, '', '1970-01-01', 0), (22, '', '1970-01-01', 0), (23, '', '1970-01-01', 0),
    (24, '', '1970-01-01', 0), (25, '', '1970-01-01', 0), (26, '', '1970-01-01', 0), (27, '', '1970-01-01', 0),
    (28, '', '1970-01-01', 0), (29, '', '1970-01-01', 0), (30, '', '1970-01-01', 0), (31, '', '1970-01-01', 0),
    (32, '', '1970-01-01', 0), (33, '', '1970-01-01', 0), (34, '', '1970-01-01', 0), (35, '', '1970-01-01', 0),
    (36, '', '1970-01-01', 0), (37, '', '1970-01-01', 0), (38, '', '1970-01-01', 0), (39, '', '1970-01-01', 0),
    (40, '', '1970-01-01', 0), (41, '', '1970-01-01', 0), (42, '', '1970-01-01', 0), (43, '', '1970-01-01', 0),
    (44, '', '1970-01-01', 0), (45, '', '1970-01-01', 0), (46, '', '1970-01-01', 0), (47, '', '1970-01-01', 0),
    (48, '', '1970-01-01', 0), (49, '', '1970-01-01', 0), (50, '', '1970-01-01', 0), (51, '', '1970-01-01', 0),
    (52, '', '1970-01-01', 0), (53, '', '1970-01-01', 0), (54, '', '1970-01-01', 0), (55, '', '1970-01-01', 0),
    (56, '', '1970-01-01', 0), (57, '', '1970-01-01', 0), (58, '', '1970-01-01', 0), (59, '', '1970-01-01', 0),
    (60, '', '1970-01-01', 0), (61, '', '1970-01-01', 0), (62, '', '1970-01-01', 0), (63, '', '1970-01-01', 0);
