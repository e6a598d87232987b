#!/usr/bin/env bash
# Builds the pinned Kueue controller (tests/kube/tools/kueue: its Go module, no patches) into a
# cache keyed by that go.mod/go.sum, once, with its CRDs (config/components/crd/bases of the same
# module) beside it in crds/. Prints the folder holding bin/kueue and crds/. `make test` runs it.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cache="${FEDMA_KUBE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/fedma/kube}"
key="$(cat "$here"/tools/kueue/go.{mod,sum} "$0" | sha256sum | cut -c1-16)"
version="$(awk '$1 == "sigs.k8s.io/kueue" {print $2}' "$here/tools/kueue/go.mod")"
out="$cache/kueue-$version-$key"
if [[ -x "$out/bin/kueue" && -f "$out/crds/kueue.x-k8s.io_workloads.yaml" ]]; then
  echo "$out"
  exit 0
fi
rm -rf "$out.partial" && mkdir -p "$out.partial/bin" "$out.partial/crds"
export CGO_ENABLED=0 GOFLAGS="${GOFLAGS:--buildvcs=false} -mod=mod" GOTOOLCHAIN=local
start=$SECONDS
echo "building Kueue $version into $out; a cold build takes a few minutes on 2 cores" >&2
(cd "$here/tools/kueue" && go build -trimpath \
   -ldflags "-s -w -X sigs.k8s.io/kueue/pkg/version.GitVersion=$version" \
   -o "$out.partial/bin/kueue" sigs.k8s.io/kueue/cmd/kueue)
dir="$(cd "$here/tools/kueue" && go mod download -json sigs.k8s.io/kueue \
       | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')"
cp "$dir"/config/components/crd/bases/*.yaml "$out.partial/crds/"
chmod -R u+w "$out.partial"
echo "  kueue built ($((SECONDS - start)) s)" >&2
rm -rf "$out" && mv "$out.partial" "$out"
echo "$out"
