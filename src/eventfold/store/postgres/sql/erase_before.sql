-- params: stream, before
DELETE FROM {schema}.events WHERE stream = %(stream)s AND version < %(before)s
