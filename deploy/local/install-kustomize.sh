#!/usr/bin/env bash
# A kustomize renderer for tests/unit/test_k8s.py, idempotently: `kubectl kustomize` when
# the installed kubectl renders deploy/k8s/base, otherwise the standalone kustomize built
# from its Go module into .venv/bin/kustomize (which the tests then prefer; `kustomize
# build` prints what `kubectl kustomize` does).
#
# kubectl itself cannot come from the registries CI reaches: Debian's kubernetes-client is
# 1.20 (its kustomize v2 rejects `envs:`), and k8s.io/kubernetes/cmd/kubectl cannot be
# `go install`ed (its go.mod has replace directives). kustomize's module can.
set -euo pipefail
cd "$(dirname "$0")/../.."

KUSTOMIZE_VERSION=v5.7.1
target=.venv/bin/kustomize

if command -v kubectl >/dev/null 2>&1 && kubectl kustomize deploy/k8s/base >/dev/null 2>&1; then
    echo "kubectl renders the manifests: $(command -v kubectl)"
    exit 0
fi
if [ -x "$target" ] && [ "$("$target" version 2>/dev/null)" = "$KUSTOMIZE_VERSION" ]; then
    echo "kustomize already installed: $target $KUSTOMIZE_VERSION"
    exit 0
fi
command -v go >/dev/null 2>&1 || { echo "go not found: kustomize is built with go install" >&2; exit 1; }
mkdir -p .venv/bin
GOBIN="$PWD/.venv/bin" go install "sigs.k8s.io/kustomize/kustomize/v5@$KUSTOMIZE_VERSION"
echo "kustomize installed: $target $("$target" version)"
