"""Programs the Kubernetes target runs in its pod (the TD), as `python3 -c <file text> ARGS...`:
the model fetcher (an init container) and the known-answer readiness probe. Each file is a whole
program that imports only the standard library (it runs in the gateway image), and the guest agent
imports the same functions, so the TD on a host and the pod in a cluster apply one rule."""
