-- params: tx, seq (the position, exclusive). Every committed event after it,
-- also those that readers cannot see yet (above the log horizon): the true lag.
SELECT count(*), min(recorded_us)
FROM {schema}.events AS e
WHERE (tx, seq) > (%(tx)s::text::xid8, %(seq)s::bigint)
