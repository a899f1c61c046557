-- Issue 13's profile: outbox_due held every item, so settling an item moved its entry
-- from the pending part of the index to the delivered part, which grew with every
-- item ever delivered. It now holds only the items a dispatcher or an administrator
-- looks for (pending and dead): settling removes the entry, and the index is as small
-- as the backlog. Queries that use it repeat its WHERE term.
DROP INDEX outbox_due;
CREATE INDEX outbox_due ON outbox (destination, state, seq) WHERE state IN ('pending', 'dead');
