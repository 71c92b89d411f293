-- params: stream (or NULL), state_type (or NULL), keep_schema_version (or NULL)
DELETE FROM {schema}.snapshots
WHERE (%(stream)s::text IS NULL OR stream = %(stream)s::text)
  AND (%(state_type)s::text IS NULL OR state_type = %(state_type)s::text)
  AND (%(keep)s::integer IS NULL OR schema_version <> %(keep)s::integer)
