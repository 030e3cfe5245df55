"""Synchronous frame coders keyed by transfer syntax, and whole-instance transcoding."""
