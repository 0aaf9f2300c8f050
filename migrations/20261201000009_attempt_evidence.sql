-- What settled an attempt whose answer was lost: a status callback carrying our id
-- ('status_callback'), Twilio's message list ('twilio_list': a match was adopted;
-- 'twilio_list_none': the list showed no such message, so none was created), or the message's
-- own status at Twilio ('status').
ALTER TABLE sms_send_attempts ADD COLUMN evidence TEXT
    CHECK (evidence IN ('status_callback', 'twilio_list', 'twilio_list_none', 'status'));
