#!/usr/bin/env python3
"""Writes time_zones.tsv: libphonenumber's time-zone data (Python `phonenumbers`, its
`tzdata.TIMEZONE_DATA`): E.164 digit prefix -> the IANA zones numbers under it may be in, for
quiet hours (shared/src/quiet_hours.rs takes the longest prefix of a number).
Run: pip install phonenumbers && python3 make_time_zones.py > time_zones.tsv"""
import phonenumbers
from phonenumbers import tzdata

print(f"# libphonenumber {phonenumbers.__version__} time-zone data: prefix<TAB>zones separated by &")
for prefix, zones in sorted(tzdata.TIMEZONE_DATA.items()):
    print(f"{prefix}\t{'&'.join(zones)}")
