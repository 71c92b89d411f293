-- params: alias, target
INSERT INTO {schema}.projection_aliases (alias, target) VALUES (%(alias)s, %(target)s)
ON CONFLICT (alias) DO UPDATE SET target = excluded.target
