-- params: none
SELECT coalesce(max(position), 0) FROM eventfold_events
