-- params: alias
SELECT target FROM {schema}.projection_aliases WHERE alias = %(alias)s
