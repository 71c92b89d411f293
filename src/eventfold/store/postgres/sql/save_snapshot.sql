-- params: stream, version, state_type, schema_version, data
INSERT INTO {schema}.snapshots (stream, version, state_type, schema_version, data)
VALUES (%(stream)s, %(version)s, %(state_type)s, %(schema_version)s, %(data)s)
ON CONFLICT (stream, version) DO UPDATE
SET state_type = excluded.state_type, schema_version = excluded.schema_version,
    data = excluded.data, recorded_at = now()
