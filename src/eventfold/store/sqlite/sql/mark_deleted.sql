-- params: stream, deletion (JSON)
INSERT INTO eventfold_streams (stream, deletion) VALUES (?1, ?2)
ON CONFLICT (stream) DO UPDATE SET deletion = excluded.deletion
