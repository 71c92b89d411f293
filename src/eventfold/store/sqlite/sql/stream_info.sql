-- params: stream
SELECT coalesce((SELECT max(version) FROM eventfold_events WHERE stream = ?1), 0),
       (SELECT min(version) FROM eventfold_events WHERE stream = ?1),
       s.metadata, s.deletion, s.truncation
FROM (SELECT 1) LEFT JOIN eventfold_streams AS s ON s.stream = ?1
