-- params: name
DELETE FROM {schema}.dead_letters WHERE name = %(name)s
