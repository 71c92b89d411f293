-- params: id
SELECT tx_id, seq, stream, version, uuid_send(id), type, schema_version, data, metadata,
       recorded_us
FROM {schema}.events AS e
WHERE id = %(id)s
  AND NOT EXISTS (SELECT 1 FROM {schema}.streams AS s
                  WHERE s.stream = e.stream AND s.deletion IS NOT NULL)
