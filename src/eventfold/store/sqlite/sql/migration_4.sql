-- Schema version 4: the deleted streams, indexed on their own. Every log read
-- leaves out their events; without this index each page read scanned the
-- whole streams table (millions of rows for a stream per device per day).
CREATE INDEX eventfold_streams_deleted ON eventfold_streams (stream)
WHERE deletion IS NOT NULL;
