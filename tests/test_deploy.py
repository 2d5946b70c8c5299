"""The deployment files in deploy/ agree with deploy/commands.yaml and with dask's CLI.

deploy/commands.yaml holds the scheduler, worker and job commands as argv
templates. Every file in deploy/ must run exactly those commands (placeholders
aside), tests/cluster_procs.py must start exactly those commands, and
``dask scheduler --help`` / ``dask worker --help`` must know every flag. Where
a tool writes the command itself (the dask Helm chart, dask-jobqueue) the test
renders it the way the tool does and compares the options.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from dask.utils import parse_bytes

try:
    from . import cluster_procs
except ImportError:  # tests/ is not a package: pytest put this directory on sys.path
    if str(Path(__file__).parent) not in sys.path:  # --import-mode=importlib does not
        sys.path.insert(0, str(Path(__file__).parent))
    import cluster_procs

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
PLACEHOLDER = re.compile(r"\{([a-z_]+)\}")


# -- helpers -----------------------------------------------------------------

@pytest.fixture(scope="module")
def commands() -> dict[str, Any]:
    return cluster_procs.load_commands()


def normalise(argv: list[str]) -> list[str]:
    """Spell the program the way commands.yaml does: ``dask scheduler``, ``dask worker``, ``dem``."""
    argv = [str(a) for a in argv]
    head = Path(argv[0]).name
    if head in ("python", "python3") or argv[0] == sys.executable:
        if argv[1:3] == ["-m", "dask"]:
            return ["dask", *argv[3:]]
        if argv[1:3] == ["-m", "distributed.cli.dask_worker"]:
            return ["dask", "worker", *argv[3:]]
        if argv[1:3] == ["-m", "distributed.cli.dask_scheduler"]:
            return ["dask", "scheduler", *argv[3:]]
        if argv[1:3] == ["-m", "dem.cli"]:
            return ["dem", *argv[3:]]
    if head == "dask-worker":
        return ["dask", "worker", *argv[1:]]
    if head == "dask-scheduler":
        return ["dask", "scheduler", *argv[1:]]
    if head in ("dask", "dem"):
        return [head, *argv[1:]]
    return argv


def match(template: list[str], argv: list[str]) -> dict[str, str]:
    """Placeholder values that turn ``template`` into ``argv``, token by token; fails otherwise."""
    argv = normalise(argv)
    assert len(argv) == len(template), f"\n  expected {template}\n       got {argv}"
    values: dict[str, str] = {}
    for want, got in zip(template, argv):
        names = PLACEHOLDER.findall(want)
        pattern = "".join(
            f"(?P<{part}>.+)" if i % 2 else re.escape(part)
            for i, part in enumerate(PLACEHOLDER.split(want))
        )
        m = re.fullmatch(pattern, got)
        assert m, f"token {got!r} does not match {want!r}\n  expected {template}\n       got {argv}"
        for name in names:
            assert values.setdefault(name, m.group(name)) == m.group(name), f"{name} differs within {argv}"
    return values


BOOLEAN_FLAGS = {"--nanny", "--no-nanny", "--dashboard", "--no-dashboard"}


def options(argv: list[str]) -> tuple[list[str], dict[str, str]]:
    """(positional arguments, {flag: value}) of a dask command; ``--flag=value`` and ``--flag value``."""
    argv = normalise(argv)[2:]
    positional, opts = [], {}
    i = 0
    while i < len(argv):
        tok = argv[i]
        if tok.startswith("--"):
            flag, eq, value = tok.partition("=")
            if eq:
                opts[flag] = value
            elif flag in BOOLEAN_FLAGS:
                opts[flag] = ""
            else:
                i += 1
                opts[flag] = argv[i]
        else:
            positional.append(tok)
        i += 1
    return positional, opts


def check_tunables(role: str, values: dict[str, str], commands: dict[str, Any]) -> None:
    """Placeholders that are not site-specific have the commands.yaml value."""
    spec = commands[role]
    for name, default in spec["defaults"].items():
        if name in spec["site"] or name not in values:
            continue
        if name == "memory_limit":
            assert parse_bytes(values[name]) == parse_bytes(default), (role, name, values[name])
        else:
            assert str(values[name]) == str(default), (role, name, values[name], default)


def canonical_options(role: str, commands: dict[str, Any], **values: str) -> tuple[list[str], dict[str, str]]:
    spec = commands[role]
    return options(cluster_procs.render(spec["argv"], {**spec["defaults"], **values}))


def same_size(a: str, b: str) -> bool:
    return parse_bytes(a) == parse_bytes(b)


def deploy_yaml(name: str) -> list[Any]:
    with open(DEPLOY / name) as f:
        return list(yaml.safe_load_all(f))


def console_scripts() -> dict[str, str]:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]["scripts"]


def dockerfile_stages() -> dict[str, dict[str, Any]]:
    """Per stage: base, and ENTRYPOINT (JSON form) if the stage sets one; in file order."""
    text = (DEPLOY / "Dockerfile").read_text()
    text = re.sub(r"\\\n", " ", text)
    args: dict[str, str] = {}
    stages: dict[str, dict[str, Any]] = {}
    current = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instr, _, rest = line.partition(" ")
        instr = instr.upper()
        if instr == "ARG" and current is None and "=" in rest:
            k, _, v = rest.partition("=")
            args[k.strip()] = v.strip().strip('"')
        elif instr == "FROM":
            parts = rest.split()
            base = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), parts[0])
            current = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else f"stage{len(stages)}"
            parent = stages.get(base)
            stages[current] = {"base": base, "entrypoint": parent["entrypoint"] if parent else None}
        elif instr == "ENTRYPOINT":
            stages[current]["entrypoint"] = json.loads(rest)
    return stages


# -- every manifest parses ---------------------------------------------------

MANIFESTS = sorted(p.relative_to(DEPLOY).as_posix() for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml"))


def test_manifests_found():
    assert {"commands.yaml", "docker-compose.yml", "config.yaml", "helm/values.yaml",
            "kubernetes/daskjob.yaml"} <= set(MANIFESTS)


@pytest.mark.parametrize("name", MANIFESTS)
def test_manifest_parses(name):
    docs = deploy_yaml(name)
    assert docs and all(isinstance(d, dict) for d in docs), name


def test_commands_file_is_consistent(commands):
    for role in ("scheduler", "worker", "tls", "job"):
        spec = commands[role]
        used = {n for tok in spec["argv"] for n in PLACEHOLDER.findall(tok)}
        assert used <= set(spec["site"]) | set(spec["defaults"]), role
        assert set(spec["defaults"]) <= used, f"{role}: defaults for placeholders not in the command"
    assert commands["scheduler"]["argv"][:2] == ["dask", "scheduler"]
    assert commands["worker"]["argv"][:2] == ["dask", "worker"]
    assert commands["job"]["argv"][0] in console_scripts()


# -- Dockerfile ----------------------------------------------------------------

def test_dockerfile_entrypoint_is_the_console_script():
    scripts = console_scripts()
    stages = dockerfile_stages()
    default = list(stages.values())[-1]  # `docker build` without --target builds the last stage
    assert default["entrypoint"] is not None and len(default["entrypoint"]) == 1
    assert default["entrypoint"][0] in scripts
    assert scripts[default["entrypoint"][0]] == "dem.cli:main"
    assert stages["cluster"]["entrypoint"] is None, "the cluster image must run the commands it is given"
    assert stages["cluster"]["base"].startswith("python:3.11-slim")
    text = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^RUN pip install /src\b", text, re.M), "the image installs the package from the repo"


# -- docker compose --------------------------------------------------------------

def test_compose_runs_the_commands(commands):
    (compose,) = deploy_yaml("docker-compose.yml")
    services = compose["services"]
    sched = match(commands["scheduler"]["argv"], services["scheduler"]["command"])
    check_tunables("scheduler", sched, commands)
    address = f"tcp://scheduler:{sched['port']}"
    workers = [name for name, svc in services.items() if normalise(svc.get("command", ["?"]))[:2] == ["dask", "worker"]]
    assert len(workers) == 2
    for name in workers:
        svc = services[name]
        values = match(commands["worker"]["argv"], svc["command"])
        check_tunables("worker", values, commands)
        assert values["scheduler_address"] == address
        assert values["host"] == name and values["name"] == name  # reachable by its service name
        assert svc["build"].get("target") == "cluster"
        assert {"data:/data", "runs:/runs"} <= set(svc["volumes"])
        assert "AWS_ACCESS_KEY_ID" in svc["environment"] and "AWS_SECRET_ACCESS_KEY" in svc["environment"]

    fit = services["fit"]
    assert fit["build"].get("target") in (None, "dem")
    entrypoint = dockerfile_stages()["dem"]["entrypoint"]
    job = match(commands["job"]["argv"], entrypoint + fit["command"])
    assert job["scheduler_address"] == address
    assert any(v.endswith(":" + job["config"]) or v.endswith(f":{job['config']}:ro") for v in fit["volumes"])
    assert {"data:/data", "runs:/runs"} <= set(fit["volumes"])
    assert "AWS_ACCESS_KEY_ID" in fit["environment"]
    assert set(compose["volumes"]) >= {"data", "runs"}


# -- Kubernetes: dask-kubernetes DaskJob ---------------------------------------------

def _env(container: dict) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def _secret_refs(container: dict) -> set[str]:
    refs = {e["secretRef"]["name"] for e in container.get("envFrom", []) if "secretRef" in e}
    refs |= {e["valueFrom"]["secretKeyRef"]["name"] for e in container.get("env", [])
             if "secretKeyRef" in e.get("valueFrom", {})}
    return refs


def test_daskjob_runs_the_commands(commands):
    docs = deploy_yaml("kubernetes/daskjob.yaml")
    (job,) = [d for d in docs if d["kind"] == "DaskJob"]
    assert job["apiVersion"] == "kubernetes.dask.org/v1"
    cluster = job["spec"]["cluster"]["spec"]

    (sched_c,) = cluster["scheduler"]["spec"]["containers"]
    sched = match(commands["scheduler"]["argv"], sched_c["command"])
    check_tunables("scheduler", sched, commands)
    ports = {p["name"]: p["port"] for p in cluster["scheduler"]["service"]["ports"]}
    assert ports["tcp-comm"] == int(sched["port"])  # the operator's DASK_SCHEDULER_ADDRESS uses this port

    (worker_c,) = cluster["worker"]["spec"]["containers"]
    values = match(commands["worker"]["argv"], worker_c["command"])
    check_tunables("worker", values, commands)
    # Set by the operator (DASK_SCHEDULER_ADDRESS, DASK_WORKER_NAME) or by us (DASK_WORKER_HOST).
    assert values["scheduler_address"] == "$(DASK_SCHEDULER_ADDRESS)"
    assert values["name"] == "$(DASK_WORKER_NAME)"
    assert values["host"] == "$(DASK_WORKER_HOST)"
    assert _env(worker_c)["DASK_WORKER_HOST"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    assert parse_bytes(worker_c["resources"]["limits"]["memory"].replace("Mi", "MiB")) > parse_bytes(values["memory_limit"])

    (job_c,) = job["spec"]["job"]["spec"]["containers"]
    runner = match(commands["job"]["argv"], job_c["command"])
    assert runner["scheduler_address"] == "$(DASK_SCHEDULER_ADDRESS)"
    assert job["spec"]["job"]["spec"]["restartPolicy"] == "OnFailure"  # a failed driver restarts and resumes
    mounts = {m["mountPath"]: m["name"] for m in job_c["volumeMounts"]}
    assert mounts[str(Path(runner["config"]).parent)] == "config"
    (config_map,) = [d for d in docs if d["kind"] == "ConfigMap"]
    config = yaml.safe_load(config_map["data"][Path(runner["config"]).name])
    assert {"data", "model", "fit", "cluster", "output"} <= set(config)
    shared = [m["mountPath"] for m in job_c["volumeMounts"] if m["name"] == "shared"]
    assert shared and config["output"]["run_dir"].startswith(shared[0] + "/"), "run_dir must be on the shared volume"
    for container in (worker_c, job_c):
        assert _secret_refs(container), "object-store credentials reach workers and driver"
    assert images(worker_c, sched_c) == {"dem-cluster"} and job_c["image"].split(":")[0] == "dem"


def images(*containers: dict) -> set[str]:
    return {c["image"].split(":")[0] for c in containers}


# -- Kubernetes: the dask/dask Helm chart --------------------------------------------

def helm_scheduler_args(values: dict) -> list[str]:
    """The scheduler container args of dask/dask's dask-scheduler-deployment.yaml."""
    s = values["scheduler"]
    return ["dask-scheduler", f"--port={s['servicePort']}", "--dashboard-address=:8787", *s.get("extraArgs", [])]


