"""The catalog: track metadata and check history in a database, fingerprints in a vector index."""
