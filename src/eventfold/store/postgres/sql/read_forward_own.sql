-- params: stream, version (first, inclusive), limit. Like read_forward.sql,
-- for the rows the current transaction has just written (inline projections).
SELECT tx_id, seq, stream, version, uuid_send(id), type, schema_version, data, metadata,
       recorded_us
FROM {schema}.events
WHERE stream = %(stream)s AND version >= %(version)s
ORDER BY version
LIMIT %(limit)s
