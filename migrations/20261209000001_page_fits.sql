-- A conversation page is read from an index that holds the page's columns (message text
-- included) in conversation order, so a page of a year-old conversation reads a few index pages
-- instead of a heap page per message (issue 21: a cold page read 50 heap pages spread over the
-- year). A B-tree entry must stay under about 2,700 bytes, so that index holds the messages
-- whose variable columns fit in 2,000 bytes (nearly all: an SMS is at most 1,600 characters, but
-- up to 4 bytes each); the others are found through a small index of their own. This is the one
-- definition both the indexes' predicates and the page statements name, so that the planner
-- can prove which index holds which rows. The indexes leave out messages not yet in a
-- conversation (a webhook's row until the worker processes it), so that storing a webhook does
-- not write to them.
SET lock_timeout = '5s';
SET statement_timeout = '30s';

CREATE OR REPLACE FUNCTION sms_page_fits(body text, sid text, tenant text) RETURNS boolean
    LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT octet_length(body) + octet_length(COALESCE(sid, '')) + octet_length(COALESCE(tenant, '')) <= 2000
$$;
