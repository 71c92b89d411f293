-- params: name
SELECT position::text, uuid_send(event_id), stream, version, type, error,
       (extract(epoch FROM recorded_at) * 1000000)::bigint
FROM {schema}.dead_letters WHERE name = %(name)s ORDER BY position
