-- Events are kept PLUCT_EVENTS_RETENTION (30 days by default); the ledger outlives them. The
-- purge deletes by create_time, which is the entry's own created_at: what remains is every
-- event from some moment on, which the audit checks whole. Times only grow with the rows
-- written, so a BRIN index finds the old ones for a fraction of a B-tree's cost per write.
CREATE INDEX events_by_create_time ON events USING brin (create_time);
