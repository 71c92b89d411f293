-- params: name
DELETE FROM eventfold_checkpoints WHERE name = ?1
