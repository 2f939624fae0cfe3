# Shell helpers the benchmark scripts share (sourced, not run): starting an engine and waiting for it,
# stopping processes that may not be this shell's children, reading a process's CPU time.

# wait_ready PORT PID LOG [TRIES]: polls the engine's /readyz every 0.5 s (TRIES times, default 120);
# returns 0 once it answers, 1 when the process died or never got ready (its log's tail on stderr, the
# process killed).
wait_ready() {
    local port=$1 pid=$2 log_file=$3 tries=${4:-120} i
    for i in $(seq 1 "$tries"); do
        curl -fs "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && return 0
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.5
    done
    tail -20 "$log_file" >&2
    kill "$pid" 2>/dev/null
    return 1
}

# stop_gone PID...: TERM, then wait until each is gone (up to 20 s each). Engines started inside $(...)
# are not this shell's children, so `wait` cannot be used.
stop_gone() {
    local p i
    for p in "$@"; do
        kill "$p" 2>/dev/null || continue
        for i in $(seq 1 200); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    done
}

# proc_ticks PID: utime + stime of the process so far, in clock ticks (0 once it is gone).
proc_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
