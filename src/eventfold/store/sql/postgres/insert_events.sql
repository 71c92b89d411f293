-- params: stream, first (version of the first event), ids, types,
-- schema_versions, datas, metadatas (arrays, one element per event).
-- One statement for the whole batch. ON CONFLICT DO NOTHING: a row whose id
-- or (stream, version) is taken is skipped instead of aborting with an error;
-- the caller compares the count with the batch size and rolls back on a
-- shortfall. The rows are fed in batch order, so seq follows version.
-- {notify} is pg_notify(channel, '') or NULL (store created with notify=False).
-- NOTIFY is transactional: listeners hear of the batch when it commits.
WITH inserted AS (
    INSERT INTO {schema}.events (stream, version, id, type, schema_version, data, metadata)
    SELECT %(stream)s, %(first)s + e.ord - 1, e.id, e.type, e.schema_version, e.data, e.metadata
    FROM unnest(
        %(ids)s::uuid[], %(types)s::text[], %(schema_versions)s::integer[],
        %(datas)s::bytea[], %(metadatas)s::bytea[]
    ) WITH ORDINALITY AS e (id, type, schema_version, data, metadata, ord)
    ORDER BY e.ord
    ON CONFLICT DO NOTHING
    RETURNING seq
)
SELECT count(*), max(seq), pg_current_xact_id()::text::bigint, {notify}
FROM inserted
