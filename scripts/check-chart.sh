#!/usr/bin/env bash
# Checks the Helm chart charts/switchyard, offline (tools from scripts/install-chart-tools.sh):
#
#   0. every value in values.yaml has a `# --` comment, and charts/switchyard/README.md's values
#      table matches them (tests/chart/values_table.py);
#   1. helm lint --strict, with the default values and with tests/chart/values-full.yaml
#      (every optional feature on); both are validated against values.schema.json;
#   2. helm template of both, for the oldest supported Kubernetes (1.28) and the target (1.32);
#   3. yamllint --strict of Chart.yaml, the values files and the rendered manifests;
#   4. tests/chart/check_rendered.py: kubernetes-validate --strict of every manifest (the
#      ServiceMonitor against tests/chart/servicemonitor.schema.json), cross-references
#      (selectors, ports, volumes, HPA target), the chart's policies (non-root, read-only root,
#      no capabilities, grace period above the drain, no secret in the ConfigMap), and
#      `switchyard check-config` of the rendered TOML with each pod's environment and Secret files;
#   5. must-fail cases: each values file in tests/chart/negative/ must be refused, with its
#      expected message, and so must a Kubernetes version below the chart's kubeVersion.
#
# Usage: scripts/check-chart.sh
#   TOOLS=DIR            where the tools are (default .tools)
#   SWITCHYARD_BIN=PATH  the switchyard binary for check-config; default: `cargo build -p
#                        switchyard` (debug) and ${CARGO_TARGET_DIR:-target}/debug/switchyard
# Exits non-zero when a check fails or a must-fail case passes.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

CHART=charts/switchyard
TESTS=tests/chart
TOOLS="${TOOLS:-.tools}"
KUBE_VERSIONS=(1.28.0 1.32.0)
HELM="${TOOLS}/bin/helm"
YAMLLINT="${TOOLS}/venv/bin/yamllint"
KV="${TOOLS}/venv/bin/kubernetes-validate"
PYTHON="${TOOLS}/venv/bin/python"

for tool in "${HELM}" "${YAMLLINT}" "${KV}" "${PYTHON}"; do
    [[ -x "${tool}" ]] || { echo "check-chart: ${tool} is missing: run scripts/install-chart-tools.sh" >&2; exit 1; }
done
# helm must not read or write the user's settings, and needs no network or cluster.
work="$(mktemp -d)"
trap 'rm -rf "${work}"' EXIT
export HELM_CACHE_HOME="${work}/helm/cache" HELM_CONFIG_HOME="${work}/helm/config" HELM_DATA_HOME="${work}/helm/data"
export KUBECONFIG="${work}/no-kubeconfig"

section() { printf '\n---- %s\n' "$*"; }

if [[ -n "${SWITCHYARD_BIN:-}" ]]; then
    bin="${SWITCHYARD_BIN}"
else
    section "cargo build -p switchyard (for check-config)"
    cargo build -p switchyard --quiet
    bin="${CARGO_TARGET_DIR:-target}/debug/switchyard"
fi
[[ -x "${bin}" ]] || { echo "check-chart: ${bin} is not an executable" >&2; exit 1; }
bin="$(cd "$(dirname "${bin}")" && pwd)/$(basename "${bin}")"

# check_values NAME KUBE_VERSION [helm values flags...]: the whole positive pipeline.
check_values() {
    local name="$1" kube="$2"
    shift 2
    local out="${work}/${name}-${kube}.yaml"
    section "${name}, Kubernetes ${kube}"
    "${HELM}" lint --strict --quiet --kube-version "${kube}" "${CHART}" "$@"
    "${HELM}" template ci "${CHART}" --namespace support --kube-version "${kube}" "$@" >"${out}"
    "${YAMLLINT}" --strict -c "${TESTS}/yamllint.yaml" "${out}"
    "${PYTHON}" "${TESTS}/check_rendered.py" "${out}" --kube-version "${kube}" \
        --kubernetes-validate "${KV}" --switchyard "${bin}"
}

section "yamllint --strict: Chart.yaml and values files"
"${YAMLLINT}" --strict -c "${TESTS}/yamllint.yaml" "${CHART}/Chart.yaml" "${CHART}/values.yaml" \
    "${TESTS}/values-full.yaml" "${TESTS}"/negative/*.yaml
"${PYTHON}" -c 'import json, sys; json.load(open(sys.argv[1]))' "${CHART}/values.schema.json"

section "values.yaml documented key by key, and the README's values table up to date"
"${PYTHON}" "${TESTS}/values_table.py" --check

for kube in "${KUBE_VERSIONS[@]}"; do
    check_values default "${kube}"
    check_values full "${kube}" -f "${TESTS}/values-full.yaml"
done

# must_fail NAME EXPECTED [helm values flags...]: the pipeline must fail, saying EXPECTED.
failures=0
must_fail() {
    local name="$1" expected="$2"
    shift 2
    local log="${work}/negative-${name}.log" rc=0
    (check_values "negative-${name}" "${KUBE_VERSIONS[-1]}" "$@") >"${log}" 2>&1 || rc=$?
    if ((rc == 0)); then
        echo "FAIL ${name}: passed, but must be refused"
        failures=$((failures + 1))
    elif ! grep -qF -- "${expected}" "${log}"; then
        echo "FAIL ${name}: refused, but without \"${expected}\":"
        sed 's/^/    /' "${log}" | tail -n 15
        failures=$((failures + 1))
    else
        echo "ok   ${name}: refused ($(grep -F -m1 -- "${expected}" "${log}" | cut -c1-150))"
    fi
}

section "must-fail cases (tests/chart/negative/)"
for file in "${TESTS}"/negative/*.yaml; do
    name="$(basename "${file}" .yaml)"
    base="$(sed -n 's/^# base: //p' "${file}")"
    expected="$(sed -n 's/^# expect: //p' "${file}")"
    case "${base}" in
        default) must_fail "${name}" "${expected}" -f "${file}" ;;
        full) must_fail "${name}" "${expected}" -f "${TESTS}/values-full.yaml" -f "${file}" ;;
        *) echo "FAIL ${name}: first line must be '# base: default' or '# base: full'"; failures=$((failures + 1)) ;;
    esac
done
log="${work}/negative-kube-1.27.log"
if "${HELM}" template ci "${CHART}" --kube-version 1.27.0 >"${log}" 2>&1; then
    echo "FAIL kube-1.27: rendered for Kubernetes 1.27, below the chart's kubeVersion"
    failures=$((failures + 1))
else
    echo "ok   kube-1.27: refused ($(head -n1 "${log}" | cut -c1-150))"
fi

if ((failures > 0)); then
    echo "check-chart: ${failures} must-fail case(s) did not fail as expected" >&2
    exit 1
fi
section "chart check passed: ${CHART}"
