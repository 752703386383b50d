#!/usr/bin/env bash
# The supervise HTTP API from curl (docs/api.md): create a task that calls a URL,
# follow it until it has run, then read the run history and the OpenAPI document.
#
#   export SUPERVISE_API=http://127.0.0.1:9180       # [supervisor] http = ... (https:// with http_tls_cert)
#   export SUPERVISE_TOKEN=$(supervise token create demo --role operator)
#   export SUPERVISE_CACERT=/path/ca.pem              # optional: the CA of a self-signed http_tls_cert
#   export SUPERVISE_NOTIFY_URL=https://example.com/done   # optional: a webhook told when the task has run
#   examples/clients/api.sh https://example.com/hook
set -euo pipefail

api="${SUPERVISE_API:-http://127.0.0.1:9180}/api/v1"
url="${1:?usage: api.sh URL_TO_CALL}"
auth=(-H "Authorization: Bearer ${SUPERVISE_TOKEN:?set SUPERVISE_TOKEN (supervise token create NAME --role operator)}")
json=(-H "Content-Type: application/json")
if [ -n "${SUPERVISE_CACERT:-}" ]; then
  curl() { command curl --cacert "$SUPERVISE_CACERT" "$@"; }
fi
notify=""
if [ -n "${SUPERVISE_NOTIFY_URL:-}" ]; then
  notify=", \"notify\": {\"webhook\": \"$SUPERVISE_NOTIFY_URL\", \"on\": [\"success\", \"failure\", \"retries_exhausted\"]}"
fi

# Call $url in a few seconds, with a JSON body; the Idempotency-Key makes a retried POST safe.
at="$(date -u -d "+${SUPERVISE_DELAY_S:-5} seconds" +%Y-%m-%dT%H:%M:%SZ)"
created="$(curl -sS --fail-with-body "${auth[@]}" "${json[@]}" -H "Idempotency-Key: demo-$(date +%s%N)" \
  -X POST "$api/tasks" \
  -d "{\"url\": \"$url\", \"method\": \"POST\", \"body\": {\"hello\": \"world\"}, \"at\": \"$at\", \"retries\": {\"max\": 2}$notify}")"
echo "created: $created"
id="$(printf '%s' "$created" | python3 -c 'import json, sys; print(json.load(sys.stdin)["id"])')"

# Follow it until its state is final.
for _ in $(seq 60); do
  task="$(curl -sS --fail-with-body "${auth[@]}" "$api/tasks/$id")"
  state="$(printf '%s' "$task" | python3 -c 'import json, sys; print(json.load(sys.stdin)["state"])')"
  echo "state: $state"
  case "$state" in
    succeeded|failed|timed_out|cancelled|terminated|lost|skipped) break ;;
  esac
  sleep 1
done
echo "task: $task"
if [ -n "$notify" ]; then  # the webhook's message is sent once the task has ended
  for _ in $(seq 30); do
    sent="$(curl -sS --fail-with-body "${auth[@]}" "$api/tasks/$id" | python3 -c 'import json, sys; print(json.load(sys.stdin)["notify"]["state"])')"
    [ "$sent" != waiting ] && break
    sleep 1
  done
  echo "notify: $sent"
fi

# The ten newest runs, and the names of every operation the API has.
curl -sS --fail-with-body "${auth[@]}" "$api/runs?limit=10"; echo
curl -sS "$api/openapi.json" | python3 -c 'import json, sys; [print(m.upper(), p) for p, ops in json.load(sys.stdin)["paths"].items() for m in ops]'

# An error is problem+json, with the field that is wrong:
curl -sS "${auth[@]}" "${json[@]}" -X POST "$api/tasks" -d '{"url": "ftp://example.com/", "at": "2030-01-01T00:00:00"}'; echo
