"""Instance indexes: what is stored, searchable by QIDO and located for WADO."""
