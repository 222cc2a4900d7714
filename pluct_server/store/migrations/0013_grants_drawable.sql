-- Spends update a grant's remaining on every vend. Indexed on `remaining > 0`, each of those
-- updates changed an indexed column and wrote new entries into both of the grants' indexes
-- (no HOT update), which left a user's one grant behind a growing trail of dead index entries
-- between vacuums. Indexed on a stored `drawable` instead, which changes only when a grant is
-- drawn empty or refilled, a draw is a HOT update: no index entry written, the page pruned in
-- place.
ALTER TABLE grants ADD COLUMN drawable boolean GENERATED ALWAYS AS (remaining > 0) STORED;
DROP INDEX grants_draw_order;
CREATE INDEX grants_draw_order ON grants
    (user_id, priority, expire_time, (category = 'paid'), grant_id) WHERE drawable;
