-- params: none. Serialises concurrent migrate() calls on one schema (held to
-- the end of the migration transaction). Appends never take this lock.
SELECT pg_advisory_xact_lock(hashtext('eventfold.migrate'), hashtext({schema_name}))
