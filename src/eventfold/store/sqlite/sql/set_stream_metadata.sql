-- params: stream, metadata
INSERT INTO eventfold_streams (stream, metadata) VALUES (?, ?)
ON CONFLICT (stream) DO UPDATE SET metadata = excluded.metadata
