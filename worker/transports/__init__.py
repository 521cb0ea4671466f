"""How a built message reaches a server: an SMTP relay or the recipient domain's MX hosts."""
