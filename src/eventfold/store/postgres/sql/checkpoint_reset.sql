-- params: name, owner
-- Fenced: only the lease holder puts the checkpoint back to the start.
UPDATE {schema}.checkpoints SET position = 0, updated_at = now()
WHERE name = %(name)s AND owner = %(owner)s
RETURNING name
