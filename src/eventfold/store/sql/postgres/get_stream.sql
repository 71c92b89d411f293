-- params: stream. Version (0 = no events) and metadata, from one snapshot.
SELECT (SELECT coalesce(max(version), 0) FROM {schema}.events WHERE stream = %(stream)s),
       (SELECT metadata FROM {schema}.streams WHERE stream = %(stream)s)
