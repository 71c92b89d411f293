-- params: stream. An index-only probe of events_stream_version.
SELECT coalesce(max(version), 0) FROM {schema}.events WHERE stream = %(stream)s
