-- params: none. The transactions that hold readers of the log back: those
-- that may still add events (log_writers.sql) and are older than
-- a committed event, with what pg_stat_activity (or pg_prepared_xacts, for a
-- prepared transaction) says of them. Times as epoch microseconds.
SELECT w.x::text::bigint, a.pid, coalesce(a.datname, p.database),
       coalesce(a.application_name, ''),
       CASE WHEN p.gid IS NOT NULL THEN 'prepared' ELSE coalesce(a.state, 'ended') END,
       (extract(epoch FROM coalesce(a.xact_start, p.prepared)) * 1000000)::bigint,
       (extract(epoch FROM a.query_start) * 1000000)::bigint,
       p.gid
FROM {writers} AS w
LEFT JOIN pg_catalog.pg_stat_activity AS a ON a.backend_xid = xid(w.x)
LEFT JOIN pg_catalog.pg_prepared_xacts AS p ON p.transaction = xid(w.x)
WHERE w.x < (SELECT max(e.tx) FROM {schema}.events AS e)
ORDER BY w.x
