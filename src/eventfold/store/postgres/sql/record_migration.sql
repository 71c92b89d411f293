-- params: version
INSERT INTO {schema}.schema_version (version) VALUES (%(version)s)
