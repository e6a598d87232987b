#!/usr/bin/env bash
# Builds the pinned control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
# kubectl) and helm
# from the Go modules in tests/kube/tools into a cache keyed by their go.mod/go.sum, once, and
# puts the prometheus-operator's CRDs (from its pinned module) beside them in crds/monitoring.
# Prints the bin directory. `make test` runs it; later runs with the same pins cost nothing.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cache="${FEDMA_KUBE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/fedma/kube}"
key="$(cat "$here"/tools/{kubernetes,helm}/go.{mod,sum} "$0" | sha256sum | cut -c1-16)"
kube_version="$(awk '$1 == "k8s.io/kubernetes" {print $2}' "$here/tools/kubernetes/go.mod")"
helm_version="$(awk '$2 == "helm.sh/helm/v3" {print $3}' "$here/tools/helm/go.mod")"
bin="$cache/$kube_version-helm-$helm_version-$key/bin"
monitoring_crds() {  # the module's example/prometheus-operator-crd, copied once
  local dir
  dir="$(cd "$here/tools/prometheus-operator" && GOFLAGS=-mod=mod go mod download -json \
         github.com/prometheus-operator/prometheus-operator | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')"
  mkdir -p "$bin/../crds/monitoring"
  cp "$dir"/example/prometheus-operator-crd/monitoring.coreos.com_{servicemonitors,podmonitors,prometheusrules}.yaml \
     "$bin/../crds/monitoring/"
}
if [[ -x "$bin/kube-apiserver" && -x "$bin/kube-controller-manager" && -x "$bin/kube-scheduler" \
      && -x "$bin/kubectl" \
      && -x "$bin/etcd" && -x "$bin/helm" ]]; then
  [[ -f "$bin/../crds/monitoring/monitoring.coreos.com_servicemonitors.yaml" ]] || monitoring_crds >&2
  echo "$bin"
  exit 0
fi
mkdir -p "$bin.partial"
export CGO_ENABLED=0 GOFLAGS="${GOFLAGS:--buildvcs=false} -mod=mod" GOTOOLCHAIN=local
minor="${kube_version#v1.}"; minor="${minor%%.*}"
v="k8s.io/component-base/version"
kube_ldflags="-s -w -X $v.gitVersion=$kube_version -X $v.gitMajor=1 -X $v.gitMinor=$minor"
kube_ldflags+=" -X $v.gitTreeState=clean -X $v.buildDate=1970-01-01T00:00:00Z"
kube_ldflags+=" -X k8s.io/client-go/pkg/version.gitVersion=$kube_version"
kube_ldflags+=" -X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=$minor"
start=$SECONDS
echo "building Kubernetes $kube_version (etcd, kube-apiserver, kube-controller-manager," \
     "kube-scheduler, kubectl)" \
     "and helm $helm_version into $bin; a cold build takes a while on 2 cores" >&2
(cd "$here/tools/kubernetes" && go build -trimpath -ldflags "$kube_ldflags" -o "$bin.partial/" \
   k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
   k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl)
echo "  kubernetes commands built ($((SECONDS - start)) s)" >&2
(cd "$here/tools/kubernetes" && go build -trimpath -ldflags "-s -w" -o "$bin.partial/etcd" \
   go.etcd.io/etcd/server/v3)
echo "  etcd built ($((SECONDS - start)) s)" >&2
# As helm's Makefile: the Kubernetes version `helm template` assumes is its client-go's.
client_go="$(cd "$here/tools/helm" && go list -m -f '{{.Version}}' k8s.io/client-go)"
cg_minor="${client_go#v0.}"; cg_minor="${cg_minor%%.*}"
helm_ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$helm_version"
for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
  helm_ldflags+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$cg_minor"
done
(cd "$here/tools/helm" && go build -trimpath -ldflags "$helm_ldflags" \
   -o "$bin.partial/helm" helm.sh/helm/v3/cmd/helm)
echo "  helm built ($((SECONDS - start)) s)" >&2
rm -rf "$bin" && mv "$bin.partial" "$bin"
monitoring_crds >&2
echo "$bin"
