-- params: name. How far consumer `name` is, or the consumer the alias `name`
-- points at (0: no checkpoint yet), for wait_for. One statement per look.
SELECT coalesce(
    (SELECT c.position::text FROM {schema}.checkpoints AS c
     WHERE c.name = coalesce((SELECT a.target FROM {schema}.projection_aliases AS a
                              WHERE a.alias = %(name)s), %(name)s)),
    '0')
