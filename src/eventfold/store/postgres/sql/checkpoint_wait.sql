-- params: name. How far consumer `name` is, or the consumer the alias `name`
-- points at (0: no checkpoint yet), and which consumer that is, for wait_for.
-- One statement per look.
SELECT coalesce((SELECT c.position::text FROM {schema}.checkpoints AS c WHERE c.name = t.name), '0'),
       t.name
FROM (SELECT coalesce((SELECT a.target FROM {schema}.projection_aliases AS a
                       WHERE a.alias = %(name)s), %(name)s) AS name) AS t
