-- A fragment, not a statement: {writers}, the subquery of the transactions
-- of this statement's snapshot that may still add events to this store, as
-- far as the server can tell (one column, x, an xid8; their rows take x or
-- more). The log horizon (log_horizon.sql) is the oldest; holdups.sql names
-- them.
--
-- The rule every transaction that appends follows: it holds the events
-- table's RowExclusiveLock from before it has an id until it ends (see "Why
-- that never skips" below). So a transaction x of the snapshot's in-progress
-- list (xip) counts unless, in the lock table (readable by every role), the
-- holder of x's own transactionid lock holds no RowExclusiveLock on this
-- store's events table (a transaction of another database never does; one
-- that only read events holds a weaker lock). A transaction that ended
-- while it was looked at has no transactionid lock any more: it counts (its
-- rows, if any, are not in this statement's snapshot, so a reader must not
-- pass over them), as does one whose holder the lock table does not show.
-- A prepared transaction holds its locks under its own virtual transaction
-- id: it counts exactly when it holds that lock.
-- A transaction that is ending still shows its transactionid lock for a
-- moment after it has let go of its table locks, with the local part of its
-- virtual transaction id already 0 (its commit is visible to snapshots
-- taken from then on, not to this one): it counts.
-- The lock table is read once (locks): a transaction that ends between two
-- reads of it would show its transactionid lock in the first and no table
-- lock in the second, and not count although its rows are not in this
-- snapshot. One read shows every lock as its holder had it at one moment
-- (the fast-path locks of a session just before the others).
--
-- Why that never skips. Every transaction that appends took the lock before
-- it had an id: an append on its own gets its id while it inserts, after
-- its statement took the lock; a longer transaction takes it first
-- (claim.sql), and an append in one that already had an id without it is
-- refused. So while x runs with an id, every reader's look finds it holding
-- the lock (or ending), and counts it; one found without the lock never
-- appends. Its rows take x or more (the appends of a longer transaction
-- take the xmax of their statement's snapshot when larger, see
-- _statements.py), never less. The horizon never moves back either: a
-- transaction counted now that is older than an earlier reader's horizon
-- was in that reader's snapshot, holding the lock, and counted there too.
(WITH locks AS MATERIALIZED (
     SELECT l.locktype, l.transactionid, l.virtualtransaction, l.mode, l.granted,
            l.relation, l.database
     FROM pg_catalog.pg_locks AS l
     WHERE l.locktype IN ('transactionid', 'relation')
 ), here AS MATERIALIZED (
     SELECT d.oid FROM pg_catalog.pg_database AS d WHERE d.datname = current_database()
 )
 SELECT x
 FROM pg_snapshot_xip(pg_current_snapshot()) AS x
 LEFT JOIN LATERAL (
     SELECT t.virtualtransaction AS holder FROM locks AS t
     WHERE t.locktype = 'transactionid' AND t.transactionid = xid(x)
       AND t.mode = 'ExclusiveLock' AND t.granted
     LIMIT 1
 ) AS t ON true
 WHERE t.holder IS NULL OR split_part(t.holder, '/', 2) = '0' OR EXISTS (
     SELECT 1 FROM locks AS r
     WHERE r.virtualtransaction = t.holder
       AND r.locktype = 'relation' AND r.mode = 'RowExclusiveLock'
       AND r.relation = to_regclass({schema_name} || '.events')
       AND r.database = (SELECT oid FROM here)
 ))
