"""Verifiers: score columns saying whether a trace is right (math, code, format, judge). They never drop rows."""
