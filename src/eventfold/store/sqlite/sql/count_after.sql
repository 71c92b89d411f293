-- params: after
SELECT count(*), min(recorded_at) FROM eventfold_events WHERE position > ?1
