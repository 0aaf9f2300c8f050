#!/usr/bin/env python3
"""Writes phone_forms.tsv: written forms of numbers from the US, Canada, Puerto Rico, the
Dominican Republic, Mexico, Brazil, Portugal, Spain and the UK, valid and invalid, each with what
libphonenumber (Python `phonenumbers`, region US) makes of it, for `shared/tests/phone_forms.rs`.

Columns: written form (JSON string), send (E.164 or `refuse: <reason>`), inbound (E.164, or
`keep` when the sender stays as written), note.

Our rules on top of libphonenumber, and only these:
- a send refuses any letter (libphonenumber turns 1-800-FLOWERS into keypad digits; a letter O
  typed for a zero would reach someone else);
- a send refuses 3 to 6 digits written without a country code as a short code;
- a send refuses valid numbers of types that do not take texts (premium rate, shared cost, UAN,
  pager, voicemail);
- inbound keeps as written anything that is not a phone number: what libphonenumber cannot
  parse (alphanumeric sender IDs, empty), letters, and, written without a country code, what is
  not a possible number (short codes).
Run: pip install phonenumbers && python3 make_phone_forms.py > phone_forms.tsv
"""
import json
import re
import sys

import phonenumbers as pn
from phonenumbers import PhoneNumberType as T

REGION = "US"
TEXTABLE = {T.MOBILE, T.FIXED_LINE, T.FIXED_LINE_OR_MOBILE, T.VOIP, T.PERSONAL_NUMBER, T.TOLL_FREE}

# (country code, national number grouped as written in the country, label)
BASES = [
    ("1", "415 555 2671", "US mobile/fixed"),
    ("1", "212 555 0199", "US NYC"),
    ("1", "650 253 0000", "US"),
    ("1", "800 356 9377", "US toll-free"),
    ("1", "416 555 0123", "CA Toronto"),
    ("1", "604 555 5555", "CA Vancouver"),
    ("1", "787 555 1234", "PR"),
    ("1", "939 555 1234", "PR"),
    ("1", "809 555 1234", "DO"),
    ("1", "829 555 1234", "DO"),
    ("52", "55 1234 5678", "MX Mexico City"),
    ("52", "33 1234 5678", "MX Guadalajara"),
    ("52", "1 55 1234 5678", "MX old mobile form"),
    ("55", "11 91234-5678", "BR Sao Paulo mobile"),
    ("55", "21 99876-5432", "BR Rio mobile"),
    ("55", "11 3456-7890", "BR Sao Paulo fixed"),
    ("55", "19 98765-4321", "BR Campinas mobile"),
    ("351", "912 345 678", "PT mobile"),
    ("351", "21 123 4567", "PT Lisbon fixed"),
    ("34", "612 34 56 78", "ES mobile"),
    ("34", "91 123 45 67", "ES Madrid fixed"),
    ("44", "7911 123456", "UK mobile"),
    ("44", "20 7946 0958", "UK London fixed"),
    ("44", "909 8790000", "UK premium rate"),
]

FULLWIDTH = str.maketrans("0123456789+", "０１２３４５６７８９＋")


def forms(cc, national):
    digits = re.sub(r"\D", "", national)
    dashed = re.sub(r"\s+", "-", national.strip())
    out = [
        f"+{cc} {national}",
        f"+{cc}{digits}",
        f"+{cc}-{dashed}",
        f"+{cc} ({digits[:3]}) {digits[3:]}",
        f"011 {cc} {national}",
        f"011-{cc}-{dashed}",
        f"011{cc}{digits}",
        f"00 {cc} {national}",
        f"{cc} {national}",
        f"+{cc}{digits}".translate(FULLWIDTH),
        f" +{cc}.{national.replace(' ', '.')} ",
        f"+{cc} {national} ext. 12",
        f"+{cc}{digits[:-1]}",
        f"+{cc}{digits}9",
    ]
    if cc == "1":
        npa, nxx, line = digits[:3], digits[3:6], digits[6:]
        out += [
            f"({npa}) {nxx}-{line}",
            f"{npa}.{nxx}.{line}",
            f"{npa}-{nxx}-{line}",
            f"1-{npa}-{nxx}-{line}",
            f"1 ({npa}) {nxx} {line}",
            f"{npa}{nxx}{line}",
            f"1{npa}{nxx}{line}",
            f"{npa}-{nxx}-{line[:-1]}O",
            f"{npa}{nxx}{line[:-1]}",
        ]
    return out


