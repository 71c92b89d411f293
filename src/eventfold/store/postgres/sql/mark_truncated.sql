-- params: stream, truncation (JSON)
UPDATE {schema}.streams SET truncation = %(truncation)s WHERE stream = %(stream)s
