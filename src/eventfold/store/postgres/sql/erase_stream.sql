-- params: stream
DELETE FROM {schema}.events WHERE stream = %(stream)s
