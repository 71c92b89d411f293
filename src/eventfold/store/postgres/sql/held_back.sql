-- params: none. The log horizon now (as a bigint) and whether committed
-- events wait above it, so that readers are held back. A reader that reaches
-- the end of the log runs it at most once a second, to warn when one
-- horizon holds readers back for long (see the store's holdup_warning).
WITH h AS MATERIALIZED (SELECT {horizon} AS x)
SELECT h.x::text::bigint,
       EXISTS (SELECT 1 FROM {schema}.events AS e WHERE e.tx >= h.x)
FROM h
