-- params: name
DELETE FROM eventfold_dead_letters WHERE name = ?1
