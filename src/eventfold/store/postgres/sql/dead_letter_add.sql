-- params: name, position (text), event_id, stream, version, type, error
INSERT INTO {schema}.dead_letters (name, position, event_id, stream, version, type, error)
VALUES (%(name)s, %(position)s::numeric, %(event_id)s, %(stream)s, %(version)s, %(type)s,
        %(error)s)
ON CONFLICT (name, position) DO UPDATE SET error = excluded.error, recorded_at = now()
