-- A fragment, not a statement: the log horizon, an xid8 expression that
-- read_all.sql, last_position.sql and the streamed reads put where a row's
-- tx is compared ({horizon}), as a filter: `(e.tx < {horizon}) IS TRUE`.
-- As an index bound beside the cursor, the planner (misjudging how many rows
-- lie between cursor and horizon) would sort them all instead of walking
-- the index in order. Readers of the global log expose only rows
-- with tx below it; every transaction that can still add a row below it has
-- ended, so a reader never passes a position behind which an event can
-- still appear. Rendered once per store, with comments removed.
--
-- Cheap case: no row visible to this statement's snapshot has tx at or above
-- the snapshot's xmin (the oldest transaction still running anywhere on the
-- server): the newest visible tx, one probe at the end of the primary key,
-- is below it. Then the xmin holds nothing back and is the horizon, and
-- nothing else is read.
--
-- Otherwise the horizon is the oldest transaction of the snapshot that may
-- add events (log_writers.sql: all but those of sessions of other
-- databases), or the snapshot's xmax when none may: every other transaction
-- below the xmax has ended, and every one to come gets a larger id.
(SELECT CASE
    WHEN coalesce((SELECT max(h.tx) FROM {schema}.events AS h), '0'::xid8)
         < pg_snapshot_xmin(pg_current_snapshot())
    THEN pg_snapshot_xmin(pg_current_snapshot())
    ELSE coalesce(
        (SELECT min(w.x) FROM {writers} AS w),
        pg_snapshot_xmax(pg_current_snapshot())
    )
END)
