"""DICOM knowledge with no I/O: identifiers, attributes, DICOM JSON, queries, Part 10 parsing."""
