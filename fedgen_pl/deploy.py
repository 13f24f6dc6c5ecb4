"""``fedgen deploy-local``: the experiment through Flower's deployment engine on this machine.

It starts a SuperLink and one SuperNode per device on 127.0.0.1 (each with its ``--node-config
"community=<k> device=<j>"``), runs the app (``flwr run``, fedgen_pl/flower/), and stops every
process it started, also when the run fails or is interrupted. The processes' logs are kept in
``<run dir>/deploy_logs/``. On several machines the same three steps are run by hand (README).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from fedgen_pl.config import devices_per_community, load_config
from fedgen_pl.errors import ConfigError, InputError

PROJECT_DIR = Path(__file__).resolve().parent.parent      # the Flower app: pyproject.toml's [tool.flwr.app]


def flower_env(flwr_home: Path) -> dict[str, str]:
    """Offline and quiet: no telemetry, no update check; the SuperExec picks up a task within 50 ms."""
    bin_dir = str(Path(sys.executable).parent)
    return {**os.environ, "FLWR_HOME": str(flwr_home), "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_DISABLE_UPDATE_CHECK": "1", "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.05",
            "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}


class Processes:
    """Every process started, each in its own session, stopped together (SIGTERM, then SIGKILL)."""

    def __init__(self, log_dir: Path):
        self.log_dir, self.started = log_dir, []

    def start(self, name: str, command: list[str], env: dict) -> subprocess.Popen:
        log = open(self.log_dir / f"{name}.log", "w")
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=PROJECT_DIR,
                                   start_new_session=True)
        self.started.append((name, process, log))
        return process

    def stop(self, grace_s: float = 5.0) -> None:
        # Flower starts some processes detached, in sessions of their own (the SuperLink's SuperExec and its
        # ServerApp): they are found as descendants, before anything is signalled, and stopped too.
        started = {process.pid for _, process, _ in self.started}
        below = descendants(started)
        for _, process, _ in self.started:
            _signal(process.pid, signal.SIGTERM)
        for pid in below:
            _signal(pid, signal.SIGTERM)
        deadline = time.time() + grace_s
        for _, process, _ in self.started:
            try:
                process.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                pass
        while any(_alive(pid) for pid in below) and time.time() < deadline:
            time.sleep(0.1)
        for pid in [*started, *(pid for pid in below if _alive(pid))]:   # (a pid gone may be reused)
            _signal(pid, signal.SIGKILL)                 # and whatever each started in its session
        for _, process, _ in self.started:
            process.wait()
        for _, _, log in self.started:
            log.close()


def descendants(pids: set[int]) -> set[int]:
    """Every live process below ``pids``, through the parent links in /proc (empty where there is no /proc:
    then only the process groups are signalled)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    parent = int(stat.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(parent, []).append(int(entry))
    found, todo = set(), list(pids)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _signal(pid: int, sig: int) -> None:
    """``sig`` to the process group that ``pid`` leads (a session started for it), else to ``pid`` alone."""
    try:
        os.killpg(pid, sig) if os.getpgid(pid) == pid else os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def stage_app(dest: Path) -> Path:
    """A copy of the Flower app's files (pyproject.toml and its ``fab-include`` globs) in ``dest``: ``flwr run``
    walks and resolves every file under the directory it is given, .venv included (about 3 s here), before it
    filters them; the FAB built from the copy is the same."""
    import tomllib

    pyproject = PROJECT_DIR / "pyproject.toml"
    dest.mkdir(parents=True)
    shutil.copy2(pyproject, dest / "pyproject.toml")
    for pattern in tomllib.loads(pyproject.read_text())["tool"]["flwr"]["app"]["fab-include"]:
        for path in PROJECT_DIR.glob(pattern):
            target = dest / path.relative_to(PROJECT_DIR)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
    return dest


def _wait_for_port(port: int, timeout_s: float) -> bool:
    import socket

    deadline = time.time() + timeout_s
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(0.2)
    return False


def _port_free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def _exit_on_sigterm():
    """SIGTERM (``kill``, ``timeout`` at its limit) ends deploy-local through its clean-up, as Ctrl-C does: every
    SuperLink, SuperNode and SuperExec it started is stopped. Returns the previous handler (None off the main
    thread, where Python cannot set one)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def stop(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)     # a second SIGTERM must not cut the clean-up short
        raise SystemExit(128 + signum)

    return signal.signal(signal.SIGTERM, stop)


def deploy_local(overrides: list[str], on_started=None) -> Path:
    """Run ``fedgen train``'s experiment through a local Flower deployment; returns the run directory.
    ``on_started(processes, node_pids)`` is called once the nodes run (tests use it to stop one)."""
    from fedgen_pl.flower.edge import check_deployable
    from fedgen_pl.train import plan_run_dir, resolve_names

    if shutil.which("flower-superlink", path=flower_env(Path("."))["PATH"]) is None:
        raise InputError("Flower is not installed (flower-superlink not found); install the extra: "
                         "pip install -e '.[flower]' (make setup does)", where="deploy-local")
    cfg = load_config(overrides)
    resolve_names(cfg)
    check_deployable(cfg)
    run_dir = plan_run_dir(cfg).resolve()               # refuses a directory that holds a run
    counts = devices_per_community(cfg)
    link_port, node_port = int(cfg.deploy.superlink_port), int(cfg.deploy.supernode_port)
    ports = [link_port, *range(node_port, node_port + sum(counts))]
    busy = [p for p in ports if not _port_free(p)]
    if busy:
        raise ConfigError(f"ports {busy} on 127.0.0.1 are in use; choose others with deploy.superlink_port and "
                          f"deploy.supernode_port", where="deploy.superlink_port")
    if cfg.deploy.transport == "stream":
        host, _, port = str(cfg.deploy.stream_address).rpartition(":")
        if host not in ("127.0.0.1", "localhost") or not port.isdigit():
            raise ConfigError(f"'{cfg.deploy.stream_address}': deploy-local runs every node on this machine; give "
                              f"127.0.0.1:<port>", where="deploy.stream_address")
        if not _port_free(int(port)):
            raise ConfigError(f"port {port} on 127.0.0.1 is in use; choose another", where="deploy.stream_address")

    work = Path(tempfile.mkdtemp(prefix="fedgen-deploy-"))
    log_dir = work / "logs"
    log_dir.mkdir()
    (work / "cli").mkdir()
    (work / "cli" / "config.toml").write_text(
        f'[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = "127.0.0.1:{link_port}"\ninsecure = true\n')
    run_overrides = [o for o in overrides if not o.startswith("output_dir=")] + [f"output_dir={run_dir}"]
    run_config = work / "run_config.toml"
    run_config.write_text(f"overrides = {json.dumps(shlex.join(run_overrides))}\n")

    processes = Processes(log_dir)
    started = time.time()
    previous = _exit_on_sigterm()
    try:
        processes.start("superlink", ["flower-superlink", "--insecure", "--disable-runtime-dependency-installation",
                                      "--host", "127.0.0.1", "--port", str(link_port)], flower_env(work / "link"))
        if not _wait_for_port(link_port, 30):
            raise RuntimeError(f"the SuperLink did not start; see {log_dir / 'superlink.log'}")
        node_pids = {}
        for community, count in enumerate(counts):
            for device in range(count):
                index = sum(counts[:community]) + device
                node = processes.start(
                    f"supernode_{community}_{device}",
                    ["flower-supernode", "--insecure", "--superlink", f"127.0.0.1:{link_port}",
                     "--port", str(node_port + index), "--node-config", f"community={community} device={device}"],
                    flower_env(work / f"node_{index}"))
                node_pids[(community, device)] = node.pid
        print(f"[fedgen] deploy-local: SuperLink on 127.0.0.1:{link_port}, {sum(counts)} SuperNodes "
              f"(ports {node_port}-{node_port + sum(counts) - 1}); running the app", file=sys.stderr, flush=True)
        if on_started is not None:
            on_started(processes, node_pids)
        app = subprocess.run(["flwr", "run", str(stage_app(work / "app")), "local", "--stream", "--run-config",
                              str(run_config)], env=flower_env(work / "cli"), cwd=PROJECT_DIR, capture_output=True,
                             text=True)
        (log_dir / "flwr_run.log").write_text(app.stdout + app.stderr)
    finally:
        processes.stop()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        if run_dir.is_dir():
            shutil.copytree(log_dir, run_dir / "deploy_logs", dirs_exist_ok=True)
        shutil.rmtree(work, ignore_errors=True)
    if not (run_dir / "summary.json").is_file():
        tail = "\n".join((app.stdout + app.stderr).strip().splitlines()[-15:])
        raise RuntimeError(f"the deployed run did not finish (flwr run exit {app.returncode}); logs in "
                           f"{run_dir / 'deploy_logs' if run_dir.is_dir() else 'none'}:\n{tail}")
    print(f"[fedgen] deploy-local finished in {time.time() - started:.1f} s: {run_dir}", file=sys.stderr)
    return run_dir
