-- params: name
DELETE FROM {schema}.checkpoints WHERE name = %(name)s
