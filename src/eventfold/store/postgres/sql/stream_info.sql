-- params: stream. Version (0 = no events), first stored version, metadata,
-- deletion and truncation, from one snapshot.
SELECT (SELECT coalesce(max(version), 0) FROM {schema}.events WHERE stream = %(stream)s),
       (SELECT min(version) FROM {schema}.events WHERE stream = %(stream)s),
       s.metadata, s.deletion, s.truncation
FROM (SELECT 1) AS one
LEFT JOIN {schema}.streams AS s ON s.stream = %(stream)s
