-- params: stream, metadata
INSERT INTO {schema}.streams (stream, metadata) VALUES (%(stream)s, %(metadata)s)
ON CONFLICT (stream) DO UPDATE SET metadata = excluded.metadata
