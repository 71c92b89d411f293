-- params: name
-- The stored event beside each dead letter (NULL once the event is erased):
-- its raw payload is what an operator needs when the event cannot be decoded.
SELECT d.position, d.event_id, d.stream, d.version, d.type, d.error, d.recorded_at,
       e.schema_version, e.data, e.metadata
FROM eventfold_dead_letters AS d
LEFT JOIN eventfold_events AS e ON e.id = d.event_id
WHERE d.name = ?1 ORDER BY d.position
