"""Audio in, decision out: decode, fingerprint, match and decide, with no storage or HTTP."""
