"""The edges of Clearance: settings, the check engine, the CLI and the HTTP API."""
