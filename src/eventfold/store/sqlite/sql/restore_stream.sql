-- params: stream
UPDATE eventfold_streams SET deletion = NULL WHERE stream = ?1
