-- params: none. What store.transaction(connection) checks of the
-- application's connection: which file its main database is (it must be the
-- store's file).
SELECT file FROM pragma_database_list WHERE name = 'main'
