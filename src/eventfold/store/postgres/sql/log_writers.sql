-- A fragment, not a statement: {writers}, the subquery of the transactions
-- of this statement's snapshot that may still add events to this store, as
-- far as the server can tell (one column, x, an xid8). The log horizon
-- (log_horizon.sql) is the oldest of them; holdups.sql names them.
--
-- A transaction x of the snapshot's in-progress list (xip) cannot add events
-- when it belongs to a session of another database: a session never changes
-- its database, and a transaction can write to its own database only. The
-- lock table (readable by every role) gives the session (pid) that holds x's
-- own transactionid lock; pg_stat_activity gives that session's database.
-- Every other x counts, transactions of this database included, and those
-- that ended while they were looked at (their rows, if any, are not in this
-- statement's snapshot, so a reader must not pass over them) or whose
-- session cannot be seen (prepared transactions).
(SELECT x FROM pg_snapshot_xip(pg_current_snapshot()) AS x
 WHERE NOT EXISTS (
     SELECT 1
     FROM pg_catalog.pg_locks AS t
     JOIN pg_catalog.pg_stat_activity AS a ON a.pid = t.pid
     WHERE t.locktype = 'transactionid' AND t.transactionid = xid(x)
       AND t.granted AND t.mode = 'ExclusiveLock'
       AND a.datid IS DISTINCT FROM (SELECT d.oid FROM pg_catalog.pg_database AS d
                                     WHERE d.datname = current_database())
       AND a.datid IS NOT NULL
 ))
