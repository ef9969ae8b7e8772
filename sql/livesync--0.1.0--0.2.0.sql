-- livesync 0.1.0 → 0.2.0 (ALTER EXTENSION livesync UPDATE TO '0.2.0').
-- 0.1.0 is the first release (git tag v0.1.0). Once 0.2.0 is released this file is never edited
-- again; later changes go to livesync--0.2.0--<next>.sql.
\echo Use "ALTER EXTENSION livesync UPDATE" to load this file. \quit
