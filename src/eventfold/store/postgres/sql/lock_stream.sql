-- params: stream. Creates the stream's row if needed and locks it, so that
-- deletions, restores and truncations of one stream take turns.
INSERT INTO {schema}.streams (stream) VALUES (%(stream)s)
ON CONFLICT (stream) DO UPDATE SET stream = excluded.stream
