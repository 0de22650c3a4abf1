// The provider's main, as upstream's cmd/pulumi-resource-kubernetes has it: that package embeds
// schema-embed.json, which `go generate` writes and the module zip does not carry, so
// ../build-kube.sh writes both embedded files next to a copy of this file and builds the copy.
package main

import (
	_ "embed"

	"github.com/pulumi/pulumi-kubernetes/provider/v4/pkg/provider"
	"github.com/pulumi/pulumi-kubernetes/provider/v4/pkg/version"
)

//go:embed schema-embed.json
var schema []byte

//go:embed terraform-mapping-embed.json
var terraformMapping []byte

func main() {
	provider.Serve("kubernetes", version.Version, schema, terraformMapping)
}
