-- params: stream
UPDATE {schema}.streams SET deletion = NULL WHERE stream = %(stream)s
