#!/bin/sh
# The gateway through grpcurl, with what each call prints checked: exits
# non-zero on any difference. STREAMBUS_GATEWAY: the gateway (default
# 127.0.0.1:7400).
set -eu
gateway=${STREAMBUS_GATEWAY:-127.0.0.1:7400}
topic=orders-$(date +%s)-$$ # a new topic on every run

# fail WHAT OUTPUT
fail() {
  printf 'grpcurl example: %s; it printed:\n%s\n' "$1" "$2" >&2
  exit 1
}

# expect WHAT TEXT OUTPUT: OUTPUT contains TEXT.
expect() {
  printf '%s\n' "$3" | grep -qF -- "$2" || fail "$1: no $2" "$3"
}

# The services, by reflection: no .proto files needed.
out=$(grpcurl -plaintext "$gateway" list)
expect list streambus.v1.ProduceService "$out"

grpcurl -plaintext -d '{"name":"'"$topic"'","partitions":3}' \
  "$gateway" streambus.v1.AdminService/CreateTopic >/dev/null

# Bytes fields are base64: key "customer-1", value "first". With
# -emit-defaults the first offset, 0, is printed too.
out=$(grpcurl -plaintext -emit-defaults \
  -d '{"batches":[{"topic":"'"$topic"'","records":[{"key":"Y3VzdG9tZXItMQ==","value":"Zmlyc3Q="}]}]}' \
  "$gateway" streambus.v1.ProduceService/Produce)
expect produce '"baseOffset": "0"' "$out"
expect produce '"recordCount": 1' "$out"

# Subscribe never ends by itself: -max-time stops it (DeadlineExceeded,
# exit status 64 + 4) after the record has been printed.
status=0
out=$(grpcurl -plaintext -max-time 5 \
  -d '{"topic":"'"$topic"'","start":{"earliest":{}}}' \
  "$gateway" streambus.v1.ConsumeService/Subscribe 2>&1) || status=$?
[ "$status" -eq 68 ] || fail "subscribe: exit status $status, not 68" "$out"
expect subscribe '"key": "Y3VzdG9tZXItMQ=="' "$out"
expect subscribe '"value": "Zmlyc3Q="' "$out"

# A failed call exits with 64 + its gRPC code; -v prints the trailers,
# which carry the reason.
status=0
out=$(grpcurl -plaintext -v -d '{"name":"missing-'"$topic"'"}' \
  "$gateway" streambus.v1.AdminService/DescribeTopic 2>&1) || status=$?
[ "$status" -eq 69 ] || fail "describe: exit status $status, not 69" "$out"
expect describe 'Code: NotFound' "$out"
expect describe 'streambus-reason: UNKNOWN_TOPIC' "$out"

echo "grpcurl example: ok ($topic)"
