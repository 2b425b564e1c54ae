"""Per-ISP shaping: provider matching, rates, source-IP choice, warm-up and automation.

Everything here except ``store`` (in-memory state behind a Protocol) is pure: values
in, values out, the clock passed in as a number of seconds or a date.
"""
