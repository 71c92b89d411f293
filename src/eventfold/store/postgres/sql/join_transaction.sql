-- params: none. What store.transaction(connection) checks of the
-- application's connection: its database and server (the start time tells
-- one server from another), that the store's schema is there, whether its
-- transaction has an id already (it wrote) and whether the store has
-- claimed it (claim.sql) before that. The store asks the same of its own
-- pool once, to compare the first two.
SELECT current_database(), pg_postmaster_start_time(),
       to_regclass({schema_name} || '.events') IS NOT NULL,
       pg_current_xact_id_if_assigned() IS NOT NULL,
       current_setting({mark_name}, true) IS NOT DISTINCT FROM 'on'
