#!/usr/bin/env bash
# Start the MLflow tracking server that MedSweep sweeps log to (see mlflow/README.md).
#
#   mlflow/start-server.sh                      SQLite mlflow/mlflow.db, artifacts in mlflow/artifacts,
#                                               on 127.0.0.1:5000
#   MEDSWEEP_MLFLOW_BACKEND_URI=postgresql://mlflow:PASSWORD@db-host:5432/mlflow \
#   MEDSWEEP_MLFLOW_ARTIFACTS=s3://my-bucket/mlflow mlflow/start-server.sh
#
# Environment (all optional):
#   MEDSWEEP_MLFLOW_HOST          interface to bind (default 127.0.0.1: loopback only)
#   MEDSWEEP_MLFLOW_PORT          port (default 5000)
#   MEDSWEEP_MLFLOW_BACKEND_URI   runs and registry store (default sqlite:///<this folder>/mlflow.db)
#   MEDSWEEP_MLFLOW_ARTIFACTS     artifact store the server proxies (default <this folder>/artifacts)
#   MEDSWEEP_MLFLOW_WORKERS       server worker processes (default 2)
#   MEDSWEEP_MLFLOW_ALLOW_REMOTE  set to 1 to bind a non-loopback host (then put auth in front)
#   MEDSWEEP_MLFLOW_BIN           the mlflow executable (default: the project's .venv, else PATH)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
host="${MEDSWEEP_MLFLOW_HOST:-127.0.0.1}"
port="${MEDSWEEP_MLFLOW_PORT:-5000}"
backend="${MEDSWEEP_MLFLOW_BACKEND_URI:-sqlite:///$here/mlflow.db}"
artifacts="${MEDSWEEP_MLFLOW_ARTIFACTS:-$here/artifacts}"
workers="${MEDSWEEP_MLFLOW_WORKERS:-2}"

fail() { echo "mlflow/start-server.sh: $*" >&2; exit 2; }

case "$host" in
  127.*|localhost|::1) ;;
  *) [ "${MEDSWEEP_MLFLOW_ALLOW_REMOTE:-0}" = 1 ] || fail "MEDSWEEP_MLFLOW_HOST=$host is not a \
loopback address; the tracking server has no authentication, so reach it through an SSH tunnel \
or 'ray attach cluster.yaml --port-forward $port' (set MEDSWEEP_MLFLOW_ALLOW_REMOTE=1 to bind it \
anyway, behind your own authentication)" ;;
esac
[[ "$port" =~ ^[0-9]+$ ]] && [ "$port" -ge 1 ] && [ "$port" -le 65535 ] \
  || fail "MEDSWEEP_MLFLOW_PORT=$port is not a port number (1-65535)"
[[ "$workers" =~ ^[1-9][0-9]*$ ]] || fail "MEDSWEEP_MLFLOW_WORKERS=$workers is not a positive integer"

if [ -n "${MEDSWEEP_MLFLOW_BIN:-}" ]; then
  mlflow_bin="$MEDSWEEP_MLFLOW_BIN"
elif [ -x "$here/../.venv/bin/mlflow" ]; then
  mlflow_bin="$here/../.venv/bin/mlflow"
else
  mlflow_bin="$(command -v mlflow)" || fail "no mlflow executable: run 'make test' or \
'pip install -e .' first, or set MEDSWEEP_MLFLOW_BIN"
fi
python_bin="$(dirname "$mlflow_bin")/python"
[ -x "$python_bin" ] || python_bin=python3

needs() {  # needs MODULE PACKAGE WHY: a clear line instead of a traceback from inside MLflow
  "$python_bin" -c "import $1" 2>/dev/null || fail "$3 needs the Python package $2: \
$python_bin -m pip install $2 (or: pip install -e '.[server]')"
}
case "$backend" in
  sqlite:///*)
    db="${backend#sqlite:///}"
    mkdir -p "$(dirname "/${db#/}")" || fail "cannot create the folder of $backend" ;;
  postgresql*) needs psycopg2 psycopg2-binary "MEDSWEEP_MLFLOW_BACKEND_URI=postgresql://..." ;;
  *://*) ;;
  *) fail "MEDSWEEP_MLFLOW_BACKEND_URI=$backend is not a database URI \
(sqlite:////abs/path/mlflow.db or postgresql://user:password@host:5432/db)" ;;
esac
case "$artifacts" in
  s3://*) needs boto3 boto3 "MEDSWEEP_MLFLOW_ARTIFACTS=s3://..." ;;
  *://*) ;;
  *) mkdir -p "$artifacts" || fail "cannot create the artifact folder $artifacts"
     artifacts="$(cd "$artifacts" && pwd)" ;;
esac

shown="$(printf '%s' "$backend" | sed -E 's#(://[^:/@]+):[^@]*@#\1:***@#')"  # no password in logs
echo "MLflow tracking server: http://$host:$port  (store $shown, artifacts $artifacts)"
echo "sweeps: --tracking-uri http://$host:$port  (or MLFLOW_TRACKING_URI=http://$host:$port)"
exec "$mlflow_bin" server \
  --backend-store-uri "$backend" \
  --serve-artifacts --artifacts-destination "$artifacts" \
  --host "$host" --port "$port" --workers "$workers"
