-- params: name
-- The stored event beside each dead letter (NULL once the event is erased):
-- its raw payload is what an operator needs when the event cannot be decoded.
SELECT d.position::text, uuid_send(d.event_id), d.stream, d.version, d.type, d.error,
       (extract(epoch FROM d.recorded_at) * 1000000)::bigint,
       e.schema_version, e.data, e.metadata
FROM {schema}.dead_letters AS d
LEFT JOIN {schema}.events AS e ON e.id = d.event_id
WHERE d.name = %(name)s ORDER BY d.position
