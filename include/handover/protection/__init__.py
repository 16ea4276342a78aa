"""Field protection: the keyring, field encryption, blind indexes, masks, redaction."""
