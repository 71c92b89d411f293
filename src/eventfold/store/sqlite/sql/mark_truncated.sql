-- params: stream, first_version, truncation (JSON)
INSERT INTO eventfold_streams (stream, first_version, truncation) VALUES (?1, ?2, ?3)
ON CONFLICT (stream) DO UPDATE
SET first_version = excluded.first_version, truncation = excluded.truncation