def helm_worker_args(values: dict, release: str = "dem") -> list[str]:
    """The worker container args of dask/dask's dask-worker-deployment.yaml."""
    w, s = values["worker"], values["scheduler"]
    args = [w["image"].get("dask_worker", "dask-worker"),
            w.get("custom_scheduler_url") or f"{release}-dask-scheduler:{s['servicePort']}"]
    limits = w.get("resources", {}).get("limits")
    if limits:
        args += ["--nthreads", str(w.get("threads_per_worker") or limits.get("cpu")),
                 "--memory-limit", str(limits["memory"])]
    args += ["--no-dashboard", "--dashboard-address", str(w.get("portDashboard", 8790))]
    if w.get("port"):
        args += ["--worker-port", str(w["port"])]
    return args + [str(a) for a in w.get("extraArgs", [])]


def test_helm_values_give_the_commands(commands):
    (values,) = deploy_yaml("helm/values.yaml")
    pos, opts = options(helm_scheduler_args(values))
    want_pos, want = canonical_options("scheduler", commands)
    assert pos == want_pos == []
    assert opts == want

    pos, opts = options(helm_worker_args(values))
    _, want = canonical_options("worker", commands, scheduler_address="-", host="$(DASK_WORKER_HOST)",
                                name="$(DASK_WORKER_NAME)")
    assert pos == ["dem-dask-scheduler:8786"]
    assert opts.pop("--no-dashboard") == ""  # the chart always adds it; the scheduler's dashboard remains
    assert same_size(opts.pop("--memory-limit"), want.pop("--memory-limit"))
    assert opts.pop("--dashboard-address").lstrip(":") == want.pop("--dashboard-address").lstrip(":")
    assert opts == want
    env = _env(values["worker"])
    assert env["DASK_WORKER_HOST"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    assert env["DASK_WORKER_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert _secret_refs(values["worker"])
    assert values["worker"]["image"]["repository"] == values["scheduler"]["image"]["repository"] == "dem-cluster"
    assert values["jupyter"]["enabled"] is False


# -- SLURM -------------------------------------------------------------------------

def shell_commands(text: str, head: tuple[str, ...]) -> list[list[str]]:
    """Simple commands in a shell script that start with ``head`` (also inside ``bash -c '...'``)."""
    found = []
    text = re.sub(r"\\\n", " ", text)
    for line in text.splitlines():
        lex = shlex.shlex(line, posix=True, punctuation_chars=True)
        lex.whitespace_split = True
        lex.commenters = "#"
        try:
            tokens = list(lex)
        except ValueError:
            continue
        found += _commands_in(tokens, head)
    return found


def _commands_in(tokens: list[str], head: tuple[str, ...]) -> list[list[str]]:
    out = []
    for tok in tokens:
        if " " in tok or "\n" in tok:
            out += shell_commands(tok, head)
    separators = {"&", "&&", ";", "|", "||", ">", "2>&1", "<", ">>"}
    for i in range(len(tokens)):
        if tuple(tokens[i:i + len(head)]) == head:
            j = i
            while j < len(tokens) and tokens[j] not in separators:
                j += 1
            out.append(tokens[i:j])
    return out


def test_sbatch_runs_the_commands(commands):
    text = (DEPLOY / "slurm" / "fit.sbatch").read_text()
    (sched_cmd,) = shell_commands(text, ("dask", "scheduler"))
    sched = match(commands["scheduler"]["argv"], sched_cmd)
    check_tunables("scheduler", sched, commands)
    m = re.search(r'^SCHEDULER_ADDRESS="tcp://\$\(hostname\):(\d+)"', text, re.M)
    assert m and m.group(1) == sched["port"]

    (worker_cmd,) = shell_commands(text, ("dask", "worker"))
    values = match(commands["worker"]["argv"], worker_cmd)
    check_tunables("worker", values, commands)
    assert values["scheduler_address"] == "$0"  # bash -c '...' "$SCHEDULER_ADDRESS"
    assert re.search(r"""^' "\$SCHEDULER_ADDRESS" &$""", text, re.M)

    (job_cmd,) = shell_commands(text, ("dem", "fit"))
    job = match(commands["job"]["argv"], job_cmd)
    assert job["scheduler_address"] == "$SCHEDULER_ADDRESS"
    assert re.search(r"^#SBATCH --requeue$", text, re.M)
    assert subprocess.run(["bash", "-n", str(DEPLOY / "slurm" / "fit.sbatch")], timeout=30).returncode == 0


def load_fit_slurm():
    spec = importlib.util.spec_from_file_location("fit_slurm", DEPLOY / "slurm" / "fit_slurm.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def jobqueue_worker_argv(kwargs: dict, scheduler: str, name: str) -> list[str]:
    """The worker command dask-jobqueue writes into each job script (dask_jobqueue/core.py, Job.__init__)."""
    from dask.utils import format_bytes

    cores, processes = kwargs["cores"], kwargs.get("processes", 1)
    argv = [sys.executable, "-m", "distributed.cli.dask_worker", scheduler,
            "--nthreads", str(int(cores / processes))]
    if processes > 1:
        argv += ["--nworkers", str(processes)]
    argv += ["--memory-limit", format_bytes(parse_bytes(kwargs["memory"]) / processes).replace(" ", ""),
             "--name", name, "--nanny", "--death-timeout", "60"]
    argv += list(kwargs.get("worker_extra_args", []))
    if kwargs.get("interface"):
        argv += ["--interface", kwargs["interface"]]
    return argv


def test_jobqueue_example_gives_the_worker_command(commands):
    fit_slurm = load_fit_slurm()
    kwargs = fit_slurm.slurm_cluster_kwargs(log_directory=None)
    argv = jobqueue_worker_argv(kwargs, "tcp://10.0.0.1:8786", "dem-0")
    if importlib.util.find_spec("dask_jobqueue") is not None:
        from dask_jobqueue.slurm import SLURMJob

        job_kwargs = {k: v for k, v in kwargs.items() if k != "scheduler_options"}
        script = SLURMJob(scheduler="tcp://10.0.0.1:8786", name="dem-0", **job_kwargs).job_script()
        (line,) = [ln for ln in script.splitlines() if "distributed.cli.dask_worker" in ln]
        assert normalise(shlex.split(line)) == normalise(argv)
    pos, opts = options(argv)
    _, want = canonical_options("worker", commands, scheduler_address="-", host="-", name="dem-0")
    assert pos == ["tcp://10.0.0.1:8786"]
    # jobqueue's own additions; the listening address is jobqueue's choice (interface=), not --host
    assert opts.pop("--nanny") == "" and opts.pop("--death-timeout")
    del want["--host"]
    assert want.pop("--nworkers") == "1" and kwargs["processes"] == 1
    assert same_size(opts.pop("--memory-limit"), want.pop("--memory-limit"))
    assert opts == want
    sched = commands["scheduler"]["defaults"]
    assert kwargs["scheduler_options"]["dashboard_address"] == sched["dashboard_address"]

    job = match(commands["job"]["argv"], fit_slurm.dem_fit_argv("cfg.yaml", "tcp://10.0.0.1:8786"))
    assert job == {"config": "cfg.yaml", "scheduler_address": "tcp://10.0.0.1:8786"}


# -- the test harness runs the same commands ----------------------------------------

def test_cluster_procs_runs_the_commands(commands, tmp_path):
    sched = match(commands["scheduler"]["argv"], cluster_procs.scheduler_argv())
    assert sched == {"host": "127.0.0.1", "port": "0", "dashboard_address": "127.0.0.1:0"}
    values = match(commands["worker"]["argv"], cluster_procs.worker_argv("tcp://127.0.0.1:1234", "w-0"))
    defaults = commands["worker"]["defaults"]
    # Loopback and any free port; the worker itself as deployed (threads, memory limit).
    assert values == {"scheduler_address": "tcp://127.0.0.1:1234", "host": "127.0.0.1", "name": "w-0",
                      "dashboard_address": "127.0.0.1:0", "nthreads": defaults["nthreads"],
                      "memory_limit": defaults["memory_limit"]}

    tls = cluster_procs.TLSFiles("ca.pem", "node.pem", "node.key")
    tls_template = commands["tls"]["argv"]
    match(commands["scheduler"]["argv"] + tls_template, cluster_procs.scheduler_argv(tls=tls))
    tls_values = match(commands["worker"]["argv"] + tls_template,
                       cluster_procs.worker_argv("tls://127.0.0.1:1234", "w-0", tls=tls))
    assert tls_values["tls_cert"] == "node.pem"

    # What actually gets executed: this environment's `dask` launcher, then the same tokens.
    argv = cluster_procs.scheduler_argv()
    assert normalise(cluster_procs.executable_argv(argv)) == argv


# -- dask's CLI knows every flag -------------------------------------------------------

def _help_flags(sub: str) -> set[str]:
    proc = subprocess.run([*cluster_procs.dask_launcher(), sub, "--help"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", proc.stdout))


def _flags(argv: list[str]) -> set[str]:
    return {tok.partition("=")[0] for tok in argv if str(tok).startswith("--")}


def test_dask_cli_accepts_every_flag(commands):
    scheduler_flags = _help_flags("scheduler")
    worker_flags = _help_flags("worker")
    tls = _flags(commands["tls"]["argv"])
    (values,) = deploy_yaml("helm/values.yaml")
    kwargs = load_fit_slurm().slurm_cluster_kwargs(log_directory=None)

    used_scheduler = _flags(commands["scheduler"]["argv"]) | tls | _flags(helm_scheduler_args(values))
    used_worker = (_flags(commands["worker"]["argv"]) | tls | _flags(helm_worker_args(values))
                   | _flags(jobqueue_worker_argv(kwargs, "tcp://x:1", "n")))
    assert used_scheduler <= scheduler_flags, used_scheduler - scheduler_flags
    assert used_worker <= worker_flags, used_worker - worker_flags


def test_dem_cli_accepts_the_job_flags(commands):
    if importlib.util.find_spec("dem.cli") is None:
        pytest.skip("dem.cli is not written yet")
    proc = subprocess.run([sys.executable, "-m", "dem.cli", "fit", "--help"],
                          capture_output=True, text=True, timeout=120)
    if proc.returncode != 0 or "Usage" not in proc.stdout:
        pytest.skip(f"`dem fit --help` is not available yet: {proc.stderr.strip()[-300:]}")
    assert _flags(commands["job"]["argv"]) <= set(re.findall(r"--[a-z][a-z0-9-]*", proc.stdout))
