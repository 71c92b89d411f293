-- params: stream, deletion (JSON)
UPDATE {schema}.streams SET deletion = %(deletion)s WHERE stream = %(stream)s
