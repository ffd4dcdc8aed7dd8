-- Link events of different types travel on different consumers, so an update
-- and a deletion made within one second (versions are whole seconds) can be
-- applied in either order. Of two records with the same version, the one of
-- the later kind wins: created (0) < updated (1) < deleted (2).
alter table routing.routes add column rank smallint not null default 0;
