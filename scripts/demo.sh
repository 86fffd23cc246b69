#!/usr/bin/env bash
# The demo behind `make demo`: real local services, real (or synthetic) prices, the platform command.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
REAL=../shared/data/sp500_2015_2020_yahoo.csv.gz
AS_OF=2020-01-10

echo "== starting local Kafka and PostgreSQL"
eval "$($BIN/embedder services up)"
echo "KAFKA_BOOTSTRAP_SERVERS=$KAFKA_BOOTSTRAP_SERVERS"
echo "== applying migrations"
$BIN/embedder db upgrade
echo "== loading prices"
if [ -f "$REAL" ]; then
  $BIN/embedder prices import "$REAL" --market-id US_EQ
else
  echo "(real data set not found at $REAL: generating a synthetic market)"
  $BIN/embedder prices synthetic demo-data/synthetic.csv.gz --instruments 60 --from 2015-01-12 --to "$AS_OF"
  $BIN/embedder prices import demo-data/synthetic.csv.gz --market-id US_EQ
fi
echo "== platform command: one as_of over the market, num-regime-core-v1"
$BIN/python -m prometheus.scripts.backfill_numeric_embeddings --as-of "$AS_OF" --market-id US_EQ --model-id num-regime-core-v1
echo "== result"
$BIN/embedder show --as-of "$AS_OF" --model-id num-regime-core-v1
echo "(stop the services with: $BIN/embedder services down)"
