-- params: stream, version (first, inclusive), limit
SELECT tx_id, seq, stream, version, uuid_send(id), type, schema_version, data, metadata,
       recorded_us
FROM {schema}.events
WHERE stream = %(stream)s AND version <= %(version)s
  AND NOT EXISTS (SELECT 1 FROM {schema}.streams
                  WHERE stream = %(stream)s AND deletion IS NOT NULL)
ORDER BY version DESC
LIMIT %(limit)s
