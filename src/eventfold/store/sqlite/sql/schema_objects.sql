-- What a file holds, read before eventfold trusts or migrates it (SQLite's own
-- objects, such as sqlite_sequence, left out).
SELECT type, name FROM sqlite_master
WHERE name NOT LIKE 'sqlite\_%' ESCAPE '\'
ORDER BY type, name;
