# Sourced by the shell tests that start servers: a free loopback port, and
# the port a `serve` (or any program) says it listens on in its log.

# A port nothing listens on now (the kernel's pick).
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# listening_port LOG PID: the port from "listening on http://127.0.0.1:PORT"
# in LOG, waiting up to 30 s; "" when PID exits first or time runs out.
listening_port() {
  local log="$1" pid="$2" port=""
  for _ in $(seq 1 300); do
    port="$(sed -n 's|.*listening on http://127\.0\.0\.1:\([0-9]*\).*|\1|p' "$log" | head -1)"
    [ -n "$port" ] && { echo "$port"; return 0; }
    kill -0 "$pid" 2> /dev/null || return 1
    sleep 0.1
  done
  return 1
}
