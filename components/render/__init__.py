"""Pure renderers: what the resources create, as plain values. Host steps (script and desired
values), the Trust Domain's QEMU unit and agent config, the Kubernetes objects, the `pins` and the
promotion comparison. Same inputs, same bytes: a rendered value can be a Pulumi input, and the
tests run exactly what `pulumi up` runs."""