EXTRA = [
    "(123) 456-7890", "(555) 123-4567", "+15551234567", "555-1234", "22395", "12345", "898287",
    "411", "VERIFY", "ACME Rent", "", "   ", "+", "++1 415 555 2671", "001 415 555 2671",
    "52 55 1234 5678", "415555267", "4155552671234", "1-800-FLOWERS", "415-555-267O",
    "+1 415 555 267O", "tel:+1-415-555-2671", "011 55 11 91234-5678", "011 52 1 55 1234 5678",
    "+52 1 55 1234 5678", "４１５５５５２６７１", "(４１５) ５５５-２６７１", "+44 (0) 20 7946 0958",
    "0044 20 7946 0958", "+55 (11) 91234-5678", "+55 011 91234-5678", "+351 912345678",
    "+34 612345678", "+1 (809) 555-1234", "1 809 555 1234", "+1 939-555-1234", "+52 55 1234 567",
    "+55 11 1234-5678", "+44 7911 12345", "+351 12 345 678", "+34 512 34 56 78", "0800 123 4567",
    "+1 900 555 1234", "+44 70 1234 5678", "*123#", "#555", "+1-800-356-9377", "1 (800) 356-9377",
]


def letters_in(written):
    """Letters other than a `tel:` scheme and a trailing extension (`ext. 12`, `x12`)."""
    core = re.sub(r"(?i)^tel:", "", written.strip())
    core = re.sub(r"(?i)\s*(ext\.?|x)\s*\d+\s*$", "", core)
    return any(c.isalpha() for c in core)


def expect(written):
    ascii_form = written.translate(str.maketrans("０１２３４５６７８９＋", "0123456789+"))
    digits = re.sub(r"\D", "", ascii_form)
    stripped = re.sub(r"(?i)^tel:", "", ascii_form.strip())
    intl = stripped.startswith("+") or digits.startswith("011")
    if letters_in(written):
        return "refuse: not a valid number", "keep"
    if not intl and 3 <= len(digits) <= 6:
        return "refuse: short codes cannot be texted", "keep"
    try:
        n = pn.parse(written, REGION)
    except pn.NumberParseException:
        return "refuse: not a valid number", "keep"
    e164 = pn.format_number(n, pn.PhoneNumberFormat.E164)
    # A number written with its country code is a phone number even when its length is off for
    # that country (Mexico's old "+52 1" mobile form): libphonenumber's E.164, so every written
    # form of it meets in one conversation.
    inbound = e164 if (pn.is_possible_number(n) or intl) else "keep"
    if not pn.is_valid_number(n):
        return "refuse: not a valid number", inbound
    if pn.number_type(n) not in TEXTABLE:
        return "refuse: not a mobile/fixed-line number we can text", inbound
    return e164, inbound


def main():
    rows = []
    seen = set()
    for cc, national, label in BASES:
        for f in forms(cc, national):
            if f not in seen:
                seen.add(f)
                rows.append((f, label))
    for f in EXTRA:
        if f not in seen:
            seen.add(f)
            rows.append((f, "edge case"))
    print("written\tsend\tinbound\tnote")
    for f, note in rows:
        send, inbound = expect(f)
        print(f"{json.dumps(f, ensure_ascii=False)}\t{send}\t{inbound}\t{note}")
    print(f"{len(rows)} forms", file=sys.stderr)


if __name__ == "__main__":
    main()
