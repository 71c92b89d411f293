-- A fragment, not a statement: {writers}, the subquery of the transactions
-- of this statement's snapshot that may still add events to this store, as
-- far as the server can tell: its id (column id) and the smallest tx its
-- rows can take (x), xid8s. The log horizon (log_horizon.sql) is the
-- smallest x; holdups.sql names them.
--
-- The rule every insert into the events table follows: its statement holds
-- the table's RowExclusiveLock (taken while the statement is parsed or
-- bound) before the snapshot it runs in is taken, and keeps it until its
-- transaction ends (or the savepoint it was taken in is rolled back, which
-- also removes its rows). So a transaction x of the snapshot's in-progress
-- list (xip) counts unless, in the lock table (readable by every role), the
-- holder of x's own transactionid lock holds no RowExclusiveLock on this
-- store's events table (a transaction of another database never does; one
-- that only read events holds a weaker lock). A transaction that ended
-- while it was looked at has no transactionid lock any more: it counts (its
-- rows, if any, are not in this statement's snapshot, so a reader must not
-- pass over them), as does one whose holder the lock table does not show.
-- A prepared transaction holds its locks under its own virtual transaction
-- id: it counts exactly when it holds that lock (it can take no other).
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
-- Why a transaction without the lock cannot make a reader skip. The lock
-- table is read after the snapshot, so x held no lock at some moment L
-- after it. If x appends later, its statement takes the lock after L, and
-- a snapshot taken after that sees every row a reader could have passed
-- (those committed before the reader's snapshot). Its id, assigned before
-- the lock, may be below them: such a "late" append (the appends inside a
-- longer transaction, see _statements.py) gives its rows a tx at or above
-- that snapshot's xmax, above every row a reader can have passed, and
-- counts (holds the lock) from then on. It also holds an advisory lock
-- whose second key is that floor minus x: its rows take exactly the floor,
-- so readers count the floor in place of x and hold back only what commits
-- after the late append. Until the advisory lock shows, x counts.
(WITH locks AS MATERIALIZED (
     SELECT l.locktype, l.transactionid, l.virtualtransaction, l.mode, l.granted,
            l.classid, l.objid, l.objsubid, l.relation, l.database
     FROM pg_catalog.pg_locks AS l
     WHERE l.locktype IN ('transactionid', 'relation', 'advisory')
 ), here AS MATERIALIZED (
     SELECT d.oid FROM pg_catalog.pg_database AS d WHERE d.datname = current_database()
 )
 SELECT coalesce((x::text::numeric + f.delta)::text::xid8, x) AS x, x AS id
 FROM pg_snapshot_xip(pg_current_snapshot()) AS x
 LEFT JOIN LATERAL (
     SELECT t.virtualtransaction AS holder FROM locks AS t
     WHERE t.locktype = 'transactionid' AND t.transactionid = xid(x)
       AND t.mode = 'ExclusiveLock' AND t.granted
     LIMIT 1
 ) AS t ON true
 LEFT JOIN LATERAL (
     SELECT min(a.objid::text::bigint) AS delta FROM locks AS a
     WHERE a.virtualtransaction = t.holder AND a.locktype = 'advisory'
       AND a.objsubid = 2 AND a.classid = {floor_key}::oid
       AND a.database = (SELECT oid FROM here)
 ) AS f ON true
 WHERE t.holder IS NULL OR split_part(t.holder, '/', 2) = '0' OR EXISTS (
     SELECT 1 FROM locks AS r
     WHERE r.virtualtransaction = t.holder
       AND r.locktype = 'relation' AND r.mode = 'RowExclusiveLock'
       AND r.relation = to_regclass({schema_name} || '.events')
       AND r.database = (SELECT oid FROM here)
 ))
