-- params: alias, target
INSERT INTO eventfold_projection_aliases (alias, target) VALUES (?1, ?2)
ON CONFLICT (alias) DO UPDATE SET target = excluded.target
