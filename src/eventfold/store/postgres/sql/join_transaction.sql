-- params: none. What store.transaction(connection) checks of the
-- application's connection: its database and server (the start time tells
-- one server from another) and that the store's schema is there. The store
-- asks the same of its own pool once, to compare.
SELECT current_database(), pg_postmaster_start_time(),
       to_regclass({schema_name} || '.events') IS NOT NULL
