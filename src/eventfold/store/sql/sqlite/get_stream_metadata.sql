-- params: stream
SELECT metadata FROM eventfold_streams WHERE stream = ?
