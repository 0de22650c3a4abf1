"""The attested channel: REPORTDATA binding of a TLS key and a nonce, the gateway that fronts vLLM
inside the TD, the quote sources it signs with, and the client's verifying proxy with its HTTP/1.1
framing."""
