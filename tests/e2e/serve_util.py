"""Starting and stopping `mlkv serve` from the tests and benchmarks (bench/ imports this too)."""
import re
import signal
import subprocess
import threading
import time


def start_server(mlkv, args, timeout=120, env=None, log=None):
    """Starts `mlkv serve ARGS --port 0` and waits for the address it prints; returns (process, port),
    port None when it never announced one (the process is then killed). Its stderr keeps being read
    so that the server never blocks on a full pipe; with `log` (a path) every line of it is written
    there as well (the reader thread ends when the server closes stderr: wait for the process, then
    read the file). `env`: the server's environment (default: this one's)."""
    srv = subprocess.Popen([mlkv, "serve", *args, "--port", "0"], stderr=subprocess.PIPE, text=True,
                           env=env, errors="replace")
    out = open(log, "w") if log else None

    def keep(line):
        if out:
            out.write(line)
            out.flush()

    port = None
    deadline = time.time() + timeout
    while time.time() < deadline and port is None:
        line = srv.stderr.readline()
        if not line:
            break
        keep(line)
        m = re.search(r"http://[\d.]+:(\d+)", line)
        if m:
            port = int(m.group(1))
    if port is None:
        srv.kill()
        if out:
            keep(srv.stderr.read())
            out.close()
        return srv, None

    def drain():
        for line in srv.stderr:
            keep(line)
        if out:
            out.close()

    srv.log_reader = threading.Thread(target=drain, daemon=True)
    srv.log_reader.start()
    return srv, port


def stop_server(srv, timeout=60):
    """SIGTERM (the server drains), then its exit status; None when it had to be killed."""
    srv.send_signal(signal.SIGTERM)
    try:
        return srv.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        srv.kill()
        return None


def start_cmd(cmd):
    """start_server for a command line [mlkv, "serve", ARGS...]; raises when it does not start."""
    srv, port = start_server(cmd[0], cmd[2:])
    if port is None:
        raise RuntimeError(f"mlkv serve did not start: {' '.join(cmd)}")
    return srv, port
