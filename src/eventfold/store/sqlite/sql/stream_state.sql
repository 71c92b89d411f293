-- params: stream
-- The stream's version and whether it is deleted, in one round trip.
SELECT coalesce((SELECT max(version) FROM eventfold_events WHERE stream = ?1), 0),
       (SELECT deletion IS NOT NULL FROM eventfold_streams WHERE stream = ?1)
