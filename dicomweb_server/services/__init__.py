"""Use cases, one per transaction: store, search, retrieve."""
