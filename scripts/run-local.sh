#!/usr/bin/env bash
# `make run`: the single-node pattern without a cluster. Starts a sample
# backend and the gateway on examples/local, prints curl lines, and stops
# everything on Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${TOLLGATE_BIN:-target/release}
HTTP=${TOLLGATE_HTTP:-127.0.0.1:8280}
MGMT=${TOLLGATE_MANAGEMENT:-127.0.0.1:9763}
DATA=${TOLLGATE_DATA_DIR:-target/run/data}
mkdir -p "$DATA" target/run
# The management API's bearer token (kept across runs, readable by you only).
TOKEN_FILE=target/run/admin-token
if [ ! -s "$TOKEN_FILE" ]; then
  (umask 077; head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$TOKEN_FILE")
fi

pids=()
cleanup() {
  trap - INT TERM EXIT
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  echo; echo "stopped."
}
trap cleanup INT TERM EXIT

"$BIN/tollgate-echo" 127.0.0.1:18080 sample-bank-backend >/dev/null &
pids+=($!)
"$BIN/tollgate-gateway" --config-dir examples/local --http "$HTTP" --management "$MGMT" \
  --data-dir "$DATA" --admin-token-file "$TOKEN_FILE" --threads 2 \
  --portal-gateway-url "http://$HTTP" --portal-name "Sample Bank developers" > target/run/gateway.log 2>&1 &
pids+=($!)

for _ in $(seq 1 100); do
  curl -fsS "http://$MGMT/readyz" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -fsS "http://$MGMT/readyz" >/dev/null || { echo "gateway did not become ready; see target/run/gateway.log"; exit 1; }

cat <<TXT

Tollgate is running (single-node pattern, config from examples/local/).
Gateway log: target/run/gateway.log
Developer portal: http://$MGMT/portal/ (administrators: the token in $TOKEN_FILE)

  # an account, through the gateway to the sample backend
  curl -i http://$HTTP/open-banking/aisp/v3.1/accounts/22289

  # the default version (no version segment)
  curl -i http://$HTTP/open-banking/aisp/accounts

  # a payment consent (POST)
  curl -i -X POST -H 'content-type: application/json' -d '{"amount":"10.00"}' \\
       http://$HTTP/open-banking/pisp/v3.1/domestic-payment-consents

  # throttled: the 6th call within 10 s gets 429 Too Many Requests
  for i in 1 2 3 4 5 6; do curl -s -o /dev/null -w '%{http_code}\\n' \\
       http://$HTTP/open-banking/aisp/v3.1/accounts/22289/transactions; done

  # unknown route, wrong method
  curl -i http://$HTTP/nothing-here
  curl -i -X DELETE http://$HTTP/open-banking/aisp/v3.1/accounts

  # management: status, metrics
  curl -s http://$MGMT/status
  curl -s http://$MGMT/metrics | grep tollgate_requests

  # the store (bearer token in $TOKEN_FILE): an application and its API key,
  # then search the published APIs
  T="Authorization: Bearer \$(cat $TOKEN_FILE)"
  curl -s -H "\$T" -H 'content-type: application/json' -d '{"name":"my-tpp"}' http://$MGMT/api/v1/applications
  curl -s -X POST -H "\$T" http://$MGMT/api/v1/applications/<id from above>/keys
  curl -s -H "\$T" 'http://$MGMT/api/v1/apis?q=payments'

Edit a file under examples/local/ and it is served within a second.
Press Ctrl-C to stop.
TXT
wait
