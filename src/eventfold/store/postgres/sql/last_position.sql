-- params: none. The newest row readers of read_all can see (same visibility).
SELECT tx_id, seq
FROM {schema}.events AS e
WHERE (e.tx < {horizon}) IS TRUE
ORDER BY e.tx DESC, e.seq DESC
LIMIT 1
