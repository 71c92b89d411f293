-- params: name, owner
UPDATE {schema}.checkpoints SET owner = NULL, lease_expires = '-infinity'
WHERE name = %(name)s AND owner = %(owner)s
