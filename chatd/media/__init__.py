"""Image sharing: upload slots, re-encoding, dedup, blob stores (see chatd.media.service)."""
