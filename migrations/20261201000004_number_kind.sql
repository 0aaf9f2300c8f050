-- What the other party's "number" is: a phone number (stored in E.164), or a sender that is not
-- one and keeps its written form: a short code, an alphanumeric sender ID, or anything else
-- (empty, unreadable).
ALTER TABLE sms_conversations ADD COLUMN number_kind TEXT NOT NULL DEFAULT 'phone'
    CHECK (number_kind IN ('phone', 'short_code', 'alphanumeric', 'other'));
