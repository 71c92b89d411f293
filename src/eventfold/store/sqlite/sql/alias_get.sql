-- params: alias
SELECT target FROM eventfold_projection_aliases WHERE alias = ?1
