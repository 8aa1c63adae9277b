"""Run a locust scenario against a fresh ``bebop serve`` on loopback, with an optional scripted fault.

    python loadtest/run.py smoke                 # CI: 1 engine, 30 s, exits non-zero on any failure
    python loadtest/run.py full --duration 300   # make loadtest: the CSV and a summary
    python loadtest/run.py kill-engine           # fault scenarios (2 engines by default)
    python loadtest/run.py reload-storm
    python loadtest/run.py corrupt-checkpoint
    python loadtest/run.py slow-engine
    python loadtest/run.py soak --rollouts 10000 # until that many samples came back

Runs with the main virtual environment (it starts ``bebop serve`` from there) and drives locust
from its own (``.cache/locust-venv``, made by ``make locust-venv``), whose dependencies are its own.
Beside locust, a probe sends one small rollout a second and times it, so the report shows latency
before, during and after a fault; a sampler reads the resident memory of the gateway and every
engine from /proc. Everything lands in ``--out`` (default ``.cache/loadtest/<scenario>``):
locust's CSVs, ``report.json`` and ``report.md``.

Exit status: 0 when the scenario met its goals (no failed request, no request left hanging when
locust stopped, no traceback in the service's log, counters back to zero, and for the soak RSS
growth after warm-up under ``--max-rss-growth``), 1 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bebop.service.ports import free_port

ROOT = Path(__file__).resolve().parent.parent
LOCUSTFILE = ROOT / "loadtest" / "locustfile.py"
DEFAULT_LOCUST = ROOT / ".cache" / "locust-venv" / "bin" / "locust"
BEBOP = Path(sys.executable).parent / "bebop"
PROBE_PERIOD_S = 1.0
RSS_PERIOD_S = 2.0
WARMUP_FRACTION = 0.2  # the soak's RSS growth is measured from the end of this share of the run


@dataclass
class Scenario:
    engines: int
    users: int
    duration_s: float
    reload_s: float  # ReloadUser period (0: off)
    fault_at_s: float | None = None  # when the fault starts
    description: str = ""


SCENARIOS = {
    "smoke": Scenario(1, 8, 30, 10, description="CI: every user kind, reloads every 10 s"),
    "full": Scenario(2, 32, 300, 20, description="every user kind at 32 users"),
    "kill-engine": Scenario(2, 16, 90, 0, 30, "SIGKILL one of two engines at 30 s"),
    "reload-storm": Scenario(2, 16, 90, 0, 30, "back-to-back reloads from 3 threads for 30 s"),
    # no scheduled reloads here: the check is that the refused reload leaves every version as it was
    "corrupt-checkpoint": Scenario(2, 16, 90, 0, 30, "reload a truncated checkpoint at 30 s (and 45 s)"),
    "slow-engine": Scenario(2, 16, 90, 0, 30, "one engine stopped 70% of each 1 s for 30 s"),
    "soak": Scenario(2, 24, 6 * 3600, 60, description="until --rollouts samples came back"),
}


# ---------------------------------------------------------------------------------------------
# processes


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (the gateway's engines), from /proc."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return sorted(out)


def rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


@contextlib.contextmanager
def bebop_serve(port: int, engines: int, extra: list[str], log_path: Path) -> Iterator[subprocess.Popen]:
    log = log_path.open("w")
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    cmd = [str(BEBOP), "serve", "--port", str(port), "--engines", str(engines), *extra]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"bebop serve exited {proc.returncode}; see {log_path}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise TimeoutError("bebop serve not ready after 300 s")
            time.sleep(0.3)
        yield proc
    finally:
        for pid in children(proc.pid):  # a stopped engine (slow-engine) must be able to exit
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def admin_headers() -> dict[str, str]:
    token = os.environ.get("BEBOP_ADMIN_TOKEN")
    return {"Authorization": f"Bearer {token}"} if token else {}


def api_headers() -> dict[str, str]:
    token = os.environ.get("BEBOP_API_TOKEN")
    return {"Authorization": f"Bearer {token}"} if token else {}


# ---------------------------------------------------------------------------------------------
# background observers


class Probe(threading.Thread):
    """One small rollout a second, timed: latency before, during and after a fault."""

    def __init__(self, url: str, stop: threading.Event):
        super().__init__(daemon=True)
        self.url, self.stop = url, stop
        self.points: list[tuple[float, float | None]] = []  # (time since start, seconds or None)
        self.t0 = time.monotonic()

    def run(self) -> None:
        body = {"prompts": [{"text": "12+35=", "n": 1}], "sampling_params": {"max_new_tokens": 24}, "seed": 7}
        with httpx.Client(base_url=self.url, timeout=120) as client:
            while not self.stop.is_set():
                start = time.monotonic()
                try:
                    ok = client.post("/v1/rollouts", json=body, headers=api_headers()).status_code == 200
                except httpx.HTTPError:
                    ok = False
                self.points.append((start - self.t0, time.monotonic() - start if ok else None))
                self.stop.wait(max(0.0, PROBE_PERIOD_S - (time.monotonic() - start)))


class RssSampler(threading.Thread):
    """Resident memory of the gateway and each engine every ``RSS_PERIOD_S``."""

    def __init__(self, gateway_pid: int, stop: threading.Event):
        super().__init__(daemon=True)
        self.gateway_pid, self.stop = gateway_pid, stop
        self.engines = children(gateway_pid)
        self.series: dict[str, list[tuple[float, float]]] = {"gateway": []}
        self.t0 = time.monotonic()

    def run(self) -> None:
        while not self.stop.is_set():
            t = time.monotonic() - self.t0
            for name, pid in [("gateway", self.gateway_pid)] + [
                (f"engine{i}", p) for i, p in enumerate(self.engines)
            ]:
                value = rss_mib(pid)
                if value is not None:
                    self.series.setdefault(name, []).append((t, value))
            self.stop.wait(RSS_PERIOD_S)

    def growth(self) -> dict[str, dict]:
        """Per process: RSS at the end of warm-up, at the end, and the growth between them."""
        out = {}
        for name, points in self.series.items():
            if len(points) < 4:
                continue
            end_t = points[-1][0]
            warm = next(v for t, v in points if t >= WARMUP_FRACTION * end_t)
            last = sum(v for _, v in points[-3:]) / 3  # mean of the last three readings
            out[name] = {
                "after_warmup_mib": round(warm, 1),
                "end_mib": round(last, 1),
                "peak_mib": round(max(v for _, v in points), 1),
                "growth": round(last / warm - 1, 4),
            }
        return out


# ---------------------------------------------------------------------------------------------
# faults: each runs in a thread at fault_at_s and appends what it did to ``events``


@dataclass
class FaultContext:
    url: str
    gateway: subprocess.Popen
    model_dir: Path
    work: Path
    events: list[dict] = field(default_factory=list)
    t0: float = field(default_factory=time.monotonic)

    def note(self, what: str, **detail) -> None:
        self.events.append({"t_s": round(time.monotonic() - self.t0, 2), "event": what, **detail})


def fault_kill_engine(ctx: FaultContext) -> None:
    engines = children(ctx.gateway.pid)
    victim = engines[-1]
    os.kill(victim, signal.SIGKILL)
    ctx.note("SIGKILL engine", pid=victim, engines_before=len(engines))
    time.sleep(10)
    with contextlib.suppress(httpx.HTTPError):
        ctx.note("after 10 s", readyz=httpx.get(ctx.url + "/readyz", timeout=5).json())


def fault_reload_storm(ctx: FaultContext, seconds: float = 30.0, threads: int = 3) -> None:
    outcomes: dict[int, int] = {}
    lock = threading.Lock()
    counter = iter(range(1 << 30))

    def storm() -> None:
        with httpx.Client(base_url=ctx.url, timeout=300) as client:
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                body = {
                    "model_path": str(ctx.model_dir),
                    "version": f"storm-{next(counter)}",
                    "pause_mode": "retract",
                }
                try:
                    status = client.post("/v1/weights", json=body, headers=admin_headers()).status_code
                except httpx.HTTPError:
                    status = -1
                with lock:
                    outcomes[status] = outcomes.get(status, 0) + 1

    workers = [threading.Thread(target=storm) for _ in range(threads)]
    ctx.note("reload storm start", threads=threads, seconds=seconds)
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    ctx.note("reload storm end", outcomes={str(k): v for k, v in sorted(outcomes.items())})


def fault_corrupt_checkpoint(ctx: FaultContext) -> None:
    bad = ctx.work / "corrupt-ckpt"
    bad.mkdir(parents=True, exist_ok=True)
    for f in ctx.model_dir.iterdir():
        if f.is_file() and f.name != "model.safetensors":
            (bad / f.name).write_bytes(f.read_bytes())
    weights = (ctx.model_dir / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(weights[: len(weights) // 2])  # truncated mid-tensor
    for attempt in range(2):
        before = httpx.get(ctx.url + "/v1/weights", headers=admin_headers(), timeout=30).json()
        r = httpx.post(
            ctx.url + "/v1/weights",
            json={"model_path": str(bad), "version": f"corrupt-{attempt}", "pause_mode": "retract"},
            headers=admin_headers(),
            timeout=300,
        )
        after = httpx.get(ctx.url + "/v1/weights", headers=admin_headers(), timeout=30).json()
        ctx.note(
            "corrupt reload",
            status=r.status_code,
            refused=r.status_code >= 400,
            versions_unchanged=before["engines"] == after["engines"],
            detail=r.text[:300],
        )
        time.sleep(15)


def fault_slow_engine(ctx: FaultContext, seconds: float = 30.0, stopped_share: float = 0.7) -> None:
    victim = children(ctx.gateway.pid)[-1]
    ctx.note("slow engine start", pid=victim, stopped_share=stopped_share, seconds=seconds)
    end = time.monotonic() + seconds
    try:
        while time.monotonic() < end:
            os.kill(victim, signal.SIGSTOP)
            time.sleep(stopped_share)
            os.kill(victim, signal.SIGCONT)
            time.sleep(1.0 - stopped_share)
    finally:
        os.kill(victim, signal.SIGCONT)
    ctx.note("slow engine end")


FAULTS: dict[str, Callable[[FaultContext], None]] = {
    "kill-engine": fault_kill_engine,
    "reload-storm": fault_reload_storm,
    "corrupt-checkpoint": fault_corrupt_checkpoint,
    "slow-engine": fault_slow_engine,
}


# ---------------------------------------------------------------------------------------------
# the run


def gateway_counters(url: str) -> dict[str, float]:
    """In-flight gauges after the run: every one must be back to zero."""
    text = httpx.get(url + "/metrics", headers=admin_headers(), timeout=30).text
    out = {}
    for line in text.splitlines():
        if line.startswith(("bebop_rollouts_inflight", "bebop_engine_outstanding")):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def locust_totals(csv_prefix: Path) -> dict:
    """The Aggregated row of locust's stats CSV, plus each named request's row."""
    import csv

    rows = list(csv.DictReader((csv_prefix.parent / (csv_prefix.name + "_stats.csv")).open()))
    keep = (
        "Request Count",
        "Failure Count",
        "Median Response Time",
        "95%",
        "99%",
        "Max Response Time",
        "Requests/s",
    )
    return {f"{r['Type']} {r['Name']}".strip(): {k: r[k] for k in keep} for r in rows}


def window_latency(points: list[tuple[float, float | None]], start: float, end: float) -> dict:
    values = sorted(v for t, v in points if start <= t < end and v is not None)
    failed = sum(1 for t, v in points if start <= t < end and v is None)
    if not values:
        return {"n": 0, "failed": failed}
    return {
        "n": len(values),
        "failed": failed,
        "p50_s": round(values[len(values) // 2], 3),
        "max_s": round(values[-1], 3),
    }


def run(args: argparse.Namespace) -> int:
    sc = SCENARIOS[args.scenario]
    engines = args.engines or sc.engines
    users = args.users or sc.users
    duration = args.duration or sc.duration_s
    out = Path(args.out or ROOT / ".cache" / "loadtest" / args.scenario).resolve()
    out.mkdir(parents=True, exist_ok=True)
    model_dir = Path(
        subprocess.run(
            [str(BEBOP), "demo-model", "--path"], capture_output=True, text=True, check=True
        ).stdout.strip()
    )
    port = args.port or free_port()
    url = f"http://127.0.0.1:{port}"
    serve_extra = ["--weights-root", str(out), "--spec", args.spec]
    stats_path = out / "rollout_stats.json"
    stats_path.unlink(missing_ok=True)
    env = {
        **os.environ,
        "BEBOP_LT_STATS": str(stats_path),
        "BEBOP_LT_MODEL_PATH": str(model_dir),
        "BEBOP_LT_RELOAD_S": str(sc.reload_s),
    }
    csv_prefix = out / "locust"
    locust_cmd = [
        str(args.locust), "-f", str(LOCUSTFILE), "--headless",
        "-u", str(users), "-r", str(max(1, users // 4)), "--host", url,
        "--csv", str(csv_prefix), "--only-summary", "--stop-timeout", "120",
        "--json-file", str(out / "locust"),
    ]  # fmt: skip
    if args.scenario != "soak":
        locust_cmd += ["-t", f"{int(duration)}s"]
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    with bebop_serve(port, engines, serve_extra, out / "serve.log") as gateway:
        stop = threading.Event()
        probe, rss = Probe(url, stop), RssSampler(gateway.pid, stop)
        probe.start()
        rss.start()
        ctx = FaultContext(url, gateway, model_dir, out)
        t_start = time.monotonic()
        probe.t0 = rss.t0 = ctx.t0 = t_start
        locust = subprocess.Popen(
            locust_cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        fault_thread = None
        if args.scenario in FAULTS:

            def delayed() -> None:
                time.sleep(sc.fault_at_s or 0)
                FAULTS[args.scenario](ctx)

            fault_thread = threading.Thread(target=delayed, daemon=True)
            fault_thread.start()
        if args.scenario == "soak":
            while locust.poll() is None:
                time.sleep(5)
                with contextlib.suppress(httpx.HTTPError):
                    text = httpx.get(url + "/metrics", headers=admin_headers(), timeout=30).text
                    done = sum(
                        float(line.rsplit(" ", 1)[1])
                        for line in text.splitlines()
                        if line.startswith("bebop_rollout_samples_total")
                    )
                    if done >= args.rollouts:
                        ctx.note("rollout target reached", samples=done)
                        locust.send_signal(signal.SIGINT)  # locust stops its users and reports
                        break
        output, _ = locust.communicate()
        if fault_thread is not None:
            fault_thread.join(timeout=120)
        stop.set()
        probe.join(timeout=130)
        t_total = time.monotonic() - t_start
        time.sleep(2)
        counters = gateway_counters(url)
    (out / "locust.log").write_text(output)
    stats = json.loads(stats_path.read_text()) if stats_path.exists() else {}
    totals = locust_totals(csv_prefix)
    aggregated = totals.get("Aggregated", {})
    failures = int(aggregated.get("Failure Count", 0) or 0)
    report = {
        "scenario": args.scenario,
        "description": sc.description,
        "started": started,
        "command": " ".join(sys.argv),
        "engines": engines,
        "users": users,
        "spec": args.spec,
        "duration_s": round(t_total, 1),
        "locust_exit": locust.returncode,
        "failures": failures,
        "requests": totals,
        "rollout_stats": stats,
        "fault_events": ctx.events,
        "counters_after": counters,
        "counters_zero": all(v == 0 for v in counters.values()),
        "rss": rss.growth(),
        "probe": {
            "before_fault": window_latency(probe.points, 0, sc.fault_at_s or t_total),
            "during_fault": window_latency(probe.points, sc.fault_at_s, sc.fault_at_s + 35)
            if sc.fault_at_s
            else None,
            "after_fault": window_latency(probe.points, sc.fault_at_s + 35, t_total)
            if sc.fault_at_s
            else None,
        },
        "machine": f"{os.cpu_count()} CPUs, {os.uname().machine}, {os.uname().release}",
    }
    # Requests still unanswered when locust's stop timeout ran out are cancelled without counting
    # as failures: a hung request is a lost one, so it fails the run.
    report["hung_at_stop"] = "Not all users finished their tasks" in output
    serve_log = (out / "serve.log").read_text(errors="replace")
    report["server_tracebacks"] = serve_log.count("Traceback (most recent call last)")
    report["server_errors"] = [line[:300] for line in serve_log.splitlines() if line.startswith("ERROR")][:20]
    ok = failures == 0 and locust.returncode == 0 and report["counters_zero"] and not report["hung_at_stop"]
    ok = ok and report["server_tracebacks"] == 0
    if args.scenario == "soak":
        grown = {k: v["growth"] for k, v in report["rss"].items()}
        report["rss_ok"] = all(g < args.max_rss_growth for g in grown.values())
        ok = ok and report["rss_ok"] and stats.get("samples", 0) >= args.rollouts * 0.9
    if args.scenario == "corrupt-checkpoint":
        ok = ok and all(e.get("refused") and e.get("versions_unchanged") for e in ctx.events)
    report["ok"] = ok
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(markdown(report))
    print(markdown(report))
    return 0 if ok else 1


def markdown(r: dict) -> str:
    agg = r["requests"].get("Aggregated", {})
    s = r["rollout_stats"]
    lines = [
        f"# Load test `{r['scenario']}`: {'OK' if r['ok'] else 'FAILED'}",
        "",
        f"{r['description']}. {r['engines']} engine(s), {r['users']} users, spec {r['spec']}, "
        f"{r['duration_s']} s, started {r['started']}; machine: {r['machine']}.",
        f"Command: `{r['command']}`",
        "",
        "| requests | failures | median ms | p95 ms | p99 ms | samples | tokens/s | accept length "
        "| acceptance | entropy |",
        "|---|---|---|---|---|---|---|---|---|---|",
        f"| {agg.get('Request Count')} | {agg.get('Failure Count')} | {agg.get('Median Response Time')} "
        f"| {agg.get('95%')} | {agg.get('99%')} | {s.get('samples')} | {s.get('tokens_per_s')} "
        f"| {s.get('accept_length')} | {s.get('acceptance')} | {s.get('entropy')} |",
        "",
        f"Samples per weight version: {s.get('samples_per_weight_version')}; reloads ok/failed: "
        f"{s.get('reloads_ok')}/{s.get('reloads_failed')}.",
        f"Counters after the run: {r['counters_after']} (all zero: {r['counters_zero']}).",
        f"Requests hung when locust stopped: {r['hung_at_stop']}; server tracebacks: {r['server_tracebacks']}"
        + "".join(f"\n- `{e}`" for e in r["server_errors"]),
        f"Probe latency: {json.dumps(r['probe'])}.",
        f"RSS (MiB): {json.dumps(r['rss'])}.",
    ]
    if r["fault_events"]:
        lines += ["", "Fault events:", *[f"- {json.dumps(e)}" for e in r["fault_events"]]]
    return "\n".join(lines) + "\n"


def main() -> int:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # clean up bebop serve on SIGTERM too
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("scenario", choices=sorted(SCENARIOS))
    p.add_argument("--engines", type=int, default=None)
    p.add_argument("--users", type=int, default=None)
    p.add_argument("--duration", type=float, default=None, help="seconds (not for soak)")
    p.add_argument("--rollouts", type=int, default=10_000, help="soak: samples to complete")
    p.add_argument("--max-rss-growth", type=float, default=0.10, help="soak: allowed growth after warm-up")
    p.add_argument("--spec", default="rejection", choices=["none", "target_only", "rejection"])
    p.add_argument("--port", type=int, default=None)
    p.add_argument("--out", default=None)
    p.add_argument("--locust", default=str(DEFAULT_LOCUST))
    return run(p.parse_args())


if __name__ == "__main__":
    sys.exit(main())
