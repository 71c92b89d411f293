-- params: stream. The version (index-only probe) and whether the stream is deleted.
SELECT (SELECT coalesce(max(version), 0) FROM {schema}.events WHERE stream = %(stream)s),
       EXISTS (SELECT 1 FROM {schema}.streams
               WHERE stream = %(stream)s AND deletion IS NOT NULL)
